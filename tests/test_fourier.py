"""Fourier resampling and FSC on inputs whose answers are known."""

import numpy as np
import torch

from napari_dynamight.engine.fourier import fourier_box, fourier_resample, fsc, resolution_at
from napari_dynamight.engine.gaussians import (
    GaussianModel,
    normalised_cross_correlation,
    render_volume,
)


def _blob_image(box, pixel):
    axis = (torch.arange(box) - box // 2) * pixel
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return (
        torch.exp(-((x - 5) ** 2 + y**2) / (2 * 6.0**2))
        + 0.5 * torch.exp(-(x**2 + (y + 8) ** 2) / 50.0)
    )[None]


def test_downsampling_keeps_values_and_centre():
    image = _blob_image(64, 1.0)
    small = fourier_resample(image, 1.0, 2.0, 32)
    expected = _blob_image(32, 2.0)
    assert normalised_cross_correlation(small, expected)[0] > 0.999
    assert torch.allclose(small.max(), expected.max(), rtol=0.02)


def test_constant_image_stays_constant():
    image = torch.full((1, 48, 48), 3.0)
    assert torch.allclose(
        fourier_resample(image, 1.0, 1.5, 32), torch.full((1, 32, 32), 3.0), atol=1e-5
    )


def test_fourier_box_rounds_to_even():
    assert fourier_box(256, 1.0, 1.5) == 170
    assert fourier_box(64, 1.0, 2.0) == 32


def test_fsc_of_a_map_with_itself_and_with_noise():
    volume = render_volume(
        GaussianModel(torch.randn(50, 3) * 6, torch.ones(50), torch.full((50,), 2.0)), 32, 1.5
    )
    frequency, curve = fsc(volume, volume, 1.5)
    assert np.allclose(curve, 1.0) and np.isclose(frequency[-1], 1 / 3.0)
    rng = np.random.default_rng(0)
    _, noise_curve = fsc(rng.normal(size=(32, 32, 32)), rng.normal(size=(32, 32, 32)), 1.5)
    assert np.abs(noise_curve[4:]).max() < 0.2


def test_resolution_at_interpolates():
    frequency = np.array([0.0, 0.1, 0.2, 0.3])
    curve = np.array([1.0, 0.9, 0.4, 0.1])
    assert np.isclose(resolution_at(frequency, curve, 0.5), 1 / 0.18)
    assert np.isclose(resolution_at(frequency, np.ones(4), 0.5), 1 / 0.3)
