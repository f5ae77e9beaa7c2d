"""Latent codes from the trained forward model: the posterior mean over candidate latent points.

The encoder is amortised: one network maps any image to a latent mean. At the noise of real
particles (SNR ~0.01) it is the weak link: on the simulated AdK set its codes ordered the frames
with |Spearman| 0.55, while the Bayes-optimal estimate that knows the true maps reaches 0.94
(docs/deformations.md).
The decoder, however, is a forward model, and with it we can do what that ceiling does: for each
particle, the likelihood of its image under the projection (own pose, own CTF, the half's noise
spectrum) of the deformed model of each of K candidate latent points, and the posterior mean of the
latent over those candidates. The candidates are K of the half's own encoder codes, drawn with the
seed, so they sample the latent distribution that the half learnt (the prior), or the points that
refinement (``refinement.py``) moved them to; each candidate is decoded once. Evaluating every
candidate exactly costs particles x K projections (the default, ``exact_posteriors``); with
``exact_posteriors=False`` a :class:`Screen` looks at all K at a fraction of that cost (a coarse
model at half the training box) and only the likeliest few (:func:`screened_choice`) are projected
exactly; the others keep their screened likelihood, shifted by what the exact ones show the screen
misses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..gaussians import PAIR_POINTS, GaussianModel
from ..image_formation import image_spectra, pair_residuals, weighted_squared_residual
from .batches import TrainingBatch
from .losses import NoiseModel

MEMORY_BUDGET_BYTES = 256 * 1024**2
# the screen (``Screen``, ``screened_choice``): exact likelihoods for the fewest candidates that
# carry SCREEN_MASS of the screened posterior, at least SCREEN_LEAST and at most SCREEN_MOST of them
SCREEN_MASS = 0.999
SCREEN_LEAST = 4
SCREEN_MOST = 24
SCREEN_CELL = 1.0  # the side of the cells that group the Gaussians, in screen pixels
SCREEN_BOX_LEAST = 8  # the smallest screen box (half the training box)


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
    """Particles per chunk so that the (particles x candidates) positions and spectra fit the
    budget."""
    per_pair = 4 * (3 * n_gaussians + 4 * box * (box // 2 + 1))
    return max(1, MEMORY_BUDGET_BYTES // max(1, per_pair * n_candidates))


@dataclass
class Screen:
    """The cheap first look at every candidate: a coarse model projected at half the training box.

    The Gaussians are grouped by the cell of a grid of the screen's pixel size (twice the training
    pixel) that their reference position falls in; a group is one Gaussian at the mass-weighted mean
    of its members' (deformed) positions, with their total mass and one width shared by all groups
    (the members' widths and their spread about the group centre, mass-weighted). Its projections
    are compared with the centred Fourier crop of the images, CTFs and noise weights to ``box``."""

    model: GaussianModel  # the groups at the reference: amplitudes and the shared width
    positions: torch.Tensor  # (K, G, 3) Å: each candidate's group centres
    box: int
    pixel_size_angstrom: float
    scale: float  # a projection at ``box`` is this much smaller than its crop at the training box

    @classmethod
    def of(
        cls, model: GaussianModel, candidates: Candidates, box: int, pixel_size_angstrom: float
    ) -> Screen:
        small = box // 4 * 2
        pixel = pixel_size_angstrom * box / small
        cell = pixel * SCREEN_CELL
        reference = model.positions_angstrom.detach()
        _, group = torch.unique(torch.floor(reference / cell).long(), dim=0, return_inverse=True)
        n_groups = int(group.max()) + 1
        mass = (model.amplitudes * model.sigmas_angstrom.pow(3)).detach()
        total = mass.new_zeros(n_groups).index_add_(0, group, mass)
        fraction = (mass / total[group]).unsqueeze(-1)
        centres = reference.new_zeros(n_groups, 3).index_add_(0, group, reference * fraction)
        spread = (reference - centres[group]).pow(2).sum(-1) / 3 + model.sigmas_angstrom.pow(2)
        width = torch.full_like(total, float((mass * spread).sum() / mass.sum()) ** 0.5)
        positions = candidates.positions.new_zeros(len(candidates), n_groups, 3)
        positions.index_add_(1, group, candidates.positions * fraction)
        coarse = GaussianModel(centres, total / width**3, width)
        return cls(coarse, positions, small, pixel, (box / small) ** 3)

    def crop(self, spectra: torch.Tensor) -> torch.Tensor:
        """The centred Fourier crop of rfft2-layout arrays (..., L, L//2+1) to the screen's box."""
        half = self.box // 2
        return torch.cat([spectra[..., :half, : half + 1], spectra[..., -half:, : half + 1]], -2)

    def negative_log_likelihoods(self, batch: TrainingBatch, noise: NoiseModel) -> torch.Tensor:
        """(B, K): the screen's ``Σ_k |CTF·P(coarse model_k) − Y|² / σ²(|k|)`` over the crop."""
        return pair_residuals(
            self.model,
            batch.pose,
            self.box,
            self.pixel_size_angstrom,
            self.scale * self.crop(batch.ctf),
            self.positions,
            self.crop(batch.spectra),
            self.crop(noise.weights),
        )


def screened_choice(nll: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, SCREEN_MOST) candidate indices by increasing screened ``nll`` (B, K), and which of them
    are kept: the fewest that carry ``SCREEN_MASS`` of the screened posterior, at least
    ``SCREEN_LEAST`` and at most ``SCREEN_MOST`` (ties keep the lower index: deterministic)."""
    most = min(SCREEN_MOST, nll.shape[1])
    order = torch.sort(nll, dim=1, stable=True).indices[:, :most]
    mass = torch.softmax(-nll, dim=1).gather(1, order).cumsum(1)
    count = ((mass < SCREEN_MASS).sum(1) + 1).clamp(min=SCREEN_LEAST, max=most)
    return order, torch.arange(most, device=nll.device) < count.unsqueeze(1)


def _pair_likelihoods(
    batch: TrainingBatch,
    candidates: Candidates,
    model: GaussianModel,
    noise: NoiseModel,
    box: int,
    pixel_size_angstrom: float,
    particle: torch.Tensor,
    candidate: torch.Tensor,
) -> torch.Tensor:
    """The exact negative log-likelihoods of the given (particle, candidate) pairs, (P,), in passes
    of at most ``PAIR_POINTS`` projected centres."""
    step = max(1, PAIR_POINTS // candidates.positions.shape[1])
    parts = []
    for start in range(0, len(particle), step):
        b, k = particle[start : start + step], candidate[start : start + step]
        spectra = image_spectra(
            model, batch.pose.select(b), box, pixel_size_angstrom, None, candidates.positions[k]
        )
        parts.append(
            weighted_squared_residual(spectra, batch.spectra[b], noise.weights, batch.ctf[b])
        )
    return torch.cat(parts) if parts else torch.zeros(0, device=candidates.positions.device)


@torch.no_grad()
def negative_log_likelihoods(
    batch: TrainingBatch,
    candidates: Candidates,
    model: GaussianModel,
    noise: NoiseModel,
    box: int,
    pixel_size_angstrom: float,
) -> torch.Tensor:
    """(B, K): ``Σ_k |CTF·P(model_k) − Y|² / σ²(|k|)`` of each particle's image under each
    candidate."""
    return pair_residuals(
        model,
        batch.pose,
        box,
        pixel_size_angstrom,
        batch.ctf,
        candidates.positions,
        batch.spectra,
        noise.weights,
    )


@torch.no_grad()
def _screened_posteriors(
    batch: TrainingBatch,
    candidates: Candidates,
    model: GaussianModel,
    noise: NoiseModel,
    box: int,
    pixel_size_angstrom: float,
    screen: Screen,
) -> torch.Tensor:
    """(B, K) posterior with the exact likelihoods of the candidates :func:`screened_choice` keeps;
    each other candidate's is its screened one plus the mean difference exact − screened over the
    particle's kept candidates (what the crop leaves out)."""
    screened = screen.negative_log_likelihoods(batch, noise)
    order, kept = screened_choice(screened)
    particle, slot = kept.nonzero(as_tuple=True)
    chosen = order[particle, slot]
    exact = _pair_likelihoods(
        batch, candidates, model, noise, box, pixel_size_angstrom, particle, chosen
    )
    difference = torch.zeros(len(order), device=order.device).index_add_(
        0, particle, exact - screened[particle, chosen]
    )
    nll = screened + (difference / kept.sum(1)).unsqueeze(1)
    nll[particle, chosen] = exact
    return torch.softmax(-nll, dim=1)


@torch.no_grad()
def posteriors(
    batch: TrainingBatch,
    candidates: Candidates,
    model: GaussianModel,
    noise: NoiseModel,
    box: int,
    pixel_size_angstrom: float,
    screen: Screen | None = None,
) -> torch.Tensor:
    """(B, K) posterior of each particle of a batch over the candidates (uniform prior), computed in
    chunks of :func:`batch_rows` particles: every candidate exactly, or with a ``screen`` the
    likeliest exactly and the others from the screen (:func:`_screened_posteriors`)."""
    chunk = batch_rows(len(candidates), candidates.positions.shape[1], box)
    parts = []
    for start in range(0, len(batch), chunk):
        part = batch.select(slice(start, start + chunk))
        if screen is not None:
            parts.append(
                _screened_posteriors(
                    part, candidates, model, noise, box, pixel_size_angstrom, screen
                )
            )
            continue
        parts.append(
            torch.softmax(
                -negative_log_likelihoods(part, candidates, model, noise, box, pixel_size_angstrom),
                dim=1,
            )
        )
    return torch.cat(parts)


def posterior_mean(
    batch: TrainingBatch,
    candidates: Candidates,
    model: GaussianModel,
    noise: NoiseModel,
    box: int,
    pixel_size_angstrom: float,
    screen: Screen | None = None,
) -> torch.Tensor:
    """Posterior-mean latents (B, D) of a batch, with a uniform prior over the candidates."""
    return (
        posteriors(batch, candidates, model, noise, box, pixel_size_angstrom, screen)
        @ candidates.latents
    )


def screen_for(
    exact: bool,
    model: GaussianModel,
    candidates: Candidates,
    box: int,
    pixel_size_angstrom: float,
) -> Screen | None:
    """The screen of ``candidates`` (None: every candidate exactly) as ``exact`` (the setting
    ``exact_posteriors``) asks; exact too when the training box is below ``2 * SCREEN_BOX_LEAST``
    or there are no more candidates than ``SCREEN_MOST``."""
    if exact or box // 4 * 2 < SCREEN_BOX_LEAST or len(candidates) <= SCREEN_MOST:
        return None
    return Screen.of(model, candidates, box, pixel_size_angstrom)


def half_candidates(half, batches, batch_size: int = 256) -> Candidates:
    """The half's candidate latent points: the refined ones once refinement (``refinement.py``) has
    run, else ``posterior_candidates`` of its training particles' encoder codes drawn with the
    seed."""
    if half.candidates is not None:
        return Candidates(half.candidates, half.deformed_positions(half.candidates))
    rows = half.train_rows
    codes = torch.cat(
        [
            half.encode(batches.get(rows[start : start + batch_size]).encoder_input)
            for start in range(0, len(rows), batch_size)
        ]
    )
    return Candidates.draw(
        codes,
        half.settings.posterior_candidates,
        half.settings.seed * 1000 + half.half,
        half.deformed_positions,
    )


def latent_inference(half, batches) -> Callable[[TrainingBatch], torch.Tensor]:
    """The function that gives a half set's latents (B, D) for a prepared batch, as its settings
    ask: its encoder's means, or their posterior mean over :func:`half_candidates` (``half`` is a
    :class:`~.trainer.HalfSet`, ``batches`` its :class:`~.batches.ParticleBatches`)."""
    if half.settings.latent_inference == "encoder":
        return lambda batch: half.encode(batch.encoder_input)
    candidates = half_candidates(half, batches)
    model = half.model(detach=True)
    box, pixel = batches.box, batches.pixel_size_angstrom
    screen = screen_for(half.settings.exact_posteriors, model, candidates, box, pixel)
    return lambda batch: posterior_mean(batch, candidates, model, half.noise, box, pixel, screen)
