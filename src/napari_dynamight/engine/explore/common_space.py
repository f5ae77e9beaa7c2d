"""A common motion space: the particles of both half sets placed in one plot by how they move.

The halves' latent spaces are unrelated, but both decoders displace Gaussian models that the run
keeps aligned in one conformation, so particles can be compared by their motion. Each particle is
decoded by its own half (validation particles too, with their own half's code; by half 1 where half
2's code is missing) at the same points: a subsample of half 1's reference Gaussians, as the run's
error estimates do (``engine/deformation/validation.py``). The displacements (3 per point, Å) are
centred per half — the halves are random splits of one data set, so their mean motions agree, while
each half's decoder adds its own constant offset from its own reference.

Plain PCA of both halves together orders the particles well on its first axis, but its second axis
is where the two decoders disagree (half 1's motion bends one way, half 2's the other: in 2D the
halves form an X, same-frame particles 0.4–0.8 RMS apart on the simulated runs). The validation
particles, decoded by both halves, measure that disagreement: its covariance (regularised by
:data:`REGULARISATION` of its mean variance) is the unwanted variation, and the two axes are the
unit directions with the most variance relative to it (``engine.statistics.principal_axes``;
0.08–0.14 RMS apart). Without validation particles with both codes, plain PCA is used. Coordinates
are in Å (RMS over the points).

The features are never held all at once: a pass over the validation particles accumulates the
disagreement, a pass over all particles the per-half sums and the scatter matrix, and a last one
decodes again and projects (memory grows with the points, not the particles). The result is cached
in the run folder (``RunFolder.common_space``) with the run's stamp (``run_identity.run_stamp``) and
recomputed when the run changed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.atomic import atomic_path
from ..progress import Progress, ProgressGenerator
from ..run_folder import RunFolder
from ..statistics import principal_axes
from .embedding import Embedding
from .halves import HalfView

BOTH = 3  # the half-set value of the common view, beside half 1 and half 2
DEFAULT_POINTS = 256
REGULARISATION = 0.1  # of the disagreement's mean variance, added to its diagonal
BATCH_SIZE = 256
STAGE = "common motion space"
METHOD = "own-half displacements at half 1's Gaussians, centred per half, against the disagreement"


@dataclass
class CommonSpace:
    """Every STAR row's 2D ``coords`` (N, 2) Å, ``explained_variance`` (2,) of the axes, the half
    whose decoder placed it (``decoded_by`` (N,)), the ``validation`` flags (N,) and the ``codes``
    (N, D) it was decoded from (its own half's)."""

    coords: np.ndarray
    explained_variance: np.ndarray
    decoded_by: np.ndarray
    validation: np.ndarray
    codes: np.ndarray

    def __len__(self) -> int:
        return len(self.coords)

    def view(self) -> HalfView:
        """All particles, each with its own half's code (to decode it with ``decoded_by``)."""
        return HalfView(BOTH, np.arange(len(self)), self.codes)

    def embedding(self) -> Embedding:
        """The plot coordinates as an :class:`Embedding` (``nearest`` finds the particle to
        decode)."""
        return Embedding(self.coords, self.codes, "common motion space", self.explained_variance)


def own_codes(
    latents: np.ndarray,
    validation: np.ndarray,
    half_sets: np.ndarray,
    half2_validation: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each particle's code by its own half set and that half (N,): ``latents`` hold the own half's
    codes, validation particles half 1's; a half-2 validation particle gets half 2's code when
    known."""
    codes, by = (
        np.array(latents, dtype=np.float32),
        np.where(validation, 1, half_sets).astype(np.int64),
    )
    if half2_validation is not None:
        known = validation & (half_sets == 2) & np.isfinite(half2_validation).all(axis=1)
        codes[known], by[known] = half2_validation[known], 2
    return codes, by


def point_subset(n_gaussians: int, n_points: int) -> np.ndarray:
    """Indices of ``n_points`` Gaussians spread evenly over the reference (all when fewer)."""
    if n_points < 1:
        raise InputError(f"the common motion space needs at least 1 point, got {n_points}")
    return np.unique(
        np.linspace(0, n_gaussians - 1, min(n_points, n_gaussians)).round().astype(np.int64)
    )


def _displacements(run, codes, by, index, batch_size: int):
    """(rows, displacements (B, 3P) Å) per batch of one half's particles, at half 1's Gaussians
    ``index``."""
    for half in (1, 2):
        rows = np.nonzero(by == half)[0]
        for start in range(0, len(rows), batch_size):
            chosen = rows[start : start + batch_size]
            moved = run.displacements_at_half1(codes[chosen], half, index)
            yield chosen, moved.reshape(len(chosen), -1).double().cpu().numpy()


def _both_codes(run, half2_validation) -> np.ndarray:
    """The validation particles with a code by each half (STAR rows); none with fewer than 2."""
    if half2_validation is None:
        return np.zeros(0, np.int64)
    rows = np.nonzero(run.validation & np.isfinite(half2_validation).all(axis=1))[0]
    return rows if len(rows) >= 2 else rows[:0]


def _disagreement(run, half2_validation, rows, points, batch_size: int, progress):
    """The covariance (F, F) of the two halves' displacements' difference over the validation
    particles ``rows``, regularised; None without them."""
    if len(rows) == 0:
        return None
    sums, scatter = 0.0, 0.0
    for start in range(0, len(rows), batch_size):
        chosen = rows[start : start + batch_size]
        moved = [
            run.displacements_at_half1(codes, half, points).reshape(len(chosen), -1).double()
            for half, codes in ((1, run.latents[chosen]), (2, half2_validation[chosen]))
        ]
        difference = (moved[0] - moved[1]).cpu().numpy()
        sums, scatter = sums + difference.sum(axis=0), scatter + difference.T @ difference
        yield progress("measuring where the halves disagree")
    mean = sums / len(rows)
    covariance = (scatter - len(rows) * np.outer(mean, mean)) / (len(rows) - 1)
    floor = REGULARISATION * max(float(np.trace(covariance)) / len(covariance), 1e-12)
    return covariance + floor * np.eye(len(covariance))


def compute_common_space(
    run,
    half2_validation: np.ndarray | None,
    n_points: int = DEFAULT_POINTS,
    batch_size: int = BATCH_SIZE,
) -> ProgressGenerator[CommonSpace]:
    """The common motion space of a loaded ``DeformationRun`` (see the module docstring)."""
    if run.latents is None:
        raise InputError("this run has no latent means yet; finish the run first")
    codes, by = own_codes(run.latents, run.validation, run.half_sets, half2_validation)
    points = point_subset(len(run.reference(1).positions_angstrom), n_points)
    counts = {half: int((by == half).sum()) for half in (1, 2)}
    both = _both_codes(run, half2_validation)
    total = sum(
        -(-count // batch_size) for count in (*counts.values(), *counts.values(), len(both))
    )
    step = 0

    def progress(message: str) -> Progress:
        nonlocal step
        step += 1
        return Progress(STAGE, step, total, message)

    against = yield from _disagreement(run, half2_validation, both, points, batch_size, progress)
    features = 3 * len(points)
    sums = {half: np.zeros(features) for half in (1, 2)}
    scatter = np.zeros((features, features))
    for rows, moved in _displacements(run, codes, by, points, batch_size):
        sums[int(by[rows[0]])] += moved.sum(axis=0)
        scatter += moved.T @ moved
        yield progress("decoding the particles' motions")
    means = {half: sums[half] / max(count, 1) for half, count in counts.items()}
    for half, count in counts.items():
        scatter -= count * np.outer(means[half], means[half])
    axes, explained = principal_axes(scatter / max(len(codes) - 1, 1), against)
    coords = np.zeros((len(codes), 2), np.float32)
    for rows, moved in _displacements(run, codes, by, points, batch_size):
        coords[rows] = (moved - means[int(by[rows[0]])]) @ axes / np.sqrt(len(points))
        yield progress("placing the particles")
    return CommonSpace(coords, explained, by, np.asarray(run.validation, bool), codes)


def _load(path: Path, stamp: str, n_points: int, n: int) -> CommonSpace | None:
    """The cached space when it was made from this state of the run with these settings, else
    None."""
    try:
        with np.load(path, allow_pickle=False) as cached:
            same = (
                str(cached["stamp"]) == stamp
                and str(cached["method"]) == METHOD
                and int(cached["n_points"]) == n_points
                and len(cached["coords"]) == n
            )
            if not same:
                return None
            return CommonSpace(
                *(
                    cached[key]
                    for key in ("coords", "explained_variance", "decoded_by", "validation", "codes")
                )
            )
    except (OSError, ValueError, KeyError, EOFError):
        return None  # missing, damaged or from another version: made again


def common_space(
    run_directory: str | os.PathLike,
    run=None,
    n_points: int = DEFAULT_POINTS,
    batch_size: int = BATCH_SIZE,
) -> ProgressGenerator[CommonSpace]:
    """The common motion space of a finished run folder: read from its cache when the run is
    unchanged, else computed (``run``: its ``DeformationRun`` if already loaded) and cached
    atomically."""
    from ..run_identity import check_finished_run, run_stamp

    folder = RunFolder.of(run_directory)
    info = check_finished_run(folder.path)
    cached = _load(folder.common_space, run_stamp(info), n_points, info["n_particles"])
    if cached is not None:
        return cached
    if run is None:
        from ..deformation.decode import DeformationRun

        run = DeformationRun.load(folder.path)
    half2 = np.load(folder.latents_half2) if folder.latents_half2.is_file() else None
    space = yield from compute_common_space(run, half2, n_points, batch_size)
    with atomic_path(folder.common_space) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            stamp=np.array(run_stamp(info)),
            method=np.array(METHOD),
            n_points=np.array(n_points),
            coords=space.coords,
            explained_variance=space.explained_variance,
            decoded_by=space.decoded_by,
            validation=space.validation,
            codes=space.codes,
        )
    return space
