"""Deformation error estimates from the two independent half-set models (method.md, "Validation").

Each particle goes through both halves' encoder/decoder pairs (its latent by each half: the
encoder's mean, or by default the posterior mean of ``inference.py``). Both deformation fields are
evaluated at the same points, half 1's reference positions (the references are kept in one
conformation by the alignment step), and the distance between the two predicted positions of each
Gaussian is the error estimate: per particle its RMS over Gaussians, per Gaussian its RMS over the
validation particles, resolved at the training pixel (:func:`resolved_gaussian_errors`). For
validation particles neither decoder has seen the image, so their estimate is unbiased; for training
particles one of the two halves was trained on it, so the value is a lower estimate.

With several ranks (each holding both halves' final state), each rank takes its share of the rows
and the per-row arrays and per-Gaussian sums are added up over the group (every row is filled by one
rank).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from .. import distributed
from ..progress import Progress
from .batches import ParticleBatches
from .inference import latent_inference
from .smoothing import PositionSmoother
from .trainer import HalfSet


@dataclass
class ErrorEstimates:
    """Latent means of all rows by both halves, and the error estimates."""

    latents: tuple[np.ndarray, np.ndarray]  # (N, D) per half, table row order
    particle_error_angstrom: np.ndarray  # (N,)
    gaussian_error_angstrom: np.ndarray  # (N_gaussians,) over validation rows (all rows if none)
    displacement_rms_angstrom: tuple[
        np.ndarray, np.ndarray
    ]  # (N,) each half's own RMS displacement


@torch.no_grad()
def estimate_errors(
    halves: list[HalfSet],
    batches: ParticleBatches,
    validation_rows: np.ndarray,
    batch_size: int = 128,
    group: distributed.Group | None = None,
) -> Generator[Progress, None, ErrorEstimates]:
    """Encode every particle with both halves and compare their deformation fields (each rank of
    ``group`` its share; every rank gets the whole result)."""
    group = distributed.single() if group is None else group
    n, n_gauss = batches.n, halves[0].positions.shape[0]
    latent_dim = halves[0].settings.latent_dim
    latents = [np.zeros((n, latent_dim), np.float32) for _ in halves]
    motion = [np.zeros(n, np.float32) for _ in halves]
    particle_error = np.zeros(n, np.float32)
    is_validation = np.zeros(n, bool)
    is_validation[validation_rows] = True
    squares = torch.zeros(n_gauss, dtype=torch.float64, device=halves[0].device)
    counted = 0
    points = halves[0].positions.detach()
    mine = group.shard(np.arange(n))
    infer = [latent_inference(half, batches) for half in halves]
    n_batches = (len(mine) + batch_size - 1) // batch_size
    for step, start in enumerate(range(0, len(mine), batch_size), 1):
        rows = mine[start : start + batch_size]
        batch = batches.get(rows)
        predicted = []
        for k, half in enumerate(halves):
            z = infer[k](batch)
            latents[k][rows] = z.cpu().numpy()
            own = half.deformed_positions(z)
            motion[k][rows] = (own - half.positions).pow(2).sum(-1).mean(-1).sqrt().cpu().numpy()
            predicted.append(half.deformed_positions(z, points))
        distance_sq = (predicted[0] - predicted[1]).pow(2).sum(-1)  # (B, N)
        particle_error[rows] = distance_sq.mean(-1).sqrt().cpu().numpy()
        chosen = torch.as_tensor(
            is_validation[rows] if is_validation.any() else np.ones(len(rows), bool),
            device=distance_sq.device,
        )
        squares += distance_sq[chosen].sum(0).double()
        counted += int(chosen.sum())
        yield Progress("error estimates", step, n_batches)
    if group.size > 1:
        for array in (*latents, *motion, particle_error):
            group.all_reduce_sum_(torch.from_numpy(array))
        counted = int(group.all_reduce_sum_(torch.tensor([float(counted)], dtype=torch.float64)))
        group.all_reduce_sum_(squares)
    gaussian_error = resolved_gaussian_errors(
        points, (squares / max(counted, 1)).float(), batches.pixel_size_angstrom
    ).numpy()
    return ErrorEstimates(
        (latents[0], latents[1]), particle_error, gaussian_error, (motion[0], motion[1])
    )


def resolved_gaussian_errors(
    points: torch.Tensor, mean_squares: torch.Tensor, pixel_size_angstrom: float
) -> torch.Tensor:
    """Per-Gaussian RMS error (N,) Å on the CPU from the halves' mean squared disagreement (N,) at
    ``points`` (N, 3) Å, averaged over neighbouring Gaussians with a kernel as wide as the training
    pixel (:class:`PositionSmoother`, as the reference positions' changes are).

    The images resolve the fields no finer than their pixel, so the two halves' disagreement at one
    Gaussian, beyond that resolution, is noise of that Gaussian's own fit; where the Gaussians are
    denser than the pixels (10,000 on a small protein) it hides the error's spatial pattern."""
    smoother = PositionSmoother(points.detach().cpu(), pixel_size_angstrom)
    averaged = smoother(mean_squares.detach().float().cpu().view(-1, 1))[:, 0]
    return averaged.clamp_min(0.0).sqrt()
