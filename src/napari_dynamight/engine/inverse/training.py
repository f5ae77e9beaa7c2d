"""One half set's inverse network, its optimiser, its training pairs and one epoch of training.

Training pairs come from the finished forward decoder of the same half: for particle i with latent
mean z_i, the deformed Gaussian centres y_ij = D(z_i, c_j) must map back to the reference centres
c_j. The forward positions are computed without gradients, once for all particles when they fit in
memory (``CACHE_BYTES``), else per batch. Non-moving Gaussians are pairs with y = c, so the network
learns the identity there too.

Data parallel (``engine.distributed``; a group of one rank in one process): every rank of the half's
group draws the same batch order and the same random Gaussian subsets and smoothness probes for the
whole batch, takes its contiguous share of the batch, weights its loss by the share's part of the
batch (so the gradients summed over the group are the whole batch's), and the loss sums and the
evaluation sums are added up over the group. With one rank the arithmetic is that of one process.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch

from .. import distributed
from ..deformation.decode import DeformationRun
from ..distributed import part_of_mean
from ..progress import Progress
from .network import build_network
from .settings import InverseSettings

CACHE_BYTES = 1 << 30
FINITE_DIFFERENCE_FRACTION = 1.0 / 32.0  # step of the smoothness term, in units of half the box


def learning_rate(settings: InverseSettings, epoch: int) -> float:
    """Exponential decay from ``learning_rate`` at epoch 1 to
    ``learning_rate × final_learning_rate_ratio`` at the last epoch (depends only on the epoch, so
    resuming needs no scheduler state)."""
    fraction = (epoch - 1) / max(settings.epochs - 1, 1)
    return settings.learning_rate * settings.final_learning_rate_ratio**fraction


class InverseHalf:
    """The inverse network of half set ``half`` trained on ``train_latents`` (n, D) by the ranks of
    ``group`` (default: this process alone); a rank outside the group only holds its state."""

    def __init__(
        self,
        half: int,
        run: DeformationRun,
        train_latents: np.ndarray,
        held_out_latents: np.ndarray,
        settings: InverseSettings,
        device: torch.device,
        group: distributed.Group | None = None,
    ):
        self.half, self.run, self.settings, self.device = half, run, settings, device
        self.group = distributed.single() if group is None else group
        self.extent_angstrom = 0.5 * run.box * run.voxel_size_angstrom
        self.network = build_network(settings, run.latent_dim, self.extent_angstrom, half, device)
        self.optimiser = torch.optim.Adam(self.network.parameters(), lr=settings.learning_rate)
        self.generator = torch.Generator(device=device).manual_seed(
            settings.seed * 1000 + 600 + half
        )
        self.targets = run.reference(half).positions_angstrom.to(device, torch.float32)
        self.train_latents = torch.as_tensor(np.asarray(train_latents, np.float32), device=device)
        self.held_out_latents = torch.as_tensor(
            np.asarray(held_out_latents, np.float32), device=device
        )
        self._cache = self._held_out_cache = None
        size = (len(self.train_latents) + len(self.held_out_latents)) * self.targets.numel() * 4
        if size <= CACHE_BYTES and self.group.contains_me:
            self._cache = self._shared_forward_positions(self.train_latents)
            self._held_out_cache = self._shared_forward_positions(self.held_out_latents)

    @torch.no_grad()
    def forward_positions(self, latents: torch.Tensor) -> torch.Tensor:
        """Deformed Gaussian centres (B, N, 3) Å by this half's forward decoder, in batches."""
        parts = [
            self.run.positions(latents[s : s + self.settings.batch_size], self.half)
            for s in range(0, len(latents), self.settings.batch_size)
        ]
        return torch.cat(parts) if parts else self.targets.new_zeros(0, *self.targets.shape)

    def _shared_forward_positions(self, latents: torch.Tensor) -> torch.Tensor:
        """All of :meth:`forward_positions` on every rank of the group, each rank computing its
        share (the others' rows are zeros before the sum, which adds them exactly)."""
        if self.group.size == 1:
            return self.forward_positions(latents)
        share = self.group.share(len(latents))
        every = self.targets.new_zeros(len(latents), *self.targets.shape)
        every[share] = self.forward_positions(latents[share])
        return self.group.all_reduce_sum_(every)

    def _deformed(self, rows: torch.Tensor) -> torch.Tensor:
        if self._cache is not None:
            return self._cache[rows]
        return self.forward_positions(self.train_latents[rows])

    def _draws(
        self, n_batch: int
    ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
        """The random choices of one whole batch of ``n_batch`` particles, in the generator's order:
        each particle's Gaussian subset (None: all Gaussians) and the smoothness probes' points and
        directions (None: no smoothness term). Drawn whole on every rank, so ranks stay in step."""
        count, n_gaussians = self.settings.gaussians_per_particle, self.targets.shape[0]
        chosen = None
        if 0 < count < n_gaussians:
            chosen = torch.randint(
                n_gaussians, (n_batch, count), generator=self.generator, device=self.device
            )
        if self.settings.smoothness_weight <= 0:
            return chosen, None
        shape = (n_batch, self.settings.smoothness_points, 3)
        points = (
            torch.rand(shape, generator=self.generator, device=self.device) * 2 - 1
        ) * self.extent_angstrom
        direction = torch.randn(shape, generator=self.generator, device=self.device)
        return chosen, (points, direction)

    def _pairs(
        self, rows: torch.Tensor, chosen: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deformed points (B, G, 3) and their consensus targets (B, G, 3), G the subset
        ``chosen``."""
        deformed = self._deformed(rows)
        if chosen is None:
            return deformed, self.targets.expand_as(deformed)
        index = chosen.unsqueeze(-1).expand(-1, -1, 3)
        return torch.gather(deformed, 1, index), self.targets[chosen]

    def _smoothness(
        self, latents: torch.Tensor, points: torch.Tensor, direction: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared finite-difference Jacobian (along the random ``direction``) of the inverse
        displacement at the random ``points`` (B, S, 3) spread over the whole box; dimensionless."""
        n_points = points.shape[1]
        step = FINITE_DIFFERENCE_FRACTION * self.extent_angstrom
        moved = points + step * direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        displacement = self.network(latents, torch.cat([points, moved], dim=1))
        difference = displacement[:, n_points:] - displacement[:, :n_points]
        return difference.pow(2).sum(-1).mean() / step**2

    def epoch(self, epoch: int, total_epochs: int) -> Generator[Progress, None, dict]:
        """One pass over the training particles in a random order; returns the group's mean losses
        (the progress events' running means are this rank's share's)."""
        settings, n = self.settings, len(self.train_latents)
        order = torch.randperm(n, generator=self.generator, device=self.device)
        n_batches = (n + settings.batch_size - 1) // settings.batch_size
        sums, done = {"loss": 0.0, "data": 0.0, "smoothness": 0.0}, 0
        parameters = list(self.network.parameters())
        for group in self.optimiser.param_groups:
            group["lr"] = learning_rate(settings, epoch)
        self.network.train()
        for step, start in enumerate(range(0, n, settings.batch_size), 1):
            whole = order[start : start + settings.batch_size]
            chosen, probes = self._draws(len(whole))
            share = self.group.share(len(whole))
            count = share.stop - share.start
            self.optimiser.zero_grad(set_to_none=True)
            if count:  # fewer particles than ranks: an empty share adds nothing
                rows = whole[share]
                latents = self.train_latents[rows]
                deformed, targets = self._pairs(rows, None if chosen is None else chosen[share])
                data = (self.network.consensus(latents, deformed) - targets).pow(2).sum(-1).mean()
                smooth = (
                    data.new_zeros(())
                    if probes is None
                    else self._smoothness(latents, probes[0][share], probes[1][share])
                )
                loss = data + settings.smoothness_weight * smooth
                part_of_mean(loss, count, len(whole)).backward()
                for key, value in (("loss", loss), ("data", data), ("smoothness", smooth)):
                    sums[key] += float(value.detach()) * count
            distributed.sum_gradients_(self.group, parameters)
            self.optimiser.step()
            done += count
            yield Progress(
                f"half {self.half}: epoch {epoch}/{total_epochs}",
                step,
                n_batches,
                metrics={
                    "epoch": epoch,
                    "loss": sums["loss"] / max(done, 1),
                    "error_angstrom": (sums["data"] / max(done, 1)) ** 0.5,
                },
            )
        if self.group.size > 1:
            totals = self.group.all_reduce_sum_(
                torch.tensor(list(sums.values()), dtype=torch.float64)
            )
            sums = dict(zip(sums, totals.tolist(), strict=True))
        means = {key: value / max(n, 1) for key, value in sums.items()}
        return means | {"error_angstrom": means["data"] ** 0.5}

    @torch.no_grad()
    def evaluate(self, held_out: bool) -> dict:
        """RMS inverse error ‖I(z, D(z, c)) − c‖ and RMS forward displacement ‖D(z, c) − c‖ (Å) over
        all Gaussians of the training or the held-out particles (None for no particles); each rank
        of the group takes its share of the particles and the sums are added up."""
        latents = self.held_out_latents if held_out else self.train_latents
        cache = self._held_out_cache if held_out else self._cache
        if len(latents) == 0:
            return {"error_angstrom": None, "displacement_angstrom": None}
        self.network.eval()
        error = displacement = 0.0
        share = self.group.share(len(latents))
        for start in range(share.start, share.stop, self.settings.batch_size):
            z = latents[start : min(start + self.settings.batch_size, share.stop)]
            deformed = (
                self.run.positions(z, self.half) if cache is None else cache[start : start + len(z)]
            )
            error += float(
                (self.network.consensus(z, deformed) - self.targets).pow(2).sum(-1).sum()
            )
            displacement += float((deformed - self.targets).pow(2).sum(-1).sum())
        if self.group.size > 1:
            sums = self.group.all_reduce_sum_(
                torch.tensor([error, displacement], dtype=torch.float64)
            )
            error, displacement = sums.tolist()
        count = len(latents) * self.targets.shape[0]
        return {
            "error_angstrom": (error / count) ** 0.5,
            "displacement_angstrom": (displacement / count) ** 0.5,
        }

    def state(self) -> dict:
        """The training state as state dicts and plain tensors."""
        return {
            "network": self.network.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state(self, state: dict) -> None:
        self.network.load_state_dict(state["network"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.generator.set_state(state["generator"])
