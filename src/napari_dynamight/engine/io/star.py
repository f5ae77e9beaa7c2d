"""RELION particle STAR files: read (3.0 single block, 3.1+/5 optics + particles) and write subsets.

Parsing uses the ``starfile`` package. Writing keeps every original column, the whole optics
table and the version comment of each block, and prints floats with Python's shortest exact
representation so that read → write → read gives identical DataFrames.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import starfile
from starfile.writer import loop_block

from ..data.particles import ParticleTable, positions, table_from_blocks
from ..errors import InputError
from .atomic import atomic_path

__all__ = ["read_particles", "read_star_blocks", "write_particles"]

_DATA_LINE = re.compile(r"^\s*data_(\S*)")


def _block_comments(path: Path) -> dict[str, str]:
    """The last ``#`` comment line before each ``data_`` block (e.g. ``# version 30001``)."""
    comments, last = {}, None
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            stripped = line.strip()
            if stripped.startswith("#"):
                last = stripped
            elif match := _DATA_LINE.match(line):
                if last is not None:
                    comments[match.group(1)] = last
                last = None
    return comments


def read_star_blocks(path: str | os.PathLike) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """All loop blocks of a STAR file by name (``data_`` alone gives ``""``) and their comments."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: STAR file not found; check the path")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as error:  # starfile raises many kinds of errors on malformed text
        raise InputError(f"{path}: cannot parse as a STAR file ({error}); check the file") from None
    loops = {name: block for name, block in blocks.items() if isinstance(block, pd.DataFrame)}
    return loops, _block_comments(path)


def _particle_block_name(blocks: dict[str, pd.DataFrame], path: Path) -> str:
    """``particles`` if present, else the only non-optics block, else one with rlnImageName."""
    if "particles" in blocks:
        return "particles"
    candidates = [name for name in blocks if name != "optics"]
    if len(candidates) == 1:
        return candidates[0]
    with_images = [name for name in candidates if "rlnImageName" in blocks[name].columns]
    if with_images:
        return with_images[0]
    raise InputError(
        f"{path}: no particle table (a data_particles block with rlnImageName); "
        "give a particle STAR file"
    )


def read_particles(
    star_path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    pixel_size_angstrom: float | None = None,
) -> ParticleTable:
    """Read a RELION particle STAR file into a validated :class:`ParticleTable`.

    Image names are relative to the STAR file's folder, or to ``data_root`` if given (for moved
    projects). ``pixel_size_angstrom`` is used only if the file has no pixel size at all.
    Image stacks are not opened here except to learn a missing box size; see
    :meth:`ParticleTable.check_images`.
    """
    path = Path(star_path)
    blocks, comments = read_star_blocks(path)
    name = _particle_block_name(blocks, path)
    particles = blocks[name]
    if len(particles) == 0:
        raise InputError(f"{path}: the particle table is empty; give a STAR file with particles")
    optics = blocks.get("optics") if name != "optics" else None
    block_names = {"particles": name} | ({"optics": "optics"} if optics is not None else {})
    return table_from_blocks(
        particles, optics, path, data_root, pixel_size_angstrom, block_names, comments
    )


def _format_float(value: float) -> str:
    return repr(float(value))


def _block_lines(name: str, frame: pd.DataFrame, comment: str | None) -> list[str]:
    lines = [comment, ""] if comment else []
    return lines + list(loop_block(name, frame, float_format=_format_float, separator=" "))


def write_particles(path: str | os.PathLike, table: ParticleTable, index=None) -> None:
    """Write the chosen particles (all by default) to a STAR file, atomically.

    ``index`` is a boolean mask or integer positions into ``table``. Every original column is kept,
    values are unchanged, and the optics table (3.1+) is written whole.
    """
    rows = positions(index, len(table))
    if len(rows) == 0:
        raise InputError(f"{path}: empty selection, nothing to write; select at least one particle")
    particles = table.particles.iloc[rows].reset_index(drop=True)
    default_comment = "# version 30001" if table.optics is not None else None
    lines: list[str] = []
    if table.optics is not None:
        name = table.block_names.get("optics", "optics")
        lines += _block_lines(name, table.optics, table.comments.get(name, default_comment))
    name = table.block_names.get("particles", "particles")
    lines += _block_lines(name, particles, table.comments.get(name, default_comment))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
