"""The memory-bounded reconstruction (in-place, chunked transforms; channels folded straight into
place; the correction's transform added column by column) against the direct whole-grid
computation it replaces, on tiny boxes with chunks small enough that every loop runs many times."""

from __future__ import annotations

import pytest
import torch

from napari_dynamight.engine.geometry import euler_to_matrix
from napari_dynamight.engine.reconstruction import deformed, inversion
from napari_dynamight.engine.reconstruction.deformed import DeformedAccumulator
from napari_dynamight.engine.reconstruction.standard import FourierAccumulator, fold_channel


def reference_invert(data, weight, box, padding, wiener, regulariser, iterations):
    """The direct inversion: every grid whole in memory, full 3D transforms."""
    n = data.shape[0]
    data, weight = data.clone(), weight.clone()
    inversion.add_friedel_mates_on_x_plane(data, weight)
    radius = inversion.radius_grid(n, data.device, weight.dtype)
    inside = radius < n / 2
    shell = torch.round(radius / padding).long().clamp(max=box // 2)
    count = torch.bincount(shell[inside], minlength=box // 2 + 1)
    total = torch.bincount(shell[inside], weights=weight[inside].double(), minlength=box // 2 + 1)
    mean = (total / count.clamp(min=1)).to(weight.dtype)
    denominator = weight + wiener * mean[shell]
    if regulariser is not None:
        denominator = denominator + regulariser[shell]
    denominator = torch.where(inside, denominator, 0)
    if iterations:
        scale = denominator[inside].mean()
        density = denominator / scale
        k = radius / padding
        r = (k / inversion.BLOB_RADIUS).clamp(max=1.0)
        peak = float(torch.special.i0(torch.tensor(inversion.BLOB_ALPHA, dtype=torch.float64)))
        blob = torch.special.i0(inversion.BLOB_ALPHA * torch.sqrt(1 - r**2)) / peak
        blob = torch.where(k < inversion.BLOB_RADIUS, blob, 0)
        blob_sum = blob[:, :, 0].sum() + 2 * blob[:, :, 1:].sum()
        multiplier = torch.fft.irfftn(blob, s=(n, n, n)) * (n**3 / blob_sum)
        compensation = inside.to(density.dtype)
        for _ in range(iterations):
            smoothed = torch.fft.rfftn(
                torch.fft.irfftn(compensation * density, s=(n, n, n)) * multiplier
            )
            compensation = torch.where(inside, compensation / smoothed.real.clamp(min=1e-6), 0)
        compensation = compensation / scale
    else:
        usable = denominator > 0
        compensation = torch.where(usable, 1 / torch.where(usable, denominator, 1), 0)
    full = torch.fft.irfftn(data * compensation, s=(n, n, n))
    crop = (torch.arange(box) - box // 2) % n
    volume = full[crop][:, crop][:, :, crop]
    offsets = (torch.arange(box, dtype=volume.dtype) - box // 2) / n
    sinc2 = torch.sinc(offsets) ** 2
    volume = volume / (sinc2[:, None, None] * sinc2[None, :, None] * sinc2[None, None, :])
    return inversion.soft_mask_corners(volume)


@pytest.mark.parametrize(
    ("box", "padding", "iterations", "regularised"),
    [(10, 2, 10, False), (9, 1, 3, True), (11, 2, 0, True)],
)
def test_chunked_inversion_equals_the_direct_one(
    monkeypatch, box, padding, iterations, regularised
):
    monkeypatch.setattr(inversion, "CHUNK_ELEMENTS", 50)  # a few rows or columns per chunk
    generator = torch.Generator().manual_seed(box)
    n = box * padding
    data = torch.randn(n, n, n // 2 + 1, dtype=torch.complex128, generator=generator)
    weight = 3 * torch.rand(n, n, n // 2 + 1, dtype=torch.float64, generator=generator)
    regulariser = torch.rand(box // 2 + 1, dtype=torch.float64) if regularised else None
    kept = data.clone(), weight.clone()
    expected = reference_invert(data, weight, box, padding, 1e-3, regulariser, iterations)
    bounded = inversion.invert(data, weight, box, padding, 1e-3, regulariser, iterations)
    assert torch.equal(data, kept[0]) and torch.equal(weight, kept[1])  # inputs kept by default
    assert torch.allclose(bounded, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))
    overwritten = inversion.invert(
        data, weight, box, padding, 1e-3, regulariser, iterations, overwrite=True
    )
    assert torch.allclose(overwritten, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))


@pytest.mark.parametrize(("box", "padding"), [(8, 2), (7, 1), (9, 2)])
def test_channels_fold_straight_into_fft_order(box, padding):
    accumulator = FourierAccumulator(box, 1.0, padding, dtype=torch.float64)
    accumulator.sums.normal_(generator=torch.Generator().manual_seed(1))
    n, half = accumulator.padded_box, accumulator.padded_box // 2 + 1
    wrapped = (torch.arange(accumulator._shape[0]) - accumulator._offset) % n
    for channel in range(3):
        expected = torch.zeros(n, n, half, dtype=torch.float64)
        folded = torch.zeros(n, *accumulator._shape[1:], dtype=torch.float64)
        folded.index_add_(0, wrapped, accumulator.sums[channel])
        expected.index_add_(1, wrapped, folded[..., :half])
        target = torch.full((n, n, half), float("nan"), dtype=torch.float64)
        fold_channel(accumulator.sums[channel], target, accumulator._offset)
        assert torch.allclose(target, expected, rtol=0, atol=1e-13)


def test_partial_transforms_equal_whole_grid_transforms(monkeypatch):
    monkeypatch.setattr(deformed, "CHUNK_SPECTRUM", 40)
    generator = torch.Generator().manual_seed(2)
    n = 12
    spectrum = torch.randn(n, n, n // 2 + 1, dtype=torch.complex128, generator=generator)
    starts, sizes = [-3, 2, 9], [7, 5, 6]  # the first and last wrap around the periodic grid
    first = deformed._partial_first_axis(spectrum, starts[0], sizes[0])
    block = deformed._partial_irfftn(first, starts, sizes, n)
    full = torch.fft.irfftn(spectrum, s=(n, n, n))
    rows = [torch.arange(s, s + size) % n for s, size in zip(starts, sizes, strict=True)]
    assert torch.allclose(block, full[rows[0]][:, rows[1]][:, :, rows[2]], rtol=0, atol=1e-12)

    correction = torch.randn(5, 5, 5, dtype=torch.float64, generator=generator)
    index = torch.tensor([10, 11, 0, 1, 2])
    weight = torch.rand(n, n, n // 2 + 1, dtype=torch.float64, generator=generator)
    data = torch.randn(n, n, n // 2 + 1, dtype=torch.complex128, generator=generator)
    grid = torch.zeros(n, n, n, dtype=torch.float64)
    grid[index[:, None, None], index[None, :, None], index[None, None, :]] = correction
    added = torch.fft.rfftn(grid)
    added[:, :, 0] *= 0.5
    expected = data + added * (weight / (weight + 0.3))
    deformed._add_partial_rfftn(data, correction, index, weight, 0.3)
    assert torch.allclose(data, expected, rtol=0, atol=1e-12)


def test_released_sums_give_the_same_map():
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(6, 12, 12, generator=generator)
    rotations = euler_to_matrix(torch.rand(6, 3, generator=generator) * 180)
    maps = []
    for release in (False, True):
        accumulator = FourierAccumulator(12, 1.5)
        accumulator.add(images, rotations, torch.zeros(6, 2))
        maps.append(accumulator.reconstruct(release=release))
        assert accumulator.sums.numel() == (0 if release else accumulator.sums.numel())
    assert torch.equal(maps[0], maps[1])


def test_warped_reconstruction_with_tiny_chunks_equals_large_chunks(monkeypatch):
    """The deformed path (fold, partial transforms, warp, correction) is chunk-independent."""

    def field(latents, points):
        return points - torch.sigmoid(points[:, 0] / 3.0)[None, :, None] * latents[:, None, :]

    generator = torch.Generator().manual_seed(4)
    images = torch.randn(6, 12, 12, generator=generator)
    rotations = euler_to_matrix(torch.rand(6, 3, generator=generator) * 180)
    codes = torch.tensor([[2.0, 1.0, -1.0]] * 3 + [[0.0, -2.0, 1.0]] * 3)
    maps = []
    for chunk in (1 << 24, 30):
        monkeypatch.setattr(deformed, "CHUNK_SPECTRUM", chunk)
        monkeypatch.setattr(inversion, "CHUNK_ELEMENTS", max(chunk, 100))
        accumulator = DeformedAccumulator(12, 1.5, field)
        accumulator.add(images, rotations, torch.zeros(6, 2), None, codes)
        maps.append(accumulator.reconstruct())
        assert accumulator.warps == 2
    assert torch.allclose(maps[0], maps[1], rtol=0, atol=1e-5 * float(maps[0].abs().max()))
