"""What DynaMight will see in a particle file (STAR or cryoSPARC .cs), as a JSON-ready summary.

``napari-dynamight info`` prints it, napari's STAR reader keeps it in the layer's metadata and the
Data widget shows it: particles, optics groups, poses, half sets, defocus range and image stacks
found.
"""

from __future__ import annotations

import os
import re

import numpy as np


def _number(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _version(table) -> str:
    """The layout (3.0: one table; 3.1: optics + particles) and the file's ``# version`` comment;
    for a cryoSPARC file its field count and where the poses came from."""
    if table.records is not None:
        poses = table.source_fields.get("rlnAngleRot", "none")
        return f"cryoSPARC .cs ({len(table.records.dtype.names)} fields; poses: {poses})"
    layout = "3.0 (single table)" if table.optics is None else "3.1+ (optics and particles tables)"
    for comment in table.comments.values():
        match = re.search(r"version\s+(\d+)", comment)
        if match:
            return f"{layout}, '# version {match.group(1)}'"
    return layout


def summarise(table, star_path) -> dict:
    """A JSON-ready summary of a :class:`ParticleTable` (``info``, the napari reader, the Data
    widget)."""
    groups = []
    for group in np.unique(table.optics_group):
        rows = np.nonzero(table.optics_group == group)[0]
        first = rows[0]
        box = int(table.image_box[first])
        groups.append(
            {
                "optics_group": int(group),
                "particles": int(len(rows)),
                "pixel_size_angstrom": _number(table.pixel_size_angstrom[first]),
                "box": box if box > 0 else None,
                "voltage_kilovolts": _number(table.ctf.voltage_kilovolts[first]),
                "spherical_aberration_millimetres": _number(
                    table.ctf.spherical_aberration_millimetres[first]
                ),
                "amplitude_contrast": _number(table.ctf.amplitude_contrast[first]),
            }
        )
    defocus = np.concatenate([table.ctf.defocus_u_angstrom, table.ctf.defocus_v_angstrom])
    defocus = defocus[np.isfinite(defocus)]
    half_sets = None
    if "rlnRandomSubset" in table.particles.columns:
        subsets = table.particles["rlnRandomSubset"].to_numpy()
        values, counts = np.unique(subsets, return_counts=True)
        half_sets = {str(value): int(count) for value, count in zip(values, counts)}
    stacks = sorted(set(map(str, table.image_files)))
    missing = [name for name in stacks if not os.path.isfile(name)]
    unusable = _unusable_stacks(table)
    return {
        "star_file": str(star_path),
        "format": "cryoSPARC" if table.records is not None else "STAR",
        "relion_version": _version(table),
        "particles": int(len(table)),
        "optics_groups": groups,
        "poses": bool(table.has_poses),
        "half_sets": half_sets,
        "defocus_range_angstrom": (
            [float(defocus.min()), float(defocus.max())] if len(defocus) else None
        ),
        "missing_ctf_columns": list(table.missing_ctf_columns),
        "stacks": {
            "total": len(stacks),
            "found": len(stacks) - len(missing) - len(unusable),
            "missing": missing,
            "unusable": unusable,
        },
    }


def _unusable_stacks(table) -> list[dict]:
    """The stacks that exist but cannot be used (not MRC, truncated, too few images, wrong box),
    each with the one-line problem the training commands would report."""
    from ..errors import InputError

    problems = []
    for name in sorted(set(map(str, table.image_files))):
        if not os.path.isfile(name):
            continue
        try:
            table.check_images(np.nonzero(table.image_files == name)[0])
        except InputError as error:
            problems.append({"stack": name, "problem": " ".join(str(error).split())})
    return problems
