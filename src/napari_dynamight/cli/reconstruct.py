"""Reconstruct a run's half maps and full map by deformed weighted backprojection (stage 5).

Each half set's particles are backprojected along the rays that the half's own inverse
deformations (optimize-inverse-deformations) bend back into the consensus frame, so moving parts
come out sharp and the half maps stay independent. --no-deformations gives the standard
reconstruction of the same particles (like relion_reconstruct --ctf) for comparison.

Writes RUN/reconstruction/ (or RUN/reconstruction_standard/): half1.mrc, half2.mrc (unfiltered, like
RELION's run_half1_class001_unfil.mrc, for relion_postprocess), full.mrc (all particles), fsc.csv
and fsc.png, and maps.cxc, which opens the maps in ChimeraX (chimerax RUN/reconstruction/maps.cxc).
See docs/reconstruction.md.

--subset FILE.star|FILE.cs reconstructs only the particles of a subset of the run (e.g. a selection
exported by the explorer, or a cryoSPARC .cs; matched by image name), each in its own half set:
standard half maps, or with --deformed the deformed ones, into
RUN/subsets/NAME/reconstruction_standard/ (or reconstruction/; NAME from the file name) or --output
DIR, with the subset's particles.star beside the maps.

Example:
  napari-dynamight reconstruct run --device cpu --batch-size 64
  napari-dynamight reconstruct run --subset closed.star
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..engine.reconstruction.settings import ReconstructionSettings
    from ._options import add_options

    add = parser.add_argument
    add("run_directory", type=Path, metavar="RUN", help="a deformation run directory")
    deformations = parser.add_mutually_exclusive_group()
    deformations.add_argument(
        "--no-deformations", action="store_true", help="standard reconstruction (straight rays)"
    )
    deformations.add_argument(
        "--deformed",
        action="store_true",
        help="with --subset: deformed maps (needs the run's inverse deformations); without it a "
        "subset gives standard maps",
    )
    add(
        "--subset",
        type=Path,
        metavar="FILE",
        help="reconstruct only the particles in this STAR or cryoSPARC .cs file (a subset of the "
        "run's particles)",
    )
    add(
        "--output",
        type=Path,
        metavar="DIR",
        help="folder for the maps (default: RUN/reconstruction, or RUN/subsets/NAME/... "
        "for --subset)",
    )
    add("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    add_options(parser, ReconstructionSettings)
    add("--threads", type=int, help="CPU threads for torch (default: all cores)")


def run(args: argparse.Namespace) -> int:
    from ..engine.errors import InputError
    from ..engine.io.guard import writing
    from ..engine.reconstruction.settings import ReconstructionSettings
    from ..engine.reconstruction.stage import reconstruct_run, subset_folder
    from ..engine.run_folder import ReconstructionFolder, RunFolder
    from ._options import settings_from_args
    from ._progress import drive_on_main_rank, set_threads

    settings = settings_from_args(ReconstructionSettings, args)
    if args.deformed and args.subset is None:
        raise InputError(
            "--deformed: only for --subset (a whole run's maps are deformed unless "
            "--no-deformations); add --subset FILE.star or leave --deformed out"
        )
    set_threads(args.threads)
    deformations = args.deformed if args.subset is not None else not args.no_deformations
    if args.output is not None:
        guard = writing(args.output, "--output", "reconstruct")
    else:
        folder = (
            ReconstructionFolder(args.run_directory / ReconstructionFolder.NAMES[deformations])
            if args.subset is None
            else subset_folder(args.run_directory, args.subset, deformations)
        )
        guard = writing(
            args.run_directory,
            "RUN",
            "reconstruct",
            outputs=str(folder.path.relative_to(args.run_directory)),
        )
    with guard:
        operation = reconstruct_run(
            args.run_directory,
            settings,
            deformations=deformations,
            device=args.device,
            subset=args.subset,
            output=args.output,
        )
        result = drive_on_main_rank(operation, "reconstruct")
    if result is None:
        return 0
    warning = RunFolder(args.run_directory).model_bias_warning()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"half-map resolution (FSC 0.143): {result.resolution_angstrom:.2f} Å (standard "
        f"{result.resolution_standard_angstrom:.2f} Å)"
    )
    print(
        f"maps in {result.directory}; open them in ChimeraX with chimerax "
        f"{ReconstructionFolder(result.directory).chimerax_script}"
    )
    return 0
