"""Evaluate the decoder on M control points and interpolate its displacements to the N Gaussians.

The decoder's cost is particles × points × width² × depth; with 10,000 Gaussians it is ~95% of a
training step (docs/deformations.md, "Training throughput and memory"). The displacement fields it
learns are smooth (domain motions), so evaluating it at M ≈ 1,000 points spread over the density and
interpolating is nearly free and cuts the cost by N / M.

- Control points: M of the reference Gaussians chosen by farthest-point sampling (deterministic:
  it starts from the Gaussian nearest the centroid), so they cover the density evenly.
- Interpolation: each Gaussian takes its ``NEIGHBOURS`` nearest control points with inverse-square
  distance weights φ, corrected to the weights of a moving-least-squares affine fit,
  ``w = φ ∘ (A ((A φ Aᵀ)⁻¹ e₀))`` with ``A = [1; c_j - x]``: they sum to one and reproduce any
  affine field exactly (a rigid domain motion stays rigid), and a Gaussian at a control point takes
  its value.

The weights are fixed tensors, rebuilt when the reference positions change
(:meth:`ControlPoints.update`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

NEIGHBOURS = 8


def farthest_points(positions: torch.Tensor, count: int) -> torch.Tensor:
    """Indices (count,) of well-spread points among ``positions`` (N, 3), by farthest-point
    sampling."""
    points = positions.detach()
    chosen = torch.empty(count, dtype=torch.long, device=points.device)
    chosen[0] = (points - points.mean(0)).pow(2).sum(1).argmin()
    distance = (points - points[chosen[0]]).pow(2).sum(1)
    for k in range(1, count):
        chosen[k] = distance.argmax()
        distance = torch.minimum(distance, (points - points[chosen[k]]).pow(2).sum(1))
    return chosen


@dataclass
class Interpolation:
    """Fixed weights (N, K) from K control points (indices (N, K)) to each of N points."""

    index: torch.Tensor
    weights: torch.Tensor

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """Values at the control points (B, M, C) -> at the points (B, N, C)."""
        return (values[:, self.index] * self.weights.unsqueeze(-1)).sum(2)


def interpolation(
    centres: torch.Tensor, points: torch.Tensor, neighbours: int = NEIGHBOURS
) -> Interpolation:
    """Affine-exact interpolation weights from ``centres`` (M, 3) to ``points`` (N, 3) (module
    docstring)."""
    centres, points = centres.detach().double(), points.detach().double()
    k = min(neighbours, len(centres))
    distance, index = torch.cdist(points, centres).topk(k, largest=False)
    spacing = distance[:, -1:].clamp(min=1e-6)  # scale of each neighbourhood, for conditioning
    offsets = (centres[index] - points.unsqueeze(1)) / spacing.unsqueeze(-1)  # (N, K, 3)
    phi = 1.0 / ((distance / spacing) ** 2 + 1e-6)
    basis = torch.cat([torch.ones_like(offsets[..., :1]), offsets], -1)  # (N, K, 4)
    moment = torch.einsum("nk,nki,nkj->nij", phi, basis, basis)
    moment = moment + 1e-9 * torch.eye(4, dtype=moment.dtype, device=moment.device)
    unit = torch.zeros(len(points), 4, 1, dtype=moment.dtype, device=moment.device)
    unit[:, 0] = 1.0
    coefficients = torch.linalg.solve(moment, unit)  # (N, 4, 1)
    weights = phi * (basis @ coefficients).squeeze(-1)
    return Interpolation(index, weights.to(torch.float32))


class ControlPoints:
    """``count`` control points of a reference and the interpolation back to it (and to other
    points)."""

    def __init__(self, count: int):
        self.count = int(count)
        self.reference: torch.Tensor | None = None
        self.centres: torch.Tensor | None = None
        self.to_reference: Interpolation | None = None
        self._other: tuple[torch.Tensor, Interpolation] | None = None

    def update(self, reference: torch.Tensor) -> ControlPoints:
        """Rebuild the control points and weights if ``reference`` (N, 3) is not the one they were
        built for; returns self."""
        reference = reference.detach()
        if (
            self.reference is None
            or self.reference.shape != reference.shape
            or not torch.equal(self.reference, reference)
        ):
            self.reference = reference.clone()
            self.centres = reference[
                farthest_points(reference, min(self.count, len(reference)))
            ].clone()
            self.to_reference = interpolation(self.centres, reference)
            self._other = None
        return self

    def displacement(
        self, decoder: Callable, latents: torch.Tensor, points: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``decoder(latents, centres)`` (B, M, 3) interpolated to the reference or to
        ``points``."""
        return self._weights(points)(decoder(latents, self.centres))

    def _weights(self, points: torch.Tensor | None) -> Interpolation:
        if points is None or points is self.reference:
            return self.to_reference
        points = points.detach()
        if (
            self._other is None
            or self._other[0].shape != points.shape
            or not torch.equal(self._other[0], points)
        ):
            self._other = (points.clone(), interpolation(self.centres, points))
        return self._other[1]


def displacement(
    decoder: Callable,
    latents: torch.Tensor,
    reference: torch.Tensor,
    controls: ControlPoints | None,
    points: torch.Tensor | None = None,
) -> torch.Tensor:
    """``decoder``'s displacements (B, N, 3) at ``reference`` (or ``points``): evaluated at every
    point, or at the control points and interpolated when ``controls`` is given."""
    if controls is None:
        return decoder(latents, reference if points is None else points)
    return controls.displacement(decoder, latents, points)
