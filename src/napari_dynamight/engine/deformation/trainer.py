"""One half set's VAE: its networks, its Gaussians, its optimisers and one epoch of training.

The two halves never share a tensor; the only exchange is the reference alignment done in
``schedule.py``. Validation particles pass through the encoder and the decoder with the decoder's
and the Gaussians' parameters detached, so they train the encoder but not the decoder or the model.

Data parallel: a half set trains on a group of ranks (``engine.distributed``; one rank in one
process). Every rank draws the same batch order and reparameterisation noise, takes its contiguous
share of each batch, and weights its loss by its share of the batch, so that the gradients summed
over the group (one explicit all-reduce after ``backward``) are the single-process gradients of the
whole batch. Noise spectra, the amplitude fit and the epoch's loss sums are reduced the same way; λ
is computed from the same rows' CTFs on every rank. In a group of one every collective is skipped
and the arithmetic is the single-process one.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call

from .. import distributed
from ..distributed import part_of_mean
from ..gaussians import GaussianModel
from ..image_formation import image_spectra
from ..progress import Progress
from . import control_points
from .batches import ParticleBatches
from .control_points import ControlPoints
from .graph import bond_graph, build_graph
from .losses import (
    NoiseModel,
    data_loss,
    data_stiffness,
    kl_divergence,
    linear_regularisation_loss,
    regularisation_loss,
    regulariser_stiffness,
    stiffness_lambda,
)
from .networks import ImageEncoder, build_decoder, reparameterise
from .settings import DeformationSettings
from .smoothing import PositionSmoother

MODES = ("warmup", "consensus", "full")


@dataclass(frozen=True)
class AmplitudeFit:
    """The least-squares scale of the consensus projections to the images, and its z-score."""

    scale: float
    z: float

    @classmethod
    def of(cls, cross: float, power: float, image_power: float, count: float, scale: float):
        """From the sums ``Σ Re(G*Y)``, ``Σ|G|²``, ``Σ|Y|²`` over ``count`` Fourier coefficients:
        the residual's variance per coefficient ``σ²`` and ``z = Σ Re(G*Y) / √(Σ|G|² σ²/2)``."""
        residual = max(image_power - cross**2 / power, 0.0) if power > 0 else image_power
        variance = residual / max(count, 1.0)
        spread = math.sqrt(power * variance / 2.0)
        return cls(float(scale), float(cross / spread) if spread > 0 else math.inf)


class HalfSet:
    """The VAE of one half set (``half`` 1 or 2) over its table rows."""

    def __init__(
        self,
        half: int,
        consensus: GaussianModel,
        train_rows: np.ndarray,
        validation_rows: np.ndarray,
        box: int,
        extent_angstrom: float,
        settings: DeformationSettings,
        moving: torch.Tensor,
        device: torch.device,
        group: distributed.Group | None = None,
        bonds: torch.Tensor | None = None,
    ):
        self.half, self.settings, self.device = half, settings, device
        self.group = distributed.single() if group is None else group
        self.train_rows = np.asarray(train_rows, dtype=np.int64)
        self.validation_rows = np.asarray(validation_rows, dtype=np.int64)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed * 1000 + half)
            self.encoder = ImageEncoder(
                box, settings.latent_dim, settings.encoder_width, settings.initial_log_variance
            ).to(device)
            self.decoder = build_decoder(settings, extent_angstrom).to(device)
        model = consensus.to(device)
        self.positions = torch.nn.Parameter(model.positions_angstrom.float().clone())
        self.base_amplitudes = model.amplitudes.float().clone()
        self.base_sigmas = model.sigmas_angstrom.float().clone()
        self.log_amplitude_scale = torch.nn.Parameter(torch.zeros((), device=device))
        self.log_sigma_scale = torch.nn.Parameter(torch.zeros((), device=device))
        self.moving = moving.to(device).float()
        self.optimisers = {
            "encoder": torch.optim.Adam(
                self.encoder.parameters(), lr=settings.learning_rate_encoder
            ),
            "decoder": torch.optim.Adam(
                self.decoder.parameters(), lr=settings.learning_rate_decoder
            ),
            "gaussians": torch.optim.Adam(
                [
                    {"params": [self.positions], "lr": settings.learning_rate_positions_angstrom},
                    {
                        "params": [self.log_amplitude_scale, self.log_sigma_scale],
                        "lr": settings.learning_rate_scales,
                    },
                ]
            ),
        }
        self.generator = torch.Generator(device=device).manual_seed(
            settings.seed * 1000 + 100 + half
        )
        self.noise = NoiseModel(box, device)
        self.lam = 0.0
        self.ctf_power: torch.Tensor | None = None  # mean CTF² of the noise subset, for λ
        self.candidates: torch.Tensor | None = (
            None  # (K, D) latent points once refinement has begun
        )
        self.controls = ControlPoints(settings.control_points) if settings.control_points else None
        # the reference positions change only as smoothly as the training images resolve
        pixel = 2 * extent_angstrom / box  # of the training images, Å
        self.smoother = (
            PositionSmoother(self.positions, settings.reference_smoothing * pixel)
            if settings.reference_smoothing > 0
            else None
        )
        self.bonds = None if bonds is None else bonds.to(device)  # the atomic-model prior's edges
        self.rebuild_graph()

    @torch.no_grad()
    def move_reference(self, target: torch.Tensor, start: torch.Tensor | None = None) -> None:
        """Move the reference positions from ``start`` (default: where they are) towards
        ``target`` by the smoothed change (all of it without a smoother)."""
        start = self.positions.detach().clone() if start is None else start
        change = target - start
        self.positions.copy_(start + (change if self.smoother is None else self.smoother(change)))

    def model(self, detach: bool = False) -> GaussianModel:
        """The current reference Gaussian model (positions, scaled amplitudes and widths)."""
        scale_a, scale_s = self.log_amplitude_scale.exp(), self.log_sigma_scale.exp()
        model = GaussianModel(
            self.positions, self.base_amplitudes * scale_a, self.base_sigmas * scale_s
        )
        return model.detach() if detach else model

    def rebuild_graph(self) -> None:
        """The radius graph (and the bond graph of the atomic-model prior), and the control points'
        weights, of the current reference."""
        self.graph = build_graph(self.positions)
        self.bond_graph = (
            None
            if self.bonds is None
            else bond_graph(self.bonds, self.positions, self.graph.mean_neighbour_distance)
        )
        if self.controls is not None:
            self.controls.update(self.positions)

    def update_lambda(self, batches: ParticleBatches) -> float:
        """Set λ from the current images' and graph's stiffness (``losses.stiffness_lambda``): a
        deterministic function of the state, so a resumed run recomputes the same value."""
        if self.ctf_power is None:
            rows = self.train_rows[: self.settings.noise_subset]
            total = None
            for start in range(0, len(rows), self.settings.batch_size):
                power = (
                    batches.get(rows[start : start + self.settings.batch_size])
                    .ctf.abs()
                    .pow(2)
                    .sum(0)
                )
                total = power if total is None else total + power
            self.ctf_power = total / max(len(rows), 1)
        data = data_stiffness(
            self.model(detach=True),
            self.moving,
            self.ctf_power,
            self.noise.weights,
            self.noise.n_frequencies,
            batches.pixel_size_angstrom,
        )
        distance_graph = self.graph if self.bond_graph is None else self.bond_graph
        self.lam = stiffness_lambda(
            data,
            regulariser_stiffness(distance_graph, self.moving),
            self.settings.regularisation_ratio,
        )
        return self.lam

    @torch.no_grad()
    def encode(self, encoder_input: torch.Tensor) -> torch.Tensor:
        """Latent means (B, D) of prepared encoder inputs."""
        return self.encoder(encoder_input)[0]

    @torch.no_grad()
    def deformed_positions(
        self, latents: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Deformed reference (or given) positions (B, N, 3) for latents (B, D)."""
        if self.controls is not None:
            self.controls.update(self.positions)
        points = self.positions if positions is None else positions
        return points + self.displacement(latents, positions) * self.moving.view(-1, 1)

    def displacement(
        self, latents: torch.Tensor, points: torch.Tensor | None = None, call=None
    ) -> torch.Tensor:
        """``call``'s (default: the decoder's) displacements at the reference (or ``points``),
        evaluated at every point or, with ``settings.control_points``, at the control points and
        interpolated."""
        return control_points.displacement(
            self.decoder if call is None else call, latents, self.positions, self.controls, points
        )

    def predict(self, batch, deformed, model, box, pixel_size):
        """Predicted image spectra (``engine.image_formation``) of the deformed ``model`` under the
        batch's poses and CTFs."""
        return image_spectra(model, batch.pose, box, pixel_size, batch.ctf, deformed)

    def epoch(
        self, mode: str, batches: ParticleBatches, epoch: int, total_epochs: int
    ) -> Generator[Progress, None, dict]:
        """Train one epoch in ``mode`` (warmup, consensus or full); returns mean losses and λ.

        The progress events' ``data`` is this rank's share of the batch; the returned means are the
        group's."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode}")
        settings = self.settings
        rows = (
            self.train_rows
            if mode != "full"
            else np.concatenate([self.train_rows, self.validation_rows])
        )
        validation = set(self.validation_rows.tolist()) if mode == "full" else set()
        order = rows[
            torch.randperm(len(rows), generator=self.generator, device=self.device).cpu().numpy()
        ]
        self.rebuild_graph()
        if mode == "full":
            self.update_lambda(batches)
        sums = {"data": 0.0, "regularisation": 0.0, "kl": 0.0}
        n_train, n_batches = 0, (len(order) + settings.batch_size - 1) // settings.batch_size
        stepping = [name for name in self.optimisers if mode == "full" or name == "gaussians"]
        synced = [
            p for name in stepping for g in self.optimisers[name].param_groups for p in g["params"]
        ]
        for step, start in enumerate(range(0, len(order), settings.batch_size), 1):
            whole = order[start : start + settings.batch_size]
            in_validation = np.array([r in validation for r in whole], dtype=bool)
            n_batch_train = int((~in_validation).sum())
            for optimiser in self.optimisers.values():
                optimiser.zero_grad(set_to_none=True)
            share = self.group.share(len(whole))
            data, reg, kl, count = self._share_step(
                mode,
                batches,
                whole,
                share,
                ~torch.as_tensor(in_validation[share], device=self.device),
                n_batch_train,
            )
            distributed.sum_gradients_(self.group, synced)
            before = self.positions.detach().clone() if self.smoother is not None else None
            for name in stepping:
                self.optimisers[name].step()
            if before is not None:
                self.move_reference(self.positions.detach(), before)
            n_train += count
            sums["data"] += data * count
            sums["regularisation"] += reg * count
            sums["kl"] += part_of_mean(kl, share.stop - share.start, len(whole)) * n_batch_train
            yield Progress(
                f"half {self.half}: epoch {epoch}/{total_epochs} ({mode})",
                step,
                n_batches,
                metrics={"epoch": epoch, "data": data, "lambda": self.lam},
            )
        if self.group.size > 1:
            totals = torch.tensor([*sums.values(), n_train], dtype=torch.float64)
            self.group.all_reduce_sum_(totals)
            sums, n_train = dict(zip(sums, totals[:-1].tolist(), strict=True)), int(totals[-1])
        return {key: value / max(n_train, 1) for key, value in sums.items()} | {"lambda": self.lam}

    def _share_step(self, mode, batches, whole, share, train, n_batch_train):
        """Forward and backward of this rank's ``share`` of the batch ``whole``: the loss is the
        share's part of the whole batch's loss. Returns the share's data, regulariser and KL losses
        and its count of training particles."""
        count = int(train.sum())
        if (
            share.stop == share.start
        ):  # fewer rows than ranks: keep the generator in step, add nothing
            if mode == "full":
                empty = torch.zeros(0, self.settings.latent_dim, device=self.device)
                self._sample(empty, empty, share, len(whole))
            return 0.0, 0.0, 0.0, 0
        batch = batches.get(whole[share])
        weights, n_freq, box, pixel = (
            self.noise.weights,
            self.noise.n_frequencies,
            batches.box,
            batches.pixel_size_angstrom,
        )
        model = self.model()
        kl = torch.zeros((), device=self.device)
        reg = torch.zeros((), device=self.device)
        data = torch.zeros((), device=self.device)
        if mode != "full":  # only training rows
            if mode == "warmup":
                deformed = self.positions.expand(len(batch), -1, -1)
            else:
                with torch.no_grad():
                    displacement = self.displacement(self.encode(batch.encoder_input))
                deformed = self.positions + displacement * self.moving.view(-1, 1)
            per_particle = data_loss(
                self.predict(batch, deformed, model, box, pixel), batch.spectra, weights, n_freq
            )
            data = per_particle.mean()
            total = per_particle.sum()
        else:
            mean, log_var = self.encoder(batch.encoder_input)
            z = self._sample(mean, log_var, share, len(whole))
            kl = kl_divergence(mean, log_var).mean() * self.settings.kl_weight / n_freq
            basis = self.linear_basis()
            total = torch.zeros((), device=self.device)
            # training rows, then validation rows (decoder and Gaussians detached), each as one
            # sub-batch
            for rows, frozen in ((train, False), (~train, True)):
                if not rows.any():
                    continue
                index = None if rows.all() else rows.nonzero().squeeze(1)
                part = batch if index is None else batch.select(index)
                deformed, coefficients = self._deform(
                    z if index is None else z[index], frozen, basis
                )
                per_particle = data_loss(
                    self.predict(part, deformed, model.detach() if frozen else model, box, pixel),
                    part.spectra,
                    weights,
                    n_freq,
                )
                total = total + per_particle.sum()
                if not frozen:
                    data = per_particle.mean()
                    if coefficients is None or self.bond_graph is not None:
                        reg = regularisation_loss(
                            deformed, self.positions, self.graph, self.bond_graph
                        )
                    else:
                        reg = linear_regularisation_loss(
                            coefficients, basis, self.positions, self.graph
                        )
        n_share = share.stop - share.start
        loss = part_of_mean(total / n_share + kl, n_share, len(whole)) + self.lam * part_of_mean(
            reg, count, n_batch_train
        )
        loss.backward()
        return float(data.detach()), float(reg.detach()), float(kl.detach()), count

    def linear_basis(self, points: torch.Tensor | None = None) -> torch.Tensor | None:
        """The factorised decoder's basis at the reference (or ``points``) as a (rank, N·3) matrix,
        zero for the Gaussians that do not move, so that deformed positions are ``points +
        coefficients(z) @ basis``; None for a decoder without one or with control points."""
        if self.controls is not None or not hasattr(self.decoder, "basis_matrix"):
            return None
        return self.decoder.basis_matrix(self.positions if points is None else points, self.moving)

    def _deform(self, z: torch.Tensor, frozen: bool, basis: torch.Tensor | None):
        """Deformed positions (B, N, 3) of latents ``z`` and, with a ``basis``, their coefficients
        (else None). ``frozen``: the decoder's and the Gaussians' parameters detached (validation
        rows)."""
        if basis is None:
            return self._deform_general(z, frozen), None
        reference = self.positions.detach() if frozen else self.positions
        if frozen:
            parameters = {
                name: p.detach() for name, p in self.decoder.coefficients.named_parameters()
            }
            coefficients = functional_call(self.decoder.coefficients, parameters, (z,))
            basis = basis.detach()
        else:
            coefficients = self.decoder.coefficients(z)
        deformed = torch.addmm(reference.reshape(1, -1), coefficients, basis).view(len(z), -1, 3)
        return deformed, coefficients

    def _deform_general(self, z: torch.Tensor, frozen: bool) -> torch.Tensor:
        """Deformed positions through :meth:`displacement` (any decoder, control points or not)."""
        if not frozen:
            return self.positions + self.displacement(z) * self.moving.view(-1, 1)
        parameters = {name: p.detach() for name, p in self.decoder.named_parameters()}
        displacement = self.displacement(
            z,
            call=lambda latents, points: functional_call(
                self.decoder, parameters, (latents, points.detach())
            ),
        )
        return self.positions.detach() + displacement * self.moving.view(-1, 1)

    def _sample(self, mean, log_var, share: slice, n_whole: int) -> torch.Tensor:
        """Reparameterised latents of this share: ε is drawn for the whole batch, so the generator
        advances as in one process and each row gets the ε it would get there."""
        if share.stop - share.start == n_whole:
            return reparameterise(mean, log_var, self.generator)

        def padded(t):
            before = t.new_zeros(share.start, t.shape[1])
            return torch.cat([before, t, t.new_zeros(n_whole - share.stop, t.shape[1])])

        return reparameterise(padded(mean), padded(log_var), self.generator)[share]

    @torch.no_grad()
    def estimate_noise(self, batches: ParticleBatches, rows: np.ndarray, deform: bool) -> None:
        """Re-estimate the noise spectrum from the residuals of ``rows`` (latent means, no
        sampling); each rank of the group takes its share of the rows and the power sums are added
        up."""
        model = self.model(detach=True)
        rows = self.group.shard(rows)
        for start in range(0, len(rows), self.settings.batch_size):
            batch = batches.get(rows[start : start + self.settings.batch_size])
            if deform:
                deformed = self.deformed_positions(self.encode(batch.encoder_input))
            else:
                deformed = self.positions.detach().expand(len(batch), -1, -1)
            residual = (
                self.predict(batch, deformed, model, batches.box, batches.pixel_size_angstrom)
                - batch.spectra
            )
            self.noise.accumulate(residual)
        self.noise.update(self.group)

    @torch.no_grad()
    def fit_amplitude(self, batches: ParticleBatches, rows: np.ndarray) -> AmplitudeFit:
        """Scale the amplitudes by least squares so the consensus projections match the images.

        Returns the scale and its significance: the scale over its standard error under the residual
        noise. On images that hold no trace of the map this is a standard normal number; on real
        particles it grows as √(particles × pixels × SNR) (hundreds on any data set worth
        training on), so a small one means that the map and the images do not belong together."""
        model = self.model(detach=True)
        cross = power = image_power = count = 0.0
        rows = self.group.shard(rows)
        for start in range(0, len(rows), self.settings.batch_size):
            batch = batches.get(rows[start : start + self.settings.batch_size])
            deformed = self.positions.detach().expand(len(batch), -1, -1)
            predicted = self.predict(
                batch, deformed, model, batches.box, batches.pixel_size_angstrom
            )
            cross += float((predicted.conj() * batch.spectra).real.sum())
            power += float(predicted.abs().pow(2).sum())
            image_power += float(batch.spectra.abs().pow(2).sum())
            count += batch.spectra.numel()
        if self.group.size > 1:
            cross, power, image_power, count = self.group.all_reduce_sum_(
                torch.tensor([cross, power, image_power, count], dtype=torch.float64)
            ).tolist()
        scale = cross / power if power > 0 else 1.0
        if scale > 0:
            self.base_amplitudes = self.base_amplitudes * scale
        return AmplitudeFit.of(cross, power, image_power, count, scale)
