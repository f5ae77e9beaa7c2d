"""The headless demo's napari views: screenshots of a shown viewer and a movie of the motion.

napari renders only into a shown window on an X display (an offscreen Qt platform gives black
frames), so without a display an Xvfb server is started for the duration (:func:`virtual_display`).
In the demo folder: ``napari_explorer.png`` (the whole window: the explorer's latent plot of half 1,
a decoded volume, its deformed Gaussians and their displacement arrows), ``napari_volume.png`` (the
3D canvas alone) and ``motion_napari.mp4`` / ``motion_napari.gif`` (half 1's volumes along its first
principal component, rendered with the current camera by the explorer's movie export).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

MOVIE_FRAMES = 12
SCREEN = "1800x1200x24"
WINDOW_SIZE = (1600, 1000)
TIMEOUT_SECONDS = 300


def xvfb_needed() -> str | None:
    """The Xvfb program if there is no X display to render on (None if there is one); raises
    InputError (before any work is done) if neither is available."""
    from ..engine.errors import InputError

    if os.environ.get("DISPLAY"):
        return None
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise InputError("no display for napari's screenshots and no Xvfb to make one: install "
                         "xvfb (apt install xvfb) or run under xvfb-run")
    return xvfb


@contextmanager
def virtual_display():
    """Keep the current X display, or start Xvfb and point DISPLAY at it until the block ends."""
    from ..engine.errors import InputError

    xvfb = xvfb_needed()
    if xvfb is None:
        yield None
        return
    read, write = os.pipe()
    process = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0", SCREEN,
                                "-nolisten", "tcp"], pass_fds=(write,),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()  # Xvfb writes its display number once it is ready
    if not number:
        process.kill()
        raise InputError("Xvfb did not start; run the demo under xvfb-run instead")
    saved = {name: os.environ.pop(name, None) for name in ("DISPLAY", "QT_QPA_PLATFORM")}
    os.environ["DISPLAY"] = f":{number}"
    try:
        yield process
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
        process.terminate()
        process.wait(timeout=10)


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


def _save_png(path: Path, image: np.ndarray) -> None:
    import imageio.v3 as iio

    from ..engine.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, np.asarray(image)[..., :3], extension=".png")


def render_views(run_directory: Path, output: Path, add_layers=None, frames: int | None = None) -> dict:
    """Write the napari screenshots and movies of ``run_directory`` into ``output``; what was written.

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
    from .explore import open_explorer

    viewer = new_viewer()
    try:
        viewer.window._qt_window.resize(*WINDOW_SIZE)
        if add_layers is not None:
            add_layers(viewer)
            for layer in viewer.layers:
                layer.visible = False
        widget = open_explorer(viewer, run_directory)
        if widget.runner is None:
            raise RuntimeError(f"{run_directory}: the run cannot be decoded ({widget.status.value})")
        coords = widget.embedding.coords  # half 1's PCA: the first axis is its main motion
        height = float(np.median(coords[:, 1]))
        start, end = ((float(np.percentile(coords[:, 0], q)), height) for q in (5, 95))
        widget.decode_at(end)
        _wait(lambda: not widget.runner.busy, "decoding a volume")
        viewer.camera.angles = (0.0, 30.0, 60.0)
        viewer.reset_view()
        widget.plot.draw()
        window_png, volume_png = output / "napari_explorer.png", output / "napari_volume.png"
        _save_png(window_png, viewer.screenshot(canvas_only=False, flash=False))
        _save_png(volume_png, viewer.screenshot(canvas_only=True, flash=False))
        widget.frames.value = frames
        widget.set_path_end(0, start)
        widget.set_path_end(1, end)
        mp4, gif = output / "motion_napari.mp4", output / "motion_napari.gif"
        if widget.export_movie(mp4, also=[gif]) is None:
            raise RuntimeError(f"movie export failed: {widget.status.value}")
        _wait(lambda: not widget.tasks.running, "the movie")
        outcome = widget.tasks.last_outcome
        if outcome is None or outcome.error is not None:
            raise RuntimeError(f"movie export failed: {widget.tasks.status.text()}")
        return {"napari_explorer_png": str(window_png), "napari_volume_png": str(volume_png),
                "motion_mp4": str(mp4), "motion_napari_gif": str(gif),
                "napari_movie_frames": len(widget.movie_frames)}
    finally:
        viewer.close()
