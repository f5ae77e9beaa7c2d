"""The Gaussian model's rendering and projection against the continuous model they stand for."""

import math

import numpy as np
import pytest
import torch

from napari_dynamight.engine.gaussians import (
    GaussianModel,
    normalised_cross_correlation,
    project,
    project_spectrum,
    project_spectrum_pairs,
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


@pytest.mark.parametrize("sigmas, pair_points", [((1.2,), None), ((1.2, 2.5, 4.0), 250)])
def test_pair_projections_equal_the_projections_of_each_pair(sigmas, pair_points, monkeypatch):
    """Every pose with every set of centres (the E-step's pairs, one product and one splat per
    pass) gives each pair's own projection: narrow Gaussians (a finer grid), several width classes,
    centres beyond the box's edge, and passes of a few candidates of one pose."""
    if pair_points is not None:
        monkeypatch.setattr("napari_dynamight.engine.gaussians.PAIR_POINTS", pair_points)
    generator = torch.Generator().manual_seed(3)
    n, k, b, box, pixel = 120, 5, 4, 24, 2.0
    widths = torch.tensor(sigmas)[torch.randint(len(sigmas), (n,), generator=generator)]
    model = GaussianModel(
        torch.randn(n, 3, generator=generator) * 9, torch.rand(n, generator=generator), widths
    )
    rotations = euler_to_matrix(
        torch.tensor(random_euler_angles(b, np.random.default_rng(3)), dtype=torch.float32)
    )
    shifts = torch.randn(b, 2, generator=generator) * 4
    positions = model.positions_angstrom + torch.randn(k, n, 3, generator=generator)
    positions[:, :4] = torch.tensor([[23.0, 0, 0], [-24.5, 3, 0], [0, 25.0, 2], [30, -30, 0]])
    pairs = project_spectrum_pairs(model, rotations, shifts, box, pixel, positions)
    single = project_spectrum(
        model,
        rotations.repeat_interleave(k, 0),
        shifts.repeat_interleave(k, 0),
        box,
        pixel,
        positions.repeat(b, 1, 1),
    ).view(b, k, box, box // 2 + 1)
    scale = float(single.abs().max())
    assert float((pairs - single).abs().max()) < 1e-5 * scale
    # reduced pass by pass (the E-step's residuals), each pass told its poses and candidates
    seen = torch.zeros(b, k)

    def power(spectra, poses, candidates):
        seen[poses, candidates] += 1
        return spectra.abs().pow(2).sum((-2, -1))

    reduced = project_spectrum_pairs(model, rotations, shifts, box, pixel, positions, reduce=power)
    assert torch.equal(seen, torch.ones(b, k))
    assert torch.allclose(reduced, single.abs().pow(2).sum((-2, -1)), rtol=1e-5)


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


def _band_limited_spectrum(coords, weights, sigma, box, pixel):
    """The exact rfftn of the continuous Gaussians at grid coordinates ``coords`` (N, d), cut at
    the grid's Nyquist: Σ_n w_n (2πσ²/p²)^(d/2) exp(-2π²σ²|f|²) exp(-2πi k·c_n / box); float64."""
    dim = coords.shape[1]
    full = torch.fft.fftfreq(box, dtype=torch.float64) * box
    half = torch.fft.rfftfreq(box, dtype=torch.float64) * box
    grids = torch.meshgrid(*([full] * (dim - 1) + [half]), indexing="ij")
    k = torch.stack([g.reshape(-1) for g in grids], -1)  # (K, d) cycles per box
    phase = torch.exp(-2j * math.pi * (k @ coords.double().T) / box)  # (K, N)
    envelope = torch.exp(-2 * math.pi**2 * sigma**2 * (k**2).sum(-1) / (box * pixel) ** 2)
    norm = (2 * math.pi * sigma**2 / pixel**2) ** (dim / 2)
    spectrum = norm * envelope * (phase @ weights.double().to(torch.complex128))
    return spectrum.reshape(grids[0].shape)


def _relative_error(spectrum, exact):
    return float((spectrum.to(torch.complex128) - exact).abs().norm() / exact.abs().norm())


@pytest.mark.parametrize("plain", [False, True])
def test_narrow_gaussians_project_as_the_band_limited_model(monkeypatch, plain):
    """σ = 0.28 pixel (10,000 Gaussians on a small protein in a Fourier-cropped training box): the
    oversampled splat gives the band-limited projection within 1%; the plain splat's aliasing
    (what the check guards against) is over ten times larger."""
    from napari_dynamight.engine import gaussians

    if plain:
        monkeypatch.setattr(gaussians, "ALIAS_WIDTH", 0.0)
    box, pixel, sigma = 24, 3.0, 0.85
    model = _model(n=400, sigma=sigma, seed=4)
    rotations = euler_to_matrix(torch.tensor(random_euler_angles(2, np.random.default_rng(5))))
    shifts = torch.tensor([[0.4, -1.1], [2.3, 0.7]])
    spectra = gaussians.project_spectrum(model, rotations.float(), shifts, box, pixel)
    line = model.amplitudes * math.sqrt(2 * math.pi) * sigma / pixel
    for b in range(2):
        xy = (model.positions_angstrom.double() @ rotations[b].T)[:, :2] - shifts[b].double()
        exact = _band_limited_spectrum(xy.flip(-1) / pixel + box // 2, line, sigma, box, pixel)
        error = _relative_error(spectra[b], exact)
        assert (error > 0.1) if plain else (error < 0.01)


@pytest.mark.parametrize("plain", [False, True])
def test_narrow_gaussians_render_as_the_band_limited_model(monkeypatch, plain):
    from napari_dynamight.engine import gaussians

    if plain:
        monkeypatch.setattr(gaussians, "ALIAS_WIDTH", 0.0)
    box, voxel, sigma = 20, 1.5, 0.8
    model = _model(n=300, sigma=sigma, seed=6)
    model.positions_angstrom *= 0.6
    volume = gaussians.render_volume(model, box, voxel).double()
    coords = model.positions_angstrom.flip(-1) / voxel + box // 2
    exact = _band_limited_spectrum(coords, model.amplitudes, sigma, box, voxel)
    # a real map cannot hold the exact model's non-Hermitian Nyquist planes: compare inside them
    k = torch.fft.fftfreq(box) * box
    inside = (k.abs() < box // 2)[:, None, None] & (k.abs() < box // 2)[None, :, None]
    inside = inside & (torch.fft.rfftfreq(box) * box < box // 2)[None, None, :]
    error = _relative_error(torch.fft.rfftn(volume)[inside], exact[inside])
    assert (error > 0.1) if plain else (error < 0.03)


def test_oversampling_follows_the_narrowest_width_within_the_memory_cap():
    from napari_dynamight.engine.gaussians import MAX_OVERSAMPLING, oversampling

    assert oversampling(torch.tensor([3.0, 2.5]), 3.0, 32, 2) == 1
    assert oversampling(torch.tensor([3.0, 0.85]), 3.0, 32, 2) == 3
    assert oversampling(torch.tensor([0.05]), 3.0, 32, 2) == MAX_OVERSAMPLING
    assert oversampling(torch.tensor([0.8]), 1.5, 64, 3) == 2
    assert oversampling(torch.tensor([0.8]), 1.5, 128, 3) == 2
    assert oversampling(torch.tensor([0.8]), 1.5, 256, 3) == 1


@pytest.mark.parametrize("dim, box, factor", [(2, 16, 2), (2, 15, 3), (3, 8, 2), (3, 7, 2)])
def test_cropped_transform_equals_the_crop_of_the_whole_transform(dim, box, factor):
    """The finer grid's spectrum, transformed and cropped one axis at a time, is the box's
    frequencies of its whole rfftn (even and odd boxes, images and volumes)."""
    from napari_dynamight.engine.gaussians import _cropped_rfftn

    fine = box * factor
    grid = torch.randn(
        2, *([fine] * dim), dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    whole = torch.fft.rfftn(grid, dim=tuple(range(-dim, 0)))
    expected = whole
    for axis in range(-dim, -1):
        expected = torch.cat(
            [
                expected.narrow(axis, 0, box - box // 2),
                expected.narrow(axis, fine - box // 2, box // 2),
            ],
            dim=axis,
        )
    expected = expected[..., : box // 2 + 1]
    got = _cropped_rfftn(grid, box, dim)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-10)
