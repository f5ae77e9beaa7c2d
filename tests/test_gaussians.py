"""The Gaussian model's rendering and projection against the continuous model they stand for."""

import math

import numpy as np
import pytest
import torch

from napari_dynamight.engine.gaussians import (
    GaussianModel,
    normalised_cross_correlation,
    project,
    render_volume,
)
from napari_dynamight.engine.geometry import euler_to_matrix, random_euler_angles


def _model(n=80, sigma=2.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return GaussianModel(
        torch.randn(n, 3, generator=generator) * 7,
        torch.rand(n, generator=generator) + 0.5,
        torch.full((n,), sigma),
    )


def _direct_volume(model, box, voxel):
    axis = (torch.arange(box, dtype=torch.float64) - box // 2) * voxel
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    grid = torch.stack([x, y, z], -1)
    d2 = ((grid[..., None, :] - model.positions_angstrom.double()) ** 2).sum(-1)
    return (
        model.amplitudes.double() * torch.exp(-d2 / (2 * model.sigmas_angstrom.double() ** 2))
    ).sum(-1)


def test_render_matches_direct_evaluation():
    model = _model(sigma=3.0)
    rendered = render_volume(model, 40, 1.5).double()
    direct = _direct_volume(model, 40, 1.5)
    assert ((rendered - direct).norm() / direct.norm()).item() < 0.01


def test_render_preserves_mass_exactly():
    model = GaussianModel(
        torch.tensor([[1.2, -0.7, 2.1]]), torch.tensor([2.0]), torch.tensor([2.0])
    )
    total = render_volume(model, 48, 1.5).sum().item() * 1.5**3
    assert math.isclose(total, 2.0 * (2 * math.pi * 4.0) ** 1.5, rel_tol=1e-4)


def test_projection_is_the_sum_along_the_beam():
    model = _model()
    volume = render_volume(model, 48, 1.5)
    rotations = euler_to_matrix(torch.zeros(1, 3))
    image = project(model, rotations, torch.zeros(1, 2), 48, 1.5)[0]
    assert torch.allclose(image, volume.sum(0), atol=1e-3 * volume.sum(0).abs().max())


def test_origin_moves_the_particle_towards_smaller_x():
    model = GaussianModel(torch.zeros(1, 3), torch.ones(1), torch.ones(1) * 1.5)
    image = project(model, euler_to_matrix(torch.zeros(1, 3)), torch.tensor([[8.0, 0.0]]), 32, 1.6)[
        0
    ]
    row, column = np.unravel_index(int(image.argmax()), image.shape)
    assert (row, column) == (16, 16 - 5)


def test_width_classes_and_per_image_positions():
    model = _model(n=40)
    model.sigmas_angstrom[:20] = 1.5
    rotations = euler_to_matrix(
        torch.tensor(random_euler_angles(3, np.random.default_rng(0)), dtype=torch.float32)
    )
    shifts = torch.randn(3, 2)
    together = project(model, rotations, shifts, 32, 2.0)
    halves = [
        GaussianModel(model.positions_angstrom[s], model.amplitudes[s], model.sigmas_angstrom[s])
        for s in (slice(0, 20), slice(20, 40))
    ]
    separately = sum(project(h, rotations, shifts, 32, 2.0) for h in halves)
    assert torch.allclose(together, separately, atol=1e-4)
    per_image = model.positions_angstrom.expand(3, -1, -1)
    assert torch.allclose(
        project(model, rotations, shifts, 32, 2.0, positions_angstrom=per_image),
        together,
        atol=1e-5,
    )


def test_projection_is_differentiable_in_positions_and_amplitudes():
    model = _model(n=10)
    positions = model.positions_angstrom.clone().requires_grad_(True)
    amplitudes = model.amplitudes.clone().requires_grad_(True)
    moved = GaussianModel(positions, amplitudes, model.sigmas_angstrom)
    target = project(
        _model(n=10, seed=1), euler_to_matrix(torch.zeros(1, 3)), torch.zeros(1, 2), 32, 2.0
    )
    loss = (
        (project(moved, euler_to_matrix(torch.zeros(1, 3)), torch.zeros(1, 2), 32, 2.0) - target)
        .pow(2)
        .sum()
    )
    loss.backward()
    assert positions.grad.abs().sum() > 0 and amplitudes.grad.abs().sum() > 0
    # the x/y gradient matches a finite difference
    step = 1e-2
    with torch.no_grad():
        shifted = positions.detach().clone()
        shifted[0, 0] += step
        loss2 = (
            (
                project(
                    GaussianModel(shifted, amplitudes.detach(), model.sigmas_angstrom),
                    euler_to_matrix(torch.zeros(1, 3)),
                    torch.zeros(1, 2),
                    32,
                    2.0,
                )
                - target
            )
            .pow(2)
            .sum()
        )
    assert positions.grad[0, 0].item() == pytest.approx((loss2 - loss).item() / step, rel=0.05)


def test_ncc_is_one_for_scaled_copies():
    a = torch.randn(3, 8, 8)
    assert np.allclose(normalised_cross_correlation(a, 2 * a + 1), 1.0)
