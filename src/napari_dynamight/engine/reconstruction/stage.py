"""Stage 5 as one operation: half maps, full map and FSC of a deformation run.

``reconstruct_run`` streams each half set's particles (validation particles belong to their half)
through a :class:`DeformedAccumulator` with that half's own latents and inverse field, so the half
maps stay independent; with ``deformations=False`` the same code gives the standard
reconstruction. By default (``filter="constant"``) the sums are divided by
``CTF² + 10⁻³ ⟨CTF²⟩_shell``: no τ² (Wiener) term, the unregularised reconstruction of
``relion_reconstruct --ctf`` and of RELION's ``run_half*_class001_unfil.mrc``, which is what
RELION's PostProcess expects. ``filter="wiener"`` adds a term from the half-map FSC (RELION's
``1/τ² = ⟨CTF²⟩_shell / SNR``, ``SNR = FSC / (1 − FSC)``; twice that for the full map), which
measured no better against the ground truth and far from RELION (docs/reconstruction.md).
With ``subset`` only the particles of a subset STAR file (or given rows) are reconstructed, into a
folder of their own (``RUN/subsets/NAME/``), next to a copy of the subset whose image names lead to
the original images. Every file is written atomically at the end, so a cancelled run leaves nothing
partial.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..ctf import compute_ctf
from ..data.dataset import ParticleDataset
from ..data.subset import match_subset, read_run_particles, read_subset, write_subset
from ..device import check_device
from ..errors import InputError
from ..fourier import fsc, resolution_at
from ..progress import Progress, ProgressGenerator
from ..run_folder import ReconstructionFolder, RunFolder
from ..run_identity import check_finished_run, run_stamp
from .clusters import choose_clusters, quantise
from .deformed import DeformedAccumulator
from .inversion import radius_grid
from .report import write_outputs
from .settings import DEFAULT_FILTER as DEFAULT_FILTER  # re-exported: the default filter's name
from .settings import FILTERS, ReconstructionSettings

STAGE = "reconstruction"
WIENER_CONSTANT = 1e-3  # the constant filter: a small fraction of the shell-mean CTF² weight
REGION_MARGIN_ANGSTROM = 8.0  # the field is evaluated within this distance of the half's Gaussians
#: ``clusters=None``: the fewest clusters whose inverse field, at the half's Gaussians, is within
#: this many voxels (RMS) of each particle's own field (``clusters.choose_clusters``).
FIELD_ERROR_VOXELS = 0.5
FIELD_ERROR_POINTS = 2000  # Gaussians (at most) where that error is measured


@dataclass
class ReconstructionResult:
    directory: Path
    half_maps: tuple[Path, Path]
    full_map: Path
    fsc_csv: Path
    resolution_angstrom: float  # FSC 0.143 of the half maps
    resolution_standard_angstrom: float  # the same for the standard reconstruction


def reconstruct_run(
    run_directory,
    settings: ReconstructionSettings | None = None,
    *,
    deformations: bool = True,
    device="cpu",
    subset=None,
    output=None,
    **overrides,
) -> ProgressGenerator[ReconstructionResult]:
    """Reconstruct a run's half maps and full map into ``RunFolder.reconstruction(deformations)``.

    ``settings`` (default: :class:`ReconstructionSettings`'s defaults) holds ``batch_size``,
    ``grid_factor``, ``filter`` and ``clusters``; keyword ``overrides`` replace single fields of it
    (``reconstruct_run(run, batch_size=100)``).

    ``subset``: a STAR file of some of the run's particles (matched by image name), or their row
    indices; only they are reconstructed, each in its own half set, into ``output`` (default
    :func:`subset_folder`; rows need ``output``), with the subset written beside the maps as
    ``particles.star``. ``output`` also replaces the folder of a whole-run reconstruction.

    ``clusters``: k-means clusters of each half's latent codes; the field is evaluated and the
    backprojection warped once per centre (particles sorted by cluster); 0 warps every particle on
    its own (slow); ``None`` chooses per half the fewest clusters whose field error is within
    ``FIELD_ERROR_VOXELS`` (``clusters.choose_clusters``). In a ``torchrun`` launch every rank takes
    its share of each half set, the sums are added over the ranks and only rank 0 inverts and
    writes.
    """
    settings = replace(settings or ReconstructionSettings(), **overrides)
    batch_size, grid_factor = settings.batch_size, settings.grid_factor
    filter, clusters = settings.filter, settings.clusters
    run = RunFolder(run_directory)
    if filter not in FILTERS:
        raise InputError(f"--filter {filter!r} is unknown: use {' or '.join(FILTERS)}")
    if int(batch_size) < 1 or int(grid_factor) < 1 or (clusters is not None and int(clusters) < 0):
        raise InputError(
            f"--batch-size {batch_size} and --grid-factor {grid_factor} must be at least 1 "
            f"and --clusters {clusters} at least 0"
        )
    if not run.info.is_file() or not run.particles.is_file():
        raise InputError(
            f"{run.path}: not a finished deformation run ({run.info.name} or {run.particles.name} "
            "missing); run optimize-deformations first"
        )
    context = distributed.current()
    device = check_device(context.device_for(device))
    info = check_finished_run(run.path)
    box, voxel = int(info["consensus_box"]), float(info["voxel_size_angstrom"])
    table = read_run_particles(run.path, info)
    if "dmHalfSet" not in table.particles.columns:
        raise InputError(f"{run.particles}: no dmHalfSet column; rerun optimize-deformations")
    halves = table.particles["dmHalfSet"].to_numpy().astype(int)
    selected = None if subset is None else subset_rows(table, subset)
    if selected is not None and output is None and not isinstance(subset, (str, os.PathLike)):
        raise InputError("a selection of rows needs an output folder; give output=")
    folder = (
        ReconstructionFolder(output)
        if output is not None
        else run.reconstruction(deformations)
        if subset is None
        else subset_folder(run.path, subset, deformations)
    )
    fields, latents = (
        _deformation_inputs(run, run_stamp(info), table, halves, device)
        if deformations
        else ({}, None)
    )

    half_rows = {
        half: np.nonzero(halves == half)[0]
        if selected is None
        else np.sort(selected[halves[selected] == half])
        for half in (1, 2)
    }
    for half, rows in half_rows.items():
        if len(rows) == 0 and selected is not None:
            source = subset if isinstance(subset, (str, os.PathLike)) else "the selection"
            raise InputError(
                f"{source}: none of its particles is in half set {half}; a subset needs "
                "particles of both half sets for the half maps and their FSC"
            )
        if len(rows) == 0:
            raise InputError(f"{run.particles}: half set {half} has no particles")

    accumulators = []
    for half, rows in half_rows.items():
        codes = None
        if (
            latents is not None
        ):  # each particle's field code: its cluster centre (rows sorted by cluster)
            count = clusters
            if count is None:
                field, _, points = fields[half]
                count, _ = choose_clusters(latents[rows], field, points, FIELD_ERROR_VOXELS * voxel)
            rows, quantised = quantise(latents, rows, int(count))
            codes = latents.copy()
            codes[rows] = quantised
        rows = context.shard(rows)
        field, region, _ = fields.get(half, (None, None, None))
        accumulator = DeformedAccumulator(box, voxel, field, region, grid_factor, device=device)
        with ParticleDataset(
            table,
            rows,
            target_box=box,
            target_pixel_size_angstrom=voxel,
            normalise=False,
            device=device,
        ) as dataset:
            for done, batch in enumerate(dataset.batches(batch_size), 1):
                ctf = compute_ctf(batch.ctf, box, dataset.pixel_size_angstrom)
                batch_codes = None if codes is None else codes[batch.rows]
                accumulator.add(
                    batch.images, batch.rotations, batch.origin_angstrom, ctf, batch_codes
                )
                yield Progress(STAGE, min(done * batch_size, len(rows)), len(rows), f"half {half}")
        accumulators.append(reduce_sums(accumulator, context))

    resolutions = (float("nan"), float("nan"))
    if context.is_main:
        yield Progress(STAGE, 0, None, "inverting")
        # The standard half maps (for the standard FSC) first: _divide may merge the halves in
        # place.
        standard = (
            [a.standard.reconstruct(WIENER_CONSTANT).cpu().numpy() for a in accumulators]
            if deformations
            else None
        )
        maps, curve = _divide(accumulators, filter)
        if (
            standard is None
        ):  # without deformations the constant-filter half maps are the standard ones
            standard = maps["constant_halves"]
        maps.pop("constant_halves")
        frequency, standard_curve = fsc(*standard, voxel)
        curves = (
            {"fsc_deformed": curve, "fsc_standard": standard_curve}
            if deformations
            else {"fsc_standard": curve}
        )
        write_outputs(folder, maps, voxel, frequency, curves)
        if selected is not None:
            write_subset(folder.subset, table, selected)
        resolutions = (
            resolution_at(frequency, curve, 0.143),
            resolution_at(frequency, standard_curve, 0.143),
        )
    context.barrier()
    return ReconstructionResult(
        folder.path, folder.half_maps, folder.full_map, folder.fsc_table, *resolutions
    )


def subset_rows(table, subset) -> np.ndarray:
    """The run's rows of ``subset``: a subset STAR file (matched by image name) or row indices."""
    if isinstance(subset, (str, os.PathLike)):
        return match_subset(table, read_subset(subset))
    rows = np.asarray(subset, dtype=np.int64).reshape(-1)
    if (
        len(rows) == 0
        or rows.min() < 0
        or rows.max() >= len(table)
        or len(np.unique(rows)) < len(rows)
    ):
        raise InputError(
            f"a selection of {len(rows)} particles: give distinct rows in 0..{len(table) - 1}, at "
            "least one"
        )
    return rows


def subset_name(text: str) -> str:
    """A folder name for a subset: ``text`` with characters other than letters, digits, ``.``,
    ``-``, ``_`` and spaces replaced by ``_``."""
    name = re.sub(r"[^\w.\- ]", "_", str(text)).strip(" .")
    return name or "subset"


def subset_folder(run_directory, subset, deformations: bool = False) -> ReconstructionFolder:
    """Where a subset's maps go by default: ``RUN/subsets/NAME/reconstruction[_standard]``, NAME
    from the subset file's name (a selection's name for rows)."""
    name = Path(subset).stem if isinstance(subset, (str, os.PathLike)) else str(subset)
    return RunFolder(run_directory).subset_reconstruction(subset_name(name), deformations)


def _check_inverse_is_current(run: RunFolder, stamp: str) -> None:
    """The run's inverse folder must be complete (its summary, written last) and made from the run
    as it is now."""
    summary_path = run.inverse.summary
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError(
            f"{summary_path}: missing or unreadable, so the inverse deformations did not finish; "
            "run optimize-inverse-deformations --resume"
        ) from None
    made_from = summary.get("deformation_run") if isinstance(summary, dict) else None
    if made_from is not None and made_from != stamp:
        raise InputError(
            f"{run.inverse.path}: made from another state of the deformation run (resumed or rerun "
            "since); delete it and run optimize-inverse-deformations again"
        )


def _deformation_inputs(run: RunFolder, stamp: str, table, halves: np.ndarray, device):
    """Each half's inverse field (as a callable) and each particle's latent code from its own half;
    ``stamp``: the run's state (``run_identity.run_stamp``), which the inverse must have been made
    from."""
    hint = "run optimize-inverse-deformations first, or use --no-deformations"
    if not run.inverse.path.is_dir():
        raise InputError(
            f"{run.path}: no inverse deformations ({run.inverse.path.name}/ missing); {hint}"
        )
    try:
        from ..inverse.field import load_inverse_field
    except ImportError:
        raise InputError(
            f"{run.path}: this installation has no inverse-deformation stage; {hint}"
        ) from None
    _check_inverse_is_current(run, stamp)
    latents = np.load(run.latents).astype(np.float32)
    if len(latents) != len(table):
        raise InputError(
            f"{run.latents}: {len(latents)} rows for {len(table)} particles; rerun the run"
        )
    if run.latents_half2.is_file() and "dmValidation" in table.particles.columns:
        second = np.load(run.latents_half2).astype(np.float32)
        own = (
            (halves == 2)
            & (table.particles["dmValidation"].to_numpy() == 1)
            & np.isfinite(second).all(1)
        )
        latents[own] = second[own]
    fields = {}
    for half in (1, 2):
        field = load_inverse_field(run.path, half, device)
        fields[half] = (field.consensus_positions, *_region(run, half, device))
    return fields, latents


def _region(run: RunFolder, half: int, device) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Voxels within about REGION_MARGIN_ANGSTROM of the half's reference Gaussians (a cube
    dilation), where the field is evaluated, and up to FIELD_ERROR_POINTS of those Gaussians (Å);
    None (everywhere) and the coarse box points when the run has no checkpoint."""
    from ..deformation.decode import DeformationRun

    try:
        forward = DeformationRun.load(run.path, device)
    except InputError:
        info = json.loads(run.info.read_text(encoding="utf-8"))
        box, voxel = int(info["consensus_box"]), float(info["voxel_size_angstrom"])
        axis = (torch.arange(0, box, max(1, box // 12), device=device) - box // 2) * voxel
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        return None, grid
    box, voxel = forward.box, forward.voxel_size_angstrom
    positions = forward.reference(half).positions_angstrom
    points = positions[
        torch.linspace(
            0, len(positions) - 1, min(len(positions), FIELD_ERROR_POINTS), device=positions.device
        ).long()
    ]
    index = torch.round(positions / voxel).long() + box // 2
    index = index[((index >= 0) & (index < box)).all(1)]
    occupied = torch.zeros((box,) * 3, device=device)
    occupied[index[:, 2], index[:, 1], index[:, 0]] = 1
    reach = int(np.ceil(REGION_MARGIN_ANGSTROM / voxel))
    dilated = occupied[None, None]
    for kernel in (
        (2 * reach + 1, 1, 1),
        (1, 2 * reach + 1, 1),
        (1, 1, 2 * reach + 1),
    ):  # a cube, one axis at a time
        dilated = torch.nn.functional.max_pool3d(dilated, kernel, 1, tuple(k // 2 for k in kernel))
    return dilated[0, 0] > 0, points


def reduce_sums(accumulator: DeformedAccumulator, group: distributed.Group) -> DeformedAccumulator:
    """Add the partial sums (Fourier data and weights, real-space correction, particle count) of
    every rank of ``group`` in place, in one collective; a no-op in one process."""
    accumulator.flush()
    count = torch.tensor([float(accumulator.standard.particle_count)], device=accumulator.device)
    distributed.sum_tensors_(
        group, [accumulator.standard.sums, accumulator.correction.view(-1), count]
    )
    accumulator.standard.particle_count = int(count.item())
    return accumulator


def _divide(accumulators: list[DeformedAccumulator], filter: str):
    """Half maps and full map (and, as ``constant_halves``, the constant-filter half maps), and the
    half-map FSC of the constant-filter maps. With the constant filter the second half's sums are
    added to the first's in place for the full map (no third set of sums in memory)."""
    first = [a.reconstruct(WIENER_CONSTANT).cpu().numpy() for a in accumulators]
    voxel = accumulators[0].pixel_size_angstrom
    _, curve = fsc(*first, voxel)
    if filter == "constant":
        accumulators[0].merge(accumulators[1])
        return {
            "half1": first[0],
            "half2": first[1],
            "full": accumulators[0].reconstruct(WIENER_CONSTANT).cpu().numpy(),
            "constant_halves": first,
        }, curve
    full = DeformedAccumulator(
        accumulators[0].box,
        voxel,
        accumulators[0].field,
        None,
        accumulators[0].grid_factor,
        accumulators[0].padding,
        accumulators[0].device,
    )
    for accumulator in accumulators:
        full.merge(accumulator)
    snr = np.clip(curve, 1e-3, 0.999) / (1 - np.clip(curve, 1e-3, 0.999))
    maps = {}
    for name, accumulator, factor in (
        ("half1", accumulators[0], 1),
        ("half2", accumulators[1], 1),
        ("full", full, 2),
    ):
        regulariser = _shell_mean_weight(accumulator) / torch.as_tensor(factor * snr)
        maps[name] = accumulator.reconstruct(WIENER_CONSTANT, regulariser.float()).cpu().numpy()
    halves = [maps["half1"], maps["half2"]]
    maps["constant_halves"] = first
    return maps, fsc(*halves, voxel)[1]


def _shell_mean_weight(accumulator: DeformedAccumulator) -> torch.Tensor:
    """⟨CTF²⟩ per shell of the original box (the RELION τ² normalisation)."""
    _, weight = accumulator.standard.fourier_sums()
    box, padding = accumulator.box, accumulator.padding
    radius = radius_grid(padding * box, weight.device, weight.dtype)
    shell = torch.round(radius / padding).long().clamp(max=box // 2)
    inside = radius < padding * box / 2
    sums = torch.bincount(shell[inside], weights=weight[inside].double(), minlength=box // 2 + 1)
    counts = torch.bincount(shell[inside], minlength=box // 2 + 1).clamp(min=1)
    return (sums / counts).cpu()
