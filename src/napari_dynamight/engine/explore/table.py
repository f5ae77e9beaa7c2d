"""The explorer's per-particle table: latent means plus every numeric STAR column, and STAR or .cs
export.

A deformation run (``engine/deformation/outputs.py``; file names in ``engine/run_folder.py``) leaves
the latent means (N, D, in the row order of the input STAR) and a particle table (every input column
plus ``dmLatent1..D``, ``dmHalfSet``, ``dmValidation``, ``dmErrorAngstrom``,
``dmDisplacementAngstrom``). Either the run folder or that STAR file alone can be opened. The two
half sets' latent spaces are separate coordinate systems: :meth:`ExplorerData.view` gives one half's
particles and codes (``halves.py``), and :meth:`ExplorerData.columns` that view's per-particle
values. A selection (rows of the original STAR) is exported with the original columns and the optics
table, its image names leading to the original images from wherever it is written
(``data/subset.py``); the ``dm*`` result columns are dropped unless asked for. A file name ending in
``.cs`` exports to cryoSPARC instead (``engine.io.cryosparc``): a run made from a ``.cs`` keeps
every original field and ``uid`` (``RunFolder.input_records``), and the results become
``dynamight/*`` and ``components_mode_K/value`` fields when asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.particle_file import read_particle_file, write_cryosparc
from ..data.particles import LATENT_PREFIX, RESULT_PREFIX, ParticleTable, latent_columns
from ..data.subset import read_run_particles, write_subset
from ..errors import InputError
from ..io.cryosparc import is_cryosparc
from ..run_folder import RunFolder
from .halves import HalfView, half_membership, half_view


@dataclass
class ExplorerData:
    """Latent means (N, D) and, optionally, the particle table they belong to (same row order).

    ``half2_validation`` (N, D): half 2's codes of the validation particles, NaN elsewhere.
    """

    latents: np.ndarray
    table: ParticleTable | None = None
    source: Path | None = None
    half2_validation: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.latents = np.asarray(self.latents, dtype=np.float32)
        if self.table is not None and len(self.table) != len(self.latents):
            raise InputError(
                f"{self.source}: {len(self.latents)} latent means for {len(self.table)} "
                "particles; the run's files do not belong together"
            )
        if self.half2_validation is not None:
            self.half2_validation = np.asarray(self.half2_validation, dtype=np.float32)
            if self.half2_validation.shape != self.latents.shape:
                raise InputError(
                    f"{self.source}: the half-2 validation codes have shape "
                    f"{self.half2_validation.shape}, the latent means {self.latents.shape}; the "
                    "run's files do not belong together"
                )
        self._membership = half_membership(None if self.table is None else self.table.particles)

    def __len__(self) -> int:
        return len(self.latents)

    @property
    def halves(self) -> list[int | None]:
        """The half sets to view one at a time: [1, 2], or [None] without half sets."""
        return [None] if self._membership is None else [1, 2]

    def view(self, half: int | None = None) -> HalfView:
        """Half ``half``'s particles with that half's codes (None: all, when there are no
        halves)."""
        if half not in self.halves:
            raise InputError(
                f"half set {half} is not in these data; choose one of "
                f"{', '.join(str(h) for h in self.halves)}"
            )
        return half_view(self.latents, self._membership, half, self.half2_validation)

    def own_half(self, half: int) -> HalfView:
        """Only half set ``half``'s own particles (its validation particles included), in its own
        latent space: the codes to judge one half's latent space by (``view`` also shows the other
        half's validation particles, which are held out of both decoders)."""
        view = self.view(half)
        if half is None:
            return view
        mine = self._membership[0][view.rows] == half
        return HalfView(half, view.rows[mine], view.latents[mine])

    def columns(self, view: HalfView | None = None) -> dict[str, np.ndarray]:
        """Every per-particle number of ``view``'s particles (default: all) to colour by: latent
        dimensions (the view's codes), then numeric STAR columns."""
        view = view or HalfView(None, np.arange(len(self)), self.latents)
        values = {f"latent {k + 1}": view.latents[:, k] for k in range(view.latents.shape[1])}
        if self.table is not None:
            frame = self.table.particles
            if RESULT_PREFIX + "HalfSet" not in frame.columns:
                values["half set"] = self.table.half_sets()[view.rows].astype(np.float32)
            for name in frame.columns:
                if name.startswith(LATENT_PREFIX):
                    continue
                if pd.api.types.is_numeric_dtype(frame[name]):
                    values[name] = frame[name].to_numpy(dtype=np.float64)[view.rows]
        return values

    def export(self, path: str | os.PathLike, rows, keep_results: bool = False) -> int:
        """Write particles (a boolean mask (N,) or STAR row indices) as a RELION STAR subset with
        all columns and the optics table, image names leading to the original images, or as a
        cryoSPARC .cs file when ``path`` ends in ``.cs``
        (``engine.data.particle_file.write_cryosparc``); returns the count."""
        if self.table is None:
            raise InputError(
                "these latent means have no particle table; open a run folder to export"
            )
        rows = np.asarray(rows)
        rows = np.nonzero(rows)[0] if rows.dtype == bool else np.unique(rows.astype(np.int64))
        table = self.table
        if is_cryosparc(path):
            write_cryosparc(path, table, rows, keep_results=keep_results)
            return len(rows)
        if not keep_results:
            original = [c for c in table.particles.columns if not c.startswith(RESULT_PREFIX)]
            table = replace(table, particles=table.particles[original])
        if len(rows) == 0:
            raise InputError(
                f"{path}: empty selection, nothing to write; select at least one particle"
            )
        write_subset(path, table, rows)
        return len(rows)


def _latents_from_star(table: ParticleTable, path: Path) -> np.ndarray:
    names = latent_columns(table.particles)
    if not names:
        raise InputError(
            f"{path}: has no latent columns ({LATENT_PREFIX}1, ...); open the particles.star of a "
            "deformation run, or the run folder"
        )
    return table.particles[names].to_numpy(dtype=np.float32)


def load_run(path: str | os.PathLike) -> ExplorerData:
    """Open a run folder (latent means + particle table) or a run's particles STAR file."""
    path = Path(path)
    if path.is_dir():
        run = RunFolder(path)
        if not run.latents.is_file():
            raise InputError(
                f"{path}: no {run.latents.name}; is this a finished deformation run "
                "(napari-dynamight optimize-deformations)?"
            )
        latents = np.load(run.latents)
        table = (
            _with_input_records(read_run_particles(path), run) if run.particles.is_file() else None
        )
        return ExplorerData(latents, table, path, _half2_codes(run))
    if not path.exists():
        raise InputError(
            f"{path}: not found; give a run folder or its {RunFolder(path).particles.name}"
        )
    run = RunFolder(path.parent)
    in_run = path.name == run.particles.name and run.is_run()
    table = read_run_particles(run.path) if in_run else read_particle_file(path)
    if path.name == run.particles.name:
        table = _with_input_records(table, run)
    half2 = _half2_codes(run) if path.name == run.particles.name else None
    return ExplorerData(_latents_from_star(table, path), table, path, half2)


def _with_input_records(table: ParticleTable, run: RunFolder) -> ParticleTable:
    """``table`` with the run's cryoSPARC input records (if it was made from a .cs file), so that a
    .cs export keeps every original field."""
    if not run.input_records.is_file():
        return table
    records = np.load(run.input_records, allow_pickle=False)
    if records.dtype.names is None or len(records) != len(table):
        raise InputError(
            f"{run.input_records}: {len(records)} records for {len(table)} particles in "
            f"{run.particles.name}; the run's files do not belong together"
        )
    return replace(table, records=records)


def _half2_codes(run: RunFolder) -> np.ndarray | None:
    return np.load(run.latents_half2) if run.latents_half2.is_file() else None


def read_gaussian_errors(run_directory: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Half 1's reference Gaussians (G, 3) x, y, z in Å and their deformation error estimate (G,)
    Å."""
    path = RunFolder(run_directory).gaussian_errors
    if not path.is_file():
        raise InputError(f"{path}: not found; error estimates come with a finished deformation run")
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    if table.shape[1] != 4:
        raise InputError(
            f"{path}: expected 4 columns (x, y, z, error in Å), found {table.shape[1]}"
        )
    return table[:, :3], table[:, 3]
