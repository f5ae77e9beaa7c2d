"""The training schedule (method.md, "Training schedule").

- Epochs 1..warm-up: only the Gaussian parameters train (no deformation yet).
- Afterwards, in every period of ``consensus_period`` epochs the last ``consensus_epochs`` update
  only the Gaussians (encoder and decoder frozen); the others train everything.
- After every ``reference_update_every``-th epoch that trained the networks, the reference positions
  of half 1 are replaced by its least-deformed prediction, and those of half 2 by the average of the
  ``alignment_predictions`` half-2 predictions with the most Gaussians inside a mask of voxels
  within ``alignment_mask_angstrom`` of half 1's Gaussians: both references then stay in one
  conformation inside the distribution of real ones. This is the only exchange between the halves.
  With several ranks, each half's ranks predict their share of its particles and merge their
  candidates (ties go to the earlier particle, as in one process), and the new references are
  broadcast to every rank.
- Stop when the epoch's data loss has risen ``stop_after_increases`` times (in both halves), or
  after exactly ``epochs`` epochs.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from .. import distributed
from .batches import ParticleBatches
from .settings import DeformationSettings
from .trainer import HalfSet


def epoch_mode(epoch: int, settings: DeformationSettings) -> str:
    """``warmup``, ``consensus`` or ``full`` for 1-based ``epoch``."""
    if epoch <= settings.warmup_epochs:
        return "warmup"
    position = (epoch - settings.warmup_epochs - 1) % settings.consensus_period
    return (
        "consensus" if position >= settings.consensus_period - settings.consensus_epochs else "full"
    )


def full_epochs_until(epoch: int, settings: DeformationSettings) -> int:
    """How many of epochs 1..epoch trained the networks."""
    return sum(epoch_mode(e, settings) == "full" for e in range(1, epoch + 1))


def is_reference_update(epoch: int, settings: DeformationSettings) -> bool:
    """True after every ``reference_update_every``-th network-training epoch."""
    return (
        epoch_mode(epoch, settings) == "full"
        and full_epochs_until(epoch, settings) % settings.reference_update_every == 0
    )


def _batched_predictions(half: HalfSet, batches: ParticleBatches, rows: np.ndarray):
    for start in range(0, len(rows), half.settings.batch_size):
        batch = batches.get(rows[start : start + half.settings.batch_size])
        yield half.deformed_positions(half.encode(batch.encoder_input))


@torch.no_grad()
def least_deformed(half: HalfSet, batches: ParticleBatches, rows: np.ndarray) -> torch.Tensor:
    """The predicted positions (N, 3) with the smallest RMS displacement from the reference."""
    best, best_rms, best_at, seen = None, float("inf"), -1, half.group.share(len(rows)).start
    for deformed in _batched_predictions(half, batches, half.group.shard(rows)):
        rms = (deformed - half.positions).pow(2).sum(-1).mean(-1).sqrt()
        k = int(torch.argmin(rms))
        if float(rms[k]) < best_rms:
            best, best_rms, best_at = deformed[k].clone(), float(rms[k]), seen + k
        seen += len(deformed)
    _, _, best = min(half.group.all_gather_object((best_rms, best_at, best)), key=lambda c: c[:2])
    return best.to(half.device)


def within_distance_mask(
    positions: torch.Tensor, box: int, voxel_size_angstrom: float, radius_angstrom: float
) -> torch.Tensor:
    """Boolean grid [z, y, x] of the voxels within ``radius_angstrom`` of any position."""
    axis = (np.arange(box) - box // 2) * voxel_size_angstrom
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    grid = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    distance, _ = cKDTree(positions.detach().cpu().double().numpy()).query(
        grid, distance_upper_bound=radius_angstrom
    )
    return torch.as_tensor(np.isfinite(distance).reshape(box, box, box), device=positions.device)


def count_inside(
    deformed: torch.Tensor, mask: torch.Tensor, voxel_size_angstrom: float
) -> torch.Tensor:
    """How many Gaussians of each prediction (B, N, 3) fall into the mask's voxels (B,)."""
    box = mask.shape[0]
    index = torch.round(deformed / voxel_size_angstrom).long() + box // 2
    inside_box = ((index >= 0) & (index < box)).all(-1)
    index = index.clamp(0, box - 1)
    hits = mask[index[..., 2], index[..., 1], index[..., 0]] & inside_box
    return hits.sum(-1)


@torch.no_grad()
def aligned_reference(
    half: HalfSet,
    batches: ParticleBatches,
    rows: np.ndarray,
    mask: torch.Tensor,
    voxel_size_angstrom: float,
    n_best: int,
) -> torch.Tensor:
    """Average of the ``n_best`` predictions (N, 3) with the most Gaussians inside ``mask``."""
    kept_counts, kept = None, None
    for deformed in _batched_predictions(half, batches, half.group.shard(rows)):
        counts = count_inside(deformed, mask, voxel_size_angstrom)
        if kept is None:
            kept_counts, kept = counts, deformed
        else:
            kept_counts, kept = torch.cat([kept_counts, counts]), torch.cat([kept, deformed])
        if len(kept) > n_best:
            # stable: earlier particles win ties, so the choice does not depend on the batch size
            order = torch.sort(-kept_counts, stable=True).indices[:n_best]
            kept_counts, kept = kept_counts[order], kept[order]
    if half.group.size > 1:  # each rank's candidates in row order, then the same stable choice
        parts = [p for p in half.group.all_gather_object((kept_counts, kept)) if p[0] is not None]
        kept_counts = torch.cat([p[0] for p in parts]).to(half.device)
        kept = torch.cat([p[1] for p in parts]).to(half.device)
        if len(kept) > n_best:
            kept = kept[torch.sort(-kept_counts, stable=True).indices[:n_best]]
    return kept.mean(0)


def update_references(
    halves: list[HalfSet],
    batches: ParticleBatches,
    settings: DeformationSettings,
    voxel_size_angstrom: float,
    context: distributed.Context | None = None,
) -> None:
    """Half 1: least-deformed prediction; half 2: aligned to half 1 (see the module docstring).
    Every rank of ``context`` calls this; each half's ranks compute its new reference, which then
    reaches every rank (also those that do not train that half, so all copies agree)."""
    world = distributed.single() if context is None else context
    first, second = halves
    with torch.no_grad():
        new = least_deformed(first, batches, first.train_rows) if first.group.contains_me else None
        first.move_reference(_from_leader(world, first, new))
        mask = within_distance_mask(
            first.positions, batches.box, voxel_size_angstrom, settings.alignment_mask_angstrom
        )
        new = (
            aligned_reference(
                second,
                batches,
                second.train_rows,
                mask,
                voxel_size_angstrom,
                settings.alignment_predictions,
            )
            if second.group.contains_me
            else None
        )
        second.move_reference(_from_leader(world, second, new))


def _from_leader(
    world: distributed.Context, half: HalfSet, value: torch.Tensor | None
) -> torch.Tensor:
    """``value`` as computed by the leader of the half's group, on every rank of the world."""
    if world.size == 1:
        return value
    return world.broadcast_object(value, src=half.group.leader).to(half.device)


class StopRule:
    """Counts epochs whose data loss rose above the previous epoch's, per half."""

    def __init__(self, limit: int, n_halves: int = 2):
        self.limit = limit
        self.previous = [float("inf")] * n_halves
        self.increases = [0] * n_halves

    def record(self, half_index: int, data_loss: float) -> None:
        if data_loss > self.previous[half_index]:
            self.increases[half_index] += 1
        self.previous[half_index] = data_loss

    @property
    def should_stop(self) -> bool:
        return all(count >= self.limit for count in self.increases)

    def state_dict(self) -> dict:
        return {"previous": list(self.previous), "increases": list(self.increases)}

    def load_state_dict(self, state: dict) -> None:
        self.previous = [float(v) for v in state["previous"]]
        self.increases = [int(v) for v in state["increases"]]
