"""Paths through latent space between two particles' latent points: straight, or along the data.

"Along the data" is the shortest path on the k-nearest-neighbour graph of the latent means (edge
weight = Euclidean distance), so the path passes through populated regions rather than across gaps.
Both are resampled to evenly spaced points by arc length, for movies and volume series.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

from ..errors import InputError


def resample_polyline(vertices, n_points: int) -> np.ndarray:
    """``n_points`` points evenly spaced by arc length along the polyline through ``vertices``."""
    vertices = np.asarray(vertices, dtype=np.float64)
    if n_points < 2:
        raise InputError(f"a path needs at least 2 points, got {n_points}")
    steps = np.linalg.norm(np.diff(vertices, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    if arc[-1] == 0:
        return np.repeat(vertices[:1], n_points, axis=0).astype(np.float32)
    targets = np.linspace(0.0, arc[-1], n_points)
    return np.column_stack(
        [np.interp(targets, arc, vertices[:, d]) for d in range(vertices.shape[1])]
    ).astype(np.float32)


def straight_path(start, end, n_points: int) -> np.ndarray:
    """``n_points`` latent points on the segment from ``start`` to ``end`` (both included)."""
    return resample_polyline(np.stack([np.asarray(start), np.asarray(end)]), n_points)


def knn_graph(latents: np.ndarray, k: int) -> csr_matrix:
    """Symmetric k-nearest-neighbour graph with Euclidean edge weights."""
    n = len(latents)
    k = min(k, n - 1)
    distances, neighbours = cKDTree(latents).query(latents, k=k + 1)
    rows = np.repeat(np.arange(n), k)
    weights = np.maximum(distances[:, 1:].ravel(), 1e-12)  # zero weights would drop the edge
    graph = csr_matrix((weights, (rows, neighbours[:, 1:].ravel())), shape=(n, n))
    return graph.maximum(graph.T)


def graph_path(latents, start_index: int, end_index: int, n_points: int, k: int = 10):
    """Shortest path on the kNN graph from particle ``start_index`` to ``end_index``.

    Returns ``(points (n_points, D), particle rows along the path)``.
    """
    latents = np.asarray(latents, dtype=np.float64)
    n = len(latents)
    for index in (start_index, end_index):
        if not 0 <= index < n:
            raise InputError(f"particle {index} is outside 0..{n - 1}")
    _, predecessors = dijkstra(knn_graph(latents, k), indices=start_index, return_predecessors=True)
    rows = [end_index]
    while rows[-1] != start_index:
        previous = predecessors[rows[-1]]
        if previous < 0:
            raise InputError(
                f"the two points are not connected in the {k}-nearest-neighbour graph; "
                "use a straight path or more neighbours"
            )
        rows.append(int(previous))
    rows = np.array(rows[::-1])
    return resample_polyline(latents[rows], n_points), rows
