"""The Bayes-optimal latent ceiling of a simulated data set.

An oracle that knows everything the simulator used except each particle's frame — every frame's
atomic model, the particle's pose, origin and CTF, and the noise level — can do no better than the
posterior over frames. Each image is ``y = CTF · P(frame k) + n`` with white Gaussian noise of
variance σ², so with a uniform prior over the frames

    log p(k | y) = const + (⟨y, s_k⟩ − ½ ‖s_k‖²) / σ²,     s_k = CTF · P_pose(frame k).

The posterior-mean frame is the oracle's best one-number estimate; |Spearman| of it with the true
frame is the ceiling for any latent ordering at that noise level. The projections ``s_k`` are made
with the simulator's own code (``engine.scene``'s atom Gaussians and ``engine.image_formation``),
so the likelihood is exact, not an approximation.

The inner products are taken in Fourier space (Parseval on the rfft2 half plane), so each of the
frames × particles projections costs one splat and one FFT, and nothing is transformed back.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import logsumexp

from ..data.dataset import ParticleDataset
from ..data.particle_file import read_particles
from ..errors import InputError
from ..fourier import radial_index
from ..image_formation import frame_images, image_spectra, transfer_of
from ..progress import Progress, ProgressGenerator
from ..scene import build_scene
from .metrics import abs_spearman

FRAME_MAP = re.compile(r"frame_(\d+)\.mrc$")


@dataclass
class CeilingResult:
    """The oracle posterior over frames for every particle (rows in STAR order).

    ``log_likelihood`` (N, F) drops the per-particle constant ‖y‖²; ``posterior`` (N, F) is
    normalised per particle over ``frames`` (uniform prior). ``noise_variance`` is the σ² used,
    ``estimated_noise_variance`` the pooled residual of the images against their true frame's
    projection (equal to the simulator's σ² up to sampling error when the model matches), and
    ``signal_power`` the mean square pixel of those noise-free projections.
    """

    frames: np.ndarray
    true_frame: np.ndarray
    half_set: np.ndarray
    log_likelihood: np.ndarray
    posterior: np.ndarray
    posterior_mean_frame: np.ndarray
    map_frame: np.ndarray
    noise_variance: float
    estimated_noise_variance: float
    signal_power: float

    @property
    def spearman(self) -> float:
        """|Spearman| of the posterior-mean frame with the true frame, all particles."""
        return abs_spearman(self.posterior_mean_frame, self.true_frame)

    def spearman_by_half(self) -> dict[int, float]:
        """|Spearman| of the posterior mean with the true frame within each half set."""
        return {
            int(h): abs_spearman(
                self.posterior_mean_frame[self.half_set == h], self.true_frame[self.half_set == h]
            )
            for h in np.unique(self.half_set)
        }

    @property
    def map_accuracy(self) -> float:
        """Fraction of particles whose most probable frame is the true one."""
        return float((self.map_frame == self.true_frame).mean())

    @property
    def mean_absolute_error_frames(self) -> float:
        """Mean |posterior mean − true frame| in frames."""
        return float(np.abs(self.posterior_mean_frame - self.true_frame).mean())

    def summary(self) -> dict:
        """The numbers worth reporting, JSON-ready."""
        return {
            "abs_spearman_posterior_mean": self.spearman,
            "abs_spearman_by_half": {str(h): v for h, v in self.spearman_by_half().items()},
            "map_accuracy": self.map_accuracy,
            "mean_absolute_error_frames": self.mean_absolute_error_frames,
            "mean_posterior_entropy_nats": float(
                -(self.posterior * np.log(np.clip(self.posterior, 1e-300, None))).sum(1).mean()
            ),
            "n_particles": len(self.true_frame),
            "n_frames_evaluated": len(self.frames),
            "frames_evaluated": [int(f) for f in self.frames],
            "noise_variance": self.noise_variance,
            "estimated_noise_variance": self.estimated_noise_variance,
            "signal_power_true_frames": self.signal_power,
        }


def simulated_frames(simulation_directory: str | os.PathLike) -> np.ndarray:
    """The trajectory frames a simulation used, from its ``ground_truth/frame_NNN.mrc`` files."""
    truth = Path(simulation_directory) / "ground_truth"
    found = sorted(
        int(m.group(1)) for p in truth.glob("frame_*.mrc") if (m := FRAME_MAP.search(p.name))
    )
    if not found:
        raise InputError(
            f"{truth}: no frame_NNN.mrc files; give the output folder of napari-dynamight simulate"
        )
    return np.array(found, dtype=np.int64)


def _read_labels(directory: Path, table) -> pd.DataFrame:
    path = directory / "ground_truth" / "labels.csv"
    if not path.is_file():
        raise InputError(f"{path}: not found; give the output folder of napari-dynamight simulate")
    labels = pd.read_csv(path)
    for column in ("frame", "image_name", "random_subset"):
        if column not in labels.columns:
            raise InputError(f"{path}: column {column!r} missing; re-run the simulation")
    if len(labels) != len(table) or not np.array_equal(
        labels["image_name"].to_numpy(), table.particles["rlnImageName"].to_numpy()
    ):
        raise InputError(
            f"{path}: rows do not match {table.star_path} (count or rlnImageName differ); use the "
            "STAR file the simulation wrote"
        )
    return labels


def ctf_batches(dataset, n: int, batch_size: int, box: int, pixel_size: float, envelope=None):
    """``(step, n_chunks, rows, batch, ctf)`` over the first ``n`` particles of an open
    ``ParticleDataset`` in chunks of ``batch_size``, with each chunk's CTFs at ``box`` (times an
    ``envelope``: ``engine.image_formation.transfer_of``)."""
    chunks = range(0, n, int(batch_size))
    for step, start in enumerate(chunks):
        rows = np.arange(start, min(n, start + int(batch_size)))
        batch = dataset.batch(rows)
        yield step, len(chunks), rows, batch, transfer_of(batch.ctf, box, pixel_size, envelope)


def _half_plane_weights(box: int, device) -> torch.Tensor:
    """Parseval weights of an rfft2 half plane: columns 0 and box/2 once, the others twice."""
    weights = torch.full((box // 2 + 1,), 2.0, device=device)
    weights[0] = 1.0
    if box % 2 == 0:
        weights[-1] = 1.0
    return weights / box**2


def _band(box: int, pixel_size: float, resolution_angstrom: float | None, device) -> torch.Tensor:
    """1 on the rfft2 half plane's Fourier shells up to 1/resolution (all without one), else 0."""
    if resolution_angstrom is None:
        return torch.ones((), device=device)
    if not (math.isfinite(resolution_angstrom) and resolution_angstrom > 0):
        raise InputError(f"resolution {resolution_angstrom} Å is invalid: give a positive number")
    shell = box * pixel_size / resolution_angstrom
    return (radial_index((box, box), device=device) <= shell).to(torch.float32)


def bayes_ceiling(
    simulation_directory: str | os.PathLike,
    structure: str | os.PathLike,
    trajectory: str | os.PathLike | None = None,
    *,
    frames=None,
    frame_step: int = 1,
    noise_variance: float | None = None,
    atom_sigma_angstrom: float | None = None,
    include_hydrogens: bool = False,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    resolution_angstrom: float | None = None,
) -> ProgressGenerator[CeilingResult]:
    """Posterior over frames for every particle of a simulation; a generator returning
    CeilingResult.

    ``simulation_directory`` is a ``napari-dynamight simulate`` output; ``structure``,
    ``trajectory``, ``atom_sigma_angstrom`` and ``include_hydrogens`` must be those of the
    simulation (a pure-noise control can be a folder with its own ``particles.star`` and stack and
    the original's ``ground_truth``). The frames evaluated are ``frames`` if given, else the
    simulated ones, then every ``frame_step``-th of them. ``noise_variance`` (σ² per pixel) defaults
    to the pooled residual of the images against their true frame's projection.
    ``resolution_angstrom`` keeps only the spatial frequencies up to 1/resolution in the likelihood:
    the ceiling of a method that sees the images at that resolution, such as a training box's
    Nyquist (default: all).
    """
    directory = Path(simulation_directory)
    table = read_particles(directory / "particles.star")
    labels = _read_labels(directory, table)
    simulated = simulated_frames(directory)
    evaluated = simulated if frames is None else np.unique(np.asarray(frames, dtype=np.int64))
    if int(frame_step) != frame_step or frame_step < 1:
        raise InputError(f"frame step {frame_step} is invalid: give a whole number >= 1")
    evaluated = evaluated[:: int(frame_step)]
    if noise_variance is not None and not (math.isfinite(noise_variance) and noise_variance > 0):
        raise InputError(f"noise variance {noise_variance} is invalid: give a positive number")
    pixel_sizes = np.unique(table.pixel_size_angstrom)
    if len(pixel_sizes) != 1:
        raise InputError(f"{table.star_path}: several pixel sizes; the simulator writes one")
    pixel_size = float(pixel_sizes[0])
    dataset = ParticleDataset(table, normalise=False, device=device)
    box = dataset.box
    scene = build_scene(
        structure,
        trajectory,
        np.union1d(simulated, evaluated),
        box,
        pixel_size,
        atom_sigma_angstrom,
        include_hydrogens,
        device,
    )
    true_frame = labels["frame"].to_numpy().astype(np.int64)
    if not np.isin(true_frame, scene.frames).all():
        raise InputError(f"{directory}: labels.csv names frames without a frame map; re-simulate")
    evaluated_index = np.searchsorted(scene.frames, evaluated)
    weights = _half_plane_weights(box, dataset.device) * _band(
        box, pixel_size, resolution_angstrom, dataset.device
    )

    n = len(table)
    cross = np.zeros((n, len(evaluated)))
    norm = np.zeros((n, len(evaluated)))
    residual_energy = signal_energy = 0.0
    with dataset:
        for step, n_chunks, rows, batch, ctf in ctf_batches(
            dataset, n, batch_size, box, pixel_size
        ):
            images = batch.images
            spectrum = torch.fft.rfft2(images)
            truth = frame_images(
                scene,
                np.searchsorted(scene.frames, true_frame[rows]),
                batch.pose,
                box,
                pixel_size,
                ctf,
            )
            residual_energy += float(((images - truth).double() ** 2).sum())
            signal_energy += float((truth.double() ** 2).sum())
            for column, k in enumerate(evaluated_index):
                model = scene.at_frame(int(k))
                projection = image_spectra(model, batch.pose, box, pixel_size, ctf)
                cross[rows, column] = (
                    ((spectrum.real * projection.real + spectrum.imag * projection.imag) * weights)
                    .sum((1, 2))
                    .double()
                    .cpu()
                    .numpy()
                )
                norm[rows, column] = (
                    (projection.abs() ** 2 * weights).sum((1, 2)).double().cpu().numpy()
                )
            yield Progress("Bayes ceiling", step + 1, n_chunks)
    estimated = residual_energy / (n * box * box)
    sigma2 = estimated if noise_variance is None else float(noise_variance)
    if not sigma2 > 0:
        raise InputError(
            f"{directory}: the images are noise-free (residual variance {estimated:.3g}); give a "
            "noise variance explicitly"
        )
    log_likelihood = (cross - 0.5 * norm) / sigma2
    log_posterior = log_likelihood - logsumexp(log_likelihood, axis=1, keepdims=True)
    posterior = np.exp(log_posterior)
    return CeilingResult(
        frames=evaluated,
        true_frame=true_frame,
        half_set=labels["random_subset"].to_numpy().astype(np.int64),
        log_likelihood=log_likelihood,
        posterior=posterior,
        posterior_mean_frame=posterior @ evaluated.astype(np.float64),
        map_frame=evaluated[np.argmax(log_likelihood, axis=1)],
        noise_variance=sigma2,
        estimated_noise_variance=estimated,
        signal_power=signal_energy / (n * box * box),
    )
