"""The simulated particles' ground truth: each one's frame, pose, origin, CTF and half set.

The distributions are described in ``engine.simulate`` (frame distributions, poses uniform on SO(3),
normal origins, uniform defocus and astigmatism); here they are drawn, and written as RELION 3.1
particles and optics tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..ctf import CtfParams
from ..errors import InputError
from ..geometry import euler_to_matrix, random_euler_angles
from ..image_formation import Pose

STACK_NAME = "particles.mrcs"
FRAME_DISTRIBUTIONS = ("uniform", "bimodal")
BIMODAL_CENTRES, BIMODAL_WIDTH = (0.2, 0.8), 0.1  # positions in the used-frame range, 0..1


def frame_probabilities(n_frames: int, distribution: str = "uniform", weights=None) -> np.ndarray:
    """The probability of each of ``n_frames`` used frames (see the module docstring)."""
    if weights is not None:
        if distribution != "uniform":
            raise InputError(
                f"frame distribution {distribution!r} and frame weights both given: give one of "
                "them"
            )
        w = np.asarray(weights, dtype=np.float64).ravel()
        if len(w) != n_frames:
            raise InputError(
                f"frame weights: {len(w)} values for {n_frames} frames used; give one weight per "
                "frame"
            )
        if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
            raise InputError("frame weights must be finite, >= 0 and not all 0")
        return w / w.sum()
    if distribution == "uniform":
        return np.full(n_frames, 1.0 / n_frames)
    if distribution == "bimodal":
        u = np.linspace(0.0, 1.0, n_frames) if n_frames > 1 else np.zeros(1)
        w = sum(np.exp(-((u - c) ** 2) / (2 * BIMODAL_WIDTH**2)) for c in BIMODAL_CENTRES)
        return w / w.sum()
    raise InputError(
        f"frame distribution {distribution!r} is unknown: give one of "
        f"{', '.join(FRAME_DISTRIBUTIONS)}"
    )


def draw_particles(
    rng: np.random.Generator,
    n: int,
    frames: np.ndarray,
    defocus_range,
    astigmatism,
    origin_sd,
    probabilities: np.ndarray | None = None,
    two_domains: bool = False,
) -> pd.DataFrame:
    """Per-particle ground truth: frame (or state and domain frames), pose, origin, defocus, half
    set.

    ``probabilities`` None draws frames uniformly with the generator's integers (the stream of the
    uniform simulations, unchanged).
    """
    euler = random_euler_angles(n, rng)

    def draw() -> np.ndarray:
        if probabilities is None:
            return rng.integers(0, len(frames), n)
        return rng.choice(len(frames), size=n, p=probabilities)

    first = draw()
    frame = frames[first]
    origin = rng.normal(0.0, origin_sd, (n, 2))
    mean_defocus = rng.uniform(defocus_range[0], defocus_range[1], n)
    astig = np.minimum(rng.uniform(0.0, astigmatism, n), mean_defocus)  # keeps defocus V >= 0
    angle = rng.uniform(0.0, 180.0, n)
    subset = np.zeros(n, dtype=np.int64)
    subset[rng.permutation(n)[: n // 2]] = 1
    if two_domains:
        second = draw()
        motion = {
            "state": first * len(frames) + second,
            "domain1_frame": frame,
            "domain2_frame": frames[second],
        }
    else:
        motion = {"frame": frame}
    return pd.DataFrame(
        {
            "index": np.arange(n),
            "image_name": [f"{i + 1:06d}@{STACK_NAME}" for i in range(n)],
            **motion,
            "rot": euler[:, 0],
            "tilt": euler[:, 1],
            "psi": euler[:, 2],
            "origin_x_angstrom": origin[:, 0],
            "origin_y_angstrom": origin[:, 1],
            "defocus_u_angstrom": mean_defocus + astig / 2,
            "defocus_v_angstrom": mean_defocus - astig / 2,
            "defocus_angle_degrees": angle,
            "random_subset": subset + 1,
        }
    )


def ctf_params(
    rows: pd.DataFrame, voltage: float, cs: float, amplitude_contrast: float
) -> CtfParams:
    """The CTF parameters of some label rows and the microscope's optics."""
    return CtfParams.broadcast(
        len(rows),
        defocus_u_angstrom=rows["defocus_u_angstrom"].to_numpy(),
        defocus_v_angstrom=rows["defocus_v_angstrom"].to_numpy(),
        defocus_angle_degrees=rows["defocus_angle_degrees"].to_numpy(),
        voltage_kilovolts=voltage,
        spherical_aberration_millimetres=cs,
        amplitude_contrast=amplitude_contrast,
    )


def star_blocks(
    labels: pd.DataFrame,
    box: int,
    pixel_size: float,
    voltage: float,
    cs: float,
    amplitude_contrast: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The RELION 3.1 particles and optics tables of the simulated set."""
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnImagePixelSize": [pixel_size],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
            "rlnVoltage": [voltage],
            "rlnSphericalAberration": [cs],
            "rlnAmplitudeContrast": [amplitude_contrast],
        }
    )
    n = len(labels)
    particles = pd.DataFrame(
        {
            "rlnImageName": labels["image_name"],
            "rlnAngleRot": labels["rot"],
            "rlnAngleTilt": labels["tilt"],
            "rlnAnglePsi": labels["psi"],
            "rlnOriginXAngst": labels["origin_x_angstrom"],
            "rlnOriginYAngst": labels["origin_y_angstrom"],
            "rlnDefocusU": labels["defocus_u_angstrom"],
            "rlnDefocusV": labels["defocus_v_angstrom"],
            "rlnDefocusAngle": labels["defocus_angle_degrees"],
            "rlnPhaseShift": np.zeros(n),
            "rlnCtfBfactor": np.zeros(n),
            "rlnCtfScalefactor": np.ones(n),
            "rlnOpticsGroup": np.ones(n, dtype=np.int64),
            "rlnRandomSubset": labels["random_subset"],
        }
    )
    return particles, optics


def poses(rows: pd.DataFrame, device) -> Pose:
    """The RELION poses (rotation matrices and origins in Å) of some label rows."""
    euler = torch.tensor(rows[["rot", "tilt", "psi"]].to_numpy(), dtype=torch.float32)
    origins = rows[["origin_x_angstrom", "origin_y_angstrom"]].to_numpy()
    return Pose(
        euler_to_matrix(euler).to(device),
        torch.tensor(origins, dtype=torch.float32, device=device),
    )
