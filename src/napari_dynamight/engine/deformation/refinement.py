"""Posterior refinement: EM rounds on K candidate latent points after the VAE epochs.

The VAE's decoder learns from the encoder's codes. At the noise of real particles those codes are
poor (on the simulated AdK set at SNR 0.01 they ordered the frames with |Spearman| 0.55, the
posterior over the same decoder's candidates 0.81, the Bayes-optimal estimate 0.94), so the decoder
learns the motion blurred by the codes' errors. Refinement trains the decoder on better latents, in
rounds:

- E-step: each training particle's posterior over the half's K candidate latent points
  (``inference.py``: the likelihood of its image under the projection of each candidate's deformed
  model, own pose, CTF and noise spectrum);
- M-step: a few epochs in which each particle's latent is a candidate drawn from its posterior (an
  unbiased sample of the expected loss, at the cost of one decoder pass per particle), and both the
  decoder and the candidate points themselves follow the data term plus the regulariser (λ set by
  the stiffness rule of ``losses.py`` at the start of the round; the Gaussians stay as the VAE left
  them).

The first round's candidates are K of the half's encoder codes (drawn with the seed); the refined
candidates then replace the encoder codes as the prior of the final posterior-mean latents.
Validation particles stay out of the M-step, so the error estimates keep their meaning.

Each round is deterministic given the state at its start (its random numbers come from a generator
seeded by the seed, the half and the round, and its optimiser is created afresh), so a run resumes
from the checkpoint written at the end of the previous round. Data parallel like the VAE epochs: the
E-step is sharded over the half's ranks and gathered by a sum; in the M-step every rank draws the
same batch order and the same candidates and takes its share; gradients are summed after
``backward``.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch

from .. import distributed
from ..distributed import part_of_mean
from ..progress import Progress
from .batches import ParticleBatches
from .inference import Candidates, batch_rows, half_candidates, posteriors, screen_for
from .losses import data_loss, linear_regularisation_loss, regularisation_loss
from .trainer import HalfSet


def responsibilities(
    half: HalfSet,
    batches: ParticleBatches,
    rows: np.ndarray,
    latents: torch.Tensor,
    stage: str = "posteriors",
) -> Generator[Progress, None, torch.Tensor]:
    """(len(rows), K) posterior of each row over the candidate latents (uniform prior), in chunks
    that fit the inference memory budget (a progress event each); each rank of the half's group
    computes its share of the rows and the parts are summed."""
    candidates = Candidates(latents, half.deformed_positions(latents))
    model = half.model(detach=True)
    box, pixel = batches.box, batches.pixel_size_angstrom
    screen = screen_for(half.settings.exact_posteriors, model, candidates, box, pixel)
    posterior = torch.zeros(len(rows), len(latents), device=half.device)
    mine = half.group.shard(np.arange(len(rows)))
    chunk = batch_rows(len(latents), candidates.positions.shape[1], batches.box)
    starts = range(0, len(mine), chunk)
    for step, start in enumerate(starts, 1):
        index = mine[start : start + chunk]
        posterior[torch.as_tensor(index, device=half.device)] = posteriors(
            batches.get(rows[index]),
            candidates,
            model,
            half.noise,
            box,
            pixel,
            screen,
        )
        yield Progress(stage, step, len(starts))
    half.group.all_reduce_sum_(posterior)
    return posterior


def refine_round(
    half: HalfSet,
    batches: ParticleBatches,
    round_number: int,
    total_rounds: int,
) -> Generator[Progress, None, dict]:
    """One EM round of ``half`` (creating its candidates in round 1); returns the M-step's mean data
    and regulariser losses, λ and the mean posterior entropy of the E-step."""
    settings = half.settings
    if half.candidates is None:
        half.candidates = half_candidates(half, batches).latents.clone()
    rows = half.train_rows
    stage = f"half {half.half}: refinement round {round_number}/{total_rounds}"
    posterior = yield from responsibilities(
        half, batches, rows, half.candidates, f"{stage}: posteriors"
    )
    entropy = float(-(posterior * posterior.clamp_min(1e-30).log()).sum(1).mean())
    candidates = torch.nn.Parameter(half.candidates.clone())
    decoder = list(half.decoder.parameters())
    optimiser = torch.optim.Adam(
        [
            {"params": decoder, "lr": settings.learning_rate_decoder},
            {"params": [candidates], "lr": settings.refinement_latent_rate},
        ]
    )
    generator = torch.Generator(device=half.device).manual_seed(
        (settings.seed * 1000 + half.half) * 1000 + round_number
    )
    model = half.model(detach=True)
    reference = half.positions.detach()
    sums, n_steps = {"data": 0.0, "regularisation": 0.0}, 0
    half.rebuild_graph()  # of the reference the VAE epochs left; it stays fixed during the round
    half.update_lambda(batches)
    for epoch in range(1, settings.refinement_epochs + 1):
        order = torch.randperm(len(rows), generator=generator, device=half.device)
        for start in range(0, len(rows), settings.batch_size):
            whole = order[start : start + settings.batch_size]
            drawn = torch.multinomial(posterior[whole], 1, generator=generator).squeeze(1)
            share = half.group.share(len(whole))
            optimiser.zero_grad(set_to_none=True)
            data, reg = _share_loss(
                half,
                batches,
                rows[whole[share].cpu().numpy()],
                candidates[drawn[share]],
                model,
                reference,
                len(whole),
            )
            distributed.sum_gradients_(half.group, decoder + [candidates])
            optimiser.step()
            sums["data"] += data
            sums["regularisation"] += reg
            n_steps += 1
        yield Progress(
            stage, epoch, settings.refinement_epochs, metrics={"data": data, "lambda": half.lam}
        )
    half.candidates = candidates.detach()
    if half.group.size > 1:
        totals = half.group.all_reduce_sum_(torch.tensor(list(sums.values()), dtype=torch.float64))
        sums = dict(zip(sums, totals.tolist(), strict=True))
    return {key: value / max(n_steps, 1) for key, value in sums.items()} | {
        "lambda": half.lam,
        "posterior_entropy": entropy,
    }


def _share_loss(
    half: HalfSet,
    batches: ParticleBatches,
    rows: np.ndarray,
    latents: torch.Tensor,
    model,
    reference: torch.Tensor,
    n_whole: int,
) -> tuple[float, float]:
    """Backward of this rank's share of a batch's loss; returns the share's parts of the mean data
    and regulariser losses (summed over the group they are the whole batch's)."""
    if len(rows) == 0:
        return 0.0, 0.0
    batch = batches.get(rows)
    basis = half.linear_basis(reference)
    if basis is None:
        deformed = reference + half.displacement(latents, reference) * half.moving.view(-1, 1)
        regulariser = regularisation_loss(deformed, reference, half.graph, half.bond_graph)
    else:  # the factorised decoder: one matrix product, and the regulariser on the basis's edges
        coefficients = half.decoder.coefficients(latents)
        deformed = torch.addmm(reference.reshape(1, -1), coefficients, basis).view(len(rows), -1, 3)
        regulariser = (
            linear_regularisation_loss(coefficients, basis, reference, half.graph)
            if half.bond_graph is None
            else regularisation_loss(deformed, reference, half.graph, half.bond_graph)
        )
    predicted = half.predict(batch, deformed, model, batches.box, batches.pixel_size_angstrom)
    data = part_of_mean(
        data_loss(predicted, batch.spectra, half.noise.weights, half.noise.n_frequencies).mean(),
        len(rows),
        n_whole,
    )
    reg = part_of_mean(regulariser, len(rows), n_whole)
    (data + half.lam * reg).backward()
    return float(data.detach()), float(reg.detach())
