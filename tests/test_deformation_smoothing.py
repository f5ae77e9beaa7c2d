"""The reference positions' smoother: a kernel average over neighbouring Gaussians."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from napari_dynamight.engine.deformation.smoothing import PositionSmoother


def _points(n=4000, seed=0):
    """Random points filling a 40 Å ball, ~1.3 Å apart: denser than a 3 Å kernel."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = 20.0 * rng.random(n) ** (1 / 3)
    return torch.as_tensor(direction * radius[:, None], dtype=torch.float32)


def _exact(points, values, sigma):
    """The kernel average itself, over every pair within 3σ."""
    x = points.double().numpy()
    pairs = cKDTree(x).query_pairs(3 * sigma, output_type="ndarray")
    weights = np.exp(-np.sum((x[pairs[:, 0]] - x[pairs[:, 1]]) ** 2, 1) / (2 * sigma**2))
    v = values.double().numpy()
    total, norm = v.copy(), np.ones(len(x))
    np.add.at(total, pairs[:, 0], weights[:, None] * v[pairs[:, 1]])
    np.add.at(total, pairs[:, 1], weights[:, None] * v[pairs[:, 0]])
    np.add.at(norm, pairs[:, 0], weights)
    np.add.at(norm, pairs[:, 1], weights)
    return total / norm[:, None]


def test_constant_change_passes_unchanged():
    points = _points()
    change = torch.tensor([[0.4, -0.2, 0.1]]).expand(len(points), 3)
    np.testing.assert_allclose(PositionSmoother(points, 3.0)(change), change, atol=1e-5)


def test_rough_changes_are_averaged_away_and_smooth_ones_pass():
    points = _points()
    smoother = PositionSmoother(points, 3.0)
    noise = torch.as_tensor(
        np.random.default_rng(1).normal(size=(len(points), 3)), dtype=torch.float32
    )
    assert (
        smoother(noise).norm(dim=1).pow(2).mean().sqrt()
        < 0.2 * noise.norm(dim=1).pow(2).mean().sqrt()
    )
    # a domain-like motion: a rotation by 2° about an axis through the ball
    angle = np.deg2rad(2.0)
    turn = torch.tensor(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]],
        dtype=torch.float32,
    )
    motion = points @ turn.T - points
    inside = (
        points.norm(dim=1) < 20.0 - 3 * 3.0
    )  # away from the surface, where an average is biased
    error = (smoother(motion) - motion)[inside].norm(dim=1).pow(2).mean().sqrt()
    assert error < 0.05 * motion[inside].norm(dim=1).pow(2).mean().sqrt()


def test_grid_average_matches_the_exact_kernel_average():
    points = _points(2000)
    values = torch.as_tensor(
        np.random.default_rng(2).normal(size=(len(points), 3)), dtype=torch.float32
    )
    exact = _exact(points, values, 3.0)
    got = PositionSmoother(points, 3.0)(values).double().numpy()
    # white noise is the hardest case: the grid adds a little blur of its own
    assert np.sqrt(np.mean((got - exact) ** 2)) < 0.25 * np.sqrt(np.mean(exact**2))
    assert np.corrcoef(got.ravel(), exact.ravel())[0, 1] > 0.98


def test_gaussian_errors_are_resolved_at_the_training_pixel():
    """The per-Gaussian error estimate: a uniform error passes unchanged, and an error that grows
    smoothly across the molecule, seen through per-Gaussian noise (each Gaussian's own fit), ranks
    the Gaussians by the true error far better resolved at the 3 Å pixel than raw."""
    from scipy.stats import spearmanr

    from napari_dynamight.engine.deformation.validation import resolved_gaussian_errors

    points = _points()
    uniform = resolved_gaussian_errors(points, torch.full((len(points),), 4.0), 3.0)
    assert torch.allclose(uniform, torch.full_like(uniform, 2.0), atol=1e-5)
    truth = 0.5 + (points[:, 0] + 20.0) / 20.0  # 0.5 to 2.5 Å across the 40 Å ball
    noise = torch.as_tensor(np.random.default_rng(1).exponential(size=len(points)))
    raw = truth**2 * noise.float()  # mean squares with the truth's expectation
    resolved = resolved_gaussian_errors(points, raw, 3.0).numpy()
    raw_rank = spearmanr(raw.sqrt().numpy(), truth.numpy()).statistic
    resolved_rank = spearmanr(resolved, truth.numpy()).statistic
    assert raw_rank < 0.6 and resolved_rank > 0.9
    assert np.median(np.abs(resolved / truth.numpy() - 1)) < 0.15
