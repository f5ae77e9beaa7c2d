"""The inverse deformation network of one half set: (latent, deformed position) -> consensus
position.

It is the forward decoder's architecture (``deformation.networks.DeformationDecoder``): a coordinate
network with positional encoding and the latent as input, ELU layers and a residual connection, so
``I(z, y) = y + ε(z, y)``; the last layer starts at zero, so training starts from the identity (and
a run without motion stays exactly the identity).
"""

from __future__ import annotations

import torch

from ..deformation.networks import DeformationDecoder
from .settings import InverseSettings


class InverseNetwork(DeformationDecoder):
    """``I(z, y) = y + ε(z, y)``; positions in Å, ``forward`` gives the displacement ε (B, P, 3)
    Å."""

    def consensus(self, latents: torch.Tensor, deformed_angstrom: torch.Tensor) -> torch.Tensor:
        """Consensus positions (B, P, 3) Å of deformed points (P, 3) or (B, P, 3) for latents (B,
        D)."""
        return deformed_angstrom + self(latents, deformed_angstrom)


def build_network(
    settings: InverseSettings,
    latent_dim: int,
    extent_angstrom: float,
    half: int,
    device: torch.device | str = "cpu",
) -> InverseNetwork:
    """A freshly initialised network, seeded by the settings' seed and the half set."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed * 1000 + 500 + half)
        network = InverseNetwork(
            latent_dim, extent_angstrom, settings.n_frequencies, settings.width, settings.depth
        )
    return network.to(device)
