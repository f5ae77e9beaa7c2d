"""Latent codes from the trained forward model: the posterior mean over candidate latent points.

The encoder is amortised: one network maps any image to a latent mean. At the noise of real particles
(SNR ~0.01) it is the weak link: on the simulated AdK set its codes ordered the frames with |Spearman|
0.55, while the Bayes-optimal estimate that knows the true maps reaches 0.94 (docs/deformations.md).
The decoder, however, is a forward model, and with it we can do what that ceiling does: for each
particle, the likelihood of its image under the projection (own pose, own CTF, the half's noise
spectrum) of the deformed model of each of K candidate latent points, and the posterior mean of the
latent over those candidates. The candidates are K of the half's own encoder codes, drawn with the
seed, so they sample the latent distribution that the half learnt (the prior), or the points that
refinement (``refinement.py``) moved them to; each candidate is decoded once and projected for every
particle, so the cost is particles x K projections.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..gaussians import GaussianModel, project_spectrum_pairs
from .losses import NoiseModel

MEMORY_BUDGET_BYTES = 256 * 1024**2


@dataclass
class Candidates:
    """K latent points (K, D) and their decoded Gaussian positions (K, N, 3) Å."""

    latents: torch.Tensor
    positions: torch.Tensor

    @classmethod
    def draw(cls, codes: torch.Tensor, count: int, seed: int, decode) -> Candidates:
        """``count`` of the rows of ``codes`` (all if fewer), drawn with ``seed``; ``decode(z)``
        gives their deformed positions."""
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(codes), size=min(count, len(codes)), replace=False)
        latents = codes[torch.as_tensor(np.sort(chosen), device=codes.device)]
        return cls(latents, decode(latents))

    def __len__(self) -> int:
        return len(self.latents)


def batch_rows(n_candidates: int, n_gaussians: int, box: int) -> int:
    """Particles per chunk so that the (particles x candidates) positions and spectra fit the budget."""
    per_pair = 4 * (3 * n_gaussians + 4 * box * (box // 2 + 1))
    return max(1, MEMORY_BUDGET_BYTES // max(1, per_pair * n_candidates))


@torch.no_grad()
def negative_log_likelihoods(
    batch: dict,
    candidates: Candidates,
    model: GaussianModel,
    noise: NoiseModel,
    box: int,
    pixel_size_angstrom: float,
) -> torch.Tensor:
    """(B, K): ``Σ_k |CTF·P(model_k) − Y|² / σ²(|k|)`` of each particle's image under each candidate."""
    spectra = (
        project_spectrum_pairs(
            model,
            batch["rotations"],
            batch["shifts_angstrom"],
            box,
            pixel_size_angstrom,
            candidates.positions,
        )
        * batch["ctf"][:, None]
    )
    residual = (spectra - batch["spectra"][:, None]).abs().pow(2) * noise.weights
    return residual.flatten(2).sum(-1)


@torch.no_grad()
def posteriors(
    batch: dict,
    candidates: Candidates,
    model: GaussianModel,
    noise: NoiseModel,
    box: int,
    pixel_size_angstrom: float,
) -> torch.Tensor:
    """(B, K) posterior of each particle of a batch over the candidates (uniform prior), computed in
    chunks of :func:`batch_rows` particles."""
    chunk = batch_rows(len(candidates), candidates.positions.shape[1], box)
    parts = []
    for start in range(0, len(batch["rows"]), chunk):
        part = {key: value[start : start + chunk] for key, value in batch.items()}
        parts.append(
            torch.softmax(
                -negative_log_likelihoods(part, candidates, model, noise, box, pixel_size_angstrom),
                dim=1,
            )
        )
    return torch.cat(parts)


def posterior_mean(
    batch: dict,
    candidates: Candidates,
    model: GaussianModel,
    noise: NoiseModel,
    box: int,
    pixel_size_angstrom: float,
) -> torch.Tensor:
    """Posterior-mean latents (B, D) of a batch, with a uniform prior over the candidates."""
    return (
        posteriors(batch, candidates, model, noise, box, pixel_size_angstrom) @ candidates.latents
    )


def half_candidates(half, batches, batch_size: int = 256) -> Candidates:
    """The half's candidate latent points: the refined ones once refinement (``refinement.py``) has
    run, else ``posterior_candidates`` of its training particles' encoder codes drawn with the seed."""
    if half.candidates is not None:
        return Candidates(half.candidates, half.deformed_positions(half.candidates))
    rows = half.train_rows
    codes = torch.cat(
        [
            half.encode(batches.get(rows[start : start + batch_size])["encoder_input"])
            for start in range(0, len(rows), batch_size)
        ]
    )
    return Candidates.draw(
        codes,
        half.settings.posterior_candidates,
        half.settings.seed * 1000 + half.half,
        half.deformed_positions,
    )


def latent_inference(half, batches) -> Callable[[dict], torch.Tensor]:
    """The function that gives a half set's latents (B, D) for a prepared batch, as its settings ask:
    its encoder's means, or their posterior mean over :func:`half_candidates` (``half`` is a
    :class:`~.trainer.HalfSet`, ``batches`` its :class:`~.batches.ParticleBatches`)."""
    if half.settings.latent_inference == "encoder":
        return lambda batch: half.encode(batch["encoder_input"])
    candidates = half_candidates(half, batches)
    model = half.model(detach=True)
    return lambda batch: posterior_mean(
        batch, candidates, model, half.noise, batches.box, batches.pixel_size_angstrom
    )
