"""The simulated molecule: atoms of a structure (and its trajectory frames) as Gaussians.

Shared by the simulator, which projects them into particle images (``engine.image_formation``), and
by the evaluation code, which must project exactly the same model (for example for the Bayes-optimal
latent ceiling).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError
from .gaussians import GaussianModel
from .io.dcd import read_dcd, read_dcd_info
from .io.structure import AtomicStructure, read_structure


def default_atom_sigma(pixel_size_angstrom: float) -> float:
    """Width σ (Å) of every atom's Gaussian: max(1 Å, pixel size / 2); see the module docstring."""
    return max(1.0, 0.5 * pixel_size_angstrom)


def load_frames(
    structure: AtomicStructure, trajectory, frames
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(used frame numbers, their coordinates (F, n, 3) Å, frame 0's coordinates (n, 3) Å)."""
    if trajectory is None:
        if frames is not None and list(np.asarray(frames).ravel()) != [0]:
            raise InputError("frames can only be chosen together with a trajectory; drop --frames")
        xyz = structure.positions_angstrom[None]
        return np.array([0]), xyz, xyz[0]
    info = read_dcd_info(trajectory)
    if info.n_atoms != structure.n_atoms_in_file:
        raise InputError(
            f"{info.path}: trajectory has {info.n_atoms} atoms but {structure.path} has "
            f"{structure.n_atoms_in_file}; give the structure the trajectory was written for"
        )
    used = (
        np.arange(info.n_frames)
        if frames is None
        else np.unique(np.asarray(frames, dtype=np.int64))
    )
    if used.size == 0:
        raise InputError("no frames selected: choose at least one trajectory frame (or all)")
    wanted = np.union1d(used, [0])
    xyz = read_dcd(trajectory, info.n_atoms, wanted)[:, structure.atom_indices].astype(np.float64)
    return used, xyz[np.searchsorted(wanted, used)], xyz[0]


@dataclass
class Scene:
    """The molecule as Gaussians: shared amplitudes/width, centred positions of every used frame."""

    atoms: AtomicStructure
    frames: np.ndarray  # 0-based trajectory frames used, sorted
    model: GaussianModel  # positions are swapped per frame
    frame_positions: torch.Tensor  # (F, n, 3) Å from the common centre
    max_radius_angstrom: float

    def at_frame(self, k: int) -> GaussianModel:
        """The model with the positions of the k-th used frame."""
        self.model.positions_angstrom = self.frame_positions[k]
        return self.model


def build_scene(
    structure,
    trajectory,
    frames,
    box: int,
    pixel_size: float,
    sigma: float | None,
    include_hydrogens: bool,
    device,
) -> Scene:
    """The structure (and trajectory frames) as Gaussians centred on frame 0's weighted centre."""
    atoms = read_structure(structure, drop_waters=True, drop_hydrogens=not include_hydrogens)
    used, xyz, first = load_frames(atoms, trajectory, frames)
    weights = atoms.atomic_numbers.astype(np.float64)
    xyz = xyz - (first * weights[:, None]).sum(0) / weights.sum()
    return scene_of(atoms, used, xyz, box, pixel_size, sigma, device)


def scene_of(
    atoms, used, xyz: np.ndarray, box: int, pixel_size: float, sigma: float | None, device
) -> Scene:
    """The Scene of atom positions ``xyz`` (F, N, 3) Å from the box centre, one per entry of
    ``used``; refuses atoms outside the box and a width that is not positive."""
    max_radius = float(np.linalg.norm(xyz, axis=-1).max())
    if max_radius > box * pixel_size / 2:
        raise InputError(
            f"{atoms.path}: atoms reach {max_radius:.1f} Å from the centre but the box is only "
            f"{box * pixel_size:.1f} Å wide; use a larger box or pixel size"
        )
    sigma = default_atom_sigma(pixel_size) if sigma is None else sigma
    if not sigma > 0:
        raise InputError(f"atom width {sigma} Å is invalid: give a positive number")
    positions = torch.as_tensor(xyz, dtype=torch.float32, device=device)
    model = GaussianModel(
        positions[0],
        torch.as_tensor(atoms.atomic_numbers, dtype=torch.float32, device=device),
        torch.tensor(float(sigma), dtype=torch.float32, device=device),
    )
    return Scene(atoms, used, model, positions, max_radius)
