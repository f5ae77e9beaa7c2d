"""The shared statistics: principal components (plain and generalised) and map correlation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from napari_dynamight.engine.explore.embedding import pca
from napari_dynamight.engine.statistics import (
    map_correlation,
    principal_axes,
    principal_components,
    principal_directions,
)


def _line_cloud(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points spread along one known direction (std 5) with small noise (std 0.1) in 4D."""
    rng = np.random.default_rng(seed)
    direction = np.array([-0.6, 0.0, 0.8, 0.0])  # largest loading (0.8) is positive
    points = rng.normal(size=(2000, 1)) * 5.0 * direction + rng.normal(size=(2000, 4)) * 0.1
    return points + np.array([3.0, -2.0, 1.0, 7.0]), direction


def test_principal_direction_mean_and_sign_of_a_known_cloud():
    points, direction = _line_cloud()
    mean, axes, explained = principal_directions(points, 1)
    np.testing.assert_allclose(mean, points.mean(axis=0))
    assert axes.shape == (4, 1)
    np.testing.assert_allclose(axes[:, 0], direction, atol=2e-3)  # sign fixed, not flipped
    # 25 along the line against 4 × 0.01 of noise
    assert explained[0] == pytest.approx(25 / (25 + 0.04), abs=2e-3)


def test_principal_components_match_the_singular_value_decomposition():
    points, _ = _line_cloud(1)
    scores, ratio = principal_components(points)
    centred = points - points.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(ratio, singular**2 / (singular**2).sum(), rtol=1e-9)
    np.testing.assert_allclose(np.abs(scores), np.abs(centred @ vt.T), atol=1e-8)
    assert ratio.sum() == pytest.approx(1.0)


def test_generalised_axes_are_scipys_generalised_eigenvectors():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    covariance, against = a @ a.T, b @ b.T + np.eye(3)
    axes, _ = principal_axes(covariance, against)
    values, vectors = scipy.linalg.eigh(covariance, against)
    expected = vectors[:, np.argsort(values)[::-1][:2]]
    expected /= np.linalg.norm(expected, axis=0)
    np.testing.assert_allclose(np.abs(axes), np.abs(expected), atol=1e-10)


def test_embedding_pca_is_the_shared_pca_and_pads_one_dimension():
    points, _ = _line_cloud(3)
    embedding = pca(points.astype(np.float32))
    scores, ratio = principal_components(points.astype(np.float32), 2)
    np.testing.assert_allclose(embedding.coords, scores, atol=1e-4)
    np.testing.assert_allclose(embedding.explained_variance, ratio)
    one = pca(np.arange(10, dtype=np.float32)[:, None])
    np.testing.assert_allclose(one.coords[:, 0], np.arange(10) - 4.5)  # the axis is +x, not -x
    assert (one.coords[:, 1] == 0).all() and one.explained_variance.tolist() == [1.0]


def test_map_correlation_values_and_mask():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(6, 6, 6))
    assert map_correlation(a, 3 * a - 1) == pytest.approx(1.0)
    assert map_correlation(a, -a) == pytest.approx(-1.0)
    assert map_correlation(a, np.zeros_like(a)) == 0.0
    mask = np.zeros(a.shape, bool)
    mask[:3] = True
    b = np.where(mask, 2 * a, rng.normal(size=a.shape))
    assert map_correlation(a, b, mask) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        map_correlation(a, a[:5])
