"""Read CHARMM/NAMD/X-PLOR DCD trajectories with numpy (coordinates in Å).

A DCD file is a sequence of Fortran unformatted records, each framed by a 32-bit byte count before
and after: an 84-byte header ("CORD" + 20 control integers), a title record, the atom count, then
per frame an optional 48-byte unit-cell record (6 float64) followed by the X, Y and Z records
(float32 each). Either byte order is accepted (detected from the first record marker). Fixed-atom
files and 64-bit record markers are rejected with a clear error. The frame count is taken from the
file size (the header's count is often stale when a run was stopped), and every record marker is
checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

_HEADER_BYTES = 84


@dataclass(frozen=True)
class DcdInfo:
    """What the header of a DCD file says, plus where the frames start."""

    path: Path
    n_frames: int
    n_atoms: int
    has_unit_cell: bool
    has_fourth_dimension: bool
    byte_order: str  # "<" or ">"
    title: str
    first_frame_offset: int
    frame_bytes: int


def _read_record(raw: bytes, offset: int, order: str, path: Path) -> tuple[bytes, int]:
    """One Fortran record starting at ``offset``: (payload, offset after it)."""
    if offset + 4 > len(raw):
        raise InputError(f"{path}: DCD file ends inside its header; the file is truncated")
    size = int(np.frombuffer(raw, dtype=f"{order}i4", count=1, offset=offset)[0])
    end = offset + 4 + size
    if size < 0 or end + 4 > len(raw):
        raise InputError(
            f"{path}: DCD header record of {size} bytes runs past the end; file truncated"
        )
    closing = int(np.frombuffer(raw, dtype=f"{order}i4", count=1, offset=end)[0])
    if closing != size:
        raise InputError(
            f"{path}: DCD record markers disagree ({size} vs {closing}); not a valid DCD file"
        )
    return raw[offset + 4 : end], end + 4


def read_dcd_info(path: str | os.PathLike) -> DcdInfo:
    """Parse the header of a DCD file (cheap: reads only the first few kilobytes)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: trajectory file not found; give an existing DCD file")
    file_size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(min(file_size, 1 << 20))
    if len(raw) < 4:
        raise InputError(f"{path}: file is empty or too short to be a DCD trajectory")
    order = next((o for o in "<>" if np.frombuffer(raw[:4], f"{o}i4")[0] == _HEADER_BYTES), None)
    if order is None:
        if len(raw) >= 8 and any(
            np.frombuffer(raw[:8], f"{o}i8")[0] == _HEADER_BYTES for o in "<>"
        ):
            raise InputError(
                f"{path}: DCD with 64-bit record markers is not supported; convert it "
                "(e.g. with MDAnalysis or mdconvert)"
            )
        raise InputError(f"{path}: not a DCD file (first record is not the 84-byte CORD header)")
    header, offset = _read_record(raw, 0, order, path)
    if header[:4] != b"CORD":
        raise InputError(
            f"{path}: DCD header does not start with 'CORD' (got {header[:4]!r}); "
            "only coordinate DCD files are supported"
        )
    control = np.frombuffer(header, dtype=f"{order}i4", count=20, offset=4)
    charmm = control[19] != 0
    n_fixed = int(control[8])
    has_unit_cell = bool(charmm and control[10])
    has_fourth_dimension = bool(charmm and control[11])
    title_record, offset = _read_record(raw, offset, order, path)
    n_titles = (
        int(np.frombuffer(title_record, dtype=f"{order}i4", count=1)[0])
        if len(title_record) >= 4
        else 0
    )
    text = title_record[4 : 4 + 80 * n_titles].decode("latin-1")
    title = "\n".join(text[i : i + 80].rstrip() for i in range(0, len(text), 80))
    atoms_record, offset = _read_record(raw, offset, order, path)
    n_atoms = int(np.frombuffer(atoms_record, dtype=f"{order}i4", count=1)[0])
    if n_atoms <= 0:
        raise InputError(f"{path}: DCD header gives {n_atoms} atoms; the file is damaged")
    if n_fixed:
        raise InputError(
            f"{path}: DCD with {n_fixed} fixed atoms is not supported; write the "
            "trajectory without fixed atoms"
        )
    coordinate_record = 4 * n_atoms + 8
    frame_bytes = (56 if has_unit_cell else 0) + coordinate_record * (
        4 if has_fourth_dimension else 3
    )
    n_frames, remainder = divmod(file_size - offset, frame_bytes)
    if remainder:
        raise InputError(
            f"{path}: DCD file size does not fit whole frames of {n_atoms} atoms "
            f"({remainder} extra bytes); the file is truncated or damaged"
        )
    return DcdInfo(
        path,
        int(n_frames),
        n_atoms,
        has_unit_cell,
        has_fourth_dimension,
        order,
        title,
        offset,
        frame_bytes,
    )


def _frame_dtype(info: DcdInfo) -> np.dtype:
    marker = f"{info.byte_order}i4"
    fields = []
    if info.has_unit_cell:
        fields += [
            ("cell_start", marker),
            ("cell", f"{info.byte_order}f8", 6),
            ("cell_end", marker),
        ]
    for axis in "xyzw"[: 4 if info.has_fourth_dimension else 3]:
        fields += [
            (f"{axis}_start", marker),
            (axis, f"{info.byte_order}f4", info.n_atoms),
            (f"{axis}_end", marker),
        ]
    return np.dtype(fields)


def read_dcd(
    path: str | os.PathLike,
    expected_atoms: int | None = None,
    frames: np.ndarray | list[int] | None = None,
) -> np.ndarray:
    """Coordinates (n_frames, n_atoms, 3) float32 in Å of all frames, or of the 0-based ``frames``.

    ``expected_atoms`` (e.g. the atom count of the matching structure) is checked against the file.
    The file is memory-mapped, so selecting a few frames of a long trajectory reads only those.
    """
    info = read_dcd_info(path)
    if expected_atoms is not None and expected_atoms != info.n_atoms:
        raise InputError(
            f"{info.path}: trajectory has {info.n_atoms} atoms but the structure has "
            f"{expected_atoms}; give the structure the trajectory was written for"
        )
    if info.n_frames == 0:
        raise InputError(f"{info.path}: DCD file holds no frames")
    index = np.arange(info.n_frames) if frames is None else np.asarray(frames, dtype=np.int64)
    if index.size == 0 or index.min() < 0 or index.max() >= info.n_frames:
        raise InputError(
            f"{info.path}: frames must lie in 0..{info.n_frames - 1} "
            f"(got {index.min() if index.size else 'none'}..{index.max() if index.size else ''})"
        )
    dtype = _frame_dtype(info)
    records = np.memmap(
        info.path, dtype=dtype, mode="r", offset=info.first_frame_offset, shape=(info.n_frames,)
    )[index]
    expected = {"cell": 48, "x": 4 * info.n_atoms}
    for name in dtype.names:
        if name.endswith(("_start", "_end")):
            wanted = expected["cell" if name.startswith("cell") else "x"]
            if np.any(records[name] != wanted):
                raise InputError(
                    f"{info.path}: DCD record markers in field {name} are wrong; "
                    "the file is damaged or not a DCD trajectory"
                )
    return np.stack([records[a] for a in "xyz"], axis=-1).astype(np.float32)
