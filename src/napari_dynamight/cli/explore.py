"""Open napari on a deformation run's latent space: the explorer, with the run loaded.

RUN is the folder 'napari-dynamight optimize-deformations' wrote (latent_means.npy, particles.star,
the checkpoints), or that run's particles.star (a copy away from its run folder cannot be decoded).
The latent means are checked before napari starts. The two half sets' latent spaces are separate
coordinate systems, so the explorer shows one half set at a time (half 1 first; --half 2), or both
half sets' particles placed by their motion in one common space (--half both; needs the run folder,
whose decoders place every particle, cached in common_motion_space.npz). In the explorer,
click or drag in the plot to see the volume of that latent point, draw a lasso to select particles,
export a selection as a STAR file (or a cryoSPARC .cs file: name it *.cs; a run made from a .cs
file keeps every original field and uid), and save the volumes or a movie along a path. Dropping a
run folder on napari opens the same view.

example:
  napari-dynamight explore run
  napari-dynamight explore run/particles.star --embedding pca
  napari-dynamight explore run --half both
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_path", type=Path, metavar="RUN", help="deformation run folder, or its particles.star"
    )
    parser.add_argument(
        "--embedding",
        choices=("pca", "umap"),
        default="pca",
        help="2D embedding of the latent means (umap needs umap-learn; default: %(default)s)",
    )
    parser.add_argument(
        "--half",
        choices=("1", "2", "both"),
        default="1",
        help="half set shown first; both: the common motion space of both halves' particles "
        "(default: %(default)s)",
    )


def _half(value: str) -> int:
    from ..engine.explore.common_space import BOTH

    return BOTH if value == "both" else int(value)


def run(args: argparse.Namespace) -> int:
    if args.half == "both" and not args.run_path.is_dir():
        from ..engine.errors import InputError

        raise InputError(
            f"{args.run_path}: --half both decodes every particle; give the run folder"
        )
    check_explorable(args.run_path, args.embedding)
    from .._widgets.explorer import show_explorer

    show_explorer(args.run_path, args.embedding, _half(args.half))
    return 0


def check_explorable(run_path: Path, embedding: str) -> None:
    """Everything the explorer needs, checked before napari starts (one-line InputError otherwise):
    a finished run with whole, finite latent means, the embedding's package and a display."""
    from .._display import check_display
    from ..engine.explore import embed, load_run
    from ..engine.run_folder import RunFolder
    from ..engine.run_identity import check_finished_run

    folder = run_path if run_path.is_dir() else run_path.parent
    if RunFolder(
        folder
    ).info.is_file():  # a deformation run: finished, its latent means whole and finite
        check_finished_run(folder)
    data = load_run(run_path)
    _check_finite(data.latents, run_path)
    embed(data.latents[:2], embedding)  # fails now, not in the GUI, if umap-learn is missing
    check_display()


def _check_finite(latents, path: Path) -> None:
    """Every particle's latent mean must be finite before napari opens."""
    from ..engine.errors import InputError
    from ..engine.run_identity import first_nonfinite_row

    row = first_nonfinite_row(latents)
    if row is not None:
        raise InputError(
            f"{path}: the latent means of row {row + 1} are not finite (NaN or Inf); rerun "
            "optimize-deformations --resume to write them again"
        )
