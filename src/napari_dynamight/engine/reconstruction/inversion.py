"""From accumulated Fourier sums to a real-space map: regularise, grid, invert, correct.

The inserted data are ``D(g) = Σ tri(g − q) · CTF · Y`` and the weights
``W(g) = Σ tri(g − q) · CTF²`` on a half-spectrum grid (n, n, n//2+1) [z, y, x],
n = padding · box. Dividing ``D`` by a density-compensating weight makes the inverse FFT
a proper gridding reconstruction, after
which dividing by sinc² undoes the trilinear kernel exactly. The compensation is found by
Pipe & Menon's iteration ``c ← c / ((c · W) ⊛ K)`` with a Kaiser-Bessel blob ``K`` (radius
1.9 voxels of the original box, α = 15, as in RELION); with zero iterations it is plain
``1 / W``. Finally the box corners, which hold only wrap-around artefacts, are softly
replaced by their mean (as RELION does); without this the FSC near Nyquist drops sharply.
"""

from __future__ import annotations

import torch

from ..errors import InputError

BLOB_RADIUS = 1.9  # in voxels of the original box, i.e. 1.9 · padding in the padded grid
BLOB_ALPHA = 15.0
#: Elements of the padded grid processed at once (slabs, columns) by the inversion.
CHUNK_ELEMENTS = 1 << 21


def invert(
    data: torch.Tensor,
    weight: torch.Tensor,
    box: int,
    padding: int,
    wiener_constant: float = 1e-3,
    shell_regularisation: torch.Tensor | None = None,
    gridding_iterations: int = 10,
    mask_corners: bool = True,
    overwrite: bool = False,
) -> torch.Tensor:
    """Map (box, box, box) [z, y, x] from data (complex) and weights on the (n, n, n//2+1) grid.

    The denominator is ``W + wiener_constant · ⟨W⟩_shell + shell_regularisation[shell]``
    (``⟨W⟩_shell``: mean weight in the resolution shell; ``shell_regularisation``: optional,
    one value per shell of the original box, e.g. 1/τ² from a half-map FSC). Frequencies
    at and beyond Nyquist are zero.

    Memory: with ``overwrite`` the inputs are used as work space (their values are lost) and the
    inversion holds, besides them, the compensation (n, n, n//2+1) floats, one complex work grid
    of the same shape, an octant of the blob's real-space factor ((n//2+1)³ floats) and slabs of
    ``CHUNK_ELEMENTS``; every 3D transform runs one axis at a time, in place, in chunks.
    Without ``overwrite`` the inputs are copied first.
    """
    n = data.shape[0]
    if not overwrite:
        data, weight = data.clone(), weight.clone()
    add_friedel_mates_on_x_plane(data, weight)

    shell_mean = shell_means(weight, box, padding)
    extra = None
    if shell_regularisation is not None:
        extra = torch.as_tensor(shell_regularisation, dtype=weight.dtype, device=weight.device)
        if extra.shape != (box // 2 + 1,):
            raise InputError(
                f"shell_regularisation needs {box // 2 + 1} values (one per shell), got "
                f"{tuple(extra.shape)}"
            )
    # The denominator, in place of the weights, one slab at a time.
    for z0, z1, radius in _radius_slabs(n, weight.device, weight.dtype):
        shell = torch.round(radius / padding).long().clamp(max=box // 2)
        part = weight[z0:z1]
        part += wiener_constant * shell_mean[shell]
        if extra is not None:
            part += extra[shell]
        part.masked_fill_(radius >= n / 2, 0)
    denominator = weight
    if not bool((denominator > 0).any()):
        raise InputError("nothing to reconstruct: no particle was added (check the selection)")

    if gridding_iterations > 0:
        compensation = _density_compensation(denominator, padding, gridding_iterations)
    else:
        usable = denominator > 0
        compensation = torch.where(usable, 1 / torch.where(usable, denominator, 1), 0)
        del usable
    del denominator, weight
    for z0, z1 in _slabs(n, n * data.shape[2]):
        data[z0:z1] *= compensation[z0:z1]
    del compensation

    full = _irfftn_(data.contiguous())  # (n, n, n) real, a view of data's memory
    crop = (torch.arange(box, device=data.device) - box // 2) % n
    volume = full[crop][:, crop][:, :, crop]
    del full, data
    offsets = (torch.arange(box, device=volume.device, dtype=volume.dtype) - box // 2) / n
    sinc2 = torch.sinc(offsets) ** 2
    volume = volume / (sinc2[:, None, None] * sinc2[None, :, None] * sinc2[None, None, :])
    return soft_mask_corners(volume) if mask_corners else volume


def shell_means(weight: torch.Tensor, box: int, padding: int) -> torch.Tensor:
    """Mean of ``weight`` (n, n, n//2+1) in each resolution shell of the original box (inside the
    Nyquist sphere of the padded grid), as ``weight``'s dtype; computed one slab at a time."""
    n = weight.shape[0]
    shell_count = torch.zeros(box // 2 + 1, dtype=torch.float64, device=weight.device)
    shell_sum = torch.zeros(box // 2 + 1, dtype=torch.float64, device=weight.device)
    for z0, z1, radius in _radius_slabs(n, weight.device, weight.dtype):
        inside = radius < n / 2
        shell = torch.round(radius[inside] / padding).long().clamp(max=box // 2)
        shell_count += torch.bincount(shell, minlength=box // 2 + 1)
        shell_sum += torch.bincount(
            shell, weights=weight[z0:z1][inside].double(), minlength=box // 2 + 1
        )
    return (shell_sum / shell_count.clamp(min=1)).to(weight.dtype)


def soft_mask_corners(volume: torch.Tensor, edge_width: float = 3.0) -> torch.Tensor:
    """Replace the box corners (beyond radius box/2, raised-cosine edge) by their mean.

    The corners hold only interpolation artefacts (wrap-around of the padded inverse
    transform); RELION's reconstruction does the same.
    """
    box = volume.shape[0]
    offsets = torch.arange(box, device=volume.device, dtype=volume.dtype) - box // 2
    squared = offsets**2
    radius = torch.sqrt(squared[:, None, None] + squared[None, :, None] + squared[None, None, :])
    outside = ((radius - box / 2) / edge_width).clamp(0, 1)
    outside = 0.5 * (1 - torch.cos(torch.pi * outside))
    far = radius >= box / 2 + edge_width
    background = volume[far].mean() if bool(far.any()) else volume.new_zeros(())
    return volume * (1 - outside) + outside * background


def add_friedel_mates_on_x_plane(data: torch.Tensor, weight: torch.Tensor) -> None:
    """Samples inserted near the x = 0 plane also belong to it mirrored (their Friedel mates)."""
    n = data.shape[0]
    mirror = (-torch.arange(n, device=data.device)) % n
    plane_data = data[:, :, 0].clone()
    plane_weight = weight[:, :, 0].clone()
    data[:, :, 0] = plane_data + plane_data[mirror][:, mirror].conj()
    weight[:, :, 0] = plane_weight + plane_weight[mirror][:, mirror]


def _density_compensation(density: torch.Tensor, padding: int, iterations: int) -> torch.Tensor:
    """Weights ``c`` with ``(c · density) ⊛ blob ≈ 1`` inside the Nyquist sphere.

    ``density`` (zero outside the sphere) is scaled in place (its values are lost).
    """
    n, _, half = density.shape
    device, dtype = density.device, density.dtype
    total, count = 0.0, 0
    for z0, z1, radius in _radius_slabs(n, device, dtype):
        count += int((radius < n / 2).sum())
        total += float(density[z0:z1].sum(dtype=torch.float64))
    scale = total / count
    density /= scale
    work = torch.empty(n, n, half, dtype=_complex(dtype), device=device)
    blob = _blob_octant(work, padding)
    compensation = torch.empty_like(density)
    for z0, z1, radius in _radius_slabs(n, device, dtype):
        compensation[z0:z1] = (radius < n / 2).to(dtype)
    pairs = torch.view_as_real(work)
    for _ in range(iterations):
        for z0, z1 in _slabs(n, n * half):
            pairs[z0:z1, ..., 0] = compensation[z0:z1] * density[z0:z1]
            pairs[z0:z1, ..., 1] = 0
        real = _irfftn_(work)
        for z0, z1 in _slabs(n, n * half):
            real[z0:z1] *= _octant_slab(blob, z0, z1, n)
        _rfftn_(work)
        for z0, z1, radius in _radius_slabs(n, device, dtype):
            part = compensation[z0:z1]
            part /= work[z0:z1].real.clamp(min=1e-6)
            part.masked_fill_(radius >= n / 2, 0)
    compensation /= scale
    return compensation


def _blob_octant(work: torch.Tensor, padding: int) -> torch.Tensor:
    """The real-space factor whose product with an inverse FFT convolves a spectrum with the blob
    (radius ``BLOB_RADIUS`` in the original box's Fourier spacing; the blob sums to one), on the
    octant (n//2+1)³ of the (n, n, n) grid: the factor is even along every axis, so
    ``factor[z, y, x] = octant[min(z, n − z), min(y, n − y), min(x, n − x)]``. ``work`` (complex,
    (n, n, n//2+1)) is the work space of the inverse transform."""
    n = work.shape[0]
    dtype = work.real.dtype
    peak = float(torch.special.i0(torch.tensor(BLOB_ALPHA, dtype=torch.float64)))
    pairs = torch.view_as_real(work)
    total = 0.0
    for z0, z1, radius in _radius_slabs(n, work.device, dtype):
        radius = radius / padding
        r = (radius / BLOB_RADIUS).clamp(max=1.0)
        blob = torch.special.i0(BLOB_ALPHA * torch.sqrt(1 - r**2)) / peak
        blob = torch.where(radius < BLOB_RADIUS, blob, 0)
        total += float(blob[:, :, 0].sum(dtype=torch.float64))
        total += 2 * float(blob[:, :, 1:].sum(dtype=torch.float64))
        pairs[z0:z1, ..., 0] = blob
        pairs[z0:z1, ..., 1] = 0
    real = _irfftn_(work)
    octant = n // 2 + 1
    return real[:octant, :octant, :octant] * (n**3 / total)


def _octant_slab(octant: torch.Tensor, z0: int, z1: int, n: int) -> torch.Tensor:
    """Rows z0..z1 of the even (n, n, n) grid whose octant is ``octant`` (:func:`_blob_octant`)."""
    axis = torch.arange(n, device=octant.device)
    mirrored = torch.minimum(axis, n - axis)
    return octant[mirrored[z0:z1]][:, mirrored][:, :, mirrored]


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _slabs(length: int, per_row: int):
    """(start, stop) of consecutive row ranges of at most ``CHUNK_ELEMENTS`` elements."""
    rows = max(1, CHUNK_ELEMENTS // max(per_row, 1))
    for start in range(0, length, rows):
        yield start, min(start + rows, length)


def _radius_slabs(n: int, device, dtype):
    """(start, stop, |k|) of the half-spectrum grid (as :func:`radius_grid`), by slabs of z rows."""
    full = torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=dtype) ** 2
    half = torch.fft.rfftfreq(n, d=1.0 / n, device=device, dtype=dtype) ** 2
    for z0, z1 in _slabs(n, n * len(half)):
        yield (
            z0,
            z1,
            torch.sqrt(full[z0:z1, None, None] + full[None, :, None] + half[None, None, :]),
        )


def _irfftn_(work: torch.Tensor) -> torch.Tensor:
    """``irfftn(work, s=(n, n, n))`` in place: ``work`` (n, n, n//2+1) complex, contiguous, is
    overwritten; the result (n, n, n) real is a view of its memory (rows padded to n + 2)."""
    n, _, half = work.shape
    for x0, x1 in _slabs(half, n * n):
        work[:, :, x0:x1] = torch.fft.ifft(work[:, :, x0:x1], dim=0)
    for z0, z1 in _slabs(n, n * half):
        work[z0:z1] = torch.fft.ifft(work[z0:z1], dim=1)
    real = torch.view_as_real(work).view(n, n, 2 * half)
    for z0, z1 in _slabs(n, n * half):
        real[z0:z1, :, :n] = torch.fft.irfft(work[z0:z1], n=n, dim=2)
    return real[:, :, :n]


def _rfftn_(work: torch.Tensor) -> None:
    """``rfftn`` in place of the (n, n, n) real grid held in ``work`` (the view returned by
    :func:`_irfftn_`); ``work`` then holds the (n, n, n//2+1) spectrum."""
    n, _, half = work.shape
    real = torch.view_as_real(work).view(n, n, 2 * half)
    for z0, z1 in _slabs(n, n * half):
        work[z0:z1] = torch.fft.fft(torch.fft.rfft(real[z0:z1, :, :n], dim=2), dim=1)
    for x0, x1 in _slabs(half, n * n):
        work[:, :, x0:x1] = torch.fft.fft(work[:, :, x0:x1], dim=0)


def radius_grid(n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """|k| in grid units for the half-spectrum layout (n, n, n // 2 + 1) [z, y, x]."""
    full = torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=dtype)
    half = torch.fft.rfftfreq(n, d=1.0 / n, device=device, dtype=dtype)
    full, half = full**2, half**2
    return torch.sqrt(full[:, None, None] + full[None, :, None] + half[None, None, :])
