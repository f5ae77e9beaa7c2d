"""The headless demo's napari rendering: screenshots that show something, movies with moving frames.

`make demo HEADLESS=1` runs `napari-dynamight demo --headless`; here the same command runs in
process on a tiny data set (5 epochs, so that the decoders move the Gaussians), with the movie
shortened to 5 frames. pytest-xvfb provides the display; the Xvfb the demo starts by itself when
there is none is tested on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from helpers.screenshots import distinct_colours, molecule_coverage
from napari_dynamight.cli import main


def test_virtual_display_starts_and_stops_xvfb(monkeypatch):
    from napari_dynamight._display import virtual_display

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # would render black: removed meanwhile
    with virtual_display() as process:
        assert os.environ["DISPLAY"].startswith(":") and process.poll() is None
        assert "QT_QPA_PLATFORM" not in os.environ
    assert process.poll() is not None
    assert "DISPLAY" not in os.environ and os.environ["QT_QPA_PLATFORM"] == "offscreen"


def _running(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_xvfb_under_a_qt_application_ends_with_the_process():
    """A Qt application opened on the virtual display keeps its X connection until the process
    ends: the block leaves Xvfb running then, and Xvfb ends when the process does."""
    script = (
        "from napari_dynamight import _display\n"
        "states = iter([False, True])  # no Qt application at the start, one at the end\n"
        "_display._qt_application_exists = lambda: next(states)\n"
        "with _display.virtual_display() as process:\n"
        "    pass\n"
        "print(process.pid, process.poll() is None, flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    pid, left_running = int(out[0]), out[1] == "True"
    assert left_running
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid)


@pytest.mark.slow
def test_headless_demo_writes_napari_screenshots_and_movies(
    make_napari_viewer, tmp_path, monkeypatch
):
    from napari_dynamight import _napari_demo

    monkeypatch.setattr(_napari_demo, "MOVIE_FRAMES", 5)
    monkeypatch.setattr(_napari_demo, "new_viewer", lambda: make_napari_viewer(show=True))
    output = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--output-directory",
                str(output),
                "--headless",
                "--n-particles",
                "150",
                "--box",
                "32",
                "--pixel-size",
                "3",
                "--snr",
                "1",
                "--frames",
                "0:98:10",
                "--n-gaussians",
                "150",
                "--fit-steps",
                "20",
                "--epochs",
                "5",
                "--refinement-rounds",
                "1",
            ]
        )
        == 0
    )
    outputs = json.loads((output / "demo_summary.json").read_text())["deformations"]["outputs"]
    assert outputs["napari_movie_frames"] == 5

    window = iio.imread(output / "napari_explorer.png")
    assert window.shape[1] > 1000 and distinct_colours(window) > 500  # the window with its widgets
    plot_red = (window[..., 0] > 200) & (window[..., 1] < 60) & (window[..., 2] < 60)
    assert plot_red.sum() > 20  # the decode marker in the latent plot
    canvas = iio.imread(output / "napari_volume.png")
    grey = (np.ptp(canvas.astype(int), axis=2) < 12) & (canvas[..., 0] > 60)
    orange = (
        (canvas[..., 0] > 200)
        & (canvas[..., 1] > 100)
        & (canvas[..., 1] < 200)
        & (canvas[..., 2] < 60)
    )
    assert grey.mean() > 0.01, "no decoded volume (grey surface) in the 3D view"
    assert grey.sum() > 10 * orange.sum(), "the Gaussians hide the decoded volume"
    assert molecule_coverage(canvas) > 0.25, "the molecule is small in the 3D view"

    for name, reader in (("motion_napari.mp4", {"plugin": "FFMPEG"}), ("motion_napari.gif", {})):
        frames = iio.imread(output / name, **reader).astype(float)
        assert frames.shape[0] == 5, name
        assert frames[0].std() > 5, name
        steps = [np.abs(frames[k + 1] - frames[k]).mean() for k in range(4)]
        assert min(steps) > 0.02 and np.abs(frames[-1] - frames[0]).mean() > 0.2, (name, steps)
    assert (output / "motion.gif").is_file() and (output / "selection.star").is_file()
