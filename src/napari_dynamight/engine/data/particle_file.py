"""Particle tables from and to the users' particle files: RELION STAR and cryoSPARC ``.cs``.

``engine.io.star`` and ``engine.io.cryosparc`` read and write the files as plain DataFrames and
records; this module turns them into a validated :class:`ParticleTable`
(:func:`~engine.data.particles.table_from_blocks`) and writes tables (or subsets) back.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from ..errors import InputError
from ..io.cryosparc import (
    RESULT_FIELDS,
    in_cs_terms,
    is_cryosparc,
    passthrough_files,
    read_records,
    relion_blocks,
    write_records,
)
from ..io.star import read_particle_blocks, write_star_blocks
from .particles import ParticleTable, latent_columns, positions, table_from_blocks

__all__ = [
    "passthrough_paths",
    "read_cryosparc",
    "read_particle_file",
    "read_particles",
    "write_cryosparc",
    "write_particles",
]


def read_particle_file(
    path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    passthroughs: list[str | os.PathLike] | None = None,
    pixel_size_angstrom: float | None = None,
) -> ParticleTable:
    """Read a STAR or ``.cs`` particle file (chosen by its suffix) into a :class:`ParticleTable`.

    ``passthroughs`` (``.cs`` only) are merged on ``uid``; None finds the job's own. ``data_root``
    is the folder image names are relative to (for ``.cs``: the cryoSPARC project folder).
    """
    if is_cryosparc(path):
        return read_cryosparc(path, data_root=data_root, passthroughs=passthroughs)
    if passthroughs:
        raise InputError(
            f"{path}: passthrough files apply to cryoSPARC .cs input only; drop --passthrough"
        )
    return read_particles(path, data_root=data_root, pixel_size_angstrom=pixel_size_angstrom)


def passthrough_paths(
    path: str | os.PathLike, passthroughs: list[str | os.PathLike] | None = None
) -> list[Path]:
    """The passthrough files :func:`read_particle_file` merges into ``path`` (none for a STAR
    file)."""
    if not is_cryosparc(path):
        return []
    return passthrough_files(path) if passthroughs is None else [Path(p) for p in passthroughs]


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
    particles, optics, block_names, comments = read_particle_blocks(star_path)
    return table_from_blocks(
        particles, optics, star_path, data_root, pixel_size_angstrom, block_names, comments
    )


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
    blocks = []
    if table.optics is not None:
        name = table.block_names.get("optics", "optics")
        blocks.append((name, table.optics, table.comments.get(name, default_comment)))
    name = table.block_names.get("particles", "particles")
    blocks.append((name, particles, table.comments.get(name, default_comment)))
    write_star_blocks(path, blocks)


def read_cryosparc(
    path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    passthroughs: list[str | os.PathLike] | None = None,
) -> ParticleTable:
    """Read a cryoSPARC particles ``.cs`` file (merged with its passthrough files) into a
    :class:`ParticleTable`; ``engine.io.cryosparc`` documents the conversions.

    ``passthroughs``: extra ``.cs`` files merged on ``uid``; None finds the job's own
    (``engine.io.cryosparc.passthrough_files``). ``data_root``: the cryoSPARC project folder image
    paths are relative to.
    """
    path = Path(path)
    records = read_records(path, passthroughs)
    particles, optics, sources = relion_blocks(records, path, data_root)
    try:
        table = table_from_blocks(
            particles, optics, path, block_names={"particles": "particles", "optics": "optics"}
        )
    except InputError as error:
        raise in_cs_terms(error, sources) from None
    return replace(table, version="cryoSPARC", records=records, source_fields=sources)


def _uids(table: ParticleTable, rows: np.ndarray) -> np.ndarray:
    """A stable 64-bit uid per particle of a STAR input: a hash of its image name."""
    names = table.particles["rlnImageName"].astype(str).to_numpy()[rows]
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
            for name in names
        ],
        dtype=np.uint64,
    )


def _records_from_table(table: ParticleTable, rows: np.ndarray, folder: Path) -> np.ndarray:
    """The documented .cs fields of a STAR input's particles ``rows``; image paths relative to
    ``folder``."""
    files = [os.path.relpath(name, folder.resolve()) for name in table.image_files[rows]]
    width = max(len(name.encode("utf-8")) for name in files)
    fields = [
        ("uid", "<u8"),
        ("blob/path", f"S{width}"),
        ("blob/idx", "<u4"),
        ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"),
    ]
    ctf = table.ctf.select(rows)
    if table.has_ctf:
        fields += [
            ("ctf/accel_kv", "<f4"),
            ("ctf/cs_mm", "<f4"),
            ("ctf/amp_contrast", "<f4"),
            ("ctf/df1_A", "<f4"),
            ("ctf/df2_A", "<f4"),
            ("ctf/df_angle_rad", "<f4"),
            ("ctf/phase_shift_rad", "<f4"),
        ]
    if table.has_poses:
        fields += [
            ("alignments3D/pose", "<f4", (3,)),
            ("alignments3D/shift", "<f4", (2,)),
            ("alignments3D/psize_A", "<f4"),
        ]
    if "rlnRandomSubset" in table.particles.columns:
        fields += [("alignments3D/split", "<u4")]
    out = np.zeros(len(rows), dtype=fields)
    out["uid"] = _uids(table, rows)
    out["blob/path"] = [name.encode("utf-8") for name in files]
    out["blob/idx"] = table.image_indices[rows]
    out["blob/shape"] = table.image_box[rows][:, None]
    pixel = table.pixel_size_angstrom[rows]
    out["blob/psize_A"] = pixel
    if table.has_ctf:
        out["ctf/accel_kv"] = ctf.voltage_kilovolts
        out["ctf/cs_mm"] = ctf.spherical_aberration_millimetres
        out["ctf/amp_contrast"] = ctf.amplitude_contrast
        out["ctf/df1_A"] = ctf.defocus_u_angstrom
        out["ctf/df2_A"] = ctf.defocus_v_angstrom
        out["ctf/df_angle_rad"] = np.deg2rad(ctf.defocus_angle_degrees)
        out["ctf/phase_shift_rad"] = np.deg2rad(ctf.phase_shift_degrees)
    if table.has_poses:
        out["alignments3D/pose"] = Rotation.from_euler(
            "ZYZ", table.euler_degrees[rows], degrees=True
        ).as_rotvec()
        out["alignments3D/shift"] = table.origin_angstrom[rows] / pixel[:, None]
        out["alignments3D/psize_A"] = pixel
    if "rlnRandomSubset" in table.particles.columns:
        out["alignments3D/split"] = table.half_sets()[rows] - 1
    return out


def _result_fields(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The run's result columns of ``frame`` as .cs fields: ``dynamight/...`` and, for each latent
    dimension K (0-based), ``components_mode_K/value`` (and ``/component`` = K) for cryoSPARC's
    viewers."""
    fields = {}
    for k, column in enumerate(latent_columns(frame)):
        values = frame[column].to_numpy(dtype=np.float32)
        fields[f"dynamight/latent_{k + 1}"] = values
        fields[f"components_mode_{k}/component"] = np.full(len(frame), k, dtype=np.uint32)
        fields[f"components_mode_{k}/value"] = values
    for column, name in RESULT_FIELDS.items():
        if column in frame.columns:
            kind = np.float32 if "Angstrom" in column else np.uint32
            fields[name] = frame[column].to_numpy().astype(kind)
    return fields


def write_cryosparc(
    path: str | os.PathLike, table: ParticleTable, index=None, keep_results: bool = True
) -> None:
    """Write the chosen particles (all by default) as a cryoSPARC ``.cs`` file, atomically.

    A ``.cs`` input keeps every original field and ``uid`` bit for bit; a STAR input gets the
    documented fields converted back (uids hashed from the image names, image paths relative to the
    new file's folder). With ``keep_results`` the run's ``dm*`` columns are added (see
    :func:`_result_fields`).
    """
    path = Path(path)
    rows = positions(index, len(table))
    if len(rows) == 0:
        raise InputError(f"{path}: empty selection, nothing to write; select at least one particle")
    base = (
        table.records[rows]
        if table.records is not None
        else _records_from_table(table, rows, path.parent)
    )
    extra = _result_fields(table.particles.iloc[rows]) if keep_results else {}
    write_records(path, base, extra)
