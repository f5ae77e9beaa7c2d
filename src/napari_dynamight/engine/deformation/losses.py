"""Losses of the deformation VAE (method.md, "Losses").

- Data term in Fourier space, weighted by the inverse of the radially averaged residual power
  (the noise spectrum), so each frequency counts as much as its signal-to-noise ratio allows. Per
  particle it is ``Σ_k |G_k − Y_k|² / σ²(|k|)`` over the rfft half plane up to Nyquist; with the KL
  term this is the negative ELBO of a Gaussian noise model. Both are divided by the number of
  frequencies so that a perfect fit to noise gives a data loss of about one.
- Distance preservation on the neighbour graph: ``(|c_i − c_j| − |Γc_i − Γc_j|)²``.
- Repulsion: edges whose deformed length falls below ``τ_ij = min(c_mean, rest length)`` pay
  ``(length − τ_ij)²``. (Taking the minimum with the rest length keeps both regularisers exactly
  zero for rigid motions, even for edges that are already shorter than ``c_mean``.)
- With the atomic-model prior the distance term acts on the model's bonds instead of the radius
  graph (``bonds``); repulsion stays on the radius graph.
- λ: the weight of the regularisers, chosen so that the regulariser is ``ratio`` times as stiff as
  the data term (ratio 0.9: the data term weighs slightly more). Stiffness is the trace of each
  term's Gauss–Newton Hessian with respect to the Gaussian positions: a property of the images
  (noise spectrum, CTFs, Gaussian amplitudes and widths) and of the graph, not of the current
  deformation, so λ cannot feed back on the motion it regularises. (Balancing gradient norms, as the
  paper does, does: the regulariser's gradient vanishes with the deformation, λ grows, the
  deformation shrinks further, and a half set could freeze with no motion at all.)
"""

from __future__ import annotations

import math

import torch

from ..fourier import radial_average, radial_index
from ..gaussians import GaussianModel
from ..image_formation import weighted_squared_residual
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
        """Make the accumulated average the new noise spectrum (kept if nothing was accumulated);
        with a ``distributed.Group`` of several ranks, the average of what all its ranks
        accumulated."""
        if group is not None and group.size > 1:
            count = torch.tensor(
                [float(self._count)], dtype=torch.float64, device=self._sums.device
            )
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


def data_loss(
    predicted: torch.Tensor, observed: torch.Tensor, weights: torch.Tensor, n_frequencies: int
) -> torch.Tensor:
    """Per-particle weighted squared Fourier residual (B,), divided by the number of frequencies."""
    return weighted_squared_residual(predicted, observed, weights) / n_frequencies


def _edge_lengths(positions: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    return (positions.index_select(-2, edges[:, 0]) - positions.index_select(-2, edges[:, 1])).norm(
        dim=-1
    )


def distance_loss(
    deformed: torch.Tensor, reference: torch.Tensor, graph: NeighbourGraph
) -> torch.Tensor:
    """Mean over particles and edges of the squared change of edge length (Å²)."""
    if len(graph.edges) == 0:
        return deformed.sum() * 0.0
    rest = _edge_lengths(reference.detach(), graph.edges)
    return (_edge_lengths(deformed, graph.edges) - rest).pow(2).mean()


def repulsion_loss(
    deformed: torch.Tensor, reference: torch.Tensor, graph: NeighbourGraph
) -> torch.Tensor:
    """Mean over particles and edges of the squared shortfall below ``min(c_mean, rest length)``
    (Å²)."""
    if len(graph.edges) == 0:
        return deformed.sum() * 0.0
    rest = _edge_lengths(reference.detach(), graph.edges)
    floor = rest.clamp(max=graph.mean_neighbour_distance)
    return torch.relu(floor - _edge_lengths(deformed, graph.edges)).pow(2).mean()


class _EdgeLoss(torch.autograd.Function):
    """Mean over (B, E) of ``(length − rest)² + relu(floor − length)²`` from edge vectors (B, E, 3),
    with the gradient written out (``v · ℓ'(|v|) / |v|``) instead of autograd's chain of (B, E, 3)
    steps."""

    @staticmethod
    def forward(ctx, vectors, rest, floor):
        lengths = vectors.pow(2).sum(-1).sqrt_()
        stretch, shortfall = lengths - rest, torch.relu(floor - lengths)
        ctx.save_for_backward(vectors, lengths, stretch, shortfall)
        return (stretch.pow(2) + shortfall.pow(2)).mean()

    @staticmethod
    def backward(ctx, grad):
        vectors, lengths, stretch, shortfall = ctx.saved_tensors
        scale = (stretch - shortfall) * (2.0 / lengths.numel()) * grad / lengths
        scale = torch.where(lengths > 0, scale, torch.zeros_like(scale))
        return vectors * scale.unsqueeze(-1), None, None


def _regularisation(
    vectors: torch.Tensor, rest: torch.Tensor, graph: NeighbourGraph
) -> torch.Tensor:
    """Distance preservation plus repulsion from deformed edge vectors (B, E, 3) and rest lengths
    (E,)."""
    return _EdgeLoss.apply(vectors, rest, rest.clamp(max=graph.mean_neighbour_distance))


def regularisation_loss(
    deformed: torch.Tensor,
    reference: torch.Tensor,
    graph: NeighbourGraph,
    bonds: NeighbourGraph | None = None,
) -> torch.Tensor:
    """Distance preservation plus repulsion (:func:`distance_loss` + :func:`repulsion_loss`, with
    the deformed edge lengths computed once). With ``bonds`` (the atomic-model prior) distances are
    kept on the bonds and repulsion acts on ``graph``."""
    if bonds is not None:
        return distance_loss(deformed, reference, bonds) + repulsion_loss(
            deformed, reference, graph
        )
    if len(graph.edges) == 0:
        return deformed.sum() * 0.0
    rest = _edge_lengths(reference.detach(), graph.edges)
    first, second = graph.edges[:, 0], graph.edges[:, 1]
    return _regularisation(
        deformed.index_select(-2, first) - deformed.index_select(-2, second), rest, graph
    )


def linear_regularisation_loss(
    coefficients: torch.Tensor, basis: torch.Tensor, reference: torch.Tensor, graph: NeighbourGraph
) -> torch.Tensor:
    """:func:`regularisation_loss` of the deformed positions ``reference + coefficients @ basis``
    (coefficients (B, R), basis (R, N·3) Å, reference (N, 3) Å) without forming them: an edge vector
    is linear in the positions, so the edges' vectors are
    ``rest vectors + coefficients @ (the basis's edge differences)``; the gather runs over R basis
    rows once instead of over B particles, and the rest is one matrix product."""
    if len(graph.edges) == 0:
        return (coefficients.sum() + basis.sum()) * 0.0
    first, second = graph.edges[:, 0], graph.edges[:, 1]
    rank = basis.shape[0]
    fields = basis.view(rank, -1, 3)
    edge_basis = (fields.index_select(1, first) - fields.index_select(1, second)).reshape(rank, -1)
    vectors = reference.index_select(0, first) - reference.index_select(0, second)  # (E, 3)
    rest = vectors.detach().norm(dim=-1)
    return _LinearEdgeLoss.apply(
        coefficients,
        edge_basis,
        vectors.reshape(-1),
        rest,
        rest.clamp(max=graph.mean_neighbour_distance),
    )


class _LinearEdgeLoss(torch.autograd.Function):
    """:class:`_EdgeLoss` of the edge vectors ``vectors + coefficients @ edge_basis`` (B, E·3),
    formed a block of edges at a time (forward, and again in the backward) so that the (B, E, 3)
    vectors never leave the cache: the matrix products stay, the memory traffic of a (B, E, 3) array
    goes."""

    @staticmethod
    def forward(ctx, coefficients, edge_basis, vectors, rest, floor):
        total = coefficients.new_zeros(())
        for block, v in _edge_blocks(coefficients, edge_basis, vectors):
            lengths = v.pow(2).sum(-1).sqrt_()
            total += (
                (lengths - rest[block]).pow(2) + torch.relu(floor[block] - lengths).pow(2)
            ).sum()
        ctx.save_for_backward(coefficients, edge_basis, vectors, rest, floor)
        return total / (len(coefficients) * len(rest))

    @staticmethod
    def backward(ctx, grad):
        coefficients, edge_basis, vectors, rest, floor = ctx.saved_tensors
        grad_coefficients = torch.zeros_like(coefficients)
        grad_basis, grad_vectors = torch.empty_like(edge_basis), torch.empty_like(vectors)
        factor = 2.0 * grad / (len(coefficients) * len(rest))
        for block, v in _edge_blocks(coefficients, edge_basis, vectors):
            lengths = v.pow(2).sum(-1).sqrt_()
            scale = (lengths - rest[block] - torch.relu(floor[block] - lengths)) * factor / lengths
            scale = torch.where(lengths > 0, scale, torch.zeros_like(scale))
            g = (v * scale.unsqueeze(-1)).flatten(1)  # (B, 3e)
            columns = slice(3 * block.start, 3 * block.stop)
            grad_coefficients.addmm_(g, edge_basis[:, columns].t())
            torch.mm(coefficients.t(), g, out=grad_basis[:, columns])
            torch.sum(g, 0, out=grad_vectors[columns])
        return grad_coefficients, grad_basis, grad_vectors, None, None


EDGE_BLOCK = 2**18  # floats of (B, e, 3) edge vectors formed at once by _LinearEdgeLoss


def _edge_blocks(coefficients, edge_basis, vectors):
    """(slice of edges, their vectors (B, e, 3)) for consecutive blocks of edges."""
    n_edges = vectors.numel() // 3
    step = max(1, EDGE_BLOCK // (3 * max(1, len(coefficients))))
    for start in range(0, n_edges, step):
        block = slice(start, min(start + step, n_edges))
        columns = slice(3 * block.start, 3 * block.stop)
        yield (
            block,
            torch.addmm(vectors[columns].view(1, -1), coefficients, edge_basis[:, columns]).view(
                len(coefficients), -1, 3
            ),
        )


def data_stiffness(
    model: GaussianModel,
    moving: torch.Tensor,
    ctf_power: torch.Tensor,
    weights: torch.Tensor,
    n_frequencies: int,
    pixel_size_angstrom: float,
) -> float:
    """Trace (Å⁻²) of the data term's Gauss–Newton Hessian with respect to the moving Gaussians'
    positions, for a particle of mean squared CTF ``ctf_power`` (box, box//2+1).

    Gaussian j projects to ``g_j(k) e^{-2πi k·p_j}``, so moving it by a unit step along an in-plane
    axis changes its spectrum by ``2π k_axis g_j(k)``; summed over the three axes (the pose rotates
    them, the two in-plane ones count) ``Σ_axes |∂G_k/∂c_j|² = 4π²|k|² |g_j(k)|²`` for any pose.
    ``|g_j(k)|`` is the analytic transform of the projected Gaussian (line integral × 2πσ²/p² ×
    ``exp(-2π²σ²|k|²)``), the same scale as ``gaussians.project_spectrum``. The trace is
    ``2 Σ_j Σ_k W_k ⟨CTF²⟩_k 4π²|k|² |g_j(k)|² / n_frequencies``, like the data loss per
    particle."""
    box = ctf_power.shape[0]
    device = ctf_power.device
    fy = torch.fft.fftfreq(box, d=pixel_size_angstrom, device=device).view(-1, 1)
    fx = torch.fft.rfftfreq(box, d=pixel_size_angstrom, device=device).view(1, -1)
    f2 = (fy**2 + fx**2).double()
    sigmas = model.sigmas_angstrom.detach().double()
    amplitudes = model.amplitudes.detach().double()
    peak = (
        amplitudes
        * math.sqrt(2 * math.pi)
        * sigmas
        / pixel_size_angstrom
        * 2
        * math.pi
        * sigmas**2
        / pixel_size_angstrom**2
    )  # |g_j(0)|
    widths, index = torch.unique(sigmas, return_inverse=True)
    power0 = torch.zeros(len(widths), dtype=torch.float64, device=device).index_add_(
        0, index, moving.detach().double() * peak**2
    )
    gaussian_power = (
        power0.view(-1, 1, 1) * torch.exp(-4 * math.pi**2 * widths.view(-1, 1, 1) ** 2 * f2)
    ).sum(0)
    per_frequency = weights.double() * ctf_power.double() * 4 * math.pi**2 * f2 * gaussian_power
    return float(2.0 * per_frequency.sum() / n_frequencies)


def regulariser_stiffness(graph: NeighbourGraph, moving: torch.Tensor) -> float:
    """Trace of the distance term's Gauss–Newton Hessian with respect to the moving Gaussians'
    positions: ``(2/E) Σ_edges (m_i + m_j)`` (each edge length has a unit gradient at each end that
    moves; the term is a mean over the E edges)."""
    if len(graph.edges) == 0:
        return 0.0
    ends = moving.detach().double()[graph.edges].sum()
    return float(2.0 * ends / len(graph.edges))


def stiffness_lambda(data: float, regulariser: float, ratio: float) -> float:
    """λ with ``λ · tr H_reg = ratio · tr H_data``: the regulariser resists an incoherent
    displacement of the Gaussians ``ratio`` times as much as the images do (0 when nothing is
    regularised)."""
    return ratio * data / regulariser if regulariser > 0.0 else 0.0


def kl_divergence(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, σ²) ‖ N(0, 1)) per particle (B,)."""
    return 0.5 * (mean.pow(2) + log_variance.exp() - 1.0 - log_variance).sum(-1)
