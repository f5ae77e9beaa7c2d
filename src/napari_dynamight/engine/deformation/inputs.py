"""Read and check every input of a deformation run before the first epoch.

Each problem is an :class:`InputError` with one line naming the file, option or value and what to
do, raised before anything is trained or written, so a run never fails hours in on a bad input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..consensus import load_model
from ..data.particle_file import read_particle_file
from ..data.particles import ParticleTable
from ..device import check_device
from ..errors import InputError
from ..fourier import fourier_box
from ..gaussians import GaussianModel
from ..io.mrc import read_map

TRAINING_PIXEL_ANGSTROM = 3.0  # default training sampling: domain motions need no finer
MIN_DEFAULT_BOX, MAX_DEFAULT_BOX = 32, 128


@dataclass
class RunInputs:
    """The checked inputs: particles, half sets, validation flags, consensus map and optional
    model."""

    table: ParticleTable
    halves: np.ndarray  # (N,) 1 or 2
    validation: np.ndarray  # (N,) bool
    consensus_map: np.ndarray
    voxel_size_angstrom: float
    consensus_model: GaussianModel | None
    mask: np.ndarray | None
    train_box: int
    device: torch.device


def default_train_box(image_box: int, pixel_size_angstrom: float) -> int:
    """The image box Fourier-cropped to about 3 Å/px, between 32 and 128 px, never above the image
    box."""
    box = fourier_box(image_box, pixel_size_angstrom, TRAINING_PIXEL_ANGSTROM)
    return int(min(image_box, max(MIN_DEFAULT_BOX, min(MAX_DEFAULT_BOX, box))))


def _read_cube(path: Path, what: str) -> tuple[np.ndarray, float]:
    volume, voxel = read_map(path)
    if len(set(volume.shape)) != 1:
        raise InputError(f"{path}: the {what} must be a cube, got {volume.shape[::-1]} (x, y, z)")
    return volume, voxel


def validation_flags(halves: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded choice of ``round(fraction × size)`` particles of each half set."""
    flags = np.zeros(len(halves), bool)
    rng = np.random.default_rng([seed, 7])
    for half in (1, 2):
        members = np.nonzero(halves == half)[0]
        count = int(round(fraction * len(members)))
        flags[rng.choice(members, size=count, replace=False)] = True
    return flags


def read_inputs(
    particles_path,
    consensus_path,
    mask_path=None,
    consensus_model_path=None,
    n_gaussians=None,
    train_box=None,
    data_root=None,
    device="cpu",
    validation_fraction=0.1,
    seed=0,
    passthroughs=None,
) -> RunInputs:
    """Read and check everything; see the module docstring. ``particles_path``: STAR or cryoSPARC
    .cs (``passthroughs``: its passthrough .cs files; None finds the job's own)."""
    chosen_device = check_device(device)
    table = read_particle_file(particles_path, data_root=data_root, passthroughs=passthroughs)
    table.require_ctf()
    table.require_pixel_size()
    if not table.has_poses:
        fields = (
            "alignments3D/pose"
            if table.records is not None
            else "rlnAngleRot, rlnAngleTilt, rlnAnglePsi"
        )
        raise InputError(
            f"{particles_path}: missing pose columns ({fields}); refine the particles first "
            "(e.g. RELION 3D auto-refine or a cryoSPARC refinement)"
        )
    table.check_images()
    sizes, boxes = table.pixel_size_angstrom, table.image_box
    extent = float(np.max(sizes * boxes))
    halves = table.half_sets(seed)
    for half in (1, 2):
        count = int((halves == half).sum())
        if count < 16:
            raise InputError(
                f"{particles_path}: half set {half} has only {count} particles; "
                "give at least 16 per half set"
            )
    volume, voxel = _read_cube(Path(consensus_path), "consensus map")
    if not math.isclose(volume.shape[0] * voxel, extent, rel_tol=0.01):
        raise InputError(
            f"{consensus_path}: the map spans {volume.shape[0] * voxel:.1f} Å "
            f"({volume.shape[0]} × {voxel:g} Å) but the particles span {extent:.1f} Å; "
            "give the consensus map of these particles at their box"
        )
    mask = None
    if mask_path is not None:
        mask, mask_voxel = _read_cube(Path(mask_path), "mask")
        if mask.shape != volume.shape or not math.isclose(mask_voxel, voxel, rel_tol=1e-3):
            raise InputError(
                f"{mask_path}: mask box {mask.shape[0]} at {mask_voxel:g} Å differs from the "
                f"consensus map's {volume.shape[0]} at {voxel:g} Å; resample the mask"
            )
        if not (mask > 0.5).any():
            raise InputError(
                f"{mask_path}: no voxel of the mask is above 0.5, so nothing could move; "
                "give a mask that is 1 over the moving region"
            )
    model = None
    if consensus_model_path is not None:
        model = load_model(consensus_model_path)
        if n_gaussians is not None and int(n_gaussians) != model.n_gaussians:
            raise InputError(
                f"{consensus_model_path}: the model has {model.n_gaussians} Gaussians but "
                f"--n-gaussians is {n_gaussians}; drop one of the two options"
            )
        if not torch.isfinite(model.positions_angstrom).all():
            raise InputError(
                f"{consensus_model_path}: the model has non-finite positions; refit it"
            )
    elif n_gaussians is not None and int(n_gaussians) < 3:
        raise InputError(f"--n-gaussians must be at least 3, got {n_gaussians}")
    elif n_gaussians is not None and int(n_gaussians) > volume.size:
        raise InputError(
            f"--n-gaussians {n_gaussians} is more than one per voxel of the consensus map "
            f"({volume.size} voxels); give fewer Gaussians"
        )
    image_box = int(np.max(boxes))
    pixel = extent / image_box
    box = default_train_box(image_box, pixel) if train_box is None else int(train_box)
    if box < 16 or box % 2:
        raise InputError(f"--box {box}: use an even training box of at least 16 px")
    if box > image_box:
        raise InputError(
            f"--box {box} is larger than the images ({image_box} px); use at most {image_box}"
        )
    return RunInputs(
        table,
        halves,
        validation_flags(halves, validation_fraction, seed),
        volume,
        voxel,
        model,
        mask,
        box,
        chosen_device,
    )


def moving_flags(
    positions_angstrom: torch.Tensor, mask: np.ndarray | None, voxel_size_angstrom: float
) -> torch.Tensor:
    """1 for Gaussians whose nearest mask voxel is above 0.5 (all 1 without a mask), else 0."""
    if mask is None:
        return torch.ones(positions_angstrom.shape[0])
    box = mask.shape[0]
    index = (
        np.rint(positions_angstrom.detach().cpu().numpy() / voxel_size_angstrom).astype(int)
        + box // 2
    )
    index = np.clip(index, 0, box - 1)
    return torch.as_tensor(mask[index[:, 2], index[:, 1], index[:, 0]] > 0.5, dtype=torch.float32)
