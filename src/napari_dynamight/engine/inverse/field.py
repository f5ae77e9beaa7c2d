"""Load a finished inverse run and map deformed points back to the consensus, batched and without
grad.

>>> field = load_inverse_field("run", half=1)
>>> field.consensus_positions(latents, grid_points)   # (B, D), (P, 3) Å -> (B, P, 3) Å

Used by the deformed backprojection (stage 5): each particle's image is backprojected along the
curved rays that this field defines.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..deformation import checkpoint as ckpt
from ..errors import InputError
from ..run_folder import RunFolder
from .network import InverseNetwork
from .settings import InverseSettings

POINTS_PER_CHUNK = 1 << 18  # latent-point pairs per network call: bounds memory for large grids


class InverseField:
    """One half set's inverse network ``I(z, y)`` on ``device``."""

    def __init__(self, network: InverseNetwork, half: int, device: torch.device):
        self.network, self.half, self.device = network.to(device).eval(), half, device

    @property
    def latent_dim(self) -> int:
        return self.network.latent_dim

    @torch.no_grad()
    def consensus_positions(
        self, latents: torch.Tensor, deformed_points: torch.Tensor
    ) -> torch.Tensor:
        """Consensus positions (B, P, 3) Å of deformed points (P, 3) (shared) or (B, P, 3) Å."""
        z = torch.as_tensor(latents, device=self.device, dtype=torch.float32)
        points = torch.as_tensor(deformed_points, device=self.device, dtype=torch.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise InputError(
                f"latents must have shape (B, {self.latent_dim}), got {tuple(z.shape)}"
            )
        if (
            points.shape[-1] != 3
            or points.ndim not in (2, 3)
            or (points.ndim == 3 and len(points) != len(z))
        ):
            raise InputError(
                f"points must have shape (P, 3) or ({len(z)}, P, 3), got {tuple(points.shape)}"
            )
        chunk = max(1, POINTS_PER_CHUNK // max(len(z), 1))
        size = points.shape[-2]
        parts = [
            self.network.consensus(z, points[..., s : s + chunk, :]) for s in range(0, size, chunk)
        ]
        if not parts:
            return points.new_zeros(len(z), 0, 3)
        return torch.cat(parts, dim=1)


def load_inverse_field(
    run_directory: str | Path, half: int, device: str | torch.device = "cpu"
) -> InverseField:
    """Half set ``half`` (1 or 2) of the finished inverse run in ``run_directory``."""
    if half not in (1, 2):
        raise InputError(f"half set must be 1 or 2, got {half}")
    path = RunFolder(run_directory).inverse.final
    if not path.is_file():
        raise InputError(
            f"{path}: missing; run optimize-inverse-deformations on {run_directory} first"
        )
    state = ckpt.load_checkpoint(path)
    settings = InverseSettings.from_dict(json.loads(state["settings"]))
    network = InverseNetwork(
        int(state["latent_dim"]),
        float(state["extent_angstrom"]),
        settings.n_frequencies,
        settings.width,
        settings.depth,
    )
    network.load_state_dict(state["halves"][half - 1]["network"])
    return InverseField(network, half, torch.device(device))
