"""Particle batches as training needs them: image spectra, encoder inputs, poses and CTFs.

Images come from :class:`engine.data.dataset.ParticleDataset` at the training box (Fourier-cropped,
background-normalised). For the data term we keep the rfft2 of each image; for the encoder the image
re-centred on the particle (the RELION origin undone by a Fourier phase shift) and multiplied by a
soft circular mask, so that the encoder sees the molecule, not the shift or the solvent.

The prepared arrays of a row are kept in memory from the second time the row is asked for (the
first time it is prepared from the memory-mapped stacks), while the kept rows fit in
``max_cache_bytes``; beyond that, rows are prepared when needed. So the cache holds only the rows
this process uses again: under ``torchrun`` with the half sets on separate ranks, a rank keeps its
own half set's rows (those it trains on, epoch after epoch), not those it sees once (its share of
the other half set in the final error estimates). Cached or not, a row's arrays are the same.
On the CPU the storage for ``min(N, max_cache_bytes)`` rows is reserved but its pages are only
used as rows are kept; on a GPU it grows by doubling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from ..ctf import compute_ctf, frequency_grid_2d
from ..data.dataset import ParticleDataset
from ..data.particles import ParticleTable
from ..image_formation import Pose

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


@dataclass(frozen=True)
class TrainingBatch:
    """Prepared rows as training uses them, on one device.

    ``spectra`` (B, L, L//2+1) rfft2 of the images; ``encoder_input`` (B, L, L) the masked images
    re-centred on the particle; ``ctf`` (B, L, L//2+1) CTF images in rfft2 layout; ``rotations``
    (B, 3, 3) RELION matrices; ``origin_angstrom`` (B, 2) RELION origins; ``rows`` (B,) table rows.
    """

    rows: np.ndarray
    spectra: torch.Tensor
    encoder_input: torch.Tensor
    ctf: torch.Tensor
    rotations: torch.Tensor
    origin_angstrom: torch.Tensor

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def pose(self) -> Pose:
        return Pose(self.rotations, self.origin_angstrom)

    @classmethod
    def tensor_names(cls) -> tuple[str, ...]:
        """The per-row tensors (every field but ``rows``)."""
        return tuple(f.name for f in fields(cls) if f.name != "rows")

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.tensor_names()}

    def select(self, index) -> TrainingBatch:
        """The rows at ``index`` (a slice, or positions / a mask as a tensor or array)."""
        at = index.cpu().numpy() if isinstance(index, torch.Tensor) else index
        return TrainingBatch(rows=self.rows[at], **{k: v[index] for k, v in self.tensors().items()})


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
        self.bytes_per_particle = self.box * (self.box // 2 + 1) * (8 + 4) + self.box**2 * 4
        self._capacity_rows = min(self.n, max_cache_bytes // self.bytes_per_particle)
        self._slot = np.full(self.n, -1, dtype=np.int64)  # row -> position in the cache, or -1
        self._seen = np.zeros(self.n, dtype=bool)  # asked for at least once
        self._cache: dict[str, torch.Tensor] | None = None  # TrainingBatch's tensors, by name
        self._used = 0  # rows kept

    @property
    def cached_rows(self) -> int:
        """How many rows' prepared arrays are kept in memory."""
        return self._used

    @property
    def cache_bytes(self) -> int:
        """Bytes of prepared arrays kept in memory."""
        return self._used * self.bytes_per_particle

    def _keep(self, rows: np.ndarray, prepared: dict[str, torch.Tensor]) -> None:
        """Store the prepared arrays of ``rows`` (not yet kept) in the cache."""
        end = self._used + len(rows)
        if self._cache is None:
            initial = self._capacity_rows if self.device.type == "cpu" else max(end, 256)
            self._cache = {
                key: value.new_empty((min(initial, self._capacity_rows), *value.shape[1:]))
                for key, value in prepared.items()
            }
        capacity = len(next(iter(self._cache.values())))
        if end > capacity:  # a GPU cache grows by doubling, up to its capacity
            grown = min(max(end, 2 * capacity), self._capacity_rows)
            for key, value in self._cache.items():
                larger = value.new_empty((grown, *value.shape[1:]))
                larger[: self._used] = value[: self._used]
                self._cache[key] = larger
        for key, value in prepared.items():
            self._cache[key][self._used : end] = value
        self._slot[rows] = np.arange(self._used, end)
        self._used = end

    def _prepare(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        data = self.dataset.batch(rows)
        spectra = torch.fft.rfft2(data.images)
        return {
            "spectra": spectra,
            "encoder_input": recentre(spectra, data.origin_angstrom, self.pixel_size_angstrom)
            * self.mask,
            "ctf": compute_ctf(data.ctf, self.box, self.pixel_size_angstrom),
            "rotations": data.rotations,
            "origin_angstrom": data.origin_angstrom,
        }

    def get(self, rows) -> TrainingBatch:
        """The batch of table rows ``rows`` (array of ints)."""
        rows = np.asarray(rows, dtype=np.int64)
        slots = self._slot[rows]
        missing = np.nonzero(slots < 0)[0]
        if len(missing) == 0:  # all kept
            index = torch.as_tensor(slots, device=self.device)
            return TrainingBatch(rows, **{key: value[index] for key, value in self._cache.items()})
        prepared = self._prepare(rows[missing])
        # Keep the rows asked for before (each once), while there is room.
        unique, first = np.unique(rows[missing], return_index=True)
        again = np.sort(first[self._seen[unique]])[: self._capacity_rows - self._used]
        if len(again):
            self._keep(rows[missing][again], {k: v[again] for k, v in prepared.items()})
        self._seen[rows] = True
        if len(missing) == len(rows):
            return TrainingBatch(rows, **prepared)
        present = np.nonzero(slots >= 0)[0]
        at_missing = torch.as_tensor(missing, device=self.device)
        at_present = torch.as_tensor(present, device=self.device)
        index = torch.as_tensor(slots[present], device=self.device)
        batch = {}
        for key, value in prepared.items():
            out = value.new_empty((len(rows), *value.shape[1:]))
            out[at_missing] = value
            out[at_present] = self._cache[key][index]
            batch[key] = out
        return TrainingBatch(rows, **batch)

    def close(self) -> None:
        self.dataset.close()
