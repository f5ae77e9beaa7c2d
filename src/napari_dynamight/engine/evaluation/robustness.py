"""Ceilings for the robustness benchmark's data variants that the plain Bayes ceiling does not
cover.

- :func:`prior_ceiling` — the oracle posterior of :func:`.ceiling.bayes_ceiling` with the
  simulation's own frame prior (a two-state or weighted frame distribution) instead of a uniform
  one: the Bayes-optimal posterior-mean frame for that prior.
- :func:`domain_ceiling` — the oracle for an independent-domain simulation (a two-dimensional
  motion): the posterior over a grid of composite states (every ``frame_step``-th used frame per
  domain; the exact states when 1), with the simulation's frame prior per domain; its posterior-mean
  frame of each domain is the oracle's estimate of that motion coordinate, and |Spearman| of it
  with the true domain frame is the ceiling per coordinate.

Both use the simulator's own scene of atom Gaussians, so the likelihood is exact.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import logsumexp

from ..data.dataset import ParticleDataset
from ..data.particle_file import read_particles
from ..errors import InputError
from ..gaussians import project_spectrum
from ..progress import Progress, ProgressGenerator
from .ceiling import CeilingResult, _half_plane_weights, ctf_batches
from .metrics import abs_spearman


def _by_half(estimate: np.ndarray, truth: np.ndarray, half: np.ndarray) -> dict[str, float]:
    return {str(h): abs_spearman(estimate[half == h], truth[half == h]) for h in (1, 2)}


def prior_ceiling(result: CeilingResult, probabilities) -> dict:
    """The ceiling with a frame prior: ``probabilities`` (one per evaluated frame, or per simulated
    frame when every simulated frame was evaluated) replaces the uniform prior of ``result``."""
    prior = np.asarray(probabilities, dtype=np.float64).ravel()
    if len(prior) != len(result.frames):
        raise InputError(
            f"frame prior has {len(prior)} values but the ceiling evaluated "
            f"{len(result.frames)} frames"
        )
    with np.errstate(divide="ignore"):
        log_prior = np.log(prior / prior.sum())
    log_posterior = result.log_likelihood + log_prior
    log_posterior -= logsumexp(log_posterior, axis=1, keepdims=True)
    mean = np.exp(log_posterior) @ result.frames.astype(np.float64)
    return {
        "abs_spearman_posterior_mean": abs_spearman(mean, result.true_frame),
        "abs_spearman_by_half": _by_half(mean, result.true_frame, result.half_set),
        "prior": "simulation's frame probabilities",
    }


@dataclass
class DomainCeilingResult:
    """Oracle posterior-mean frame of each domain for every particle (rows in STAR order)."""

    grid_frames: np.ndarray  # frames evaluated per domain
    true_frames: np.ndarray  # (N, 2)
    posterior_mean_frames: np.ndarray  # (N, 2)
    half_set: np.ndarray
    noise_variance: float

    def summary(self) -> dict:
        out = {
            "n_particles": len(self.half_set),
            "n_grid_frames_per_domain": len(self.grid_frames),
            "n_states_evaluated": len(self.grid_frames) ** 2,
            "noise_variance": self.noise_variance,
        }
        for d in (0, 1):
            est, true = self.posterior_mean_frames[:, d], self.true_frames[:, d]
            out[f"domain{d + 1}"] = {
                "abs_spearman_posterior_mean": abs_spearman(est, true),
                "abs_spearman_by_half": _by_half(est, true, self.half_set),
            }
        return out


def domain_ceiling(
    simulation_directory: str | os.PathLike,
    *,
    frame_step: int = 1,
    noise_variance: float | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> ProgressGenerator[DomainCeilingResult]:
    """The oracle over a grid of composite states of an independent-domain simulation.

    Reads ``ground_truth/simulation.json`` (structure, trajectory, frames, domains, core frame, atom
    width, frame probabilities, noise variance) and ``labels.csv``; ``noise_variance`` defaults to
    the simulation's.
    """
    from ..domains import domain_frames
    from ..simulate import image_envelope

    directory = Path(simulation_directory)
    settings_path = directory / "ground_truth" / "simulation.json"
    if not settings_path.is_file():
        raise InputError(
            f"{settings_path}: not found; give the output folder of napari-dynamight simulate"
        )
    settings = json.loads(settings_path.read_text())
    domains = settings.get("independent_domains")
    if not domains:
        raise InputError(f"{directory}: not an independent-domain simulation; use bayes_ceiling")
    if int(frame_step) != frame_step or frame_step < 1:
        raise InputError(f"frame step {frame_step} is invalid: give a whole number >= 1")
    sigma2 = settings["noise_variance"] if noise_variance is None else float(noise_variance)
    if not (sigma2 and math.isfinite(sigma2) and sigma2 > 0):
        raise InputError(
            f"{directory}: noise variance {sigma2} is not positive; give one explicitly"
        )
    table = read_particles(directory / "particles.star")
    labels = pd.read_csv(directory / "ground_truth" / "labels.csv")
    if len(labels) != len(table):
        raise InputError(
            f"{directory}: labels.csv and particles.star differ in length; re-simulate"
        )
    frames_info = domain_frames(
        settings["structure"],
        settings["trajectory"],
        settings["frames"],
        (domains["domain1_residues"], domains["domain2_residues"]),
        domains["core_frame"],
    )
    n_used = len(frames_info.frames)
    grid = np.arange(0, n_used, int(frame_step))
    states = (grid[:, None] * n_used + grid[None, :]).ravel()
    pixel_size = float(settings["pixel_size_angstrom"])
    dataset = ParticleDataset(table, normalise=False, device=device)
    box = dataset.box
    scene = frames_info.scene(
        states, box, pixel_size, settings["atom_sigma_angstrom"], dataset.device
    )
    state_frames = frames_info.state_frames(scene.frames)
    probabilities = np.asarray(settings.get("frame_probabilities") or np.full(n_used, 1 / n_used))
    with np.errstate(divide="ignore"):
        log_p = np.log(probabilities)
    first, second = scene.frames // n_used, scene.frames % n_used
    log_prior = log_p[first] + log_p[second]
    envelope_b = float(settings.get("envelope_bfactor_angstrom2") or 0.0)
    envelope = image_envelope(box, pixel_size, envelope_b, dataset.device) if envelope_b else None
    weights = _half_plane_weights(box, dataset.device)
    n = len(table)
    log_likelihood = np.zeros((n, len(scene.frames)))
    with dataset:
        for step, n_chunks, rows, batch, ctf in ctf_batches(
            dataset, n, batch_size, box, pixel_size
        ):
            rotations, shifts = batch["rotations"], batch["shifts_angstrom"]
            if envelope is not None:
                ctf = ctf * envelope
            spectrum = torch.fft.rfft2(batch["images"])
            for column in range(len(scene.frames)):
                projection = (
                    project_spectrum(scene.at_frame(column), rotations, shifts, box, pixel_size)
                    * ctf
                )
                cross = (
                    (spectrum.real * projection.real + spectrum.imag * projection.imag) * weights
                ).sum((1, 2))
                norm = (projection.abs() ** 2 * weights).sum((1, 2))
                log_likelihood[rows, column] = (
                    ((cross - 0.5 * norm) / sigma2).double().cpu().numpy()
                )
            yield Progress("domain ceiling", step + 1, n_chunks)
    log_posterior = log_likelihood + log_prior
    log_posterior -= logsumexp(log_posterior, axis=1, keepdims=True)
    posterior = np.exp(log_posterior)
    return DomainCeilingResult(
        grid_frames=frames_info.frames[grid],
        true_frames=labels[["domain1_frame", "domain2_frame"]].to_numpy().astype(np.int64),
        posterior_mean_frames=posterior @ state_frames.astype(np.float64),
        half_set=labels["random_subset"].to_numpy().astype(np.int64),
        noise_variance=float(sigma2),
    )
