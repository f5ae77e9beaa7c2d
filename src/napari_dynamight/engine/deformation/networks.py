"""The two networks of one half set's VAE (method.md, "The networks").

- :class:`ImageEncoder`: three linear layers with ReLU on the masked, re-centred image; outputs the
  mean and log-variance of the latent.
- :class:`DeformationDecoder`: a coordinate network. Input: the positional encoding of a 3D position
  (sines and cosines, as in NeRF) concatenated with the latent; ELU layers; output a displacement, so
  ``D(z, x) = x + δ(z, x)``. The last layer starts at zero, so training starts from no motion.

Positions enter and leave in Å; inside, they are divided by ``extent_angstrom`` (half the box width),
so one set of learning rates suits any box and pixel size.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def positional_encoding(points: torch.Tensor, n_frequencies: int) -> torch.Tensor:
    """``(..., 3)`` points in [-1, 1] -> ``(..., 3 + 6 F)``: the points, sin and cos of 2^k π x."""
    if n_frequencies == 0:
        return points
    scales = math.pi * 2.0 ** torch.arange(n_frequencies, device=points.device, dtype=points.dtype)
    angles = (points.unsqueeze(-1) * scales).flatten(-2)
    return torch.cat([points, torch.sin(angles), torch.cos(angles)], dim=-1)


class ImageEncoder(nn.Module):
    """Image (B, L, L) -> latent mean (B, D) and log-variance (B, D)."""

    def __init__(self, box: int, latent_dim: int, width: int = 256, initial_log_variance: float = 0.0):
        super().__init__()
        self.box, self.latent_dim = box, latent_dim
        self.layers = nn.Sequential(
            nn.Linear(box * box, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, 2 * latent_dim),
        )
        with torch.no_grad():
            self.layers[-1].bias[latent_dim:] = initial_log_variance

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.layers(images.flatten(1))
        return out[:, : self.latent_dim], out[:, self.latent_dim :]


class DeformationDecoder(nn.Module):
    """Displacements (B, N, 3) Å of positions (N, 3) Å for latents (B, D).

    ``depth`` hidden layers of ``width`` units after the input layer, ELU activations, and a linear
    output layer initialised to zero. The input layer is split into its position part (evaluated once
    per position) and its latent part (once per particle), which is exact and saves a B·N·(6F+3)·W
    matrix product.
    """

    def __init__(self, latent_dim: int, extent_angstrom: float, n_frequencies: int = 10,
                 width: int = 64, depth: int = 4):
        super().__init__()
        self.latent_dim, self.n_frequencies = latent_dim, n_frequencies
        self.extent_angstrom = float(extent_angstrom)
        self.position_in = nn.Linear(3 + 6 * n_frequencies, width)
        self.latent_in = nn.Linear(latent_dim, width, bias=False)
        hidden = []
        for _ in range(depth):
            hidden += [nn.Linear(width, width), nn.ELU()]
        self.hidden = nn.Sequential(*hidden)
        self.out = nn.Linear(width, 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, latents: torch.Tensor, positions_angstrom: torch.Tensor) -> torch.Tensor:
        scaled = positions_angstrom / self.extent_angstrom
        encoded = positional_encoding(scaled, self.n_frequencies)
        position_part = self.position_in(encoded)  # (N, W) or (B, N, W)
        latent_part = self.latent_in(latents).unsqueeze(1)  # (B, 1, W)
        hidden = self.hidden(nn.functional.elu(position_part + latent_part))
        return self.out(hidden) * self.extent_angstrom

    def deform(self, latents: torch.Tensor, positions_angstrom: torch.Tensor,
               moving: torch.Tensor | None = None) -> torch.Tensor:
        """Deformed positions ``x + δ(z, x)`` (B, N, 3); ``moving`` (N,) 0/1 keeps masked-out ones still."""
        displacement = self(latents, positions_angstrom)
        if moving is not None:
            displacement = displacement * moving.view(-1, 1)
        return positions_angstrom + displacement


def reparameterise(mean: torch.Tensor, log_variance: torch.Tensor,
                   generator: torch.Generator | None) -> torch.Tensor:
    """A sample ``mean + σ ε`` with ε drawn from ``generator`` (on the tensors' device)."""
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * log_variance) * noise

