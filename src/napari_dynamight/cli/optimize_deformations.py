"""Learn every particle's motion with two independent half-set VAEs (stage 3).

Each half set trains its own encoder (image -> latent) and coordinate decoder (latent, position ->
displacement) against its particles, with a Fourier-space data term weighted by the noise spectrum,
distance-preserving and repulsion regularisers (weight λ balanced every epoch) and a KL term. 10% of
the particles (--validation-fraction) stay out of decoder training and give error estimates. All
inputs are checked before the first epoch. Images are Fourier-cropped to --box for training
(default: about 3 Å/px, 32-128 px).

Writes into RUN: checkpoints/ (every --checkpoint-every epochs and final.pt), latent_means.npy
(N x D, input particle order), latent_means_half2_validation.npy, particles.star (all input columns
plus dmLatent1..D, dmHalfSet, dmValidation, dmErrorAngstrom, dmDisplacementAngstrom; for a cryoSPARC
.cs input its RELION columns, and input_particles.cs with the original records), consensus_half1/2
(.pt, .mrc), gaussian_errors.csv, losses.jsonl, losses.png and run.json.
With --atomic-model FILE (off by default) the Gaussians come from an atomic model fitted in the
consensus map and the distance regulariser acts on its bonds; the model can bias the maps, so check
such a run with 'napari-dynamight model-bias RUN' (docs/deformations.md, "Atomic-model prior"). Kill
it at any time and run the same command with --resume to continue with the same result. See
docs/deformations.md (cryoSPARC .cs input: docs/cryosparc.md).
A watchdog prints "warning: ..." on stderr when a half set stalls or the two halves disagree, and
again at the end (also in run.json's "warnings").

On a CPU given 2 or more threads the two half sets train side by side in two processes, each
with half the threads (--processes 1: one after the other in this process). Several GPUs or nodes:
--processes N (one GPU each) or launch the same command with torchrun; the half sets train on
disjoint ranks, data-parallel within each, and only rank 0 writes (docs/distributed.md).

Example:
  napari-dynamight optimize-deformations --particles sim/particles.star \\
      --consensus sim/consensus.mrc --output-directory run --epochs 60 --box 32 --seed 0
  napari-dynamight optimize-deformations --particles P3/J12/J12_particles.cs \\
      --consensus P3/J12/J12_volume_map.mrc --output-directory run
  torchrun --nproc-per-node 4 "$(command -v napari-dynamight)" optimize-deformations \\
      --device cuda ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..engine.deformation.settings import DeformationSettings
from ._options import add_options, add_processes_argument, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--particles",
        type=Path,
        required=True,
        metavar="FILE",
        help="particles with poses and CTF: RELION STAR or cryoSPARC .cs (its passthrough files "
        "are found next to it)",
    )
    add(
        "--passthrough",
        type=Path,
        action="append",
        metavar="CS",
        help="a passthrough .cs file to merge into a .cs --particles on uid (repeatable; "
        "default: the job's own *_passthrough_*.cs beside it)",
    )
    add(
        "--consensus",
        type=Path,
        required=True,
        metavar="MAP",
        help="consensus map of these particles (MRC)",
    )
    add("--output-directory", type=Path, required=True, metavar="RUN", help="run directory")
    add("--mask", type=Path, metavar="MAP", help="only Gaussians inside this mask (> 0.5) move")
    add(
        "--consensus-model",
        type=Path,
        metavar="FILE",
        help="consensus Gaussians from fit-consensus (default: fitted here from the consensus map)",
    )
    add(
        "--n-gaussians",
        type=int,
        metavar="N",
        help="Gaussians when fitting here (default: 2 per residue)",
    )
    add(
        "--threshold",
        type=float,
        help="map level for placing Gaussians when fitting here (default: automatic)",
    )
    add(
        "--device",
        default="cpu",
        help="torch device, e.g. cpu or cuda:0 (default: cpu); under torchrun cuda means each "
        "process's own GPU, cuda:LOCAL_RANK",
    )
    add("--resume", action="store_true", help="continue from the last checkpoint in RUN")
    add(
        "--data-root",
        type=Path,
        metavar="DIR",
        help="folder that image names are relative to (for .cs: the cryoSPARC project folder; "
        "default: the particle file's folder, and for .cs also its parents)",
    )
    add("--threads", type=int, help="CPU threads for torch (default: all cores)")
    add_processes_argument(parser)
    add_settings_arguments(parser)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options: ``--box`` and every declared option of DeformationSettings."""
    parser.add_argument(
        "--box", type=int, metavar="PX", help="training box (default: about 3 Å/px, 32-128 px)"
    )
    add_options(parser, DeformationSettings)


def settings_from(args: argparse.Namespace) -> DeformationSettings:
    return settings_from_args(DeformationSettings, args)


def run(args: argparse.Namespace) -> int:
    from ..engine.io.guard import writing
    from ..engine.model_bias import optimize_deformations_checked
    from ._progress import drive_on_main_rank, print_warnings, processes_from, set_threads

    settings = settings_from(args)  # out-of-range options end here, naming the flag
    set_threads(args.threads)
    processes = processes_from(args)
    with writing(args.output_directory, "--output-directory", "optimize-deformations"):
        operation = optimize_deformations_checked(
            args.particles,
            args.consensus,
            args.output_directory,
            settings=settings,
            mask=args.mask,
            consensus_model=args.consensus_model,
            n_gaussians=args.n_gaussians,
            threshold=args.threshold,
            box=args.box,
            data_root=args.data_root,
            device=args.device,
            resume=args.resume,
            passthroughs=args.passthrough,
            processes=processes,
        )
        result = drive_on_main_rank(operation, "optimize deformations")
    if result is None:
        return 0
    ending = "stopped by the data-loss rule" if result.stopped_early else "done"
    print(
        f"{result.epochs} epochs ({ending}), {result.n_gaussians} Gaussians, training box "
        f"{result.train_box}: {result.seconds:.0f} s"
    )
    print(f"run directory: {result.run_directory}")
    if result.bias_report is not None:
        from .model_bias import print_report

        print_report(result.bias_report)
    print_warnings(result.warnings)  # again at the end, so they are not lost in the log
    return 0
