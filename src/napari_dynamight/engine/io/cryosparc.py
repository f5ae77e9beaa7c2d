"""cryoSPARC ``.cs`` particle files as plain records and RELION-column DataFrames.

A ``.cs`` file is a NumPy structured array saved with ``np.save``, one record per particle.
:func:`read_records` loads one (merged with the job's passthrough files on ``uid``),
:func:`relion_blocks` turns the documented fields into the equivalent RELION particles and optics
DataFrames, and :func:`write_records` saves records back. ``engine.data.particle_file`` builds the
particle table from those DataFrames, so every check of a STAR input applies to a ``.cs`` input
too, and keeps the original records on the table for exports.

Conversions (cryoSPARC → RELION; pyem's ``metadata/cryosparc2.py`` and cryoDRGN's
``parse_pose_csparc`` agree, and the tests check it with projections):

- ``alignments3D/pose`` (``alignments_class_0/pose`` for ab-initio jobs) is an axis-angle vector
  ``v``; its rotation matrix ``exp([v]×)`` is the transpose of RELION's matrix ``A``, i.e. ZYZ Euler
  (rot, tilt, psi) are the intrinsic ZYZ angles of ``exp([v]×)``.
- ``alignments3D/shift`` is RELION's origin in pixels, same sign, in pixels of the alignment
  (``alignments3D/psize_A``, which differs from ``blob/psize_A`` when the job downsampled the
  images): origin (Å) = shift × ``alignments3D/psize_A`` (× ``blob/psize_A`` when that field is
  absent).
- ``alignments3D/split`` 0/1 is ``rlnRandomSubset`` 1/2 (ignored when every particle has the same
  value, as in jobs that make no half sets: the halves are then split at random); ``blob/idx`` is
  0-based, RELION's ``N@`` 1-based.
- ``ctf/df1_A``, ``ctf/df2_A`` are defocus U, V (Å); ``ctf/df_angle_rad`` and
  ``ctf/phase_shift_rad`` are radians (RELION: degrees); ``ctf/accel_kv``, ``ctf/cs_mm``,
  ``ctf/amp_contrast`` as RELION's.
- ``blob/path`` (a leading ``>`` removed) is relative to the cryoSPARC project folder; it is looked
  up under ``data_root`` if given, else the ``.cs`` file's folder and then each of its parents.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from ..errors import InputError
from .atomic import save_npy

__all__ = [
    "RESULT_FIELDS",
    "in_cs_terms",
    "is_cryosparc",
    "passthrough_files",
    "read_records",
    "relion_blocks",
    "write_records",
]

NUMPY_MAGIC = b"\x93NUMPY"
COMPRESSED_MAGIC = b"CSDAT"  # after one version byte (cryosparc-tools writes \x94 or \x95)
ALIGNMENT_PREFIXES = ("alignments3D", "alignments_class_0")
REQUIRED_FIELDS = ("uid", "blob/path", "blob/idx", "blob/psize_A")
# RELION column: the .cs field it is read from (the pose and shift fields get their prefix at read
# time).
OPTICS_FIELDS = {
    "rlnImagePixelSize": "blob/psize_A",
    "rlnImageSize": "blob/shape",
    "rlnVoltage": "ctf/accel_kv",
    "rlnSphericalAberration": "ctf/cs_mm",
    "rlnAmplitudeContrast": "ctf/amp_contrast",
}
PARTICLE_FIELDS = {
    "rlnImageName": "blob/path",
    "rlnDefocusU": "ctf/df1_A",
    "rlnDefocusV": "ctf/df2_A",
    "rlnDefocusAngle": "ctf/df_angle_rad",
    "rlnPhaseShift": "ctf/phase_shift_rad",
}
RADIAN_COLUMNS = ("rlnDefocusAngle", "rlnPhaseShift")
# The run's per-particle result columns (STAR) and the .cs fields they are exported as.
RESULT_FIELDS = {
    "dmHalfSet": "dynamight/half_set",
    "dmValidation": "dynamight/validation",
    "dmErrorAngstrom": "dynamight/error_A",
    "dmDisplacementAngstrom": "dynamight/displacement_A",
}


def is_cryosparc(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a cryoSPARC ``.cs`` file (by its suffix)."""
    return Path(path).suffix.lower() == ".cs"


def _load(path: Path) -> np.ndarray:
    """The structured array of a ``.cs`` file, or a one-line InputError."""
    if not path.is_file():
        raise InputError(f"{path}: cryoSPARC .cs file not found; check the path")
    with open(path, "rb") as handle:
        head = handle.read(len(NUMPY_MAGIC))
    if head[1:6] == COMPRESSED_MAGIC:
        raise InputError(
            f"{path}: compressed cryoSPARC .cs format (CSDAT), which NumPy cannot read; save it "
            "again in the plain format (cryosparc-tools: Dataset.load(path).save(out, format=1))"
        )
    if head != NUMPY_MAGIC:
        raise InputError(
            f"{path}: not a cryoSPARC .cs file (no NumPy header); give a particles .cs from a "
            "cryoSPARC job folder"
        )
    try:
        records = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(
            f"{path}: cannot read as a cryoSPARC .cs file ({error}); copy or export it again"
        ) from None
    if records.dtype.names is None or records.ndim != 1:
        raise InputError(
            f"{path}: holds a plain {records.dtype} array of shape {records.shape}, not cryoSPARC "
            "particle records; give a particles .cs"
        )
    if "uid" not in records.dtype.names:
        raise InputError(
            f"{path}: no field uid; give a cryoSPARC particles .cs (every record has a uid)"
        )
    uid = records["uid"]
    if len(np.unique(uid)) != len(uid):
        raise InputError(f"{path}: field uid repeats a value; each particle needs its own uid")
    return records


def passthrough_files(path: str | os.PathLike) -> list[Path]:
    """The job's passthrough files beside ``path``: ``J12_passthrough_particles.cs`` for
    ``J12_particles.cs`` (or ``cryosparc_P1_J12_005_particles.cs``), any ``*passthrough_<name>.cs``
    whose ``<name>`` ends the file's name."""
    path = Path(path)
    found = []
    for candidate in sorted(path.parent.glob("*passthrough_*.cs")):
        tail = candidate.name.split("passthrough_", 1)[1]
        if candidate.name != path.name and (path.name == tail or path.name.endswith("_" + tail)):
            found.append(candidate)
    return found


def _merge(records: np.ndarray, path: Path, extra: np.ndarray, extra_path: Path) -> np.ndarray:
    """``records`` with the fields of ``extra`` it lacks, matched on ``uid``."""
    new = [name for name in extra.dtype.names if name not in records.dtype.names]
    if not new:
        return records
    if len(extra) == 0:
        raise InputError(
            f"{extra_path}: holds no particles; give the passthrough file of the same job"
        )
    order = np.argsort(extra["uid"], kind="stable")
    found = np.searchsorted(extra["uid"], records["uid"], sorter=order)
    found = order[np.minimum(found, len(order) - 1)]
    unmatched = extra["uid"][found] != records["uid"]
    if unmatched.any():
        row = int(np.nonzero(unmatched)[0][0])
        raise InputError(
            f"{extra_path}: has no uid {int(records['uid'][row])} of {path.name} (row {row + 1}); "
            "give the passthrough file of the same job"
        )
    fields = [(name, records.dtype.fields[name][0]) for name in records.dtype.names]
    fields += [(name, extra.dtype.fields[name][0]) for name in new]
    merged = np.empty(len(records), dtype=fields)
    for name in records.dtype.names:
        merged[name] = records[name]
    for name in new:
        merged[name] = extra[name][found]
    return merged


def _numbers(records: np.ndarray, name: str, path: Path, column: int | None = None) -> np.ndarray:
    """Field ``name`` (one column of it for vector fields) as finite float64, or an InputError."""
    values = records[name]
    if values.dtype.kind not in "biuf":
        raise InputError(
            f"{path}: field {name} holds {values.dtype} values, not numbers; fix the .cs file"
        )
    values = values.astype(np.float64)
    if column is not None:
        if values.ndim != 2 or values.shape[1] <= column:
            raise InputError(
                f"{path}: field {name} has shape {values.shape[1:]} per particle; expected at "
                f"least {column + 1} values"
            )
        values = values[:, column]
    elif values.ndim != 1:
        raise InputError(
            f"{path}: field {name} has shape {values.shape[1:]} per particle; expected one value"
        )
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.nonzero(bad)[0][0])
        raise InputError(
            f"{path}: field {name} is {values[row]} in row {row + 1}; fix the .cs file"
        )
    return values


def _vectors(records: np.ndarray, name: str, path: Path, width: int) -> np.ndarray:
    return np.stack([_numbers(records, name, path, k) for k in range(width)], axis=1)


def _text(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _image_base(paths: list[str], path: Path, data_root) -> Path:
    """The folder ``blob/path`` is relative to: ``data_root``, else the first of the .cs file's
    folder and its parents that holds the first stack (the .cs folder when none does)."""
    if data_root is not None:
        return Path(data_root).resolve()
    folder = path.parent.resolve()
    first = next((p for p in paths if not os.path.isabs(p)), None)
    if first is None:
        return folder
    for base in (folder, *folder.parents):
        if (base / first).is_file():
            return base
    return folder


def _alignment_prefix(records: np.ndarray) -> str | None:
    names = records.dtype.names
    return next((p for p in ALIGNMENT_PREFIXES if f"{p}/pose" in names), None)


def relion_blocks(
    records: np.ndarray, path: Path, data_root
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """RELION particles and optics DataFrames equivalent to ``records``, and each column's .cs
    field."""
    names = set(records.dtype.names)
    for name in REQUIRED_FIELDS:
        if name not in names:
            raise InputError(
                f"{path}: missing field {name}; give a particles .cs with image locations (or add "
                "its passthrough file)"
            )
    sources = dict(PARTICLE_FIELDS) | OPTICS_FIELDS
    blob_paths = [p[1:] if p.startswith(">") else p for p in _text(records["blob/path"])]
    folder = path.parent.resolve()
    base = _image_base(blob_paths, path, data_root)
    unique = {p: os.path.relpath(base / p, folder) for p in dict.fromkeys(blob_paths)}
    index = _numbers(records, "blob/idx", path)
    if (index < 0).any() or (index != np.round(index)).any():
        row = int(np.nonzero((index < 0) | (index != np.round(index)))[0][0])
        raise InputError(
            f"{path}: field blob/idx is {index[row]} in row {row + 1}; it must be a 0-based "
            "image number"
        )
    image_names = [f"{int(i) + 1:06d}@{unique[p]}" for i, p in zip(index, blob_paths)]
    particles = pd.DataFrame({"rlnImageName": image_names})

    optics_values = {"rlnImagePixelSize": _numbers(records, "blob/psize_A", path)}
    if "blob/shape" in names:
        optics_values["rlnImageSize"] = _numbers(records, "blob/shape", path, 1).astype(np.int64)
    for column in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        if OPTICS_FIELDS[column] in names:
            optics_values[column] = _numbers(records, OPTICS_FIELDS[column], path)
    for column in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift"):
        if PARTICLE_FIELDS[column] in names:
            values = _numbers(records, PARTICLE_FIELDS[column], path)
            particles[column] = np.rad2deg(values) if column in RADIAN_COLUMNS else values

    prefix = _alignment_prefix(records)
    if prefix is not None:
        pose = _vectors(records, f"{prefix}/pose", path, 3)
        euler = Rotation.from_rotvec(pose).as_euler("ZYZ", degrees=True)
        for k, column in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
            particles[column] = euler[:, k]
            sources[column] = f"{prefix}/pose"
        if f"{prefix}/shift" in names:
            pixel = (
                _numbers(records, f"{prefix}/psize_A", path)
                if f"{prefix}/psize_A" in names
                else optics_values["rlnImagePixelSize"]
            )
            shift = _vectors(records, f"{prefix}/shift", path, 2) * pixel[:, None]
            particles["rlnOriginXAngst"], particles["rlnOriginYAngst"] = shift[:, 0], shift[:, 1]
            sources |= {"rlnOriginXAngst": f"{prefix}/shift", "rlnOriginYAngst": f"{prefix}/shift"}
    split = next((f"{p}/split" for p in ALIGNMENT_PREFIXES if f"{p}/split" in names), None)
    if split is not None and len(np.unique(records[split])) > 1:
        values = _numbers(records, split, path)
        bad = ~np.isin(values, (0, 1))
        if bad.any():
            row = int(np.nonzero(bad)[0][0])
            raise InputError(
                f"{path}: field {split} is {values[row]:g} in row {row + 1}; expected 0 or 1 "
                "(the half set)"
            )
        particles["rlnRandomSubset"] = values.astype(np.int64) + 1
        sources["rlnRandomSubset"] = split

    keys = pd.DataFrame(optics_values)
    group = keys.groupby(list(keys.columns), sort=False, dropna=False).ngroup().to_numpy() + 1
    particles["rlnOpticsGroup"] = group
    optics = keys.drop_duplicates().reset_index(drop=True)
    optics.insert(0, "rlnOpticsGroup", np.arange(1, len(optics) + 1))
    optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]])
    optics["rlnImageDimensionality"] = 2
    return particles, optics, sources


def in_cs_terms(error: InputError, sources: dict[str, str]) -> InputError:
    """A table check's message with RELION column names replaced by the .cs fields they came
    from."""
    text = str(error).replace("the STAR file", "the .cs file").replace("STAR file", ".cs file")
    for column in sorted(sources, key=len, reverse=True):
        text = text.replace(column, sources[column])
    return InputError(text)


def read_records(
    path: str | os.PathLike, passthroughs: list[str | os.PathLike] | None = None
) -> np.ndarray:
    """The particle records of a ``.cs`` file, merged on ``uid`` with ``passthroughs`` (None: the
    job's own, :func:`passthrough_files`)."""
    path = Path(path)
    records = _load(path)
    if len(records) == 0:
        raise InputError(f"{path}: holds no particles; give a particles .cs with particles")
    extra = passthrough_files(path) if passthroughs is None else [Path(p) for p in passthroughs]
    for extra_path in extra:
        records = _merge(records, path, _load(extra_path), extra_path)
    return records


def write_records(path: str | os.PathLike, records: np.ndarray, extra: dict | None = None) -> None:
    """Write ``records`` with the fields ``extra`` (name: one value per record) added or replaced
    as a ``.cs`` file, atomically."""
    extra = extra or {}
    fields = [(name, records.dtype.fields[name][0]) for name in records.dtype.names]
    fields += [
        (name, values.dtype) for name, values in extra.items() if name not in records.dtype.names
    ]
    out = np.empty(len(records), dtype=fields)
    for name in records.dtype.names:
        out[name] = records[name]
    for name, values in extra.items():
        out[name] = values
    save_npy(path, out)
