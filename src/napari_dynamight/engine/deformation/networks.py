"""The two networks of one half set's VAE (method.md, "The networks").

- :class:`ImageEncoder`: three linear layers with ReLU on the masked, re-centred image; outputs the
  mean and log-variance of the latent.
- :class:`DeformationDecoder`: a coordinate network. Input: the positional encoding of a 3D position
  (sines and cosines, as in NeRF) concatenated with the latent; ELU layers; output a displacement,
  so ``D(z, x) = x + δ(z, x)``. The last layer starts at zero, so training starts from no motion.
- :class:`FactorisedDecoder`: the same displacement as a sum of ``rank`` basis fields of position,
  mixed by coefficients of the latent, ``δ(z, x) = Σ_r c_r(z) φ_r(x)``. The basis network runs once
  per step for all Gaussians and the coefficient network once per particle, so a particle costs
  Gaussians × rank × 3 instead of Gaussians × width² × depth.
- :func:`build_decoder`: the decoder a run's settings ask for (``settings.decoder``).

Positions enter and leave in Å; inside, they are divided by ``extent_angstrom`` (half the box
width), so one set of learning rates suits any box and pixel size.
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

    def __init__(
        self, box: int, latent_dim: int, width: int = 256, initial_log_variance: float = 0.0
    ):
        super().__init__()
        self.box, self.latent_dim = box, latent_dim
        self.layers = nn.Sequential(
            nn.Linear(box * box, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
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
    output layer initialised to zero. The input layer is split into its position part (evaluated
    once per position) and its latent part (once per particle), which is exact and saves a
    B·N·(6F+3)·W matrix product.
    """

    def __init__(
        self,
        latent_dim: int,
        extent_angstrom: float,
        n_frequencies: int = 10,
        width: int = 64,
        depth: int = 4,
    ):
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

    def deform(
        self,
        latents: torch.Tensor,
        positions_angstrom: torch.Tensor,
        moving: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Deformed positions ``x + δ(z, x)`` (B, N, 3); ``moving`` (N,) 0/1 keeps masked-out ones
        still."""
        displacement = self(latents, positions_angstrom)
        if moving is not None:
            displacement = displacement * moving.view(-1, 1)
        return positions_angstrom + displacement


def reparameterise(
    mean: torch.Tensor, log_variance: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """A sample ``mean + σ ε`` with ε drawn from ``generator`` (on the tensors' device)."""
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * log_variance) * noise


class FactorisedDecoder(nn.Module):
    """Displacements (B, N, 3) Å of positions (N, 3) or (B, N, 3) Å for latents (B, D), as
    ``Σ_r c_r(z) φ_r(x)`` with ``rank`` basis fields.

    Basis: positional encoding → ``depth`` ELU layers of ``width`` → ``3·rank`` outputs.
    Coefficients: latent → two ELU layers of ``width`` → ``rank`` outputs. The basis's last layer
    starts at zero, so training starts from no motion while the coefficients, random from the start,
    pass gradients to the basis in the first step (a zero coefficient layer would starve both
    factors). A smooth, low-rank field is what domain motions of a protein need; the rank bounds how
    many independent motion patterns one half can hold.
    """

    def __init__(
        self,
        latent_dim: int,
        extent_angstrom: float,
        n_frequencies: int = 10,
        width: int = 64,
        depth: int = 4,
        rank: int = 32,
    ):
        super().__init__()
        self.latent_dim, self.n_frequencies, self.rank = latent_dim, n_frequencies, rank
        self.extent_angstrom = float(extent_angstrom)
        layers: list[nn.Module] = [nn.Linear(3 + 6 * n_frequencies, width), nn.ELU()]
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ELU()]
        self.basis = nn.Sequential(*layers, nn.Linear(width, 3 * rank))
        self.coefficients = nn.Sequential(
            nn.Linear(latent_dim, width),
            nn.ELU(),
            nn.Linear(width, width),
            nn.ELU(),
            nn.Linear(width, rank),
        )
        nn.init.zeros_(self.basis[-1].weight)
        nn.init.zeros_(self.basis[-1].bias)

    def fields(self, positions_angstrom: torch.Tensor) -> torch.Tensor:
        """Basis fields (..., N, rank, 3) at the positions, in units of ``extent_angstrom``."""
        encoded = positional_encoding(positions_angstrom / self.extent_angstrom, self.n_frequencies)
        out = self.basis(encoded)
        return out.view(*out.shape[:-1], self.rank, 3) / math.sqrt(self.rank)

    def forward(self, latents: torch.Tensor, positions_angstrom: torch.Tensor) -> torch.Tensor:
        fields = self.fields(positions_angstrom)
        weights = self.coefficients(latents)  # (B, R)
        if fields.dim() == 3:  # one set of positions for every particle
            displacement = torch.einsum("br,nrc->bnc", weights, fields)
        else:
            displacement = torch.einsum("br,bnrc->bnc", weights, fields)
        return displacement * self.extent_angstrom

    def basis_matrix(
        self, positions_angstrom: torch.Tensor, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The basis fields at positions (N, 3) as a (rank, N·3) matrix in Å, each position's
        entries times ``scale`` (N,) if given: ``coefficients(z) @ basis_matrix(x)`` is
        ``forward(z, x)`` (times ``scale``) flattened, one matrix product for a whole batch."""
        fields = self.fields(positions_angstrom) * self.extent_angstrom  # (N, R, 3)
        if scale is not None:
            fields = fields * scale.view(-1, 1, 1)
        return fields.transpose(0, 1).reshape(self.rank, -1)

    deform = DeformationDecoder.deform


def build_decoder(settings, extent_angstrom: float) -> nn.Module:
    """The decoder of ``settings.decoder`` ("mlp": :class:`DeformationDecoder`; "factorised":
    :class:`FactorisedDecoder` with ``settings.decoder_rank`` fields) for a box of half-width
    ``extent_angstrom``."""
    if settings.decoder == "factorised":
        return FactorisedDecoder(
            settings.latent_dim,
            extent_angstrom,
            settings.n_frequencies,
            settings.decoder_width,
            settings.decoder_depth,
            settings.decoder_rank,
        )
    return DeformationDecoder(
        settings.latent_dim,
        extent_angstrom,
        settings.n_frequencies,
        settings.decoder_width,
        settings.decoder_depth,
    )
