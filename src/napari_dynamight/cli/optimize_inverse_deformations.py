"""Learn, per half set, the inverse of the deformations of a finished run (stage 4).

For each half set a coordinate network I(z, y) = y + ε(z, y) (positional encoding of the deformed
position y, the particle's latent mean z, ELU layers) learns to map the deformed Gaussian centres
D(z_i, c_j) of that half's decoder back to the consensus centres c_j, with a smoothness penalty on
ε over the whole box. Only the half's own training particles train it; the validation particles give
a held-out error. The deformed reconstruction (stage 5) backprojects along the field it defines.

Writes into RUN/inverse: checkpoints/ (every --checkpoint-every epochs), final.pt (both halves),
losses.jsonl (per epoch and half: loss, training and held-out RMS error in Å) and summary.json (per
half: training and held-out RMS inverse error and RMS forward displacement in Å, seconds). Kill it
at any time and run the same command with --resume to continue with the same result. See
docs/inverse.md.

On a CPU given 2 or more threads the two half sets train side by side in two processes, each
with half the threads (--processes 1: one after the other in this process). Several GPUs or nodes:
--processes N (one GPU each) or launch the same command with torchrun; the half sets train on
disjoint ranks, data-parallel within each, and only rank 0 writes (docs/distributed.md).

Example:
  napari-dynamight optimize-inverse-deformations run --epochs 30 --seed 0
  torchrun --nproc-per-node 2 "$(command -v napari-dynamight)" optimize-inverse-deformations \\
      run --device cuda
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..engine.inverse.settings import InverseSettings
from ._options import add_options, add_processes_argument, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "run_directory",
        type=Path,
        metavar="RUN",
        help="a finished optimize-deformations run directory",
    )
    add(
        "--device",
        default="cpu",
        help="torch device, e.g. cpu or cuda:0 (default: cpu); under torchrun cuda means each "
        "process's own GPU, cuda:LOCAL_RANK",
    )
    add("--resume", action="store_true", help="continue from the last checkpoint in RUN/inverse")
    add("--threads", type=int, help="CPU threads for torch (default: all cores)")
    add_processes_argument(parser)
    add_settings_arguments(parser)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options: every declared option of InverseSettings."""
    add_options(parser, InverseSettings)


def settings_from(args: argparse.Namespace) -> InverseSettings:
    return settings_from_args(InverseSettings, args)


def run(args: argparse.Namespace) -> int:
    from ..engine.inverse.run import optimize_inverse_deformations
    from ..engine.io.guard import writing
    from ._progress import drive_on_main_rank, processes_from, set_threads

    settings = settings_from(args)  # out-of-range options end here, naming the flag
    set_threads(args.threads)
    processes = processes_from(args)
    with writing(args.run_directory, "RUN", "optimize-inverse-deformations", outputs="inverse"):
        operation = optimize_inverse_deformations(
            args.run_directory,
            settings=settings,
            device=args.device,
            resume=args.resume,
            processes=processes,
        )
        result = drive_on_main_rank(operation, "optimize inverse deformations")
    if result is None:
        return 0
    for half in (1, 2):
        numbers = result.summary[f"half{half}"]
        held_out = numbers["held_out_error_angstrom"]
        print(
            f"half {half}: RMS inverse error {numbers['train_error_angstrom']:.3f} Å (training), "
            + (f"{held_out:.3f} Å (held out)" if held_out is not None else "no held-out particles")
            + f"; RMS displacement {numbers['train_displacement_angstrom']:.3f} Å"
        )
    print(f"{result.epochs} epochs, {result.seconds:.0f} s; wrote {result.directory}")
    return 0
