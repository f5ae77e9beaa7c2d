"""Render the deformed Gaussian model of chosen particles or latent points as MRC maps.

Give either --particles, a text file of 0-based particle indices (row numbers of the run's input
STAR file; one per line or separated by spaces or commas), or --latent, a .npy array of latent
points (M x D, or D for one point). Each map is the deformed model rendered at the consensus box and
voxel size: DIR/particle_NNNNNN.mrc for particles (decoded by the half set that encoded them) and
DIR/latent_NNNN.mrc for latent points (decoded by --half, default 1). Beside them, particles.cxc or
latents.cxc opens the maps in ChimeraX as a volume series (chimerax DIR/latents.cxc); with
--chimerax-movie NAME.mp4 the script also records a movie of the series.

Example:
  napari-dynamight decode run --particles picked.txt --output-directory maps
  napari-dynamight decode run --latent centres.npy --half 2 --output-directory maps \
      --chimerax-movie motion.mp4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_directory", type=Path, metavar="RUN", help="run directory of optimize-deformations"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--particles", type=Path, metavar="INDEX_FILE", help="text file of 0-based particle indices"
    )
    source.add_argument(
        "--latent", type=Path, metavar="FILE.npy", help="latent points (M x D .npy)"
    )
    parser.add_argument(
        "--output-directory",
        type=Path,
        required=True,
        metavar="DIR",
        help="where to write the maps",
    )
    parser.add_argument(
        "--half", type=int, default=1, choices=(1, 2), help="half set that decodes --latent points"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--chimerax-movie",
        type=Path,
        metavar="FILE.mp4",
        help="the ChimeraX script also plays the series and records this movie (relative to "
        "--output-directory)",
    )


def read_indices(path: Path) -> list[int]:
    from ..engine.errors import InputError

    if not path.is_file():
        raise InputError(f"{path}: index file not found; give a text file of particle indices")
    words = path.read_text(encoding="utf-8").replace(",", " ").split()
    try:
        indices = [int(word) for word in words]
    except ValueError:
        bad = next(w for w in words if not w.lstrip("-").isdigit())
        raise InputError(
            f"{path}: {bad!r} is not a particle index; give 0-based integers"
        ) from None
    if not indices:
        raise InputError(f"{path}: no particle index in the file; give at least one")
    return indices


def read_latents(path: Path, latent_dim: int):
    import numpy as np

    from ..engine.errors import InputError

    if not path.is_file():
        raise InputError(f"{path}: latent file not found; give a .npy array of latent points")
    try:
        points = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputError(
            f"{path}: not a .npy array ({error}); save the points with numpy.save"
        ) from None
    points = np.atleast_2d(points)
    if points.ndim != 2 or points.shape[1] != latent_dim:
        raise InputError(
            f"{path}: latent points have shape {points.shape}; the run's latent dimension is "
            f"{latent_dim}"
        )
    return points


def run(args: argparse.Namespace) -> int:
    from ..engine.chimerax import (
        SUFFIX,
        check_movie_name,
        display_level,
        map_statistics,
        write_series_script,
    )
    from ..engine.deformation.decode import DeformationRun
    from ..engine.device import check_device
    from ..engine.io.guard import writing
    from ..engine.io.mrc import write_map
    from ..engine.io.output_paths import check_output_folder
    from ..engine.run_folder import RunFolder
    from ..engine.run_identity import check_finished_run
    from ._progress import drive

    check_output_folder(args.output_directory)
    check_movie_name(args.chimerax_movie, "--chimerax-movie")
    check_device(args.device)
    check_finished_run(args.run_directory)
    model = DeformationRun.load(args.run_directory, device=args.device)
    if args.particles is not None:
        jobs = [
            (f"particle_{i:06d}.mrc", lambda i=i: model.particle_volume(i))
            for i in read_indices(args.particles)
        ]
        script = "particles" + SUFFIX
        for i in read_indices(args.particles):
            model.half_of(i)  # checks every index before any map is written
    else:
        points = read_latents(args.latent, model.latent_dim)
        jobs = [
            (f"latent_{k:04d}.mrc", lambda p=p: model.volume(p, args.half))
            for k, p in enumerate(points)
        ]
        script = "latents" + SUFFIX

    def render():
        from ..engine.progress import Progress

        statistics = []
        for step, (name, make) in enumerate(jobs, 1):
            volume = make().cpu().numpy()
            write_map(args.output_directory / name, volume, model.voxel_size_angstrom)
            statistics.append(map_statistics(volume))
            yield Progress("decode", step, len(jobs))
        write_series_script(
            args.output_directory / script,
            [args.output_directory / name for name, _ in jobs],
            display_level(statistics),
            args.chimerax_movie,
        )

    with writing(args.output_directory, "--output-directory", "decode"):
        drive(render(), "decode")
    warning = RunFolder(args.run_directory).model_bias_warning()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"wrote {len(jobs)} map(s) to {args.output_directory}; open them in ChimeraX with "
        f"chimerax {args.output_directory / script}"
    )
    return 0
