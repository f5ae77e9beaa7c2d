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


def invert(
    data: torch.Tensor,
    weight: torch.Tensor,
    box: int,
    padding: int,
    wiener_constant: float = 1e-3,
    shell_regularisation: torch.Tensor | None = None,
    gridding_iterations: int = 10,
    mask_corners: bool = True,
) -> torch.Tensor:
    """Map (box, box, box) [z, y, x] from data (complex) and weights on the (n, n, n//2+1) grid.

    The denominator is ``W + wiener_constant · ⟨W⟩_shell + shell_regularisation[shell]``
    (``⟨W⟩_shell``: mean weight in the resolution shell; ``shell_regularisation``: optional,
    one value per shell of the original box, e.g. 1/τ² from a half-map FSC). Frequencies
    at and beyond Nyquist are zero.
    """
    n = data.shape[0]
    device = data.device
    data = data.clone()
    weight = weight.clone()
    add_friedel_mates_on_x_plane(data, weight)

    radius = radius_grid(n, device, weight.dtype)
    inside = radius < n / 2
    shell = torch.round(radius / padding).long().clamp(max=box // 2)
    shell_count = torch.bincount(shell[inside], minlength=box // 2 + 1)
    shell_sum = torch.bincount(
        shell[inside], weights=weight[inside].double(), minlength=box // 2 + 1
    )
    shell_mean = (shell_sum / shell_count.clamp(min=1)).to(weight.dtype)
    denominator = weight + wiener_constant * shell_mean[shell]
    if shell_regularisation is not None:
        extra = torch.as_tensor(shell_regularisation, dtype=weight.dtype, device=device)
        if extra.shape != (box // 2 + 1,):
            raise InputError(
                f"shell_regularisation needs {box // 2 + 1} values (one per shell), got "
                f"{tuple(extra.shape)}"
            )
        denominator = denominator + extra[shell]
    denominator = torch.where(inside, denominator, 0)
    if not bool((denominator > 0).any()):
        raise InputError("nothing to reconstruct: no particle was added (check the selection)")

    if gridding_iterations > 0:
        compensation = _density_compensation(
            denominator, inside, radius / padding, gridding_iterations
        )
    else:
        usable = denominator > 0
        compensation = torch.where(usable, 1 / torch.where(usable, denominator, 1), 0)
    spectrum = data * compensation

    full = torch.fft.irfftn(spectrum, s=(n, n, n))
    crop = (torch.arange(box, device=device) - box // 2) % n
    volume = full[crop][:, crop][:, :, crop]
    offsets = (torch.arange(box, device=device, dtype=volume.dtype) - box // 2) / n
    sinc2 = torch.sinc(offsets) ** 2
    volume = volume / (sinc2[:, None, None] * sinc2[None, :, None] * sinc2[None, None, :])
    return soft_mask_corners(volume) if mask_corners else volume


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


def _density_compensation(
    density: torch.Tensor, inside: torch.Tensor, radius: torch.Tensor, iterations: int
) -> torch.Tensor:
    """Weights ``c`` with ``(c · density) ⊛ blob ≈ 1`` inside the Nyquist sphere.

    ``radius`` is |k| in units of the original box's Fourier spacing.
    """
    n = density.shape[0]
    scale = density[inside].mean()
    density = density / scale
    blob = _blob_multiplier(radius, n)
    compensation = inside.to(density.dtype)
    for _ in range(iterations):
        smoothed = torch.fft.rfftn(torch.fft.irfftn(compensation * density, s=(n, n, n)) * blob)
        compensation = torch.where(inside, compensation / smoothed.real.clamp(min=1e-6), 0)
    return compensation / scale


def _blob_multiplier(radius: torch.Tensor, n: int) -> torch.Tensor:
    """Real-space factor whose product with an inverse FFT convolves a spectrum with the blob.

    ``radius`` is in units of the original box's Fourier spacing; the blob sums to one.
    """
    r = (radius / BLOB_RADIUS).clamp(max=1.0)
    peak = float(torch.special.i0(torch.tensor(BLOB_ALPHA, dtype=torch.float64)))
    blob = torch.special.i0(BLOB_ALPHA * torch.sqrt(1 - r**2)) / peak
    blob = torch.where(radius < BLOB_RADIUS, blob, 0)
    total = blob[:, :, 0].sum() + 2 * blob[:, :, 1:].sum()
    return torch.fft.irfftn(blob, s=(n, n, n)) * (n**3 / total)


def radius_grid(n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """|k| in grid units for the half-spectrum layout (n, n, n // 2 + 1) [z, y, x]."""
    full = torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=dtype)
    half = torch.fft.rfftfreq(n, d=1.0 / n, device=device, dtype=dtype)
    full, half = full**2, half**2
    return torch.sqrt(full[:, None, None] + full[None, :, None] + half[None, None, :])
