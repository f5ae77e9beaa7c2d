"""napari-dynamight-relion: the executable of RELION-5's "DynaMight flexibility" job.

Put 'napari-dynamight-relion' in the job's "DynaMight executable" field. RELION runs it in the
project folder with one of the command lines below, DIR being the job's folder (DynaMight/jobNNN/):

  napari-dynamight-relion optimize-deformations --refinement-star-file STAR --output-directory DIR
      --initial-model MAP --n-gaussians N [--initial-threshold T] --regularization-factor F
      --n-threads T [--preload-images] [--gpu-id G] [ADDITIONAL ARGUMENTS]
  napari-dynamight-relion explore-latent-space DIR --half-set H [--checkpoint-file F] [--gpu-id G]
  napari-dynamight-relion optimize-inverse-deformations DIR --n-epochs E [--checkpoint-file F]
      [--save-deformations] [--preload-images] [--gpu-id G]
  napari-dynamight-relion deformable-backprojection DIR --batch-size B [--checkpoint-file F]
      [--preload-images] [--gpu-id G]

Each task runs the napari-dynamight command of that stage on DIR (optimize-deformations, which also
fits the consensus Gaussians; explore; optimize-inverse-deformations; reconstruct), always
continuing what an earlier run of the job left. Additional arguments are that command's options (see
'napari-dynamight <command> --help'); the reference names --n-epochs, --n-latent-dimensions and
--mask-file are understood too. deformable-backprojection leaves DIR/backprojection/map_half1.mrc
and map_half2.mrc, unfiltered half maps for RELION's PostProcess. The job ends with
RELION_JOB_EXIT_SUCCESS, _FAILURE or _ABORTED in DIR; RELION_JOB_ABORT_NOW in DIR (the GUI's abort
button) stops a running task cleanly. See docs/relion.md.

Example:
  napari-dynamight-relion deformable-backprojection DynaMight/job012/ --batch-size 10 --gpu-id 0
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ..engine.errors import Cancelled, InputError

PROG = "napari-dynamight-relion"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
EXIT_FILES = {
    "success": "RELION_JOB_EXIT_SUCCESS",
    "failure": "RELION_JOB_EXIT_FAILURE",
    "aborted": "RELION_JOB_EXIT_ABORTED",
}
HALF_MAPS = ("map_half1.mrc", "map_half2.mrc")  # in DIR/backprojection: the job's output nodes
# Option names of the reference implementation, given as additional arguments, and ours.
REFERENCE_NAMES = {
    "--n-epochs": "--epochs",
    "--n-latent-dimensions": "--latent-dim",
    "--mask-file": "--mask",
}
TASKS = (
    "optimize-deformations",
    "explore-latent-space",
    "optimize-inverse-deformations",
    "deformable-backprojection",
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one-line :class:`InputError` s."""

    def error(self, message: str):
        raise InputError(f"{self.prog}: {message}; see '{self.prog} --help'")


def _common(parser: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    add = parser.add_argument
    add(
        "--gpu-id",
        metavar="G",
        help="the one GPU to use, cuda:G; the CPU where CUDA is absent (default: 0)",
    )
    add(
        "--pipeline-control",
        "--pipeline_control",
        metavar="DIR",
        help="accepted and ignored (RELION's own)",
    )
    if checkpoint:
        add(
            "--checkpoint-file",
            type=Path,
            metavar="FILE",
            help="the deformation checkpoint to use: only DIR/checkpoints/final.pt, the finished "
            "run (default: that file)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    tasks = parser.add_subparsers(dest="task", metavar="<task>", required=True)

    new = tasks.add_parser(
        "optimize-deformations", help="a new job: fit the consensus Gaussians, train both halves"
    )
    add = new.add_argument
    add(
        "--refinement-star-file",
        type=Path,
        required=True,
        metavar="STAR",
        help="particles with poses and CTF",
    )
    add("--output-directory", type=Path, required=True, metavar="DIR", help="the job's folder")
    add("--initial-model", type=Path, required=True, metavar="MAP", help="the consensus map (MRC)")
    add("--n-gaussians", type=int, metavar="N", help="Gaussians fitted to the map")
    add(
        "--initial-threshold",
        type=float,
        metavar="T",
        help="map level for placing them (default: automatic)",
    )
    add(
        "--regularization-factor",
        type=float,
        metavar="F",
        help="weight of the restraints relative to the images, 1 = our default: our "
        "--regularisation-ratio is this factor times its default",
    )
    add("--n-threads", type=int, metavar="T", help="CPU threads for torch")
    add(
        "--preload-images",
        action="store_true",
        help="accepted: images are held in memory whenever they fit",
    )
    _common(new, checkpoint=False)

    explore = tasks.add_parser("explore-latent-space", help="open the explorer on one half set")
    explore.add_argument("directory", type=Path, metavar="DIR", help="the job's folder")
    explore.add_argument(
        "--half-set",
        type=int,
        default=1,
        metavar="H",
        help="1 or 2; 0: the validation set's error estimates (on half 1) (default: 1)",
    )
    explore.add_argument(
        "--embedding", choices=("pca", "umap"), default="pca", help="(default: pca)"
    )
    _common(explore)

    inverse = tasks.add_parser("optimize-inverse-deformations", help="the inverse deformations")
    inverse.add_argument("directory", type=Path, metavar="DIR", help="the job's folder")
    inverse.add_argument(
        "--n-epochs", type=int, default=200, metavar="E", help="epochs (default: 200)"
    )
    inverse.add_argument(
        "--save-deformations",
        action="store_true",
        help="accepted: the forward positions are always cached",
    )
    inverse.add_argument(
        "--preload-images", action="store_true", help="accepted: this stage reads no images"
    )
    _common(inverse)

    back = tasks.add_parser("deformable-backprojection", help="the deformed half maps")
    back.add_argument("directory", type=Path, metavar="DIR", help="the job's folder")
    back.add_argument(
        "--batch-size", type=int, default=10, metavar="B", help="particles per batch (default: 10)"
    )
    back.add_argument(
        "--preload-images",
        action="store_true",
        help="accepted: images are held in memory whenever they fit",
    )
    _common(back)
    return parser


def job_directory(argv: Sequence[str]) -> Path | None:
    """The job's folder named on a command line (before it is parsed), if it exists."""
    words = list(argv)
    found = None
    for i, word in enumerate(words):
        if word == "--output-directory" and i + 1 < len(words):
            found = words[i + 1]
        elif word.startswith("--output-directory="):
            found = word.split("=", 1)[1]
    if found is None and words and words[0] in TASKS[1:]:
        found = next((word for word in words[1:] if not word.startswith("-")), None)
    return Path(found) if found and Path(found).is_dir() else None


class Job:
    """RELION's files in the job's folder: the exit status it reads and the abort request it
    writes."""

    def __init__(self, directory: Path | None):
        self.directory = directory
        self.aborted = False

    def start(self) -> None:
        """Remove the exit files and abort request a previous run of the job left."""
        if self.directory is not None:
            for name in (*EXIT_FILES.values(), ABORT_NOW):
                (self.directory / name).unlink(missing_ok=True)

    def abort_requested(self) -> bool:
        """Whether RELION asked to abort (checked at every progress step); the request is then
        removed."""
        if self.directory is None or not (self.directory / ABORT_NOW).exists():
            return False
        (self.directory / ABORT_NOW).unlink(missing_ok=True)  # as RELION's programs do
        self.aborted = True
        return True

    def finish(self, status: int) -> None:
        """Write the exit file of ``status``: 0 success, a cancel (abort, Ctrl-C, SIGTERM) aborted,
        anything else failure."""
        if self.directory is None:
            return
        ending = (
            "success"
            if status == 0
            else "aborted"
            if self.aborted or status in (129, 130, 143)
            else "failure"
        )
        (self.directory / EXIT_FILES[ending]).touch()


def _ratio(factor: float | None) -> float | None:
    """Our --regularisation-ratio for RELION's --regularization-factor, whose default 1 means the
    default weighting: the factor times our default ratio."""
    from ..engine.deformation.settings import DeformationSettings

    return None if factor is None else factor * DeformationSettings().regularisation_ratio


def torch_device(gpu_id: str | None) -> str:
    """``--gpu-id G`` as a torch device: cuda:G, or the CPU (with a one-line notice) without
    CUDA."""
    import torch

    try:
        index = int(gpu_id) if gpu_id not in (None, "") else 0
    except ValueError:
        raise InputError(
            f"--gpu-id {gpu_id!r}: not one GPU number; DynaMight uses one GPU: give its number "
            "(e.g. 0) in 'Which (single) GPU to use'"
        ) from None
    if not torch.cuda.is_available():
        if gpu_id not in (None, ""):
            print(
                f"notice: --gpu-id {gpu_id}: CUDA is not available on this machine; "
                "running on the CPU",
                flush=True,
            )
        return "cpu"
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise InputError(
            f"--gpu-id {index}: this machine has {count} GPU(s), numbered 0 to {count - 1}; "
            "choose one of them in 'Which (single) GPU to use'"
        )
    return f"cuda:{index}"


def check_checkpoint(
    path: Path | None, run_directory: Path, stage: str, also: tuple[Path, ...] = ()
) -> None:
    """``--checkpoint-file``: the later stages work on the finished run, whose latent means belong
    to its final checkpoint ``DIR/checkpoints/final.pt``; that file (or one of ``also``) is the only
    choice."""
    from ..engine.run_folder import RunFolder

    if path is None:
        return
    run = RunFolder(run_directory)
    final = run.final_checkpoint
    keep = f"leave 'Checkpoint file' empty or choose {final}"
    if not path.is_file():
        raise InputError(f"--checkpoint-file {path}: not found; {keep}")
    if any(c.is_file() and os.path.samefile(path, c) for c in (final, *also)):
        return
    folder = run.checkpoints.folder
    if folder.is_dir() and os.path.samefile(path.parent, folder):
        raise InputError(
            f"--checkpoint-file {path}: an intermediate checkpoint of the training; {stage} uses "
            f"the finished run's latent means, which belong to its final checkpoint: {keep}"
        )
    raise InputError(
        f"--checkpoint-file {path}: not the final checkpoint of the run in {run_directory}; {keep}"
    )


def _our_arguments(words: Sequence[str]) -> list[str]:
    """Additional arguments with the reference implementation's option names replaced by ours."""
    out = []
    for word in words:
        name, sep, value = word.partition("=")
        out.append(
            REFERENCE_NAMES.get(name, name) + sep + value if name in REFERENCE_NAMES else word
        )
    return out


def _command(argv: Sequence[str]) -> argparse.Namespace:
    """Our command's arguments, parsed by its own parser (errors: one line)."""
    from . import build_parser as command_parser

    return command_parser(argv[0], parser_class=_Parser).parse_args(list(argv))


def _no_extra(extra: Sequence[str], task: str) -> None:
    if extra:
        raise InputError(
            f"{task}: unknown arguments {' '.join(extra)}; remove them from 'Additional arguments'"
        )


def optimize_deformations(args: argparse.Namespace, extra: list[str]) -> int:
    """A new job (or continuing one without a task): fit the consensus Gaussians, train both
    halves."""
    if args.regularization_factor is not None and not args.regularization_factor >= 0:
        raise InputError(
            f"--regularization-factor {args.regularization_factor}: must not be negative; change "
            "'Regularization factor' (e.g. to 1)"
        )
    argv = [
        "optimize-deformations",
        "--particles",
        str(args.refinement_star_file),
        "--consensus",
        str(args.initial_model),
        "--output-directory",
        str(args.output_directory),
        "--resume",
        "--data-root",
        os.getcwd(),
        "--device",
        torch_device(args.gpu_id),
    ]
    for option, value in (
        ("--n-gaussians", args.n_gaussians),
        ("--threshold", args.initial_threshold),
        ("--threads", args.n_threads),
        ("--regularisation-ratio", _ratio(args.regularization_factor)),
    ):
        if value is not None:
            argv += [option, str(value)]
    command = _command(argv + _our_arguments(extra))  # an additional argument overrides a field
    return command.run(command)


def optimize_inverse_deformations(args: argparse.Namespace, extra: list[str]) -> int:
    check_checkpoint(args.checkpoint_file, args.directory, "optimize-inverse-deformations")
    command = _command(
        [
            "optimize-inverse-deformations",
            str(args.directory),
            "--resume",
            "--epochs",
            str(args.n_epochs),
            "--device",
            torch_device(args.gpu_id),
            *_our_arguments(extra),
        ]
    )
    return command.run(command)


def deformable_backprojection(args: argparse.Namespace, extra: list[str]) -> int:
    """Our deformed reconstruction, its half maps then copied to DIR/backprojection together."""
    from ..engine.io.file_set import file_set
    from ..engine.io.guard import writing
    from ..engine.run_folder import RunFolder

    run = RunFolder(args.directory)
    check_checkpoint(
        args.checkpoint_file, args.directory, "deformable-backprojection", also=(run.inverse.final,)
    )
    command = _command(
        [
            "reconstruct",
            str(args.directory),
            "--batch-size",
            str(args.batch_size),
            "--device",
            torch_device(args.gpu_id),
            *_our_arguments(extra),
        ]
    )
    if command.no_deformations:
        raise InputError(
            "--no-deformations: not for this job, whose output is the deformed half maps; remove "
            "it from 'Additional arguments'"
        )
    status = command.run(command)
    if status:
        return status
    halves = run.reconstruction(True).half_maps
    with writing(
        args.directory, "DIR", "deformable-backprojection", outputs="backprojection"
    ) as folder:
        targets = [folder / "backprojection" / name for name in HALF_MAPS]
        with file_set(
            targets, folder / "backprojection" / "half_maps_complete.json"
        ) as temporaries:
            for half, temporary in zip(halves, temporaries, strict=True):
                shutil.copyfile(half, temporary)
    print(f"RELION's half maps: {targets[0]} and {targets[1]}")
    return 0


def explore_latent_space(args: argparse.Namespace, extra: list[str]) -> int:
    """The explorer on half set H (0: half 1 with the validation error estimates) until its window
    closes."""
    from . import explore

    _no_extra(extra, "explore-latent-space")
    if args.half_set not in (0, 1, 2):
        raise InputError(f"--half-set {args.half_set}: choose 1 or 2, or 0 for the validation set")
    check_checkpoint(args.checkpoint_file, args.directory, "explore-latent-space")
    explore.check_explorable(args.directory, args.embedding)
    from .._widgets import explorer

    explorer.show_explorer(
        args.directory, args.embedding, half=args.half_set or 1, errors=args.half_set == 0
    )
    return 0


RUNS = {
    "optimize-deformations": optimize_deformations,
    "explore-latent-space": explore_latent_space,
    "optimize-inverse-deformations": optimize_inverse_deformations,
    "deformable-backprojection": deformable_backprojection,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-dynamight-relion`` console script; returns the exit status and
    leaves RELION's exit file in the job's folder."""
    from . import execute
    from ._progress import driving

    argv = list(sys.argv[1:] if argv is None else argv)
    job = Job(job_directory(argv))
    job.start()

    def task() -> int:
        args, extra = build_parser().parse_known_args(argv)
        try:
            with driving(
                file=sys.stdout, should_stop=job.abort_requested, reason=f"aborted ({ABORT_NOW})"
            ):
                return RUNS[args.task](args, extra)
        except Cancelled:
            if not job.aborted:
                raise
            print(
                f"aborted: {ABORT_NOW} found in {job.directory}; outputs are complete or absent; "
                "continue the job to go on from the last checkpoint",
                file=sys.stderr,
            )
            return 130

    try:
        status = execute(task)
    except SystemExit as leaving:  # --help
        if leaving.code in (0, None):
            return 0
        job.finish(1)
        raise
    except BaseException:
        job.finish(1)
        raise
    job.finish(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
