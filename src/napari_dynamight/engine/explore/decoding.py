"""What the explorer shows for a latent point, and what a decoder for it offers.

:class:`Decoded` holds the deformed Gaussians, the consensus positions they moved from and the
rendered volume. Anything with ``latent_dim`` and ``decode(latent) -> Decoded`` can drive the
explorer; ``run_decoder.open_decoder`` builds one from a run folder through the deformation engine's
``DeformationRun`` (``engine/deformation/decode.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import InputError


@dataclass
class Decoded:
    """One decoded latent point: positions (G, 3) x, y, z in Å from the box centre; volume [z, y,
    x]."""

    latent: np.ndarray
    positions_angstrom: np.ndarray
    consensus_angstrom: np.ndarray
    volume: np.ndarray
    voxel_size_angstrom: float

    @property
    def displacements_angstrom(self) -> np.ndarray:
        return self.positions_angstrom - self.consensus_angstrom


class Decoder(Protocol):
    latent_dim: int

    def decode(self, latent: np.ndarray) -> Decoded: ...


def check_latent(latent, latent_dim: int) -> np.ndarray:
    latent = np.asarray(latent, dtype=np.float32).reshape(-1)
    if latent.shape[0] != latent_dim:
        raise InputError(
            f"latent point has {latent.shape[0]} values; the run has {latent_dim} latent dimensions"
        )
    return latent
