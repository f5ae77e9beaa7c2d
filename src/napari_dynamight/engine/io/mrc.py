"""MRC maps and particle stacks: read, write (atomically) and open lazily.

Maps carry their voxel size in the header. Particle stacks do not reliably (RELION writes 1.0 or
0.0), so :class:`MrcStack` exposes no pixel size at all: take it from the STAR file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import mrcfile
import numpy as np
from mrcfile.utils import data_dtype_from_header

from ..errors import InputError
from .atomic import atomic_path

HEADER_BYTES = 1024


def _open(path: Path, header_only: bool = False, mmap: bool = False):
    """Open an MRC file read-only and permissively, turning format problems into InputError."""
    if not path.is_file():
        raise InputError(f"{path}: MRC file not found; check the path (or the --data-root folder)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if mmap:
                return mrcfile.mmap(path, mode="r", permissive=True)
            return mrcfile.open(path, mode="r", permissive=True, header_only=header_only)
    except (ValueError, OSError) as error:
        raise InputError(
            f"{path}: not a readable MRC file ({error}); re-export it as MRC"
        ) from None


def _check_size(path: Path, header) -> tuple[int, int, int]:
    """(nz, ny, nx) from the header, after checking that the file holds all of its data."""
    try:
        dtype = data_dtype_from_header(header)
    except ValueError:
        raise InputError(
            f"{path}: MRC mode {int(header.mode)} is not supported; convert the file to float32"
        ) from None
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if min(nx, ny, nz) < 1:
        raise InputError(
            f"{path}: MRC header gives an empty shape {nx}×{ny}×{nz}; the file is damaged"
        )
    expected = HEADER_BYTES + int(header.nsymbt) + nx * ny * nz * dtype.itemsize
    actual = os.path.getsize(path)
    if actual < expected:
        raise InputError(
            f"{path}: truncated MRC file ({actual} bytes, the header needs {expected} for "
            f"{nz}×{ny}×{nx} values); copy or re-extract it again"
        )
    return nz, ny, nx


def stack_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    """(number of images, ny, nx) of an MRC stack or single image, reading the header only."""
    path = Path(path)
    with _open(path, header_only=True) as mrc:
        return _check_size(path, mrc.header)


def read_map(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """A 3D map as a float32 array indexed [z, y, x] and its voxel size in Å (from the header)."""
    path = Path(path)
    with _open(path, header_only=True) as mrc:
        nz, ny, nx = _check_size(path, mrc.header)
    if nz == 1:
        raise InputError(f"{path}: is a 2D image ({ny}×{nx}), not a 3D map; give a volume")
    with _open(path) as mrc:
        volume = np.array(mrc.data, dtype=np.float32).reshape(nz, ny, nx)
        voxel_size = float(mrc.voxel_size.x)
    if not np.isfinite(volume).all():
        raise InputError(f"{path}: the map has non-finite voxels (NaN or Inf); fix or recompute it")
    return volume, voxel_size


def read_map_origin(path: str | os.PathLike) -> tuple[float, float, float]:
    """Where voxel index 0 of a map lies, (x, y, z) Å in the frame of models built into it: the
    header's origin, or where that is zero its start indices (nxstart, ...) times the voxel size."""
    path = Path(path)
    with _open(path, header_only=True) as mrc:
        origin = tuple(float(mrc.header.origin[axis]) for axis in ("x", "y", "z"))
        if any(origin):
            return origin
        start = (mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart)
        voxel = (float(mrc.voxel_size.x), float(mrc.voxel_size.y), float(mrc.voxel_size.z))
        return tuple(float(s) * v for s, v in zip(start, voxel, strict=True))


def write_map(
    path: str | os.PathLike,
    volume,
    voxel_size_angstrom: float,
    origin_angstrom: tuple[float, float, float] | None = None,
) -> None:
    """Write a 3D map (mode 2, float32) atomically, with voxel size and origin (x, y, z in Å)."""
    data = np.ascontiguousarray(np.asarray(volume, dtype=np.float32))
    if data.ndim != 3:
        raise InputError(f"{path}: a map must be 3D, got shape {data.shape}")
    if not (np.isfinite(voxel_size_angstrom) and voxel_size_angstrom > 0):
        raise InputError(f"{path}: voxel size {voxel_size_angstrom} Å is not a positive number")
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = float(voxel_size_angstrom)
        if origin_angstrom is not None:
            x, y, z = (float(v) for v in origin_angstrom)
            mrc.header.origin = (x, y, z)


class MrcStack:
    """A memory-mapped stack of 2D images: ``len``, ``shape`` (n, ny, nx), and float32 reads.

    A single 2D image counts as a stack of one. Indices are 0-based; reading copies the data, so
    nothing returned refers to the open file. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with _open(self.path, header_only=True) as mrc:
            self.shape = _check_size(self.path, mrc.header)
        self._mrc = _open(self.path, mmap=True)
        self._data = self._mrc.data.reshape(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def box(self) -> int:
        return self.shape[2]

    def __getitem__(self, index) -> np.ndarray:
        """Images at ``index`` (int, slice or integer array) as a float32 copy."""
        if isinstance(index, slice):
            return np.array(self._data[index], dtype=np.float32)
        positions = np.asarray(index)
        if positions.size and (positions.min() < -len(self) or positions.max() >= len(self)):
            bad = int(positions.max()) if positions.max() >= len(self) else int(positions.min())
            raise InputError(
                f"{self.path}: image {bad + 1} is past the end of the stack ({len(self)} images); "
                "check rlnImageName"
            )
        return np.array(self._data[positions], dtype=np.float32)

    def close(self) -> None:
        self._mrc.close()

    def __enter__(self) -> MrcStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_stack(path: str | os.PathLike) -> MrcStack:
    """Open an MRC particle stack lazily (memory-mapped, read-only)."""
    return MrcStack(path)
