"""The neighbour graph: radius 1.5 × the mean distance to the two nearest neighbours."""

import itertools

import numpy as np
import pytest
import torch

from napari_dynamight.engine.deformation.graph import build_graph, mean_two_neighbour_distance


def lattice(n: int, spacing: float) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(n), repeat=3)), dtype=torch.float32) * spacing


def test_cubic_lattice_connects_face_and_edge_neighbours_only():
    points = lattice(4, 3.0)
    graph = build_graph(points)
    assert graph.mean_neighbour_distance == pytest.approx(3.0)
    assert graph.radius_angstrom == pytest.approx(4.5)
    lengths = graph.rest_lengths.numpy()
    # 3 Å (faces) and 3√2 = 4.24 Å (edges) are inside 4.5 Å; 3√3 = 5.2 Å (corners) is not
    assert np.allclose(
        np.unique(np.round(lengths.astype(np.float64), 3)), [3.0, round(3 * np.sqrt(2), 3)]
    )
    n_face = 3 * 4 * 4 * 3  # 3 axes × 16 lines × 3 pairs per line
    n_edge = 6 * 3 * 3 * 4  # 6 diagonal directions × 3×3 squares × 4 layers
    assert len(graph.edges) == n_face + n_edge
    assert bool((graph.edges[:, 0] < graph.edges[:, 1]).all())


def test_radius_follows_the_two_neighbour_mean_on_random_points():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(200, 3)) * 8
    c_mean = mean_two_neighbour_distance(points)
    graph = build_graph(torch.as_tensor(points, dtype=torch.float32))
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    expected = int((np.triu(distances < 1.5 * c_mean, 1)).sum())
    assert len(graph.edges) == expected
    assert graph.rest_lengths.max() < 1.5 * c_mean


def test_tiny_models_have_no_edges():
    assert len(build_graph(torch.zeros(2, 3)).edges) == 0
