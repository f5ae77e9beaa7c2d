"""Fourier-space helpers: resampling images, radial averages, Fourier shell correlation."""

from __future__ import annotations

import numpy as np
import torch


def fourier_box(box: int, pixel_size_angstrom: float, target_pixel_size_angstrom: float) -> int:
    """The even box that holds the frequencies of ``box`` pixels at the target pixel size.

    The resampled pixel size is exactly ``box * pixel_size / fourier_box(...)``; it equals the
    target when the ratio of pixel sizes divides the box, and is within ``1 / box`` of it otherwise.
    """
    return max(2, 2 * int(round(box * pixel_size_angstrom / target_pixel_size_angstrom / 2)))


def centred_resize(array: torch.Tensor, size: int, dims: tuple[int, ...]) -> torch.Tensor:
    """Crop or zero-pad the trailing ``dims`` of ``array`` to ``size`` around index ``n // 2``."""
    for dim in dims:
        n = array.shape[dim]
        if n == size:
            continue
        if size < n:
            start = n // 2 - size // 2
            array = array.narrow(dim, start, size)
        else:
            shape = list(array.shape)
            shape[dim] = size
            padded = array.new_zeros(shape)
            start = size // 2 - n // 2
            padded.narrow(dim, start, n).copy_(array)
            array = padded
    return array


def fourier_resample(
    images: torch.Tensor,
    pixel_size_angstrom: float,
    target_pixel_size_angstrom: float,
    target_box: int,
) -> torch.Tensor:
    """Resample (B, L, L) images to a new pixel size by Fourier cropping/padding, then to
    ``target_box``.

    Pixel values keep their scale (a constant image stays the same constant). The final real-space
    crop or zero-pad is about the box centre ``L // 2``, so the particle centre stays at the centre.
    """
    box = images.shape[-1]
    size = fourier_box(box, pixel_size_angstrom, target_pixel_size_angstrom)
    if size != box:
        spectrum = torch.fft.fftshift(torch.fft.fft2(images), dim=(-2, -1))
        spectrum = centred_resize(spectrum, size, (-2, -1))
        images = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real
        images = images * (size / box) ** 2
    return centred_resize(images, target_box, (-2, -1))


def radial_index(shape: tuple[int, ...], rfft: bool = True, device=None) -> torch.Tensor:
    """Integer radius (in Fourier pixels) of each element of an (r)fftn array of a cube of
    ``shape``."""
    box = shape[0]
    axes = [torch.fft.fftfreq(box, d=1.0 / box, device=device) for _ in shape[:-1]]
    last = (torch.fft.rfftfreq if rfft else torch.fft.fftfreq)(box, d=1.0 / box, device=device)
    grids = torch.meshgrid(*axes, last, indexing="ij")
    radius = torch.sqrt(sum(g**2 for g in grids))
    return torch.round(radius).long()


def radial_average(values: torch.Tensor, radius: torch.Tensor, n_shells: int) -> torch.Tensor:
    """Mean of ``values`` over each integer radius shell 0..n_shells-1 (trailing dims match
    ``radius``)."""
    flat_r = radius.reshape(-1)
    keep = flat_r < n_shells
    lead = values.shape[: values.ndim - radius.ndim]
    flat_v = values.reshape(*lead, -1)[..., keep]
    index = flat_r[keep]
    sums = torch.zeros(*lead, n_shells, dtype=values.dtype, device=values.device)
    sums.index_add_(-1, index, flat_v)
    counts = torch.bincount(index, minlength=n_shells).clamp(min=1).to(values.dtype)
    return sums / counts


def fsc(
    volume_a: np.ndarray | torch.Tensor,
    volume_b: np.ndarray | torch.Tensor,
    voxel_size_angstrom: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation of two cubic volumes: (shell frequency in 1/Å, FSC), up to
    Nyquist."""
    a = torch.as_tensor(np.asarray(volume_a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(volume_b), dtype=torch.float64)
    fa, fb = torch.fft.rfftn(a), torch.fft.rfftn(b)
    box = a.shape[0]
    radius = radial_index(tuple(a.shape))
    n_shells = box // 2 + 1
    cross = radial_average((fa * fb.conj()).real, radius, n_shells)
    power_a = radial_average(fa.abs() ** 2, radius, n_shells)
    power_b = radial_average(fb.abs() ** 2, radius, n_shells)
    curve = cross / torch.sqrt(power_a * power_b).clamp(min=1e-30)
    frequency = np.arange(n_shells) / (box * voxel_size_angstrom)
    return frequency, curve.numpy()


def resolution_at(frequency: np.ndarray, curve: np.ndarray, threshold: float) -> float:
    """Resolution (Å) where the curve first drops below ``threshold`` (linear interpolation).

    Returns the Nyquist resolution when it never does.
    """
    below = np.nonzero(curve[1:] < threshold)[0]
    if len(below) == 0:
        return float(1.0 / frequency[-1])
    i = below[0] + 1
    f0, f1, c0, c1 = frequency[i - 1], frequency[i], curve[i - 1], curve[i]
    crossing = f0 + (c0 - threshold) * (f1 - f0) / (c0 - c1) if c0 != c1 else f1
    return float(1.0 / crossing)
