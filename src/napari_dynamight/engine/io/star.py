"""RELION STAR files as plain DataFrames: read (3.0 single block, 3.1+/5 optics + particles)
and write loop blocks.

Parsing uses the ``starfile`` package. Writing keeps every column and the version comment of each
block, and prints floats with Python's shortest exact representation so that read → write → read
gives identical DataFrames. The particle table built from these blocks is
``engine.data.particle_file``'s.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import starfile
from starfile.writer import loop_block

from ..errors import InputError
from .atomic import atomic_path

__all__ = ["read_particle_blocks", "read_star_blocks", "write_star_blocks"]

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


def read_particle_blocks(
    star_path: str | os.PathLike,
) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, str], dict[str, str]]:
    """The particle and optics blocks of a RELION particle STAR file, as parsed.

    Returns ``(particles, optics, block_names, comments)``: ``optics`` is None for a RELION 3.0
    file; ``block_names`` maps ``"particles"`` (and ``"optics"``) to the file's block names and
    ``comments`` holds each block's version comment, so :func:`write_star_blocks` writes the
    same layout back. ``engine.data.particle_file.read_particles`` turns them into a table.
    """
    path = Path(star_path)
    blocks, comments = read_star_blocks(path)
    name = _particle_block_name(blocks, path)
    particles = blocks[name]
    if len(particles) == 0:
        raise InputError(f"{path}: the particle table is empty; give a STAR file with particles")
    optics = blocks.get("optics") if name != "optics" else None
    block_names = {"particles": name} | ({"optics": "optics"} if optics is not None else {})
    return particles, optics, block_names, comments


def _format_float(value: float) -> str:
    return repr(float(value))


def _block_lines(name: str, frame: pd.DataFrame, comment: str | None) -> list[str]:
    lines = [comment, ""] if comment else []
    return lines + list(loop_block(name, frame, float_format=_format_float, separator=" "))


def write_star_blocks(
    path: str | os.PathLike, blocks: list[tuple[str, pd.DataFrame, str | None]]
) -> None:
    """Write loop blocks ``(name, frame, comment)`` to a STAR file in order, atomically.

    Every column is written with its values unchanged (floats in their shortest exact form).
    """
    lines: list[str] = []
    for name, frame, comment in blocks:
        lines += _block_lines(name, frame, comment)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
