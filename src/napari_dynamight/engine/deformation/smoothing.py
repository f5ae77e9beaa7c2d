"""Smoothing the reference Gaussians' position changes to the resolution of the training images.

The reference positions change in two ways during training: every Gaussian step of Adam, and the
schedule's reference replacements (a decoded prediction). Both carry detail that no training image
constrains when the Gaussians are denser than the training pixels: Adam's normalised steps make a
random walk of ~0.01 Å per step out of the gradient noise, and a prediction carries the decoder's
roughness. Over a run at SNR 0.01 the references moved by ~1 Å RMS, as far as the Gaussians are
apart at 10,000 on a 214-residue protein (1.1 Å), and their renderings lost to the consensus map
(docs/deformations.md, "Reference positions"). Every change is therefore passed through
:class:`PositionSmoother`, a kernel average over neighbouring Gaussians (Nadaraya–Watson, Gaussian
kernel of width σ, the training pixel by default): changes that the training images resolve pass,
the rest is averaged away.

The average is computed on a grid (spacing 3σ / 4): the changes and a weight of one are spread onto
it trilinearly, blurred by a separable Gaussian, and read back trilinearly; their ratio is the
kernel average. The cost is that of the grid, not of the Gaussians' neighbourhoods (which hold
hundreds of Gaussians at 10,000–30,000).
"""

from __future__ import annotations

import math

import torch

#: The grid's spacing, as a fraction of the kernel width σ.
GRID_STEP = 0.75
#: The grid's size per axis at most: a larger molecule gets a coarser grid.
MAX_GRID = 160
#: The kernel is cut at this many σ.
TRUNCATE = 3.0


class PositionSmoother:
    """Kernel average (width ``sigma_angstrom``) of per-Gaussian vectors over the Gaussians near
    each, for Gaussians at ``points`` (N, 3) Å."""

    def __init__(self, points: torch.Tensor, sigma_angstrom: float):
        points = points.detach().float()
        self.sigma = float(sigma_angstrom)
        low = points.min(0).values - TRUNCATE * self.sigma
        high = points.max(0).values + TRUNCATE * self.sigma
        step = max(GRID_STEP * self.sigma, float((high - low).max()) / (MAX_GRID - 2))
        self.shape = tuple(int(math.ceil(float(s) / step)) + 2 for s in high - low)
        grid = (points - low) / step  # in grid steps, x y z
        corner = grid.floor().long()
        fraction = grid - corner
        offsets = torch.tensor(
            [[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], device=points.device
        )  # (8, 3)
        corners = corner[:, None, :] + offsets  # (N, 8, 3)
        weights = torch.where(offsets.bool(), fraction[:, None, :], 1 - fraction[:, None, :])
        self.weights = weights.prod(-1)  # (N, 8)
        nx, ny, nz = self.shape
        self.index = (corners[..., 2] * ny + corners[..., 1]) * nx + corners[..., 0]  # (N, 8)
        radius = int(math.ceil(TRUNCATE * self.sigma / step))
        # the separable blur: one banded matrix per axis (x, y, z), applied as matrix products
        self.blur = [_band(n, radius, step / self.sigma, points.device) for n in self.shape]
        # the kernel's total weight at each Gaussian: fixed by the points
        self.norm = self._blurred(torch.ones_like(self.weights[:, :1])).clamp_min(1e-12)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """Kernel averages (N, C) of ``values`` (N, C), in their dtype."""
        return (self._blurred(values.float()) / self.norm).to(values.dtype)

    def _blurred(self, values: torch.Tensor) -> torch.Tensor:
        """(N, C): ``values`` (N, C) spread onto the grid, blurred and read back at the points."""
        nx, ny, nz = self.shape
        channels = values.shape[1]
        weighted = values.T[:, :, None] * self.weights  # (C, N, 8)
        spread = torch.zeros(channels, nz * ny * nx, device=values.device)
        spread.index_add_(1, self.index.reshape(-1), weighted.flatten(1))
        bx, by, bz = self.blur  # symmetric: each is its own transpose
        volume = spread.view(channels * nz * ny, nx) @ bx  # along x
        volume = torch.matmul(by, volume.view(channels * nz, ny, nx))  # along y
        volume = torch.matmul(bz, volume.view(channels, nz, ny * nx))  # along z
        flat = volume.reshape(channels, -1)
        return (flat[:, self.index] * self.weights).sum(-1).T


def _band(n: int, radius: int, step_in_sigma: float, device) -> torch.Tensor:
    """(n, n) matrix of a normalised Gaussian blur of width 1 / ``step_in_sigma`` grid steps, cut
    at ``radius`` steps (symmetric: the same as a row or a column operator)."""
    index = torch.arange(n, device=device)
    offset = (index[None, :] - index[:, None]).float()
    taps = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    norm = torch.exp(-0.5 * (taps * step_in_sigma) ** 2).sum()
    band = torch.exp(-0.5 * (offset * step_in_sigma) ** 2) / norm
    return band * (offset.abs() <= radius)
