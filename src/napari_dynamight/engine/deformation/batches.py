"""Particle batches as training needs them: image spectra, encoder inputs, poses and CTFs.

Images come from :class:`engine.data.dataset.ParticleDataset` at the training box (Fourier-cropped,
background-normalised). For the data term we keep the rfft2 of each image; for the encoder the image
re-centred on the particle (the RELION origin undone by a Fourier phase shift) and multiplied by a
soft circular mask, so that the encoder sees the molecule, not the shift or the solvent. When the
prepared arrays of all particles fit in ``max_cache_bytes`` they are computed once and kept in memory
(a few tens of MB for thousands of particles at box 32-64); otherwise each batch is prepared from the
memory-mapped stacks when it is needed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..ctf import compute_ctf, frequency_grid_2d
from ..data.dataset import ParticleDataset
from ..data.particles import ParticleTable

DEFAULT_MAX_CACHE_BYTES = 2 * 1024**3


def soft_circular_mask(
    box: int, radius_px: float, edge_px: float = 3.0, device=None
) -> torch.Tensor:
    """1 inside ``radius_px`` of pixel box // 2, a cosine fall-off over ``edge_px``, 0 beyond."""
    axis = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    radius = torch.sqrt(axis[:, None] ** 2 + axis[None, :] ** 2)
    ramp = ((radius - radius_px) / edge_px).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * ramp))


def recentre(
    spectra: torch.Tensor, origin_angstrom: torch.Tensor, pixel_size_angstrom: float
) -> torch.Tensor:
    """Real images (B, L, L) with the particle moved to the box centre (the origin shift undone)."""
    box = spectra.shape[-2]
    fx, fy = frequency_grid_2d(box, pixel_size_angstrom, device=spectra.device)
    ox, oy = origin_angstrom[:, 0].view(-1, 1, 1), origin_angstrom[:, 1].view(-1, 1, 1)
    phase = torch.exp(-2j * math.pi * (fx * ox + fy * oy))
    return torch.fft.irfft2(spectra * phase, s=(box, box))


class ParticleBatches:
    """Prepared batches of the rows of a particle table at one training box, on one device."""

    def __init__(
        self,
        table: ParticleTable,
        box: int,
        device: torch.device | str = "cpu",
        max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
        chunk: int = 256,
    ):
        self.dataset = ParticleDataset(table, target_box=box, device=device)
        self.table, self.box, self.device = table, self.dataset.box, torch.device(device)
        self.pixel_size_angstrom = self.dataset.pixel_size_angstrom
        self.mask = soft_circular_mask(self.box, 0.5 * self.box - 3.0, device=self.device)
        self.n = len(table)
        per_particle = self.box * (self.box // 2 + 1) * (8 + 4) + self.box**2 * 4
        self._cache = None
        if per_particle * self.n <= max_cache_bytes:
            parts = [
                self._prepare(np.arange(s, min(s + chunk, self.n))) for s in range(0, self.n, chunk)
            ]
            self._cache = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}

    def _prepare(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        data = self.dataset.batch(rows)
        spectra = torch.fft.rfft2(data["images"])
        return {
            "spectra": spectra,
            "encoder_input": recentre(spectra, data["shifts_angstrom"], self.pixel_size_angstrom)
            * self.mask,
            "ctf": compute_ctf(data["ctf"], self.box, self.pixel_size_angstrom),
            "rotations": data["rotations"],
            "shifts_angstrom": data["shifts_angstrom"],
        }

    def get(self, rows) -> dict[str, torch.Tensor]:
        """The batch of table rows ``rows`` (array of ints)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._cache is None:
            batch = self._prepare(rows)
        else:
            index = torch.as_tensor(rows, device=self.device)
            batch = {key: value[index] for key, value in self._cache.items()}
        batch["rows"] = rows
        return batch

    def close(self) -> None:
        self.dataset.close()
