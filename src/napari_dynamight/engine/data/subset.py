"""Particle subsets of a run: read a subset STAR file, find its particles among the run's, and write
a subset whose image names still lead to the original images from wherever it is written.

A run's ``particles.star`` keeps the input STAR's image names, which are relative to the input
STAR's folder (``run.json``'s ``particles``). A subset particle is found by its image
(``NNNNNN@stack``): first the stack file it resolves to, then the name as written, then the stack's
file name alone when only one of the run's stacks has it (a subset saved in another folder).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..run_folder import RunFolder, image_root
from .particle_file import read_particle_file, read_particles, write_particles
from .particles import ParticleTable


def read_run_particles(run_directory: str | os.PathLike, info: dict | None = None) -> ParticleTable:
    """A run's ``particles.star``, image names resolved from the folder they are relative to
    (``run_folder.image_root`` of ``run.json``; the run folder when the run has none)."""
    run = RunFolder(run_directory)
    if info is None and run.is_run():
        info = run.read_info()
    return read_particles(
        run.particles, data_root=image_root(info) if info and info.get("particles") else None
    )


def read_subset(path: str | os.PathLike) -> ParticleTable:
    """A subset file, RELION STAR or cryoSPARC .cs (the one place subset files are read)."""
    return read_particle_file(path)


def _written_names(table: ParticleTable) -> list[tuple[int, str]]:
    """(0-based index, normalised stack name as written) per particle."""
    text = table.particles["rlnImageName"].astype(str).str.strip()
    stacks = text.str.partition("@")[2].where(text.str.contains("@"), text)
    stacks = stacks.str.replace(r":mrcs?$", "", regex=True).map(posixpath.normpath)
    return list(zip(table.image_indices.tolist(), stacks.tolist(), strict=True))


def match_subset(table: ParticleTable, subset: ParticleTable) -> np.ndarray:
    """The rows of ``table`` (a run's particles) holding each particle of ``subset``, in its order;
    InputError naming the subset file and the first particle that is not in the run or is listed
    twice."""
    resolved = {
        key: row
        for row, key in enumerate(zip(table.image_indices.tolist(), table.image_files.tolist()))
    }
    written = {key: row for row, key in enumerate(_written_names(table))}
    by_file_name: dict[tuple[int, str], int | None] = {}
    for (index, stack), row in written.items():
        key = (index, posixpath.basename(stack))
        by_file_name[key] = None if key in by_file_name else row  # None: ambiguous
    rows = np.empty(len(subset), dtype=np.int64)
    names = subset.particles["rlnImageName"].astype(str).str.strip().tolist()
    keys = zip(
        subset.image_indices.tolist(),
        subset.image_files.tolist(),
        _written_names(subset),
        strict=True,
    )
    for position, (index, file, (_, stack)) in enumerate(keys):
        row = resolved.get(
            (index, file),
            written.get((index, stack), by_file_name.get((index, posixpath.basename(stack)))),
        )
        if row is None:
            raise InputError(
                f"{subset.star_path}: particle {names[position]} (row {position + 1}) is not in "
                f"the run's {table.star_path.name}; give a subset of the run's particles"
            )
        rows[position] = row
    seen, first = np.unique(rows, return_index=True)
    if len(seen) < len(rows):
        again = int(np.setdiff1d(np.arange(len(rows)), first)[0])
        raise InputError(
            f"{subset.star_path}: particle {names[again]} (row {again + 1}) is listed twice; list "
            "each particle once"
        )
    return rows


def relocated_names(table: ParticleTable, rows, folder: str | os.PathLike) -> pd.Series:
    """``rlnImageName`` of ``rows`` as seen from ``folder``: unchanged where it already leads to the
    same image file, else ``NNNNNN@`` + the stack's path relative to ``folder``."""
    folder = Path(folder).absolute()
    text = table.particles["rlnImageName"].astype(str).iloc[rows].str.strip().reset_index(drop=True)
    parts = text.str.partition("@")
    has_at = parts[1] == "@"
    numbers = parts[0].where(has_at, "1")
    stacks = parts[2].where(has_at, parts[0]).str.replace(r":mrcs?$", "", regex=True)
    files = pd.Series(table.image_files[rows], dtype=object)
    moved = {}
    for stack, file in set(zip(stacks.tolist(), files.tolist())):
        if str((folder / stack).resolve()) != file:
            moved[(stack, file)] = Path(os.path.relpath(file, folder)).as_posix()
    if not moved:
        return text
    new = [
        moved.get((stack, file))
        for stack, file in zip(stacks.tolist(), files.tolist(), strict=True)
    ]
    changed = pd.Series([n is not None for n in new])
    return text.where(~changed, numbers + "@" + pd.Series([n or "" for n in new]))


def write_subset(path: str | os.PathLike, table: ParticleTable, rows) -> None:
    """Write ``rows`` of ``table`` as a STAR subset (all columns, the optics table) whose image
    names lead to the same original images from ``path``'s folder."""
    rows = np.asarray(rows, dtype=np.int64)
    particles = table.particles.iloc[rows].reset_index(drop=True)
    particles["rlnImageName"] = relocated_names(table, rows, Path(path).parent)
    subset = replace(table, particles=particles)
    write_particles(path, subset)
