"""RELION's rotation convention (ZYZ Euler angles rot, tilt, psi, in degrees).

``euler_to_matrix`` returns RELION's ``Euler_angles2matrix``: a matrix ``A`` whose rows are
the image axes written in map coordinates. A point ``x`` of the map (Å, relative to the
box centre) lands at ``A @ x`` in the image frame; its (x, y) are the image position and
its z is the projection direction. Checked against ``relion_project`` in the tests.
"""

from __future__ import annotations

import numpy as np
import torch


def euler_to_matrix(euler_degrees: torch.Tensor) -> torch.Tensor:
    """(..., 3) rot/tilt/psi in degrees -> (..., 3, 3) rotation matrices ``A``."""
    angles = torch.deg2rad(euler_degrees)
    rot, tilt, psi = angles.unbind(-1)
    ca, sa = torch.cos(rot), torch.sin(rot)
    cb, sb = torch.cos(tilt), torch.sin(tilt)
    cg, sg = torch.cos(psi), torch.sin(psi)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
        torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
        torch.stack([sc, ss, cb], -1),
    ]
    return torch.stack(rows, -2)


def euler_to_matrix_numpy(euler_degrees: np.ndarray) -> np.ndarray:
    """NumPy version of :func:`euler_to_matrix` (float64)."""
    return euler_to_matrix(torch.as_tensor(np.asarray(euler_degrees, dtype=np.float64))).numpy()


def random_euler_angles(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` orientations drawn uniformly on SO(3), as RELION Euler angles in degrees."""
    rot = rng.uniform(-180.0, 180.0, n)
    tilt = np.rad2deg(np.arccos(rng.uniform(-1.0, 1.0, n)))
    psi = rng.uniform(-180.0, 180.0, n)
    return np.stack([rot, tilt, psi], axis=1)
