"""Stage 2 as one operation: read the consensus map (and mask), fill it, fit it, write the model.

Outputs in the output directory (each written atomically):
``consensus_gaussians.pt`` (plain tensors: positions in Å from the box centre, amplitudes, widths,
plus box, voxel size and threshold), ``consensus_gaussians.mrc`` (the model rendered at the map's
box and voxel size, to compare with the map) and ``consensus_gaussians.csv`` (one row per Gaussian,
for inspection).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .consensus import automatic_threshold, fill_with_gaussians, fit_to_map, save_model
from .device import check_device
from .errors import InputError
from .gaussians import render_volume
from .io.atomic import atomic_path
from .io.file_set import file_set
from .io.mrc import read_map, write_map
from .progress import Progress, ProgressGenerator
from .run_folder import ConsensusFolder
from .settings_record import SettingsRecord, option

# A residue occupies about 133 Å³ of protein (110 Da at 1.21 Å³/Da); the method recommends 2
# Gaussians each.
VOLUME_PER_RESIDUE_ANGSTROM3 = 133.0
GAUSSIANS_PER_RESIDUE = 2


@dataclass(frozen=True)
class ConsensusSettings(SettingsRecord):
    """Options of :func:`fit_consensus`, each declared once with :func:`option` (the command line
    and the napari form are made from them)."""

    n_gaussians: int | None = option(
        None,
        "number of Gaussians",
        minimum=1,
        maximum=10_000_000,
        auto="2 per residue",
        metavar="N",
        label="Gaussians",
    )
    threshold: float | None = option(
        None, "map level that separates molecule from solvent", auto="automatic", form=False
    )  # the form: a slider
    n_steps: int = option(
        300,
        "gradient steps of the fit",
        minimum=1,
        maximum=100_000,
        flag="steps",
        label="fit steps",
    )
    seed: int = option(0, "random seed for placing the Gaussians", minimum=0, maximum=2**31 - 1)


@dataclass
class ConsensusFit:
    """What stage 2 produced: the model file and how well the model reproduces the map."""

    model_path: Path
    n_gaussians: int
    threshold: float
    correlation: float
    sigma_angstrom: float


def suggested_gaussian_count(
    volume: np.ndarray, voxel_size_angstrom: float, threshold: float
) -> int:
    """Two Gaussians per residue, with the residue count estimated from the volume above the
    threshold."""
    enclosed = float((volume >= threshold).sum()) * voxel_size_angstrom**3
    return max(1, int(round(GAUSSIANS_PER_RESIDUE * enclosed / VOLUME_PER_RESIDUE_ANGSTROM3)))


def fit_consensus(
    consensus_path: str | Path,
    output_directory: str | Path,
    n_gaussians: int | None = None,
    threshold: float | None = None,
    mask_path: str | Path | None = None,
    n_steps: int = ConsensusSettings.n_steps,
    seed: int = ConsensusSettings.seed,
    device: str = "cpu",
) -> ProgressGenerator[ConsensusFit]:
    """Fill the consensus map with Gaussians and fit them to it; write the model files."""
    volume, voxel_size = read_map(consensus_path)
    if volume.shape[0] != volume.shape[1] or volume.shape[1] != volume.shape[2]:
        raise InputError(
            f"{consensus_path}: the consensus map must be a cube, got {volume.shape[::-1]} "
            "(x, y, z)"
        )
    mask = None
    if mask_path is not None:
        mask, mask_voxel = read_map(mask_path)
        if mask.shape != volume.shape:
            raise InputError(
                f"{mask_path}: mask box {mask.shape[0]} differs from the consensus map's "
                f"{volume.shape[0]}"
            )
        if not np.isclose(mask_voxel, voxel_size, rtol=1e-3):
            raise InputError(
                f"{mask_path}: mask voxel size {mask_voxel:.4f} Å differs from the map's "
                f"{voxel_size:.4f} Å"
            )
        if not (mask > 0.5).any():
            raise InputError(
                f"{mask_path}: no voxel of the mask is above 0.5, so no Gaussian could be placed; "
                "give a mask that is 1 over the molecule"
            )
    if n_gaussians is not None and not 1 <= int(n_gaussians) <= volume.size:
        raise InputError(
            f"--n-gaussians {n_gaussians}: give between 1 and one per voxel of the map "
            f"({volume.size} voxels)"
        )
    ConsensusSettings(threshold=threshold, n_steps=int(n_steps), seed=int(seed)).check_limits()
    check_device(device)
    level = automatic_threshold(volume) if threshold is None else float(threshold)
    count = (
        suggested_gaussian_count(volume, voxel_size, level)
        if n_gaussians is None
        else int(n_gaussians)
    )
    yield Progress("fit consensus", 0, n_steps, message=f"{count} Gaussians, threshold {level:.4g}")
    start = fill_with_gaussians(volume, voxel_size, count, threshold=level, mask=mask, seed=seed)
    result = yield from fit_to_map(
        start, volume, voxel_size, n_steps=n_steps, device=device, threshold=level
    )

    output = ConsensusFolder(output_directory)
    output.path.mkdir(parents=True, exist_ok=True)
    model_path = output.model
    names = [model_path, output.rendered_map, output.table]
    with file_set(names, output.complete_marker) as (model_tmp, map_tmp, table_tmp):
        save_model(
            model_tmp,
            result.model,
            box=volume.shape[0],
            voxel_size_angstrom=voxel_size,
            threshold=level,
        )
        write_map(
            map_tmp, render_volume(result.model, volume.shape[0], voxel_size).numpy(), voxel_size
        )
        _write_table(table_tmp, result.model)
    return ConsensusFit(
        model_path, count, level, result.correlation, float(result.model.sigmas_angstrom[0])
    )


def _write_table(path: Path, model) -> None:
    table = np.column_stack(
        [model.positions_angstrom.numpy(), model.amplitudes.numpy(), model.sigmas_angstrom.numpy()]
    )
    with atomic_path(path) as tmp:
        np.savetxt(
            tmp,
            table,
            delimiter=",",
            fmt="%.5f",
            header="x_angstrom,y_angstrom,z_angstrom,amplitude,sigma_angstrom",
            comments="",
        )
