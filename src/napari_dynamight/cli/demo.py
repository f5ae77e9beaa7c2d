"""Run the pipeline stages that exist on the bundled example data and show the result.

Simulates a RELION 3.1 data set from the adenylate kinase closed-to-open trajectory (the
example files bundled with the package), reads it back as any STAR file is read, fills the consensus
map with Gaussians and fits them to it, trains the deformations (--epochs; 0 skips them) and prints
a summary. Then it opens napari with the consensus map (an image layer in Å), the Gaussians (a
points layer) and the latent-space explorer on the run; with --headless it writes
demo_summary.json, consensus_slices.png, latent_space.png, selection.star and motion.gif instead,
and napari's own rendering of the run: napari_explorer.png (the window with the explorer's latent
plot, a decoded volume, its Gaussians and displacement arrows), napari_volume.png (the 3D view) and
motion_napari.mp4 / motion_napari.gif (the volumes along half 1's main motion, with napari's camera;
the volumes and a ChimeraX script that plays them in motion_napari_chimerax/).
Without a display, headless mode starts a virtual one (Xvfb) for these.

Outputs in DIR: data/ (what 'napari-dynamight simulate' writes: particles.star, particles.mrcs,
consensus.mrc, ground_truth/), consensus/ (what 'napari-dynamight fit-consensus' writes:
consensus_gaussians.pt, .mrc and .csv), run/ (what 'napari-dynamight optimize-deformations'
writes), and in headless mode the files above.

example:
  napari-dynamight demo --output-directory demo_output
  napari-dynamight demo --output-directory demo_output --headless --n-particles 500 --frames 0:98:4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..engine.errors import InputError
from ..engine.example_data import EXAMPLE_STRUCTURE, EXAMPLE_TRAJECTORY, check_example_file
from ..engine.run_folder import DemoFolder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-directory",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for the simulated data and the results (created if needed)",
    )
    parser.add_argument(
        "--headless",
        action="store_true",
        help="do not open a napari window; write the summary, figures, a selection STAR file, "
        "screenshots and movies rendered by napari (on Xvfb if there is no display)",
    )
    parser.add_argument(
        "--structure",
        type=Path,
        default=EXAMPLE_STRUCTURE,
        metavar="FILE",
        help="atomic structure, PDB or mmCIF (default: the bundled AdK closed state)",
    )
    parser.add_argument(
        "--trajectory",
        type=Path,
        default=EXAMPLE_TRAJECTORY,
        metavar="FILE",
        help="DCD trajectory of the structure (default: the bundled AdK DIMS run)",
    )
    parser.add_argument(
        "--n-particles",
        type=int,
        default=1000,
        metavar="N",
        help="number of particles to simulate (default: %(default)s)",
    )
    parser.add_argument(
        "--box",
        type=int,
        default=64,
        metavar="PX",
        help="box size in pixels (default: %(default)s)",
    )
    parser.add_argument(
        "--pixel-size",
        type=float,
        default=1.5,
        metavar="A",
        help="pixel size in Å (default: %(default)s)",
    )
    parser.add_argument(
        "--snr",
        type=float,
        default=0.1,
        metavar="S",
        help="signal-to-noise ratio of the images (default: %(default)s)",
    )
    parser.add_argument(
        "--frames",
        default="all",
        help="trajectory frames to draw particles from: 'all', START:STOP[:STEP] or 0,10,20 "
        "(0-based; default: all)",
    )
    parser.add_argument(
        "--n-gaussians",
        type=int,
        default=None,
        metavar="N",
        help="Gaussians in the consensus model (default: two per residue, estimated from the "
        "volume above the threshold)",
    )
    parser.add_argument(
        "--fit-steps",
        type=int,
        default=300,
        metavar="N",
        help="gradient steps fitting the Gaussians to the map (default: %(default)s)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=20,
        metavar="E",
        help="deformation training epochs; 0 skips stage 3 (default: %(default)s)",
    )
    parser.add_argument(
        "--refinement-rounds",
        type=int,
        default=3,
        metavar="R",
        help="EM refinement rounds after the deformation epochs (default: %(default)s; "
        "optimize-deformations uses 8)",
    )
    parser.add_argument(
        "--inverse-epochs",
        type=int,
        default=10,
        metavar="E",
        help="inverse-deformation epochs before the deformed reconstruction; 0 skips stages 4 "
        "and 5 (default: %(default)s)",
    )
    parser.add_argument(
        "--movie-frames",
        type=int,
        default=None,
        metavar="N",
        help="frames of the napari movie written with --headless (default: 12)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    check_example_file(args.structure, "--structure")
    check_example_file(args.trajectory, "--trajectory")
    if args.movie_frames is not None and args.movie_frames < 2:
        raise InputError(f"--movie-frames {args.movie_frames}: a movie needs at least 2 frames")
    if not args.headless:
        from .._display import check_display

        check_display()
    elif args.epochs > 0:
        from .._display import xvfb_needed

        xvfb_needed()  # fails now, not after the training, if napari could not render
    result = run_pipeline(args)
    print(format_result(result))
    if args.headless:
        write_headless_outputs(result, args.output_directory, args.movie_frames)
        written = DemoFolder(args.output_directory).headless_files(
            "deformations" in result["summary"]
        )
        print(f"wrote {', '.join(path.name for path in written)} in {args.output_directory}")
    else:
        from .._napari_demo import show_demo

        show_demo(result)
    return 0


def run_pipeline(args: argparse.Namespace) -> dict:
    """Simulate, read back, fit the consensus Gaussians; return everything the views need."""
    from ..engine.consensus import load_model
    from ..engine.consensus_stage import fit_consensus
    from ..engine.data.particle_file import read_particles
    from ..engine.data.summary import summarise
    from ..engine.io.mrc import read_map
    from ..engine.simulate import simulate
    from ._progress import drive
    from .info import format_summary
    from .simulate import parse_frames

    output = args.output_directory
    demo = DemoFolder(output)
    timings = {}
    start = time.perf_counter()
    simulation = drive(
        simulate(
            args.structure,
            args.trajectory,
            output_directory=demo.data,
            n_particles=args.n_particles,
            box=args.box,
            pixel_size_angstrom=args.pixel_size,
            snr=args.snr,
            seed=args.seed,
            frames=parse_frames(args.frames),
            device=args.device,
        ),
        "simulate",
    )
    timings["simulate_seconds"] = time.perf_counter() - start

    table = read_particles(simulation.particles_star)
    table.check_images()
    particles = summarise(table, simulation.particles_star)
    print(format_summary(particles))

    start = time.perf_counter()
    fit = drive(
        fit_consensus(
            simulation.consensus_map,
            demo.consensus.path,
            n_gaussians=args.n_gaussians,
            n_steps=args.fit_steps,
            seed=args.seed,
            device=args.device,
        ),
        "fit consensus",
    )
    timings["fit_consensus_seconds"] = time.perf_counter() - start
    volume, voxel_size = read_map(simulation.consensus_map)
    model = load_model(fit.model_path)
    motion = {}
    if args.epochs > 0:
        from . import _demo_motion

        motion["deformations"] = _demo_motion.train(
            args, simulation.particles_star, simulation.consensus_map, fit.model_path, output
        )
        motion["deformations"].update(
            _demo_motion.latent_summary(
                Path(motion["deformations"]["run_directory"]), simulation.labels_csv
            )
        )
        timings["optimize_deformations_seconds"] = motion["deformations"]["seconds"]
        if args.inverse_epochs > 0:
            run_directory = Path(motion["deformations"]["run_directory"])
            motion["reconstruction"] = _demo_motion.improve(args, run_directory)
            timings |= motion["reconstruction"].pop("timings")

    return {
        "volume": volume,
        "voxel_size_angstrom": voxel_size,
        "model": model,
        "summary": {
            "output_directory": str(output),
            "simulation": {
                "n_particles": simulation.n_particles,
                "n_atoms": simulation.n_atoms,
                "frames": len(simulation.frames),
                "box": simulation.box,
                "pixel_size_angstrom": simulation.pixel_size_angstrom,
                "snr": args.snr,
                "particles_star": str(simulation.particles_star),
                "consensus_map": str(simulation.consensus_map),
            },
            "particles": particles,
            "consensus": {
                "n_gaussians": fit.n_gaussians,
                "threshold": float(fit.threshold),
                "sigma_angstrom": float(fit.sigma_angstrom),
                "correlation_with_map": float(fit.correlation),
                "model_file": str(fit.model_path),
            },
            "timings": timings,
            **motion,
        },
        "labels_csv": simulation.labels_csv,
    }


def format_result(result: dict) -> str:
    summary = result["summary"]
    consensus, timings = summary["consensus"], summary["timings"]
    lines = [
        f"consensus model: {consensus['n_gaussians']} Gaussians, σ "
        f"{consensus['sigma_angstrom']:.2f} Å, correlation with the map "
        f"{consensus['correlation_with_map']:.3f}",
    ]
    if "deformations" in summary:
        motion = summary["deformations"]
        orderings = ", ".join(
            f"{half.replace('half', 'half ')} {value['abs_spearman_with_true_frame']:.3f}"
            for half, value in motion["latent_ordering"].items()
        )
        lines.append(
            f"deformations: {motion['epochs']} epochs at box {motion['train_box']}; the best "
            f"latent PC orders the particles by true frame with |Spearman| {orderings}"
        )
    if "reconstruction" in summary:
        maps = summary["reconstruction"]
        lines.append(
            f"half-map resolution (FSC 0.143): {maps['deformed_resolution_angstrom']:.2f} Å with "
            f"the deformations, {maps['standard_resolution_angstrom']:.2f} Å without; maps in "
            f"{maps['directory']}"
        )
    lines.append(
        "time: "
        + ", ".join(
            f"{name.replace('_seconds', '').replace('_', ' ')} {value:.1f} s"
            for name, value in timings.items()
        )
    )
    return "\n".join(lines)


def gaussian_points_zyx(model):
    """Gaussian centres as [z, y, x] in Å from the box centre (the volume's axis order)."""
    return model.positions_angstrom.detach().cpu().numpy()[:, ::-1].copy()


def write_headless_outputs(result: dict, output: Path, movie_frames: int | None = None) -> None:
    """The summary and the consensus slices, and with a run the motion outputs and napari's
    screenshots and movies (``_napari_demo.render_views``); each written atomically."""
    from ..engine.io.atomic import atomic_path
    from ..engine.io.figure import save_figure

    demo = DemoFolder(output)
    if "deformations" in result["summary"]:
        from .._napari_demo import add_layers, render_views
        from . import _demo_motion

        run_directory = Path(result["summary"]["deformations"]["run_directory"])
        outputs = _demo_motion.write_outputs(run_directory, result["labels_csv"], output)
        outputs |= render_views(
            run_directory, output, lambda viewer: add_layers(viewer, result), movie_frames
        )
        result["summary"]["deformations"]["outputs"] = outputs
    with atomic_path(demo.summary) as tmp:
        tmp.write_text(json.dumps(result["summary"], indent=2) + "\n", encoding="utf-8")
    save_figure(slice_figure(result), demo.consensus_slices, dpi=100)


def slice_figure(result: dict):
    """Central z, y and x slices of the map with the Gaussians within one σ of each slice."""
    import numpy as np
    from matplotlib.figure import Figure

    volume, voxel_size, model = result["volume"], result["voxel_size_angstrom"], result["model"]
    box = volume.shape[0]
    half = box // 2
    low, high = (-half - 0.5) * voxel_size, (box - half - 0.5) * voxel_size
    points = gaussian_points_zyx(model)
    sigma = float(model.sigmas_angstrom[0])
    figure = Figure(figsize=(12, 4.4), layout="constrained")
    views = [
        ("z = 0 (x right, y up)", 0, (2, 1)),
        ("y = 0 (x right, z up)", 1, (2, 0)),
        ("x = 0 (y right, z up)", 2, (1, 0)),
    ]
    for column, (title, axis, (horizontal, vertical)) in enumerate(views):
        axes = figure.add_subplot(1, 3, column + 1)
        section = np.take(volume, half, axis=axis)
        axes.imshow(section, cmap="gray", origin="lower", extent=[low, high, low, high])
        near = np.abs(points[:, axis]) <= sigma
        axes.scatter(points[near, horizontal], points[near, vertical], s=6, c="orange")
        axes.set_title(title)
        axes.set_xlabel("Å")
    figure.suptitle(
        f"consensus map and {model.n_gaussians} Gaussians (orange: within 1 σ of the slice)"
    )
    return figure
