"""The demo's motion part: train the deformations on the example data and show what they found.

Headless outputs (in the demo folder, ``engine.run_folder.DemoFolder``): the latent space figure
(per half set, the latent's first two principal components, coloured by the true trajectory frame),
a selection STAR file (a RELION subset: in each half set the particles on the high side of its first
principal component, as a lasso in the explorer would export) and a GIF of the motion (projections
of half 1's volumes decoded along its first principal component).

The two half sets are trained independently, so their latent spaces are separate coordinate systems:
each is looked at on its own.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from ..engine.run_folder import DemoFolder

MOVIE_FRAMES = 12
MOVIE_FPS = 8


def train(args, particles_star: Path, consensus_map: Path, model_path: Path, output: Path) -> dict:
    """Run optimize-deformations into the demo's run folder (replacing an earlier demo run); its
    summary."""
    from ..engine.deformation.run import optimize_deformations
    from ..engine.deformation.settings import DeformationSettings
    from ..engine.local_processes import automatic_processes
    from ._progress import drive

    run = DemoFolder(output).run
    run_directory = run.path
    if run_directory.is_dir() and run.latents.exists():
        shutil.rmtree(run_directory)  # the demo's own earlier result, not user data
    start = time.perf_counter()
    result = drive(
        optimize_deformations(
            particles_star,
            consensus_map,
            run_directory,
            settings=DeformationSettings(
                epochs=args.epochs, seed=args.seed, refinement_rounds=args.refinement_rounds
            ),
            consensus_model=model_path,
            device=args.device,
            processes=automatic_processes(args.device),
        ),
        "optimize deformations",
    )
    return {
        "run_directory": str(result.run_directory),
        "epochs": result.epochs,
        "n_gaussians": result.n_gaussians,
        "train_box": result.train_box,
        "seconds": time.perf_counter() - start,
    }


def improve(args, run_directory: Path) -> dict:
    """Stages 4 and 5 on the demo run: inverse deformations, then the deformed reconstruction (half
    maps, full map, and the FSC with and without deformations in ``RunFolder.reconstruction()``)."""
    from ..engine.inverse.run import optimize_inverse_deformations
    from ..engine.inverse.settings import InverseSettings
    from ..engine.reconstruction.stage import reconstruct_run
    from ._progress import drive

    start = time.perf_counter()
    drive(
        optimize_inverse_deformations(
            run_directory,
            settings=InverseSettings(epochs=args.inverse_epochs, seed=args.seed),
            device=args.device,
        ),
        "optimize inverse deformations",
    )
    inverse_seconds = time.perf_counter() - start
    start = time.perf_counter()
    deformed = drive(
        reconstruct_run(run_directory, deformations=True, device=args.device),
        "deformed reconstruction",
    )
    return {
        "directory": str(deformed.directory),
        "full_map": str(deformed.full_map),
        "half_maps": [str(path) for path in deformed.half_maps],
        "fsc_csv": str(deformed.fsc_csv),
        "deformed_resolution_angstrom": float(deformed.resolution_angstrom),
        "standard_resolution_angstrom": float(deformed.resolution_standard_angstrom),
        "timings": {
            "optimize_inverse_deformations_seconds": inverse_seconds,
            "reconstruct_seconds": time.perf_counter() - start,
        },
    }


def latent_summary(run_directory: Path, labels_csv: Path) -> dict:
    """Per half set, how well the latent orders its particles by true frame (|Spearman| of the best
    PC)."""
    import pandas as pd

    from ..engine.evaluation.metrics import latent_frame_ordering
    from ..engine.explore import load_run

    data = load_run(run_directory)
    frames = pd.read_csv(labels_csv)["frame"].to_numpy()
    summary = {}
    for half in (1, 2):
        view = data.own_half(half)
        ordering = latent_frame_ordering(view.latents, frames[view.rows])
        summary[f"half{half}"] = {
            "best_component": ordering.best_component,
            "abs_spearman_with_true_frame": ordering.best,
        }
    return {"latent_ordering": summary}


def write_outputs(run_directory: Path, labels_csv: Path, output: Path) -> dict:
    """The latent space figure, the selection and the motion GIF; returns what was written."""
    import pandas as pd

    from ..engine.explore import embed, load_run

    demo = DemoFolder(output)
    data = load_run(run_directory)
    frames = pd.read_csv(labels_csv)["frame"].to_numpy()
    own = {half: data.own_half(half) for half in (1, 2)}
    coords = {half: embed(view.latents, "pca").coords for half, view in own.items()}
    _latent_figure(
        coords, {half: frames[view.rows] for half, view in own.items()}, demo.latent_space
    )
    selected = np.zeros(len(data), dtype=bool)
    for half, view in own.items():
        first = coords[half][:, 0]
        selected[view.rows] = first > np.median(first)
    count = data.export(demo.selection, selected)
    n_frames = _motion_movie(run_directory, own[1].latents, demo.motion_gif)
    return {
        "latent_space_png": str(demo.latent_space),
        "selection_star": str(demo.selection),
        "selected_particles": int(count),
        "motion_gif": str(demo.motion_gif),
        "movie_frames": n_frames,
    }


def _latent_figure(coords: dict, frames: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    from ..engine.io.figure import save_figure

    figure = Figure(figsize=(10, 4.5), layout="constrained")
    for half in (1, 2):
        axes = figure.add_subplot(1, 2, half)
        points = axes.scatter(
            coords[half][:, 0],
            coords[half][:, 1],
            c=frames[half],
            s=6,
            cmap="viridis",
            vmin=min(f.min() for f in frames.values()),
            vmax=max(f.max() for f in frames.values()),
        )
        axes.set_xlabel("latent PC 1")
        axes.set_ylabel("latent PC 2")
        axes.set_title(f"half set {half}")
    figure.colorbar(points, ax=figure.axes, label="true trajectory frame")
    figure.suptitle("latent space of the example data")
    save_figure(figure, path, dpi=100)


def _motion_movie(run_directory: Path, latents: np.ndarray, path: Path) -> int:
    """Half 1's volumes decoded from the 5th to the 95th percentile of its PC 1, projected, as a
    GIF."""
    from ..engine.deformation.decode import DeformationRun
    from ..engine.explore import straight_path
    from ..engine.io.movie import write_movie
    from ..engine.statistics import principal_directions

    mean, axes, _ = principal_directions(latents, 1)
    direction = axes[:, 0]
    low, high = np.percentile((latents - mean) @ direction, [5, 95])
    path_latents = straight_path(mean + low * direction, mean + high * direction, MOVIE_FRAMES)
    volumes = DeformationRun.load(run_directory).decode_volumes(path_latents.astype(np.float32))
    projections = volumes.sum(axis=1)
    scale = np.percentile(projections, 99.9)
    frames = (np.clip(projections / scale, 0, 1) * 255).astype(np.uint8)
    frames = np.concatenate(
        [frames, frames[-2:0:-1]]
    )  # there and back, no frame shown twice in a row
    return write_movie(path, frames, fps=MOVIE_FPS)
