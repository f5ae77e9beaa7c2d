"""The particle table: RELION STAR columns turned into per-particle arrays in Å and degrees.

:func:`table_from_blocks` interprets the parsed STAR blocks (RELION 3.0 single block, or 3.1+
optics + particles) once, validates them, and keeps the original DataFrames untouched so a subset
can be written back with every column (see ``engine.data.particle_file.write_particles``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..ctf import CtfParams
from ..errors import InputError
from ..memory import release_freed_memory

# Columns without which a CTF cannot be computed (RELION would silently use 0 or 200 kV).
CTF_REQUIRED = {
    "defocus_u_angstrom": "rlnDefocusU",
    "defocus_v_angstrom": "rlnDefocusV",
    "voltage_kilovolts": "rlnVoltage",
    "spherical_aberration_millimetres": "rlnSphericalAberration",
    "amplitude_contrast": "rlnAmplitudeContrast",
}
# Optional CTF columns and the value RELION uses when they are absent.
CTF_OPTIONAL = {
    "defocus_angle_degrees": ("rlnDefocusAngle", 0.0),
    "phase_shift_degrees": ("rlnPhaseShift", 0.0),
    "bfactor_angstrom2": ("rlnCtfBfactor", 0.0),
    "scale": ("rlnCtfScalefactor", 1.0),
}
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
# The per-particle result columns a deformation run adds to its particle table: dmLatent1..D,
# dmHalfSet, ...
RESULT_PREFIX = "dm"
LATENT_PREFIX = "dmLatent"


def latent_columns(frame: pd.DataFrame) -> list[str]:
    """The ``dmLatentK`` columns of ``frame`` in the order of K."""
    names = [
        c
        for c in frame.columns
        if c.startswith(LATENT_PREFIX) and c[len(LATENT_PREFIX) :].isdigit()
    ]
    return sorted(names, key=lambda c: int(c[len(LATENT_PREFIX) :]))


@dataclass
class ParticleTable:
    """Particles of one STAR file; every array has one entry per row of ``particles``.

    ``image_files`` are absolute paths (str), ``image_indices`` 0-based positions in them.
    ``image_box`` is 0 where neither ``rlnImageSize`` nor a readable stack gave it (yet).
    ``pixel_size_angstrom`` is NaN where the file gives no pixel size. CTF values of columns listed
    in ``missing_ctf_columns`` are NaN; call :meth:`require_ctf` before using the CTF.
    """

    particles: pd.DataFrame
    optics: pd.DataFrame | None
    version: str
    star_path: Path
    euler_degrees: np.ndarray
    origin_angstrom: np.ndarray
    pixel_size_angstrom: np.ndarray
    image_box: np.ndarray
    ctf: CtfParams
    image_files: np.ndarray
    image_indices: np.ndarray
    optics_group: np.ndarray
    has_poses: bool
    missing_ctf_columns: tuple[str, ...] = ()
    block_names: dict[str, str] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)
    # cryoSPARC input (``engine.data.particle_file``): the original records, one per row (every
    # field and ``uid``, kept for exports back to cryoSPARC), and the .cs field each RELION column
    # came from.
    records: np.ndarray | None = None
    source_fields: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.particles)

    def label(self, column: str) -> str:
        """The name the user's file gives ``column`` (the .cs field of a cryoSPARC input)."""
        return self.source_fields.get(column, column)

    @property
    def has_ctf(self) -> bool:
        return not self.missing_ctf_columns

    def require_ctf(self) -> None:
        """Raise InputError if a column the CTF needs is missing."""
        if self.missing_ctf_columns:
            missing = ", ".join(self.label(column) for column in self.missing_ctf_columns)
            raise InputError(
                f"{self.star_path}: missing CTF column(s) {missing}; add them (particles or "
                "optics table) or run without CTF"
            )

    def require_pixel_size(self) -> None:
        """Raise InputError if some particle has no pixel size."""
        if not np.isfinite(self.pixel_size_angstrom).all():
            raise InputError(
                f"{self.star_path}: no pixel size (rlnImagePixelSize, or rlnDetectorPixelSize and "
                "rlnMagnification); add it to the STAR file or give the pixel size explicitly"
            )

    def half_sets(self, seed: int = 0) -> np.ndarray:
        """Half set (1 or 2) of every particle: ``rlnRandomSubset`` if present, else a seeded split.

        The random split is balanced (sizes differ by at most one) and the same for the same seed.
        """
        if "rlnRandomSubset" in self.particles.columns:
            halves = self.particles["rlnRandomSubset"].to_numpy()
            bad = ~np.isin(halves, (1, 2))
            if bad.any():
                row = int(np.nonzero(bad)[0][0])
                raise InputError(
                    f"{self.star_path}: {self.label('rlnRandomSubset')} is {halves[row]!r} in row "
                    f"{row + 1}; expected 1 or 2 (remove the column for a random split)"
                )
            return halves.astype(np.int64)
        n = len(self)
        halves = np.full(n, 2, dtype=np.int64)
        halves[np.random.default_rng(seed).permutation(n)[: (n + 1) // 2]] = 1
        return halves

    def select(self, index) -> ParticleTable:
        """A table of the chosen rows (integer positions or boolean mask); optics are kept whole."""
        rows = positions(index, len(self))
        return replace(
            self,
            particles=self.particles.iloc[rows].reset_index(drop=True),
            euler_degrees=self.euler_degrees[rows],
            origin_angstrom=self.origin_angstrom[rows],
            pixel_size_angstrom=self.pixel_size_angstrom[rows],
            image_box=self.image_box[rows],
            ctf=self.ctf.select(rows),
            image_files=self.image_files[rows],
            image_indices=self.image_indices[rows],
            optics_group=self.optics_group[rows],
            records=None if self.records is None else self.records[rows],
        )

    def check_images(self, index=None) -> None:
        """Check the stacks of the chosen rows: files exist, indices in range, boxes agree.

        Fills ``image_box`` where it was unknown. Reads MRC headers only.
        """
        from ..io.mrc import stack_shape

        rows = np.arange(len(self)) if index is None else positions(index, len(self))
        files = self.image_files[rows]
        for name in pd.unique(files):
            in_file = rows[files == name]
            if not os.path.isfile(name):
                raise InputError(
                    f"{self.star_path}: image stack {name} not found "
                    f"({self.label('rlnImageName')} "
                    f"{self.particles['rlnImageName'].iloc[in_file[0]]!r}); fix the path or give "
                    "the folder the names are relative to (--data-root)"
                )
            n_images, ny, nx = stack_shape(name)
            last = in_file[np.argmax(self.image_indices[in_file])]
            if self.image_indices[last] >= n_images:
                raise InputError(
                    f"{self.star_path}: {self.label('rlnImageName')} "
                    f"{self.particles['rlnImageName'].iloc[last]!r} (row {last + 1}) is past the "
                    f"end of {name} ({n_images} images); fix the STAR file or the stack"
                )
            if ny != nx:
                raise InputError(f"{name}: images are {ny}×{nx} px; particles must be square")
            box = self.image_box[in_file]
            wrong = (box > 0) & (box != nx)
            if wrong.any():
                row = in_file[np.nonzero(wrong)[0][0]]
                raise InputError(
                    f"{self.star_path}: {self.label('rlnImageSize')} {int(self.image_box[row])} "
                    f"(optics group {int(self.optics_group[row])}) disagrees with {name} "
                    f"({nx}×{nx} px); fix rlnImageSize or use the matching stack"
                )
            self.image_box[in_file] = nx


def positions(index, n: int) -> np.ndarray:
    """Integer row positions from None (all), a slice, a boolean mask or integers (also torch)."""
    if index is None:
        return np.arange(n)
    if isinstance(index, slice):
        return np.arange(n)[index]
    if hasattr(index, "detach"):
        index = index.detach().cpu().numpy()
    rows = np.asarray(index)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise ValueError(f"boolean selection has shape {rows.shape}, expected ({n},)")
        return np.nonzero(rows)[0]
    return np.arange(n)[rows.astype(np.int64).reshape(-1)]


class _Columns:
    """Per-particle values of a column found in the particles table or, by group, in the optics."""

    def __init__(self, particles: pd.DataFrame, optics: pd.DataFrame | None, optics_row):
        self.particles, self.optics, self.optics_row = particles, optics, optics_row

    def __contains__(self, name: str) -> bool:
        return name in self.particles.columns or (
            self.optics is not None and name in self.optics.columns
        )

    def get(self, name: str, star_path: Path) -> np.ndarray | None:
        if name in self.particles.columns:
            values = self.particles[name]
        elif self.optics is not None and name in self.optics.columns:
            values = self.optics[name].iloc[self.optics_row].reset_index(drop=True)
        else:
            return None
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(numbers)
        if bad.any():
            row = int(np.nonzero(bad)[0][0])
            raise InputError(
                f"{star_path}: column {name} has a non-numeric value '{values.iloc[row]}' (row "
                f"{row + 1}); fix the STAR file"
            )
        return numbers


def _optics_rows(particles: pd.DataFrame, optics: pd.DataFrame, star_path: Path) -> np.ndarray:
    """Row of the optics table for every particle, checking every group exists."""
    if "rlnOpticsGroup" not in optics.columns:
        raise InputError(f"{star_path}: data_optics has no rlnOpticsGroup column; add it")
    groups = optics["rlnOpticsGroup"].to_numpy()
    repeated = pd.Index(groups).duplicated()
    if repeated.any():
        row = int(np.nonzero(repeated)[0][0])
        raise InputError(
            f"{star_path}: rlnOpticsGroup {groups[row]} appears twice in data_optics (row "
            f"{row + 1}); give each optics group once"
        )
    if "rlnOpticsGroup" not in particles.columns:
        if len(optics) == 1:
            return np.zeros(len(particles), dtype=np.int64)
        raise InputError(
            f"{star_path}: missing column rlnOpticsGroup in the particles table ({len(optics)} "
            "optics groups); add it"
        )
    rows = pd.Index(groups).get_indexer(particles["rlnOpticsGroup"].to_numpy())
    unknown = rows < 0
    if unknown.any():
        row = int(np.nonzero(unknown)[0][0])
        value = particles["rlnOpticsGroup"].iloc[row]
        known = ", ".join(str(g) for g in groups)
        raise InputError(
            f"{star_path}: rlnOpticsGroup {value} (row {row + 1}) is not in data_optics (groups "
            f"{known}); fix the particle's group or add it to data_optics"
        )
    return rows


def _pixel_size(cols: _Columns, star_path: Path, fallback: float | None, n: int) -> np.ndarray:
    """Image pixel size in Å: rlnImagePixelSize, rlnPixelSize, or detector pixel / magnification."""
    for name in ("rlnImagePixelSize", "rlnPixelSize"):
        values = cols.get(name, star_path)
        if values is not None:
            break
    else:
        detector, magnification = (
            cols.get(name, star_path) for name in ("rlnDetectorPixelSize", "rlnMagnification")
        )
        if detector is not None and magnification is not None:
            values, name = detector * 1e4 / magnification, "rlnDetectorPixelSize/rlnMagnification"
        else:
            fill = np.nan if fallback is None else float(fallback)
            values, name = np.full(n, fill), "pixel size"
    bad = values <= 0
    if bad.any():
        row = int(np.nonzero(bad)[0][0])
        raise InputError(
            f"{star_path}: {name} is {values[row]} (row {row + 1}); it must be positive"
        )
    return values


def _image_names(names: pd.Series, star_path: Path, base: Path) -> tuple[np.ndarray, np.ndarray]:
    """(absolute file, 0-based index) per particle from ``N@file`` names (no ``@``: image 1)."""
    text = names.astype(str).str.strip()
    parts = text.str.partition("@")
    has_at = parts[1] == "@"
    number_text = parts[0].where(has_at, "1")
    file_text = parts[2].where(has_at, parts[0]).str.replace(r":mrcs?$", "", regex=True)
    numbers = pd.to_numeric(number_text, errors="coerce").to_numpy(dtype=np.float64)
    bad = (
        ~np.isfinite(numbers)
        | (numbers < 1)
        | (numbers != np.round(numbers))
        | (file_text == "").to_numpy()
    )
    if bad.any():
        row = int(np.nonzero(bad)[0][0])
        raise InputError(
            f"{star_path}: rlnImageName {text.iloc[row]!r} (row {row + 1}) is not 'N@stack.mrcs' "
            "with N >= 1; fix the name"
        )
    # one str object per stack, shared by its particles (not one copy per particle)
    codes, stacks = pd.factorize(file_text)
    resolved = np.array([str((base / name).resolve()) for name in stacks], dtype=object)
    return resolved[codes], numbers.astype(np.int64) - 1


def _check_names_without_index(names: pd.Series, files: np.ndarray, star_path: Path) -> None:
    """A name without ``N@`` means image 1, which is only unambiguous for a stack of one image."""
    from ..io.mrc import stack_shape

    without = ~names.astype(str).str.contains("@").to_numpy()
    for name in pd.unique(files[without]):
        if not os.path.isfile(name):
            continue  # reported with its row when the images are checked
        try:
            count = stack_shape(name)[0]
        except InputError:
            continue
        if count > 1:
            row = int(np.nonzero(without & (files == name))[0][0])
            raise InputError(
                f"{star_path}: rlnImageName {names.iloc[row]!r} (row {row + 1}) has no 'N@' but "
                f"{name} holds {count} images; write the image number, e.g. '1@{Path(name).name}'"
            )


def table_from_blocks(
    particles: pd.DataFrame,
    optics: pd.DataFrame | None,
    star_path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    pixel_size_angstrom: float | None = None,
    block_names: dict[str, str] | None = None,
    comments: dict[str, str] | None = None,
) -> ParticleTable:
    """Build and validate a :class:`ParticleTable` from parsed STAR blocks.

    ``data_root`` replaces the STAR file's folder as the base of relative image names;
    ``pixel_size_angstrom`` is used only when the file itself gives no pixel size.
    """
    from ..io.mrc import stack_shape

    star_path = Path(star_path)
    n = len(particles)
    for block, frame in (("particles", particles), ("optics", optics)):
        if frame is not None and frame.columns.duplicated().any():
            column = frame.columns[frame.columns.duplicated()][0]
            raise InputError(
                f"{star_path}: column {column} appears twice in data_{block}; remove one of them"
            )
    if "rlnImageName" not in particles.columns:
        raise InputError(f"{star_path}: missing required column rlnImageName; add the image names")
    optics_row = None if optics is None else _optics_rows(particles, optics, star_path)
    cols = _Columns(particles, optics, optics_row)

    if optics is not None:
        optics_group = optics["rlnOpticsGroup"].to_numpy()[optics_row].astype(np.int64)
    elif "rlnOpticsGroup" in particles.columns:
        optics_group = particles["rlnOpticsGroup"].to_numpy().astype(np.int64)
    else:
        optics_group = np.ones(n, dtype=np.int64)

    pixel_size = _pixel_size(cols, star_path, pixel_size_angstrom, n)

    angles = [cols.get(name, star_path) for name in ANGLE_COLUMNS]
    euler = np.stack([np.zeros(n) if a is None else a for a in angles], axis=1)
    if "rlnOriginXAngst" in cols or "rlnOriginYAngst" in cols:
        origin = [cols.get(name, star_path) for name in ("rlnOriginXAngst", "rlnOriginYAngst")]
        origin = np.stack([np.zeros(n) if o is None else o for o in origin], axis=1)
    else:
        origin = [cols.get(name, star_path) for name in ("rlnOriginX", "rlnOriginY")]
        origin = (
            np.stack([np.zeros(n) if o is None else o for o in origin], axis=1)
            * pixel_size[:, None]
        )

    ctf_values, missing = {}, []
    for field_name, column in CTF_REQUIRED.items():
        values = cols.get(column, star_path)
        if values is None:
            missing.append(column)
            values = np.full(n, np.nan)
        ctf_values[field_name] = values
    for field_name, (column, default) in CTF_OPTIONAL.items():
        values = cols.get(column, star_path)
        ctf_values[field_name] = np.full(n, default) if values is None else values
    for field_name in ("defocus_u_angstrom", "defocus_v_angstrom"):
        negative = ctf_values[field_name] < 0
        if negative.any():
            row = int(np.nonzero(negative)[0][0])
            raise InputError(
                f"{star_path}: {CTF_REQUIRED[field_name]} is {ctf_values[field_name][row]:g} (row "
                f"{row + 1}); defocus must be positive (underfocus, in Å) as RELION writes it; "
                "fix the STAR file"
            )

    base = Path(data_root) if data_root is not None else star_path.parent
    files, indices = _image_names(particles["rlnImageName"], star_path, base)

    _check_names_without_index(particles["rlnImageName"], files, star_path)

    size = cols.get("rlnImageSize", star_path)
    image_box = np.zeros(n, dtype=np.int64) if size is None else size.astype(np.int64)
    if size is None:
        for name in pd.unique(files):
            if os.path.isfile(name):
                image_box[files == name] = stack_shape(name)[2]

    table = ParticleTable(
        particles=particles,
        optics=optics,
        version="3.0" if optics is None else "3.1",
        star_path=star_path,
        euler_degrees=euler,
        origin_angstrom=origin,
        pixel_size_angstrom=pixel_size,
        image_box=image_box,
        ctf=CtfParams(**ctf_values),
        image_files=files,
        image_indices=indices,
        optics_group=optics_group,
        has_poses=all(a is not None for a in angles),
        missing_ctf_columns=tuple(missing),
        block_names=dict(block_names or {}),
        comments=dict(comments or {}),
    )
    release_freed_memory()  # the parser's and the name parsing's temporaries, ~1 kB per particle
    return table
