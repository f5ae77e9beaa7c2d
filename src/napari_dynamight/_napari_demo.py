"""The demo in napari: its window (:func:`show_demo`), and the headless mode's screenshots and
movies.

The window holds the consensus map (an image layer in Å), its Gaussians (a points layer), the
deformed reconstruction and the latent-space explorer on the run. Headless (:func:`render_views`),
napari renders into a shown window on a real or virtual display (``_display.virtual_display``); in
the demo folder (``engine.run_folder.DemoFolder``): a screenshot of the whole window (the explorer's
latent plot of half 1, a decoded volume, its deformed Gaussians and their displacement arrows), one
of the 3D canvas alone, and a movie as MP4 and GIF (half 1's volumes along its first principal
component, rendered with the current camera by the explorer's movie export).
The command line calls these lazily; nothing here imports the command line.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ._display import virtual_display
from .engine.run_folder import DemoFolder

MOVIE_FRAMES = 12
WINDOW_SIZE = (1600, 1000)
TIMEOUT_SECONDS = 300


def add_layers(viewer, result: dict) -> None:
    """Add the consensus map (in Å, centred like the engine) and its Gaussians to a viewer."""
    from ._widgets._layers import show_map, show_points

    volume, voxel_size, model = result["volume"], result["voxel_size_angstrom"], result["model"]
    show_map(
        viewer,
        "consensus map",
        volume,
        voxel_size,
        threshold=float(result["summary"]["consensus"]["threshold"]),
        opacity=0.5,
    )
    show_points(
        viewer,
        "consensus Gaussians",
        model.positions_angstrom.detach().cpu().numpy(),
        size_angstrom=float(model.sigmas_angstrom[0]),
    )


def add_reconstruction(viewer, reconstruction: dict) -> None:
    """The deformed reconstruction's full map, hidden, for comparison with the consensus map."""
    from ._widgets._layers import show_map
    from .engine.io.mrc import read_map

    volume, voxel_size = read_map(reconstruction["full_map"])
    show_map(viewer, "deformed reconstruction (full)", volume, voxel_size, visible=False)


def show_demo(result: dict) -> None:
    """Open napari on the demo's result (layers, reconstruction, explorer) until the window
    closes."""
    import napari

    from ._widgets.explorer import open_explorer

    viewer = napari.Viewer(title="napari-dynamight demo", ndisplay=3)
    add_layers(viewer, result)
    if "reconstruction" in result["summary"]:
        add_reconstruction(viewer, result["summary"]["reconstruction"])
    if "deformations" in result["summary"]:
        open_explorer(viewer, Path(result["summary"]["deformations"]["run_directory"]))
    napari.run()


def _wait(condition, what: str) -> None:
    """Run the Qt event loop until ``condition()`` holds."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} took longer than {TIMEOUT_SECONDS} s")
        app.processEvents()
        time.sleep(0.01)


def render_views(
    run_directory: Path, output: Path, add_layers=None, frames: int | None = None
) -> dict:
    """Write the napari screenshots and movies of ``run_directory`` into ``output``; what was
    written.

    The movie has ``frames`` frames (default :data:`MOVIE_FRAMES`).
    ``add_layers(viewer)`` may add context layers first (the demo's consensus map and Gaussians;
    they are hidden for the pictures, so the decoded volume is seen).
    """
    with virtual_display():
        return _render(Path(run_directory), Path(output), add_layers, frames or MOVIE_FRAMES)


def new_viewer():
    """A shown napari viewer for the pictures (tests swap in their fixture's viewers, which napari's
    test support needs in order to register the plugin once per test)."""
    import napari

    return napari.Viewer(title="napari-dynamight demo", show=True)


def _render(run_directory: Path, output: Path, add_layers, frames: int) -> dict:
    from ._widgets._layers import fit_camera
    from ._widgets.explorer import VOLUME_LAYER, open_explorer
    from .engine.io.movie import write_image

    viewer = new_viewer()
    try:
        viewer.window._qt_window.resize(*WINDOW_SIZE)
        if add_layers is not None:
            add_layers(viewer)
            for layer in viewer.layers:
                layer.visible = False
        widget = open_explorer(viewer, run_directory)
        if widget.runner is None:
            raise RuntimeError(
                f"{run_directory}: the run cannot be decoded ({widget.status.value})"
            )
        coords = widget.embedding.coords  # half 1's PCA: the first axis is its main motion
        height = float(np.median(coords[:, 1]))
        start, end = ((float(np.percentile(coords[:, 0], q)), height) for q in (5, 95))
        widget.decode_at(end)
        _wait(lambda: not widget.runner.busy, "decoding a volume")
        getattr(viewer, "scene", viewer).camera.angles = (0.0, 30.0, 60.0)
        fit_camera(viewer, viewer.layers[VOLUME_LAYER])
        widget.plot.draw()
        demo = DemoFolder(output)
        window_png, volume_png = demo.napari_explorer, demo.napari_volume
        write_image(window_png, viewer.screenshot(canvas_only=False, flash=False))
        write_image(volume_png, viewer.screenshot(canvas_only=True, flash=False))
        widget.frames.value = frames
        widget.set_path_end(0, start)
        widget.set_path_end(1, end)
        mp4, gif = demo.napari_movie, demo.napari_movie_gif
        if widget.export_movie(mp4, also=[gif]) is None:
            raise RuntimeError(f"movie export failed: {widget.status.value}")
        _wait(lambda: not widget.tasks.running, "the movie")
        outcome = widget.tasks.last_outcome
        if outcome is None or outcome.error is not None:
            raise RuntimeError(f"movie export failed: {widget.tasks.status.text()}")
        return {
            "napari_explorer_png": str(window_png),
            "napari_volume_png": str(volume_png),
            "motion_mp4": str(mp4),
            "motion_napari_gif": str(gif),
            "napari_movie_frames": len(widget.movie_frames),
        }
    finally:
        viewer.close()
