"""One half set's VAE: its networks, its Gaussians, its optimisers and one epoch of training.

The two halves never share a tensor; the only exchange is the reference alignment done in
``schedule.py``. Validation particles pass through the encoder and the decoder with the decoder's and
the Gaussians' parameters detached, so they train the encoder but not the decoder or the model.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch
from torch.func import functional_call

from ..gaussians import GaussianModel, project_spectrum
from ..progress import Progress
from .batches import ParticleBatches
from .graph import build_graph
from .losses import GradientBalance, NoiseModel, balanced_lambda, data_loss, kl_divergence, regularisation_loss
from .networks import DeformationDecoder, ImageEncoder, reparameterise
from .settings import DeformationSettings

MODES = ("warmup", "consensus", "full")


class HalfSet:
    """The VAE of one half set (``half`` 1 or 2) over its table rows."""

    def __init__(self, half: int, consensus: GaussianModel, train_rows: np.ndarray,
                 validation_rows: np.ndarray, box: int, extent_angstrom: float,
                 settings: DeformationSettings, moving: torch.Tensor, device: torch.device):
        self.half, self.settings, self.device = half, settings, device
        self.train_rows = np.asarray(train_rows, dtype=np.int64)
        self.validation_rows = np.asarray(validation_rows, dtype=np.int64)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed * 1000 + half)
            self.encoder = ImageEncoder(box, settings.latent_dim, settings.encoder_width,
                                        settings.initial_log_variance).to(device)
            self.decoder = DeformationDecoder(settings.latent_dim, extent_angstrom, settings.n_frequencies,
                                              settings.decoder_width, settings.decoder_depth).to(device)
        model = consensus.to(device)
        self.positions = torch.nn.Parameter(model.positions_angstrom.float().clone())
        self.base_amplitudes = model.amplitudes.float().clone()
        self.base_sigmas = model.sigmas_angstrom.float().clone()
        self.log_amplitude_scale = torch.nn.Parameter(torch.zeros((), device=device))
        self.log_sigma_scale = torch.nn.Parameter(torch.zeros((), device=device))
        self.moving = moving.to(device).float()
        self.optimisers = {
            "encoder": torch.optim.Adam(self.encoder.parameters(), lr=settings.learning_rate_encoder),
            "decoder": torch.optim.Adam(self.decoder.parameters(), lr=settings.learning_rate_decoder),
            "gaussians": torch.optim.Adam([
                {"params": [self.positions], "lr": settings.learning_rate_positions_angstrom},
                {"params": [self.log_amplitude_scale, self.log_sigma_scale], "lr": settings.learning_rate_scales},
            ]),
        }
        self.generator = torch.Generator(device=device).manual_seed(settings.seed * 1000 + 100 + half)
        self.noise = NoiseModel(box, device)
        self.lam = 0.0
        self.graph = build_graph(self.positions)

    def model(self, detach: bool = False) -> GaussianModel:
        """The current reference Gaussian model (positions, scaled amplitudes and widths)."""
        scale_a, scale_s = self.log_amplitude_scale.exp(), self.log_sigma_scale.exp()
        model = GaussianModel(self.positions, self.base_amplitudes * scale_a, self.base_sigmas * scale_s)
        return model.detach() if detach else model

    def rebuild_graph(self) -> None:
        self.graph = build_graph(self.positions)

    def decoder_parameters(self) -> list[torch.Tensor]:
        return list(self.decoder.parameters())

    @torch.no_grad()
    def encode(self, encoder_input: torch.Tensor) -> torch.Tensor:
        """Latent means (B, D) of prepared encoder inputs."""
        return self.encoder(encoder_input)[0]

    @torch.no_grad()
    def deformed_positions(self, latents: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Deformed reference (or given) positions (B, N, 3) for latents (B, D)."""
        points = self.positions if positions is None else positions
        return self.decoder.deform(latents, points, self.moving)

    def _predict(self, batch, deformed, model, box, pixel_size):
        spectrum = project_spectrum(model, batch["rotations"], batch["shifts_angstrom"], box, pixel_size,
                                    positions_angstrom=deformed)
        return spectrum * batch["ctf"]

    def epoch(self, mode: str, batches: ParticleBatches, epoch: int,
              total_epochs: int) -> Generator[Progress, None, dict]:
        """Train one epoch in ``mode`` (warmup, consensus or full); returns mean losses and λ."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode}")
        settings, box, pixel = self.settings, batches.box, batches.pixel_size_angstrom
        rows = self.train_rows if mode != "full" else np.concatenate([self.train_rows, self.validation_rows])
        validation = set(self.validation_rows.tolist()) if mode == "full" else set()
        order = rows[torch.randperm(len(rows), generator=self.generator, device=self.device).cpu().numpy()]
        self.rebuild_graph()
        weights, n_freq = self.noise.weights, self.noise.n_frequencies
        sums = {"data": 0.0, "regularisation": 0.0, "kl": 0.0}
        n_train, n_batches = 0, (len(order) + settings.batch_size - 1) // settings.batch_size
        balance, params = GradientBalance(), self.decoder_parameters()
        stride = max(1, n_batches // settings.lambda_batches)  # batches that measure the gradients
        for step, start in enumerate(range(0, len(order), settings.batch_size), 1):
            batch = batches.get(order[start:start + settings.batch_size])
            is_val = torch.as_tensor([r in validation for r in batch["rows"]], device=self.device)
            train = ~is_val
            model = self.model()
            kl = torch.zeros((), device=self.device)
            reg = torch.zeros((), device=self.device)
            if mode == "warmup":
                deformed = self.positions.expand(len(batch["rows"]), -1, -1)
            elif mode == "consensus":
                with torch.no_grad():
                    displacement = self.decoder(self.encode(batch["encoder_input"]), self.positions.detach())
                deformed = self.positions + displacement * self.moving.view(-1, 1)
            else:
                mean, log_var = self.encoder(batch["encoder_input"])
                z = reparameterise(mean, log_var, self.generator)
                kl = kl_divergence(mean, log_var).mean() * settings.kl_weight / n_freq
                deformed = self._deform_split(z, train)
            predicted = self._predict_split(batch, deformed, model, train, box, pixel)
            per_particle = data_loss(predicted, batch["spectra"], weights, n_freq)
            data = per_particle[train].mean() if train.any() else per_particle.sum() * 0.0
            reg_grads = None
            if mode == "full" and train.any():
                reg = regularisation_loss(deformed[train], self.positions, self.graph)
            if mode == "full" and train.any() and (step % stride == 0 or self.lam == 0.0):
                reg_grads = torch.autograd.grad(reg, params, retain_graph=True, allow_unused=True)
                reg_grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, reg_grads, strict=True)]
            loss = per_particle.mean() + kl + self.lam * reg
            for optimiser in self.optimisers.values():
                optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if reg_grads is not None:
                data_grads = [(torch.zeros_like(p) if p.grad is None else p.grad) - self.lam * g
                              for p, g in zip(params, reg_grads, strict=True)]
                balance.add(data_grads, reg_grads)
                if self.lam == 0.0:  # not yet defined: use this epoch's running sums
                    self.lam = balanced_lambda(*balance.norms(), settings.regularisation_ratio, 0.0)
            self.optimisers["gaussians"].step()
            if mode == "full":
                self.optimisers["encoder"].step()
                self.optimisers["decoder"].step()
            count = int(train.sum())
            n_train += count
            sums["data"] += float(data.detach()) * count
            sums["regularisation"] += float(reg.detach()) * count
            sums["kl"] += float(kl.detach()) * count
            yield Progress(f"half {self.half}: epoch {epoch}/{total_epochs} ({mode})", step, n_batches,
                           metrics={"epoch": epoch, "data": float(data.detach()), "lambda": self.lam})
        used = self.lam
        if mode == "full":
            self.lam = balanced_lambda(*balance.norms(), settings.regularisation_ratio, self.lam)
        return {key: value / max(n_train, 1) for key, value in sums.items()} | {"lambda": used}

    def _deform_split(self, z: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
        """Deformed positions; validation rows see detached decoder and Gaussian parameters."""
        deformed = torch.empty(len(z), self.positions.shape[0], 3, device=self.device)
        if train.any():
            deformed[train] = self.decoder.deform(z[train], self.positions, self.moving)
        if (~train).any():
            frozen = {name: p.detach() for name, p in self.decoder.named_parameters()}
            displacement = functional_call(self.decoder, frozen, (z[~train], self.positions.detach()))
            deformed[~train] = self.positions.detach() + displacement * self.moving.view(-1, 1)
        return deformed

    def _predict_split(self, batch, deformed, model, train, box, pixel):
        if train.all():
            return self._predict(batch, deformed, model, box, pixel)
        out = torch.empty_like(batch["spectra"])
        for rows, m in ((train, model), (~train, model.detach())):
            if rows.any():
                sub = {k: batch[k][rows] for k in ("rotations", "shifts_angstrom", "ctf")}
                out[rows] = self._predict(sub, deformed[rows], m, box, pixel)
        return out

    @torch.no_grad()
    def estimate_noise(self, batches: ParticleBatches, rows: np.ndarray, deform: bool) -> None:
        """Re-estimate the noise spectrum from the residuals of ``rows`` (latent means, no sampling)."""
        model = self.model(detach=True)
        for start in range(0, len(rows), self.settings.batch_size):
            batch = batches.get(rows[start:start + self.settings.batch_size])
            if deform:
                deformed = self.deformed_positions(self.encode(batch["encoder_input"]))
            else:
                deformed = self.positions.detach().expand(len(batch["rows"]), -1, -1)
            residual = self._predict(batch, deformed, model, batches.box, batches.pixel_size_angstrom) - batch["spectra"]
            self.noise.accumulate(residual)
        self.noise.update()

    @torch.no_grad()
    def fit_amplitude(self, batches: ParticleBatches, rows: np.ndarray) -> float:
        """Scale the amplitudes by least squares so the consensus projections match the images."""
        model = self.model(detach=True)
        cross = power = 0.0
        for start in range(0, len(rows), self.settings.batch_size):
            batch = batches.get(rows[start:start + self.settings.batch_size])
            deformed = self.positions.detach().expand(len(batch["rows"]), -1, -1)
            predicted = self._predict(batch, deformed, model, batches.box, batches.pixel_size_angstrom)
            cross += float((predicted.conj() * batch["spectra"]).real.sum())
            power += float(predicted.abs().pow(2).sum())
        scale = cross / power if power > 0 else 1.0
        if scale > 0:
            self.base_amplitudes = self.base_amplitudes * scale
        return scale
