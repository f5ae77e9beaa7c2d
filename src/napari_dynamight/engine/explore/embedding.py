"""2D embeddings of latent means for the scatter plot, and the way back from 2D to latent space.

PCA is the default: deterministic, instant at 10⁶ particles, and linear, so straight lines in the
plot are straight in latent space. UMAP (``umap-learn``, optional) separates clusters better but is
slow. A clicked 2D point is turned into a latent point as the mean latent of the nearest particles
in the plot, which works for any embedding and stays on the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ..errors import InputError
from ..statistics import principal_components

NEIGHBOURS_FOR_LATENT = 16


@dataclass
class Embedding:
    """``coords`` (N, 2) float32 in plot units for the latents (N, D) it was made from."""

    coords: np.ndarray
    latents: np.ndarray
    method: str
    explained_variance: np.ndarray | None = None

    def __post_init__(self) -> None:
        self._tree = None

    def to_latent(self, point_2d, neighbours: int = NEIGHBOURS_FOR_LATENT) -> np.ndarray:
        """The latent point (D,) under a 2D plot position: mean latent of its nearest particles."""
        if self._tree is None:
            self._tree = cKDTree(self.coords)
        k = min(neighbours, len(self.coords))
        _, index = self._tree.query(np.asarray(point_2d, dtype=np.float64), k=k)
        return self.latents[np.atleast_1d(index)].mean(axis=0).astype(np.float32)

    def axis_labels(self) -> tuple[str, str]:
        """The plot's axis labels: "PC 1 (43%)" with each principal axis's share of the latent
        variance, else "UMAP 1", "UMAP 2"."""
        if self.method != "pca" or self.explained_variance is None:
            return f"{self.method.upper()} 1", f"{self.method.upper()} 2"
        shares = list(self.explained_variance) + [0.0] * (2 - len(self.explained_variance))
        return tuple(f"PC {k + 1} ({100 * share:.0f}%)" for k, share in enumerate(shares[:2]))

    def nearest(self, point_2d) -> int:
        """The particle (row) nearest to a 2D plot position."""
        if self._tree is None:
            self._tree = cKDTree(self.coords)
        return int(self._tree.query(np.asarray(point_2d, dtype=np.float64), k=1)[1])


def _check(latents) -> np.ndarray:
    latents = np.asarray(latents, dtype=np.float32)
    if latents.ndim != 2 or len(latents) < 2:
        raise InputError(
            f"latent means must be an (N, D) array with N ≥ 2, got shape {latents.shape}"
        )
    if not np.isfinite(latents).all():
        raise InputError("latent means hold NaN or Inf; re-run the deformation stage")
    return latents


def pca(latents) -> Embedding:
    """Projection on the two principal axes (signs fixed so each axis's largest loading is
    positive; ``engine.statistics.principal_components``)."""
    latents = _check(latents)
    scores, explained = principal_components(latents, 2)
    coords = np.zeros((len(latents), 2), np.float32)
    coords[:, : scores.shape[1]] = scores
    return Embedding(coords, latents, "pca", explained)


def umap(latents, seed: int = 0) -> Embedding:
    """UMAP embedding; needs the optional package ``umap-learn``."""
    latents = _check(latents)
    try:
        import umap as umap_learn
    except ImportError:
        raise InputError(
            "UMAP needs the package umap-learn (pip install umap-learn); or use the PCA embedding"
        ) from None
    reducer = umap_learn.UMAP(n_components=2, random_state=seed)
    return Embedding(reducer.fit_transform(latents).astype(np.float32), latents, "umap")


def embed(latents, method: str = "pca", seed: int = 0) -> Embedding:
    """The 2D embedding by ``method`` ("pca" or "umap")."""
    if method == "pca":
        return pca(latents)
    if method == "umap":
        return umap(latents, seed)
    raise InputError(f"unknown embedding {method!r}; choose pca or umap")
