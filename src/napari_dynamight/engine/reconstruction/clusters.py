"""Latent quantisation for the deformed reconstruction: particles whose codes are nearly equal share
one inverse-field evaluation.

The inverse network costs far more per particle than the backprojection itself (about 1.3 GFLOP for
a 33³ grid), so each half set's latent codes are grouped by k-means into ``k`` clusters and every
particle uses its cluster's centre. On the AdK benchmark 32 and 64 clusters per half gave the same
maps (docs/reconstruction.md).
"""

from __future__ import annotations

import numpy as np

#: Default clusters per half set. On the AdK benchmark (1,500 particles per half) 32 and 64 clusters
#: gave the same maps to 0.03 Å at FSC 0.5 (5.90 / 5.57 vs 5.88 / 5.54 Å) and 32 halves the cost
#: (one warp of ~0.26 s per cluster at box 64): bench/bench_improved_map.py --clusters.
DEFAULT_CLUSTERS = 32


def kmeans(
    latents: np.ndarray, k: int, seed: int = 0, iterations: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """Centres (k', D) and each row's cluster (N,) of ``latents`` (N, D); k' = min(k, distinct
    rows).

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


def quantise(
    latents: np.ndarray, rows: np.ndarray, k: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` sorted by cluster (so batches share fields) and their codes (len(rows), D): each
    row's cluster centre, or its own code when ``k`` is 0 or at least the number of rows."""
    own = np.asarray(latents, np.float32)[rows]
    if k <= 0 or k >= len(rows):
        return rows, own
    centres, labels = kmeans(own, k, seed)
    order = np.argsort(labels, kind="stable")
    return rows[order], centres[labels[order]]


def field_errors(
    latents: np.ndarray, field, points, counts, sample: int = 256, seed: int = 0
) -> dict[int, float]:
    """RMS error (Å) of the inverse field when every particle uses its cluster centre's code instead
    of its own, for each number of clusters in ``counts``: over up to ``sample`` particles (chosen
    at random) and the ``points`` (P, 3) Å where the field is evaluated (e.g. the reference
    Gaussians).

    ``field(latents (B, D), points (P, 3)) -> (B, P, 3)`` Å, as
    :class:`.deformed.DeformedAccumulator`'s.
    """
    import torch

    own = np.asarray(latents, np.float32)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(own), min(sample, len(own)), replace=False))
    points = torch.as_tensor(points, dtype=torch.float32)

    def evaluate(codes: np.ndarray) -> torch.Tensor:
        return torch.cat(
            [
                field(torch.as_tensor(codes[s : s + 32]), points).cpu()
                for s in range(0, len(codes), 32)
            ]
        )

    exact = evaluate(own[chosen])
    errors = {}
    for count in counts:
        if count <= 0 or count >= len(own):
            errors[int(count)] = 0.0
            continue
        centres, labels = kmeans(own, int(count), seed)
        used, inverse = np.unique(labels[chosen], return_inverse=True)
        approximate = evaluate(centres[used])[torch.as_tensor(inverse.reshape(-1))]
        errors[int(count)] = float(((approximate - exact) ** 2).sum(-1).mean().sqrt())
    return errors


def choose_clusters(
    latents: np.ndarray,
    field,
    points,
    tolerance_angstrom: float,
    counts=(8, 16, 32, 64, 128, 256, 512),
    sample: int = 256,
    seed: int = 0,
) -> tuple[int, dict[int, float]]:
    """The fewest clusters of ``counts`` whose field error (:func:`field_errors`) is at most
    ``tolerance_angstrom`` (the largest if none is), and the errors measured."""
    errors = field_errors(latents, field, points, counts, sample, seed)
    fitting = [count for count in sorted(errors) if errors[count] <= tolerance_angstrom]
    return (fitting[0] if fitting else max(errors)), errors
