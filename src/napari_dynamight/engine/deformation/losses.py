"""Losses of the deformation VAE (method.md, "Losses").

- Data term in Fourier space, weighted by the inverse of the radially averaged residual power
  (the noise spectrum), so each frequency counts as much as its signal-to-noise ratio allows. Per
  particle it is ``Σ_k |G_k − Y_k|² / σ²(|k|)`` over the rfft half plane up to Nyquist; with the KL
  term this is the negative ELBO of a Gaussian noise model. Both are divided by the number of
  frequencies so that a perfect fit to noise gives a data loss of about one.
- Distance preservation on the neighbour graph: ``(|c_i − c_j| − |Γc_i − Γc_j|)²``.
- Repulsion: edges whose deformed length falls below ``τ_ij = min(c_mean, rest length)`` pay
  ``(length − τ_ij)²``. (Taking the minimum with the rest length keeps both regularisers exactly zero
  for rigid motions, even for edges that are already shorter than ``c_mean``.)
- λ: the weight of the regularisers, chosen so that ``λ‖∇reg‖ = ratio · ‖∇data‖`` over the decoder
  parameters (ratio 0.9: the data term weighs slightly more), with the norms of the gradients'
  expectations over the previous epoch (batch noise removed, see :class:`GradientBalance`).
"""

from __future__ import annotations

import torch

from ..fourier import radial_average, radial_index
from .graph import NeighbourGraph


class NoiseModel:
    """The radially averaged residual power σ²(r) of one box, and the data-loss weights 1/σ²."""

    def __init__(self, box: int, device=None):
        self.box = box
        self.radius = radial_index((box, box), rfft=True, device=device)
        self.n_shells = box // 2 + 1
        self.inside = self.radius < self.n_shells
        self.power = torch.ones(self.n_shells, device=device)
        self._sums = torch.zeros(self.n_shells, device=device, dtype=torch.float64)
        self._count = 0

    @property
    def weights(self) -> torch.Tensor:
        """(box, box//2+1) weights: 1/σ² up to Nyquist, 0 in the corners."""
        shells = self.radius.clamp(max=self.n_shells - 1)
        return torch.where(self.inside, 1.0 / self.power[shells], torch.zeros(()))

    @property
    def n_frequencies(self) -> int:
        return int(self.inside.sum())

    def accumulate(self, residual_spectrum: torch.Tensor) -> None:
        """Add the power of residual spectra (B, box, box//2+1) to the running shell averages."""
        power = radial_average(residual_spectrum.detach().abs().pow(2), self.radius, self.n_shells)
        self._sums += power.sum(0).double()
        self._count += residual_spectrum.shape[0]

    def update(self, group=None) -> None:
        """Make the accumulated average the new noise spectrum (kept if nothing was accumulated); with a
        ``distributed.Group`` of several ranks, the average of what all its ranks accumulated."""
        if group is not None and group.size > 1:
            count = torch.tensor([float(self._count)], dtype=torch.float64, device=self._sums.device)
            group.all_reduce_sum_(self._sums)
            self._count = int(group.all_reduce_sum_(count))
        if self._count:
            power = (self._sums / self._count).float()
            floor = power[power > 0].min() if (power > 0).any() else torch.ones(())
            self.power = torch.where(power > 0, power, floor)
        self._sums.zero_()
        self._count = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"power": self.power.detach().cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.power = state["power"].to(self.radius.device)


def data_loss(predicted: torch.Tensor, observed: torch.Tensor, weights: torch.Tensor,
              n_frequencies: int) -> torch.Tensor:
    """Per-particle weighted squared Fourier residual (B,), divided by the number of frequencies."""
    residual = (predicted - observed).abs().pow(2) * weights
    return residual.flatten(1).sum(1) / n_frequencies


def _edge_lengths(positions: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    return (positions[..., edges[:, 0], :] - positions[..., edges[:, 1], :]).norm(dim=-1)


def distance_loss(deformed: torch.Tensor, reference: torch.Tensor, graph: NeighbourGraph) -> torch.Tensor:
    """Mean over particles and edges of the squared change of edge length (Å²)."""
    if len(graph.edges) == 0:
        return deformed.sum() * 0.0
    rest = _edge_lengths(reference.detach(), graph.edges)
    return (_edge_lengths(deformed, graph.edges) - rest).pow(2).mean()


def repulsion_loss(deformed: torch.Tensor, reference: torch.Tensor, graph: NeighbourGraph) -> torch.Tensor:
    """Mean over particles and edges of the squared shortfall below ``min(c_mean, rest length)`` (Å²)."""
    if len(graph.edges) == 0:
        return deformed.sum() * 0.0
    rest = _edge_lengths(reference.detach(), graph.edges)
    floor = rest.clamp(max=graph.mean_neighbour_distance)
    return torch.relu(floor - _edge_lengths(deformed, graph.edges)).pow(2).mean()


def regularisation_loss(deformed: torch.Tensor, reference: torch.Tensor, graph: NeighbourGraph) -> torch.Tensor:
    """Distance preservation plus repulsion."""
    return distance_loss(deformed, reference, graph) + repulsion_loss(deformed, reference, graph)


class GradientBalance:
    """Per-batch data and regulariser gradients over the decoder parameters, summed over an epoch.

    λ uses the norm of the *expected* gradient of each term, estimated without the batch-to-batch
    noise: with n batch gradients g_b, ``|E g|² ≈ (|Σ g_b|² − Σ |g_b|²) / (n (n − 1))``. The data
    gradient of a batch of noisy images is mostly noise, while the regulariser's is consistent; the
    raw norms let the regulariser balance the data term's noise instead of its signal, and training
    collapsed to zero motion in our tests (docs/deformations.md).
    """

    def __init__(self):
        self.sums: dict[str, list[torch.Tensor]] = {}
        self.squares = {"data": 0.0, "regulariser": 0.0}
        self.count = 0

    def add(self, data_grads: list[torch.Tensor], regulariser_grads: list[torch.Tensor]) -> None:
        for key, grads in (("data", data_grads), ("regulariser", regulariser_grads)):
            if key not in self.sums:
                self.sums[key] = [g.detach().clone() for g in grads]
            else:
                for total, g in zip(self.sums[key], grads, strict=True):
                    total += g.detach()
            self.squares[key] += sum(float(g.detach().pow(2).sum()) for g in grads)
        self.count += 1

    def expected_norm(self, key: str) -> float:
        """Noise-debiased norm of the mean batch gradient (0 when not measurable)."""
        n = self.count
        if n < 2:
            return 0.0
        total = sum(float(g.pow(2).sum()) for g in self.sums[key])
        return max(0.0, (total - self.squares[key]) / (n * (n - 1))) ** 0.5

    def norms(self) -> tuple[float, float]:
        """(data, regulariser) expected-gradient norms."""
        return self.expected_norm("data"), self.expected_norm("regulariser")


def balanced_lambda(data_gradient_norm: float, regulariser_gradient_norm: float, ratio: float,
                    previous: float) -> float:
    """λ with ``λ · ‖∇reg‖ = ratio · ‖∇data‖``; the previous λ when either norm is not measurable."""
    if data_gradient_norm <= 0.0 or regulariser_gradient_norm <= 1e-12 * data_gradient_norm:
        return previous
    return ratio * data_gradient_norm / regulariser_gradient_norm


def kl_divergence(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, σ²) ‖ N(0, 1)) per particle (B,)."""
    return 0.5 * (mean.pow(2) + log_variance.exp() - 1.0 - log_variance).sum(-1)
