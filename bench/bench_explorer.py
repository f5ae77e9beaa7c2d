"""Latent explorer responsiveness: lasso and recolour at 10⁵ and 10⁶ points; click-to-volume
latency.

For each size: the polygon hit test alone (numpy, ``engine.explore.points_in_polygon``), the whole
lasso (hit test + drawing the selection + canvas redraw) and a recolour (new per-particle values +
redraw), each the median of 5 rounds, in ms. At 10⁵ points the plot is a scatter, at 10⁶ a density
image (the switch is at 200,000). Needs a Qt platform (a display, Xvfb, or
QT_QPA_PLATFORM=offscreen: matplotlib draws with Agg either way).

Click latency (--latency-boxes 64 128): a small AdK data set is simulated at each box (200
particles, 1.5 Å/px at box 64, 0.75 Å/px at box 128), one deformation epoch is trained (training box
32), and the run is opened in a shown napari viewer; for 10 points the time from the click
(``decode_at``) until the volume, points and vectors layers hold the new data is measured, as well
as the decoder alone and a screenshot (the canvas redraw). Needs a display: run under xvfb-run.

Movie (--movie-frames 20, on the first latency box's run): a path between the 5th and 95th
percentile of the first plot axis is exported as a GIF (the explorer's ``export_movie``: decode,
show, capture, crop, write), timed from the request until the file is written, with the canvas
renders counted (vispy draw events) while the frames are captured. Each frame is rendered once, into
the captured image; for comparison the same export runs with the on-screen repaint left on (each
frame rendered twice: on screen after the layer update, then for the capture), the two interleaved.

Usage: xvfb-run -a python bench/bench_explorer.py --output bench/results/explorer.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_ms(function, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 2)


def measure(n: int, seed: int = 0) -> dict:
    from napari_dynamight._widgets._plot import LatentPlot
    from napari_dynamight.engine.explore import Selections, embed, points_in_polygon

    rng = np.random.default_rng(seed)
    latents = rng.normal(size=(n, 6)).astype(np.float32)
    latents[: n // 3, 0] += 4
    start = time.perf_counter()
    embedding = embed(latents)
    embed_ms = 1000 * (time.perf_counter() - start)
    angle = np.linspace(0, 2 * np.pi, 100, endpoint=False)
    polygon = np.column_stack(
        [1.5 * np.cos(angle) + 1, 2 * np.sin(angle)]
    )  # a lasso of 100 vertices
    plot = LatentPlot()
    plot.resize(500, 500)
    values = [rng.normal(size=n), rng.uniform(size=n)]
    start = time.perf_counter()
    plot.set_data(embedding.coords, values[0], "a")
    plot.draw()
    first_draw_ms = 1000 * (time.perf_counter() - start)
    selections = Selections(n)

    def lasso():
        mask = points_in_polygon(embedding.coords, polygon)
        selections.add("lasso", mask)
        plot.set_selected(mask)
        plot.draw()

    rounds = iter(range(1_000_000))

    def recolour():
        plot.recolour(values[next(rounds) % 2], "value")
        plot.draw()

    result = {
        "particles": n,
        "plot": "density image" if plot.density else "scatter",
        "pca_embedding_ms": round(embed_ms, 1),
        "first_draw_ms": round(first_draw_ms, 1),
        "hit_test_ms": _median_ms(lambda: points_in_polygon(embedding.coords, polygon)),
        "lasso_total_ms": _median_ms(lasso),
        "recolour_ms": _median_ms(recolour),
        "selected": int(points_in_polygon(embedding.coords, polygon).sum()),
    }
    plot.close()
    return result


def movie_timing(viewer, widget, folder: Path, frames: int, rounds: int = 1) -> dict:
    """Seconds and canvas renders of a ``frames``-frame GIF export, rendered once and (for
    comparison) with the on-screen repaint left on."""
    from qtpy.QtWidgets import QApplication

    from napari_dynamight._widgets import _movie

    app = QApplication.instance()
    coords = widget.embedding.coords
    height = float(np.median(coords[:, 1]))
    widget.frames.value = frames
    widget.set_path_end(0, (float(np.percentile(coords[:, 0], 5)), height))
    widget.set_path_end(1, (float(np.percentile(coords[:, 0], 95)), height))
    draws = []
    viewer.window._qt_viewer.canvas._scene_canvas.events.draw.connect(lambda _: draws.append(1))
    find_canvas = _movie.canvas_widget
    results: dict = {"rendered once": [], "rendered twice": []}
    for round_ in range(rounds):
        for mode in results:
            _movie.canvas_widget = (
                find_canvas if mode == "rendered once" else (lambda _widget: None)
            )
            counted, close = [], _movie.FrameCapture.close

            def counting_close(capture, counted=counted, close=close):
                counted.append(len(draws))
                return close(capture)

            _movie.FrameCapture.close = counting_close  # restored below, in this iteration
            try:
                start, before = time.perf_counter(), len(draws)
                widget.export_movie(folder / f"movie_{round_}_{mode.split()[1]}.gif")
                while widget.tasks.running:
                    app.processEvents()
                    time.sleep(0.005)
                seconds = time.perf_counter() - start
            finally:
                _movie.canvas_widget, _movie.FrameCapture.close = find_canvas, close
            outcome = widget.tasks.last_outcome
            if outcome is None or outcome.error is not None:
                raise RuntimeError(f"movie export failed: {widget.status.value}")
            results[mode].append(
                {
                    "seconds": seconds,
                    "renders": counted[0] - before,
                    "frames": len(widget.movie_frames),
                }
            )
    summary = {
        "frames": frames,
        "canvas_size": list(viewer.window._qt_viewer.canvas.size),
        "movie_size_cropped": list(widget.movie_frames[0].shape[:2]),
    }
    for mode, runs in results.items():
        seconds = float(np.median([run["seconds"] for run in runs]))
        summary[mode.replace(" ", "_")] = {
            "seconds": round(seconds, 1),
            "seconds_per_frame": round(seconds / frames, 2),
            "canvas_renders": [run["renders"] for run in runs],
            "frames_written": [run["frames"] for run in runs],
        }
    return summary


def click_latency(box: int, folder: Path, movie_frames: int = 0) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_dynamight._widgets.explorer import open_explorer
    from napari_dynamight.engine.deformation.run import optimize_deformations
    from napari_dynamight.engine.deformation.settings import DeformationSettings
    from napari_dynamight.engine.example_data import STRUCTURE, TRAJECTORY, example_file
    from napari_dynamight.engine.progress import run
    from napari_dynamight.engine.simulate import simulate

    data, run_folder = folder / f"data{box}", folder / f"run{box}"
    pixel = 1.5 * 64 / box
    run(
        simulate(
            example_file(STRUCTURE),
            example_file(TRAJECTORY),
            output_directory=data,
            n_particles=200,
            box=box,
            pixel_size_angstrom=pixel,
            frames=list(range(0, 98, 8)),
            seed=0,
        )
    )
    settings = DeformationSettings(
        epochs=1, warmup_epochs=0, checkpoint_every=1, refinement_rounds=0
    )
    run(
        optimize_deformations(
            data / "particles.star", data / "consensus.mrc", run_folder, settings=settings, box=32
        )
    )
    viewer = napari.Viewer(show=True)
    widget = open_explorer(viewer, run_folder)
    app = QApplication.instance()
    points = widget.embedding.coords[
        np.linspace(0, len(widget.embedding.coords) - 1, 11).astype(int)
    ]
    widget.decode_at(points[0])  # warm-up (first layers, torch start-up)
    while widget.runner.busy:
        app.processEvents()
    click, decode, redraw = [], [], []
    for point in points[1:]:
        served = widget.runner.served
        start = time.perf_counter()
        widget.decode_at(point)
        while widget.runner.served == served:
            app.processEvents()
        click.append(time.perf_counter() - start)
        start = time.perf_counter()
        widget.decoder.decode(widget.embedding.to_latent(point))
        decode.append(time.perf_counter() - start)
        start = time.perf_counter()
        viewer.screenshot(canvas_only=True, flash=False)
        redraw.append(time.perf_counter() - start)
    n_gaussians = len(widget.last_decoded.positions_angstrom)
    result = {
        "box": box,
        "n_gaussians": n_gaussians,
        "click_to_layers_ms": round(1000 * float(np.median(click)), 1),
        "decode_and_render_ms": round(1000 * float(np.median(decode)), 1),
        "canvas_redraw_ms": round(1000 * float(np.median(redraw)), 1),
    }
    if movie_frames:
        result["movie"] = movie_timing(viewer, widget, folder, movie_frames)
    viewer.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=Path("bench/results/explorer.json"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--latency-boxes",
        type=int,
        nargs="*",
        default=[64, 128],
        help="boxes for the click latency (needs a display; none to skip)",
    )
    parser.add_argument(
        "--movie-frames",
        type=int,
        default=20,
        help="frames of the movie timed on the first latency box's run (0: none)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)"
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if not os.environ.get("DISPLAY") and "QT_QPA_PLATFORM" not in os.environ:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        args.latency_boxes = []
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    results = [measure(n) for n in args.sizes]
    latency = []
    with tempfile.TemporaryDirectory() as folder:
        for index, box in enumerate(args.latency_boxes):
            latency.append(click_latency(box, Path(folder), args.movie_frames if index == 0 else 0))
    report = {
        "benchmark": "latent explorer: lasso and recolour; click to volume; movie export",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "qt_platform": app.platformName(),
        "selection": results,
        "click_latency": latency,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
