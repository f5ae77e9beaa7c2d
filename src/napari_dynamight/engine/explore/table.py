"""The explorer's per-particle table: latent means plus every numeric STAR column, and STAR export.

A deformation run (``engine/deformation/outputs.py``) leaves ``latent_means.npy`` (N, D, in the row
order of the input STAR) and ``particles.star`` (every input column plus ``dmLatent1..D``,
``dmHalfSet``, ``dmValidation``, ``dmErrorAngstrom``, ``dmDisplacementAngstrom``). Either the run
folder or that STAR file alone can be opened. A selection is exported with the original columns and
the optics table; the ``dm*`` result columns are dropped unless asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.particles import ParticleTable
from ..errors import InputError
from ..io.star import read_particles, write_particles

# File names written by engine/deformation/outputs.py (not imported: it sets matplotlib's backend).
LATENTS_FILE = "latent_means.npy"
PARTICLES_FILE = "particles.star"
RESULT_PREFIX = "dm"
LATENT_PREFIX = "dmLatent"


@dataclass
class ExplorerData:
    """Latent means (N, D) and, optionally, the particle table they belong to (same row order)."""

    latents: np.ndarray
    table: ParticleTable | None = None
    source: Path | None = None

    def __post_init__(self) -> None:
        self.latents = np.asarray(self.latents, dtype=np.float32)
        if self.table is not None and len(self.table) != len(self.latents):
            raise InputError(f"{self.source}: {len(self.latents)} latent means for {len(self.table)} "
                             "particles; the run's files do not belong together")

    def __len__(self) -> int:
        return len(self.latents)

    def columns(self) -> dict[str, np.ndarray]:
        """Every per-particle number to colour by: latent dimensions, then numeric STAR columns."""
        values = {f"latent {k + 1}": self.latents[:, k] for k in range(self.latents.shape[1])}
        if self.table is not None:
            frame = self.table.particles
            if RESULT_PREFIX + "HalfSet" not in frame.columns:
                values["half set"] = self.table.half_sets().astype(np.float32)
            for name in frame.columns:
                if name.startswith(LATENT_PREFIX):
                    continue
                if pd.api.types.is_numeric_dtype(frame[name]):
                    values[name] = frame[name].to_numpy(dtype=np.float64)
        return values

    def export(self, path: str | os.PathLike, mask, keep_results: bool = False) -> int:
        """Write the particles in ``mask`` as a RELION STAR subset (all columns, optics table); count."""
        if self.table is None:
            raise InputError("these latent means have no particle table; open a run folder to export")
        rows = np.nonzero(np.asarray(mask, dtype=bool))[0]
        table = self.table
        if not keep_results:
            original = [c for c in table.particles.columns if not c.startswith(RESULT_PREFIX)]
            table = replace(table, particles=table.particles[original])
        write_particles(path, table, rows)
        return len(rows)


def _latents_from_star(table: ParticleTable, path: Path) -> np.ndarray:
    names = sorted((c for c in table.particles.columns if c.startswith(LATENT_PREFIX)),
                   key=lambda c: int(c[len(LATENT_PREFIX):]))
    if not names:
        raise InputError(f"{path}: has no latent columns ({LATENT_PREFIX}1, ...); open the "
                         "particles.star of a deformation run, or the run folder")
    return table.particles[names].to_numpy(dtype=np.float32)


def load_run(path: str | os.PathLike) -> ExplorerData:
    """Open a run folder (latent_means.npy + particles.star) or a run's particles STAR file."""
    path = Path(path)
    if path.is_dir():
        latents_path, star_path = path / LATENTS_FILE, path / PARTICLES_FILE
        if not latents_path.is_file():
            raise InputError(f"{path}: no {LATENTS_FILE}; is this a finished deformation run "
                             "(napari-dynamight optimize-deformations)?")
        latents = np.load(latents_path)
        table = read_particles(star_path) if star_path.is_file() else None
        return ExplorerData(latents, table, path)
    if not path.exists():
        raise InputError(f"{path}: not found; give a run folder or its particles.star")
    table = read_particles(path)
    return ExplorerData(_latents_from_star(table, path), table, path)


GAUSSIAN_ERRORS_FILE = "gaussian_errors.csv"


def read_gaussian_errors(run_directory: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Half 1's reference Gaussians (G, 3) x, y, z in Å and their deformation error estimate (G,) Å."""
    path = Path(run_directory) / GAUSSIAN_ERRORS_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found; error estimates come with a finished deformation run")
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    if table.shape[1] != 4:
        raise InputError(f"{path}: expected 4 columns (x, y, z, error in Å), found {table.shape[1]}")
    return table[:, :3], table[:, 3]
