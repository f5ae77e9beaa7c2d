"""Statistics that several engine packages share: principal components and map correlation.

One implementation of each, in a module that imports no other engine module, so the evaluation
metrics, the latent-space explorer, the atomic-model checks and the command line all use it
without an import between sibling packages.

Principal axes are the eigenvectors of a covariance matrix, ordered by decreasing variance, with
the sign of each fixed so that its largest loading is positive (the same data give the same axes).
"""

from __future__ import annotations

import numpy as np

__all__ = ["map_correlation", "principal_axes", "principal_components", "principal_directions"]


def principal_axes(
    covariance: np.ndarray, against: np.ndarray | None = None, n_axes: int | None = 2
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_axes`` leading eigenvectors (D, k) of a covariance matrix (D, D) and the fraction
    of the total variance each explains; ``n_axes=None`` gives all D.

    With ``against`` (D, D), a positive definite covariance of unwanted variation, the axes are the
    unit vectors with the largest variance relative to it (generalised eigenvectors; not
    orthogonal).
    """
    covariance = np.asarray(covariance, dtype=np.float64)
    if against is None:
        values, vectors = np.linalg.eigh(covariance)
    else:  # through the Cholesky factor L of ``against``: eigenvectors of L⁻¹ C L⁻ᵀ, mapped back
        inverse = np.linalg.inv(np.linalg.cholesky(against))
        values, vectors = np.linalg.eigh(inverse @ covariance @ inverse.T)
        vectors = inverse.T @ vectors
        vectors /= np.linalg.norm(vectors, axis=0)
    k = len(values) if n_axes is None else min(int(n_axes), len(values))
    order = np.argsort(values)[::-1][:k]
    axes = vectors[:, order]
    axes *= np.sign(axes[np.argmax(np.abs(axes), axis=0), np.arange(k)])
    explained = np.einsum("ik,ij,jk->k", axes, covariance, axes)
    return axes, explained / max(np.trace(covariance), 1e-30)


def principal_directions(
    points, n_components: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (D,), principal axes (D, k) and explained variance ratios (k,) of points (N, D).

    ``n_components=None`` gives all D axes; a 1D array is N points of one dimension.
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    mean = x.mean(axis=0)
    centred = x - mean
    covariance = centred.T @ centred / max(len(x) - 1, 1)
    axes, explained = principal_axes(covariance, n_axes=n_components)
    return mean, axes, explained


def principal_components(points, n_components: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N, k) of points (N, D) on their principal axes, and explained variance ratios (k,).

    Components are ordered by decreasing variance; ``n_components=None`` gives all D.
    """
    mean, axes, explained = principal_directions(points, n_components)
    x = np.asarray(points, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    return (x - mean) @ axes, explained


def map_correlation(a, b, mask=None) -> float:
    """Pearson correlation of two maps over all voxels (or the voxels where ``mask`` is true)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} and {b.shape}")
    if mask is not None:
        keep = np.asarray(mask, dtype=bool)
        a, b = a[keep], b[keep]
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denominator = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denominator) if denominator > 0 else 0.0
