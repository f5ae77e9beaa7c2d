"""Summarise a particle file (RELION STAR or cryoSPARC .cs): what DynaMight will see in it.

Prints the RELION version, the number of particles, each optics group (pixel size, box, voltage,
spherical aberration, amplitude contrast), whether poses and half sets are present, the defocus
range, and which image stacks were found. Pixel sizes come from the particle file, never from MRC
headers. Image names are read relative to the STAR file's folder, or to --data-root; a .cs file's
image paths relative to --data-root (the cryoSPARC project folder), else to its folder or a parent.

example:
  napari-dynamight info tests/data/cryodrgn/relion31.6opticsgroups.star
  napari-dynamight info particles.star --data-root /data/my_project --json
  napari-dynamight info P3/J12/J12_particles.cs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MAX_MISSING_LISTED = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "star",
        type=Path,
        metavar="particles",
        help="particle file: RELION STAR (3.0, 3.1 or later) or cryoSPARC .cs",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder the image names are relative to (default: the STAR file's folder; for .cs "
        "the first of its folder and parents that holds the images)",
    )
    parser.add_argument(
        "--passthrough",
        type=Path,
        action="append",
        metavar="CS",
        help="passthrough .cs file to merge on uid (default: the job's own, found beside it)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from ..engine.data.particle_file import read_particle_file
    from ..engine.data.summary import summarise

    table = read_particle_file(args.star, data_root=args.data_root, passthroughs=args.passthrough)
    summary = summarise(table, args.star)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _show(value, unit: str = "", digits: int = 4) -> str:
    if value is None:
        return "unknown"
    text = f"{value:.{digits}g}" if isinstance(value, float) else str(value)
    return f"{text} {unit}".rstrip()


def format_summary(summary: dict) -> str:
    """The summary as aligned text for a terminal."""
    star = summary["format"] == "STAR"
    lines = [
        f"{'STAR file:' if star else '.cs file:':17}{summary['star_file']}",
        f"{'RELION version:' if star else 'format:':17}{summary['relion_version']}",
        f"particles:       {summary['particles']}",
        f"optics groups:   {len(summary['optics_groups'])}",
    ]
    for group in summary["optics_groups"]:
        lines.append(
            f"  group {group['optics_group']}: {group['particles']} particles, pixel size "
            f"{_show(group['pixel_size_angstrom'], 'Å')}, box {_show(group['box'], 'px')}, "
            f"voltage {_show(group['voltage_kilovolts'], 'kV')}, Cs "
            f"{_show(group['spherical_aberration_millimetres'], 'mm')}, Q0 "
            f"{_show(group['amplitude_contrast'])}"
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
