"""Latent quantisation for the deformed reconstruction: particles whose codes are nearly equal share
one inverse-field evaluation.

The inverse network costs far more per particle than the backprojection itself (about 1.3 GFLOP for a
33³ grid), so each half set's latent codes are grouped by k-means into ``k`` clusters and every
particle uses its cluster's centre. On the AdK benchmark 32 and 64 clusters per half gave the same maps
(docs/reconstruction.md).
"""

from __future__ import annotations

import numpy as np

#: Default clusters per half set. On the AdK benchmark (1,500 particles per half) 32 and 64 clusters gave
#: the same maps to 0.03 Å at FSC 0.5 (5.90 / 5.57 vs 5.88 / 5.54 Å) and 32 halves the cost (one warp of
#: ~0.26 s per cluster at box 64): bench/bench_improved_map.py --clusters.
DEFAULT_CLUSTERS = 32


def kmeans(latents: np.ndarray, k: int, seed: int = 0, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Centres (k', D) and each row's cluster (N,) of ``latents`` (N, D); k' = min(k, distinct rows).

    k-means++ seeding, then Lloyd iterations; deterministic for a seed. ``k >= N`` keeps every row.
    """
    points = np.asarray(latents, dtype=np.float64)
    unique, inverse = np.unique(points, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if k >= len(unique):
        return unique.astype(np.float32), inverse
    rng = np.random.default_rng(seed)
    centres = [unique[rng.integers(len(unique))]]
    nearest = ((unique - centres[0]) ** 2).sum(1)
    for _ in range(k - 1):
        centres.append(unique[rng.choice(len(unique), p=nearest / nearest.sum())])
        nearest = np.minimum(nearest, ((unique - centres[-1]) ** 2).sum(1))
    centres = np.array(centres)
    for _ in range(iterations):
        labels = _nearest(points, centres)
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, points)
        moved = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres)
        if np.allclose(moved, centres):
            break
        centres = moved
    labels = _nearest(points, centres)
    used, labels = np.unique(labels, return_inverse=True)
    return centres[used].astype(np.float32), labels.reshape(-1)


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    distances = (points**2).sum(1)[:, None] - 2 * points @ centres.T + (centres**2).sum(1)[None]
    return distances.argmin(1)


def quantise(latents: np.ndarray, rows: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` sorted by cluster (so batches share fields) and their codes (len(rows), D): each row's
    cluster centre, or its own code when ``k`` is 0 or at least the number of rows."""
    own = np.asarray(latents, np.float32)[rows]
    if k <= 0 or k >= len(rows):
        return rows, own
    centres, labels = kmeans(own, k, seed)
    order = np.argsort(labels, kind="stable")
    return rows[order], centres[labels[order]]

