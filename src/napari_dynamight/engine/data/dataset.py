"""Batches of particle images with their poses, origins and CTF parameters, on any torch device.

Images are read lazily from memory-mapped stacks (grouped per file, stacks kept open), brought to
one pixel size and box by Fourier cropping/padding (``engine.fourier.fourier_resample``), and
normalised per image from the background: the mean and standard deviation of the pixels outside
the circle of diameter = box around the centre (index box // 2) become 0 and 1. Where that
background is flat (noise-free simulations), the whole image's standard deviation is used instead.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..ctf import CtfParams
from ..errors import InputError
from ..fourier import centred_resize, fourier_box, fourier_resample
from ..geometry import euler_to_matrix
from ..image_formation import Pose
from ..io.mrc import MrcStack, open_stack
from .particles import ParticleTable, positions

# Stacks kept memory-mapped at once (RELION projects have one stack per micrograph).
MAX_OPEN_STACKS = 256


def background_mask(box: int, device=None) -> torch.Tensor:
    """True for pixels outside the circle of diameter ``box`` centred on pixel ``box // 2``."""
    axis = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    radius = torch.sqrt(axis[:, None] ** 2 + axis[None, :] ** 2)
    return radius > box / 2


def normalise_background(images: torch.Tensor) -> torch.Tensor:
    """Per image: subtract the background mean, divide by the background standard deviation."""
    mask = background_mask(images.shape[-1], images.device)
    background = images[:, mask]
    mean = background.mean(dim=1)
    std = background.std(dim=1)
    whole = (images - mean[:, None, None]).flatten(1).std(dim=1)
    flat = std <= 1e-6 * whole.clamp(min=torch.finfo(images.dtype).tiny)
    std = torch.where(flat, whole, std).clamp(min=torch.finfo(images.dtype).tiny)
    return (images - mean[:, None, None]) / std[:, None, None]


@dataclass(frozen=True)
class ParticleBatch:
    """Images of some table rows with their RELION poses and CTF parameters, on one device.

    ``images`` (B, L, L); ``rotations`` (B, 3, 3) RELION matrices; ``origin_angstrom`` (B, 2) RELION
    origins (the particle centre is at box centre − origin); ``ctf`` the rows' :class:`CtfParams`
    as tensors, or None without CTF; ``rows`` (B,) the table rows.
    """

    rows: np.ndarray
    images: torch.Tensor
    rotations: torch.Tensor
    origin_angstrom: torch.Tensor
    ctf: CtfParams | None
    pixel_size_angstrom: float
    box: int

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def pose(self) -> Pose:
        return Pose(self.rotations, self.origin_angstrom)


class ParticleDataset:
    """Particles of a :class:`ParticleTable` (optionally a subset) served in batches.

    All images come out at one ``pixel_size_angstrom`` and ``box``:
    - neither target given: the table's own (for mixed pixel sizes, the largest one);
    - ``target_box`` only: the whole field of view Fourier-cropped (or padded) into that box;
    - ``target_pixel_size_angstrom``: images resampled to it, box large enough for the field of view
      unless ``target_box`` is also given (then cropped or padded in real space).
    When a pixel-size ratio does not divide a box, the resampled pixel size differs from the target
    by less than 1 / box (see ``engine.fourier.fourier_box``).
    """

    def __init__(
        self,
        table: ParticleTable,
        indices=None,
        target_box: int | None = None,
        target_pixel_size_angstrom: float | None = None,
        normalise: bool = True,
        device: torch.device | str = "cpu",
        require_ctf: bool = True,
    ):
        self.table = table
        self.rows = positions(indices, len(table))
        if len(self.rows) == 0:
            raise InputError(f"{table.star_path}: empty selection; select at least one particle")
        if not np.isfinite(table.pixel_size_angstrom[self.rows]).all():
            table.require_pixel_size()
        if require_ctf:
            table.require_ctf()
        if target_box is not None and int(target_box) < 2:
            raise InputError(f"target box {target_box} px is too small; use at least 2")
        table.check_images(self.rows)
        self.normalise = normalise
        self.device = torch.device(device)
        self.has_ctf = table.has_ctf
        self._stacks: OrderedDict[str, MrcStack] = OrderedDict()

        sizes = table.pixel_size_angstrom[self.rows]
        boxes = table.image_box[self.rows]
        extent = float(np.max(sizes * boxes))
        if target_pixel_size_angstrom is not None:
            pixel_size = float(target_pixel_size_angstrom)
        elif target_box is not None:
            pixel_size = extent / int(target_box)
        else:
            pixel_size = float(np.max(sizes))
        if not (math.isfinite(pixel_size) and pixel_size > 0):
            raise InputError(f"target pixel size {target_pixel_size_angstrom} Å must be positive")
        self.pixel_size_angstrom = pixel_size
        if target_box is not None:
            self.box = int(target_box)
        else:
            self.box = max(self._resampled_box(int(b), float(s)) for s, b in self._groups())

    def _groups(self):
        frame = pd.DataFrame(
            {"s": self.table.pixel_size_angstrom[self.rows], "b": self.table.image_box[self.rows]}
        )
        return frame.drop_duplicates().itertuples(index=False, name=None)

    def _same_pixel(self, pixel_size: float) -> bool:
        return math.isclose(pixel_size, self.pixel_size_angstrom, rel_tol=1e-6)

    def _resampled_box(self, box: int, pixel_size: float) -> int:
        if self._same_pixel(pixel_size):
            return box
        return fourier_box(box, pixel_size, self.pixel_size_angstrom)

    def __len__(self) -> int:
        return len(self.rows)

    def _stack(self, name: str) -> MrcStack:
        """The open stack ``name``; the least recently used ones are closed beyond a limit."""
        if name in self._stacks:
            self._stacks.move_to_end(name)
        else:
            if len(self._stacks) >= MAX_OPEN_STACKS:
                self._stacks.popitem(last=False)[1].close()
            self._stacks[name] = open_stack(name)
        return self._stacks[name]

    def read_images(self, rows) -> torch.Tensor:
        """Images of table rows ``rows`` as (B, box, box) float32 on the device, ready for use."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        table = self.table
        files = table.image_files[rows]
        raw = [None] * len(rows)
        for name in pd.unique(files):
            where = np.nonzero(files == name)[0]
            images = self._stack(name)[table.image_indices[rows[where]]]
            finite = np.isfinite(images).all(axis=(1, 2))
            if not finite.all():
                image = table.image_indices[rows[where[np.nonzero(~finite)[0][0]]]] + 1
                raise InputError(
                    f"{name}: image {image} has non-finite pixels (NaN or Inf); "
                    "remove that particle or re-extract it"
                )
            for k, position in enumerate(where):
                raw[position] = images[k]
        out = torch.empty(len(rows), self.box, self.box, dtype=torch.float32, device=self.device)
        sizes = table.pixel_size_angstrom[rows]
        boxes = np.array([image.shape[-1] for image in raw])
        for size, box in set(zip(sizes.tolist(), boxes.tolist(), strict=True)):
            where = np.nonzero((sizes == size) & (boxes == box))[0]
            images = torch.from_numpy(np.stack([raw[k] for k in where])).to(self.device)
            if self._same_pixel(size):
                images = centred_resize(images, self.box, (-2, -1))
            else:
                images = fourier_resample(images, size, self.pixel_size_angstrom, self.box)
            out[torch.as_tensor(where, device=self.device)] = images.to(torch.float32)
        return normalise_background(out) if self.normalise else out

    def batch(self, rows) -> ParticleBatch:
        """The :class:`ParticleBatch` of table rows ``rows``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        table = self.table
        euler = torch.as_tensor(table.euler_degrees[rows], dtype=torch.float64)
        return ParticleBatch(
            rows=rows,
            images=self.read_images(rows),
            rotations=euler_to_matrix(euler).to(device=self.device, dtype=torch.float32),
            origin_angstrom=torch.as_tensor(
                table.origin_angstrom[rows], dtype=torch.float32, device=self.device
            ),
            ctf=table.ctf.select(rows).torch(self.device) if self.has_ctf else None,
            pixel_size_angstrom=self.pixel_size_angstrom,
            box=self.box,
        )

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        """Yield the :class:`ParticleBatch` of consecutive ``batch_size`` rows (shuffled with
        ``seed`` if asked)."""
        order = self.rows
        if shuffle:
            order = order[np.random.default_rng(seed).permutation(len(order))]
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])

    def check_map(self, shape: tuple[int, ...], voxel_size_angstrom: float, name: str) -> None:
        """Raise InputError unless a map of ``shape`` and voxel size fits the images (box, 1 %)."""
        if tuple(shape) != (self.box,) * 3 or not math.isclose(
            voxel_size_angstrom, self.pixel_size_angstrom, rel_tol=0.01
        ):
            raise InputError(
                f"{name}: map box {'×'.join(map(str, shape))} at {voxel_size_angstrom:g} Å does "
                f"not match the particles of {self.table.star_path} (box {self.box} at "
                f"{self.pixel_size_angstrom:g} Å/px); resample the map or choose matching targets"
            )

    def close(self) -> None:
        for stack in self._stacks.values():
            stack.close()
        self._stacks.clear()

    def __enter__(self) -> ParticleDataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
