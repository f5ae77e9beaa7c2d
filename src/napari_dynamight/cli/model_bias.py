"""Check a run made with the atomic-model prior for model bias (docs/deformations.md,
"Atomic-model prior").

Makes the run's atomic model deliberately wrong in one region (--mode move: the residues moved
--shift Å away from the model's centre; --mode register: their side chains threaded one residue
on),
trains the deformations again with it and the run's settings, trains the inverse deformations,
reconstructs, and measures how much of the wrong feature the new deformed map and the new decoded
volumes reproduce: 0% when they show the region where the consensus map (no model) has it, 100%
when they show the wrong model. It flags bias above 30% in either: then features that only the
model supports cannot be trusted in maps made with the prior on these data. The same measures of
the run's own deformed map (made first if missing, in RUN/inverse and RUN/reconstruction) and
decoded volumes are reported beside them. The Deformations widget's "Check model bias" button runs
the same control.

Writes RUN/model_bias.json (the report) and RUN/model_bias/ (wrong_model.pdb and its run, run/).
Opening or exporting maps of a run made with the prior warns until this report exists and found no
bias. optimize-deformations runs this control with its defaults when a run with --atomic-model
ends (unless --no-bias-check). Takes as long as the run's deformations, inverse deformations and
reconstruction together (--epochs shortens the rerun).

Example:
  napari-dynamight model-bias run --residues A:100-111 --mode move --shift 5
  napari-dynamight model-bias run --threads 1
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..engine.model_bias import BiasCheckSettings
    from ._options import add_options

    parser.add_argument(
        "run_directory",
        type=Path,
        metavar="RUN",
        help="a finished deformation run made with --atomic-model",
    )
    add_options(parser, BiasCheckSettings)
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")


def run(args: argparse.Namespace) -> int:
    from ..engine.io.guard import writing
    from ..engine.model_bias import BiasCheckSettings, model_bias
    from ._options import settings_from_args
    from ._progress import drive, set_threads

    control = settings_from_args(BiasCheckSettings, args)  # limits; model_bias checks the region
    set_threads(args.threads)
    with writing(args.run_directory, "RUN", "model-bias", outputs="model_bias"):
        result = drive(model_bias(args.run_directory, control, device=args.device), "model bias")
    print_report(result)
    return 0


def print_report(result) -> None:
    """The report of the control (``model_bias.BiasReport``) in a few lines, with its warning."""
    report = result.report
    print(
        f"wrong model ({report['mode']} of residues {report['region']}): the deformed map made "
        f"with it reproduces {report['reproduced_percent']}% of the wrong feature, its decoded "
        f"volumes {report['reproduced_percent_decoded']}%; the run's own map "
        f"{100 * report['score_run']:.0f}%, its decoded volumes "
        f"{100 * report['score_run_decoded']:.0f}%"
    )
    if report["biased"]:
        where = " and ".join(
            name
            for name, flag in (
                ("deformed maps", report["biased_map"]),
                ("decoded volumes", report["biased_decoded"]),
            )
            if flag
        )
        print(
            f"warning: the atomic-model prior copies model errors into {where} on these data "
            f"(above {100 * report['threshold']:.0f}%); trust only features the smoothness "
            "prior's maps show too"
        )
    else:
        print("no model bias found: the data override a wrong model in this region")
    print(f"model-bias report: {result.path}")
