"""The neighbour graph that the regularisers act on (method.md, "Losses").

Gaussians closer than ``1.5 · c_mean`` are connected, where ``c_mean`` is the mean over Gaussians of
the mean distance to their two nearest neighbours. It is rebuilt from the reference model every
epoch. With the atomic-model prior the distance term uses the model's bonds instead
(:func:`bond_graph`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

RADIUS_FACTOR = 1.5


@dataclass
class NeighbourGraph:
    """Edges (E, 2) of Gaussian indices (i < j), their rest lengths (E,) Å, and ``c_mean`` Å."""

    edges: torch.Tensor
    rest_lengths: torch.Tensor
    mean_neighbour_distance: float

    @property
    def radius_angstrom(self) -> float:
        return RADIUS_FACTOR * self.mean_neighbour_distance


def mean_two_neighbour_distance(points: np.ndarray) -> float:
    """Mean over points of the mean distance to their two nearest neighbours (Å)."""
    distances, _ = cKDTree(points).query(points, k=3)
    return float(distances[:, 1:].mean())


def bond_graph(
    edges: torch.Tensor, positions_angstrom: torch.Tensor, mean_neighbour_distance: float
) -> NeighbourGraph:
    """The graph of fixed edges (E, 2) (an atomic model's bonds) with rest lengths at the given
    positions."""
    edges = edges.to(positions_angstrom.device)
    points = positions_angstrom.detach()
    rest = (
        (points[edges[:, 0]] - points[edges[:, 1]]).norm(dim=-1)
        if len(edges)
        else points.new_zeros(0)
    )
    return NeighbourGraph(edges, rest, mean_neighbour_distance)


def build_graph(positions_angstrom: torch.Tensor) -> NeighbourGraph:
    """The radius graph of the reference positions (N, 3), on their device."""
    points = positions_angstrom.detach().cpu().double().numpy()
    if len(points) < 3:
        empty = torch.zeros((0, 2), dtype=torch.long, device=positions_angstrom.device)
        return NeighbourGraph(empty, positions_angstrom.new_zeros(0), 0.0)
    c_mean = mean_two_neighbour_distance(points)
    pairs = cKDTree(points).query_pairs(RADIUS_FACTOR * c_mean, output_type="ndarray")
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    edges = torch.as_tensor(pairs, dtype=torch.long, device=positions_angstrom.device)
    rest = np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1)
    return NeighbourGraph(
        edges,
        torch.as_tensor(rest, dtype=positions_angstrom.dtype, device=positions_angstrom.device),
        c_mean,
    )
