"""What the three training/reconstruction stage widgets share: devices, the run file, a safe close.

:class:`StageWidget` owns one :class:`TaskPanel`. Closing napari during a run must leave a run
folder that can be resumed, and no worker signal may reach the widget once Qt has deleted it. When
the window closes, napari *quits* every thread worker (it stops at its next progress event but
leaves the engine generator suspended), so the widget closes the generator right then, in the
worker thread (``aborted`` is connected directly): its ``finally`` clauses run, and nothing is
half-written because the engine writes every file atomically. When the widget is hidden because
its window closes (or when it is closed itself) it also cancels the run, waits for the generator
to end and delivers the worker's last queued signals while the widget still exists.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QWidget

from ..engine.run_folder import read_run_info
from ._sections import join_plugin_docks_when_shown
from ._tasks import TaskPanel

STOP_TIMEOUT_SECONDS = 60.0


def device_choices() -> list[str]:
    """``cpu`` and every accelerator torch sees (``cuda:0``, ..., ``mps``)."""
    import torch

    choices = ["cpu"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        choices.append("mps")
    return choices


def optional_path(value) -> Path | None:
    """A FileEdit value as a path, or None when empty (magicgui gives ``Path('.')``)."""
    if value is None or str(value) in ("", "."):
        return None
    return Path(value)


def _tracked(operation, ended: threading.Event):
    """``operation``'s events; ``ended`` is set once it finished, failed or was closed."""
    try:
        return (yield from operation)
    finally:
        ended.set()


def _close(tracked, ended: threading.Event) -> None:
    """(In the worker thread, which has just stopped iterating.) End the engine generator."""
    tracked.close()
    ended.set()


class StageWidget(QWidget):
    """A dock widget that runs one engine stage at a time and stops it safely on close."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.tasks = TaskPanel()
        self._ended = threading.Event()
        self._ended.set()
        self._last_key = None

    def read_chosen_run(self, folder=None) -> tuple[Path, dict] | None:
        """Take ``folder`` (else the form's run folder), read its run file and adopt its device;
        None, with the one-line reason in the summary, if it is not a run. Uses the subclass's
        ``run``, ``device`` and ``summary`` fields."""
        from ._tasks import one_line

        if folder is not None:
            self.run.value = folder
        run = optional_path(self.run.value) or Path(".")
        try:
            info = read_run_info(run)
        except Exception as error:
            self.summary.value = one_line(error)
            return None
        if info.get("device") in self.device.choices:
            self.device.value = info["device"]
        return run, info

    def run_task(self, operation, title: str, on_done=None, on_progress=None):
        """Start ``operation`` in the task panel (None if one is running already)."""
        ended = threading.Event()
        self._last_key = None
        tracked = _tracked(operation, ended)
        worker = self.tasks.start(
            tracked, title, on_done, lambda event: self._watch(event, on_progress)
        )
        if worker is None:
            return None
        self._ended = ended
        worker.aborted.connect(lambda: _close(tracked, ended), Qt.ConnectionType.DirectConnection)
        return worker

    def refresh(self) -> None:
        """Show what the running stage has written so far (called whenever an epoch ends)."""

    def _watch(self, event, on_progress) -> None:
        """At each new epoch (or stage) the previous one is on disk: :meth:`refresh`."""
        key = event.metrics.get("epoch", event.stage)
        if key != self._last_key:
            self._last_key = key
            self.refresh()
        if on_progress is not None:
            on_progress(event)

    def busy(self) -> bool:
        """A worker of this widget may still deliver signals."""
        return self.tasks.running

    def stop(self, timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> bool:
        """Cancel the running operation, wait until the engine generator has closed and let the
        worker's last signals arrive; False if the generator did not end in time."""
        if self.tasks.running:
            self.tasks.cancel()
        ended = self._ended.wait(timeout_seconds)
        deadline = time.monotonic() + 10.0
        while self.busy() and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.01)
        return ended

    def showEvent(self, event):
        super().showEvent(event)
        join_plugin_docks_when_shown(self)  # this plugin's docks share one column of tabs

    def hideEvent(self, event):
        super().hideEvent(event)
        window = self.window()
        if window is not self and not window.isVisible():  # the window closes, not just the dock
            self.stop()

    def closeEvent(self, event):
        self.stop()
        super().closeEvent(event)
