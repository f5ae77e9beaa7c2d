"""The widgets that write hold the folder's lock as the command line does (Xvfb).

A folder locked by another live process is refused in one line before anything is read or written;
the runs through the widgets in test_gui_stages.py, test_gui_data.py and test_gui_explorer.py check
that the lock is held while they run and gone when they end.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import TRPV1_MAP
from helpers.explore_data import ShiftDecoder, make_run
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.explore import load_run
from napari_dynamight.engine.io.lock import LOCK_NAME


@pytest.fixture
def locked(tmp_path):
    """A folder whose lock file names a live process of this host (as a running command would)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (folder / LOCK_NAME).write_text(
        json.dumps(
            {"host": socket.gethostname(), "pid": holder.pid, "command": "optimize-deformations"}
        )
        + "\n"
    )
    yield folder, holder.pid
    holder.kill()
    holder.wait()


def snapshot(folder):
    return {
        path.relative_to(folder): (path.stat().st_size, path.stat().st_mtime_ns, path.read_bytes())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    } | {path.relative_to(folder): "folder" for path in folder.rglob("*") if path.is_dir()}


def deformations(widget, folder, qtbot, resume=False):
    widget.particles.value = folder / "particles.star"  # never read: the lock is refused first
    widget.consensus.value = folder / "consensus.mrc"
    widget.run.value = folder
    return widget.start(resume=resume)


def run_folder_stage(widget, folder, qtbot):
    widget.run.value = folder
    return widget.start()


def fill_and_fit(widget, folder, qtbot):
    widget.map.value = TRPV1_MAP
    worker = widget.load()
    qtbot.waitUntil(lambda: not widget.tasks.running, timeout=60_000)
    assert worker is not None and widget.tasks.last_outcome.error is None
    widget.output.value = folder
    widget.steps.value = 1
    return widget.fill_and_fit()


def save_volumes(widget, folder, qtbot):
    widget.set_data(load_run(make_run(folder.parent / "run")), ShiftDecoder())
    widget.path_latents = np.zeros((2, 4))
    return widget.save_volumes(folder)


CASES = {
    "deformations": ("Deformations", deformations),
    "resume deformations": ("Deformations", lambda w, f, q: deformations(w, f, q, resume=True)),
    "inverse deformations": ("Inverse deformations", run_folder_stage),
    "reconstruction": ("Reconstruction", run_folder_stage),
    "fill and fit": ("Data and consensus", fill_and_fit),
    "save volumes": ("Latent-space explorer", save_volumes),
}


@pytest.mark.parametrize("title", list(CASES))
def test_a_folder_locked_by_a_live_process_is_refused_in_one_line(
    qtbot, make_napari_viewer, locked, title
):
    folder, pid = locked
    name, start = CASES[title]
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-dynamight", name)
    before = snapshot(folder)
    worker = start(widget, folder, qtbot)
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.tasks.running, timeout=60_000)
    assert isinstance(widget.tasks.last_outcome.error, InputError)
    status = widget.tasks.status.text()
    assert "\n" not in status and "Traceback" not in status
    assert status.startswith(f"{title} failed: {folder}: in use by process {pid} on "), status
    assert snapshot(folder) == before  # nothing written, the other writer's lock untouched
