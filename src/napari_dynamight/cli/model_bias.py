"""Check a run made with the atomic-model prior for model bias (docs/deformations.md, "Atomic-model
prior").

Makes the run's atomic model deliberately wrong in one region (--mode move: the residues moved
--shift Å away from the model's centre; --mode register: their side chains threaded one residue on),
trains the deformations again with it and the run's settings, trains the inverse deformations,
reconstructs, and measures how much of the wrong feature the new map reproduces: 0% when the map
shows the region where the consensus map (no model) has it, 100% when it shows the wrong model.
It flags bias above 50%: then features that only the model supports cannot be trusted in maps made
with the prior on these data. The same measure of the run's own deformed map (made first if
missing, in RUN/inverse and RUN/reconstruction) is reported beside it.

Writes RUN/model_bias.json (the report) and RUN/model_bias/ (wrong_model.pdb and its run, run/).
Opening or exporting maps of a run made with the prior warns until this report exists and found no
bias. Takes as long as the run's deformations, inverse deformations and reconstruction together
(--epochs shortens the rerun).

Example:
  napari-dynamight model-bias run --residues A:100-111 --mode move --shift 5
  napari-dynamight model-bias run --threads 1
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "run_directory",
        type=Path,
        metavar="RUN",
        help="a finished deformation run made with --atomic-model",
    )
    add(
        "--residues",
        metavar="CHAIN:FIRST-LAST",
        help="the region made wrong, e.g. A:100-111 (default: the 12 consecutive residues "
        "closest to the model's centre)",
    )
    add(
        "--mode",
        choices=("move", "register"),
        default="move",
        help="move the region's residues (default) or shift its side chains by one "
        "residue register",
    )
    add(
        "--shift",
        type=float,
        default=5.0,
        metavar="Å",
        help="how far --mode move moves the region, away from the model's centre (default: 5)",
    )
    add("--epochs", type=int, metavar="E", help="epochs of the rerun (default: the run's)")
    add(
        "--inverse-epochs",
        type=int,
        default=10,
        metavar="E",
        help="inverse-deformation epochs (default: 10)",
    )
    add("--device", default="cpu", help="torch device (default: cpu)")
    add("--threads", type=int, help="CPU threads for torch (default: all cores)")


def run(args: argparse.Namespace) -> int:
    from ..engine.atomic_model import Region
    from ..engine.io.guard import writing
    from ..engine.model_bias import model_bias
    from ._progress import drive, set_threads

    set_threads(args.threads)
    region = None if args.residues is None else Region.parse(args.residues)
    with writing(args.run_directory, "RUN", "model-bias", outputs="model_bias"):
        result = drive(
            model_bias(
                args.run_directory,
                region=region,
                mode=args.mode,
                shift_angstrom=args.shift,
                epochs=args.epochs,
                inverse_epochs=args.inverse_epochs,
                device=args.device,
            ),
            "model bias",
        )
    report = result.report
    print(
        f"wrong model ({report['mode']} of residues {report['region']}): the map made with it "
        f"reproduces {report['reproduced_percent']}% of the wrong feature; the run's own map "
        f"{100 * report['score_run']:.0f}%"
    )
    if report["biased"]:
        print(
            "warning: the atomic-model prior copies model errors into maps on these data (above "
            f"{100 * report['threshold']:.0f}%); trust only features the smoothness prior's "
            "maps show too"
        )
    else:
        print("no model bias found: the data override a wrong model in this region")
    print(f"report: {result.path}")
    return 0
