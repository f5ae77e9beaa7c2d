"""Summarise a RELION particle STAR file: what DynaMight will see in it.

Prints the RELION version, the number of particles, each optics group (pixel size, box, voltage,
spherical aberration, amplitude contrast), whether poses and half sets are present, the defocus
range, and which image stacks were found. Pixel sizes come from the STAR file, never from MRC
headers. Image names are read relative to the STAR file's folder, or to --data-root.

example:
  napari-dynamight info tests/data/cryodrgn/relion31.6opticsgroups.star
  napari-dynamight info particles.star --data-root /data/my_project --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import numpy as np

MAX_MISSING_LISTED = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("star", type=Path, help="particle STAR file (RELION 3.0, 3.1 or later)")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder the image names are relative to (default: the STAR file's folder)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from ..engine.io.star import read_particles

    table = read_particles(args.star, data_root=args.data_root)
    summary = summarise(table, args.star)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _number(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _version(table) -> str:
    """The layout (3.0: one table; 3.1: optics + particles) and the file's ``# version`` comment."""
    layout = "3.0 (single table)" if table.optics is None else "3.1+ (optics and particles tables)"
    for comment in table.comments.values():
        match = re.search(r"version\s+(\d+)", comment)
        if match:
            return f"{layout}, '# version {match.group(1)}'"
    return layout


def summarise(table, star_path) -> dict:
    """A JSON-ready summary of a :class:`ParticleTable` (used by ``info`` and the napari reader)."""
    unusable = _unusable_stacks(table)
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
    usable = len(stacks) - len(missing) - len(unusable)
    return {
        "star_file": str(star_path),
        "relion_version": _version(table),
        "particles": int(len(table)),
        "optics_groups": groups,
        "poses": bool(table.has_poses),
        "half_sets": half_sets,
        "defocus_range_angstrom": (
            [float(defocus.min()), float(defocus.max())] if len(defocus) else None
        ),
        "missing_ctf_columns": list(table.missing_ctf_columns),
        "stacks": {"total": len(stacks), "found": usable, "missing": missing, "unusable": unusable},
    }


def _unusable_stacks(table) -> list[dict]:
    """The stacks that exist but cannot be used (not MRC, truncated, too few images, wrong box), each
    with the one-line problem the training commands would report."""
    from ..engine.errors import InputError

    problems = []
    for name in sorted(set(map(str, table.image_files))):
        if not os.path.isfile(name):
            continue
        try:
            table.check_images(np.nonzero(table.image_files == name)[0])
        except InputError as error:
            problems.append({"stack": name, "problem": " ".join(str(error).split())})
    return problems


def _show(value, unit: str = "", digits: int = 4) -> str:
    if value is None:
        return "unknown"
    text = f"{value:.{digits}g}" if isinstance(value, float) else str(value)
    return f"{text} {unit}".rstrip()


def format_summary(summary: dict) -> str:
    """The summary as aligned text for a terminal."""
    lines = [
        f"STAR file:       {summary['star_file']}",
        f"RELION version:  {summary['relion_version']}",
        f"particles:       {summary['particles']}",
        f"optics groups:   {len(summary['optics_groups'])}",
    ]
    for group in summary["optics_groups"]:
        lines.append(
            f"  group {group['optics_group']}: {group['particles']} particles, "
            f"pixel size {_show(group['pixel_size_angstrom'], 'Å')}, "
            f"box {_show(group['box'], 'px')}, "
            f"voltage {_show(group['voltage_kilovolts'], 'kV')}, "
            f"Cs {_show(group['spherical_aberration_millimetres'], 'mm')}, "
            f"Q0 {_show(group['amplitude_contrast'])}"
        )
    lines.append(f"poses:           {'yes' if summary['poses'] else 'no'}")
    halves = summary["half_sets"]
    lines.append(
        "half sets:       "
        + (", ".join(f"{k}: {v}" for k, v in halves.items()) if halves else "none (random split)")
    )
    defocus = summary["defocus_range_angstrom"]
    lines.append(
        "defocus range:   "
        + (f"{defocus[0]:.1f} to {defocus[1]:.1f} Å" if defocus else "unknown (no defocus columns)")
    )
    if summary["missing_ctf_columns"]:
        lines.append(f"missing CTF:     {', '.join(summary['missing_ctf_columns'])}")
    stacks = summary["stacks"]
    lines.append(f"image stacks:    {stacks['found']} of {stacks['total']} found and usable")
    for entry in stacks.get("unusable", []):
        lines.append(f"  unusable: {entry['problem']}")
    for name in stacks["missing"][:MAX_MISSING_LISTED]:
        lines.append(f"  missing: {name}")
    if len(stacks["missing"]) > MAX_MISSING_LISTED:
        lines.append(f"  ... and {len(stacks['missing']) - MAX_MISSING_LISTED} more missing")
    return "\n".join(lines)
