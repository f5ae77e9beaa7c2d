"""Run folders open in napari without the reader-choice dialog.

napari offers every reader that accepts folders for a dropped folder, and its builtin reader accepts
them all, so a run folder alone would bring up the *Choose reader* dialog every time. Two things
avoid it:

- napari's own per-folder reader preference (``settings.plugins.extension2reader``, the choice the
  dialog's *Remember* box stores: the folder's real path with a trailing separator, and the plugin
  name), set for every run folder the plugin opens (the run reader, the explorer's **Open run**,
  ``napari-dynamight explore``). napari then opens that folder with this plugin without asking.
- while the explorer is docked, a drop of one run folder on that window goes straight to the run
  reader (:class:`RunFolderDrop`, an application event filter that looks at drops on that window
  only; anything else is left to napari).
"""

from __future__ import annotations

import os
from pathlib import Path

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QApplication, QWidget

from ..engine.run_folder import RunFolder

PLUGIN = "napari-dynamight"


def run_folder_of(path) -> Path | None:
    """The deformation run folder ``path`` names (the folder, or a file in it), else None."""
    if path is None:
        return None
    folder = RunFolder.of(path)
    return folder.path if folder.path.is_dir() and folder.is_run() else None


def preference_key(folder) -> str:
    """napari's key for a folder's reader preference: its real path ending in a separator."""
    key = os.path.realpath(os.fspath(folder))
    return key if key.endswith(os.sep) else key + os.sep


def prefer_this_plugin(path) -> bool:
    """Make this plugin napari's reader for the run folder of ``path``; True if that was new."""
    folder = run_folder_of(path)
    if folder is None:
        return False
    from napari.settings import get_settings

    plugins = get_settings().plugins
    key = preference_key(folder)
    if plugins.extension2reader.get(key) == PLUGIN:
        return False
    plugins.extension2reader = {**plugins.extension2reader, key: PLUGIN}  # saved by napari
    return True


class RunFolderDrop(QObject):
    """Open a run folder dropped on ``viewer``'s window with the run reader (see the module
    text)."""

    def __init__(self, viewer, window: QWidget):
        super().__init__(window)
        self.viewer, self.window = viewer, window
        self.opened: list[Path] = []

    def eventFilter(self, target, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() != QEvent.Type.Drop or not isinstance(target, QWidget):
            return False
        if target.window() is not self.window:
            return False
        mime = event.mimeData()
        urls = mime.urls() if mime is not None else []
        if len(urls) != 1 or not urls[0].isLocalFile():
            return False
        folder = Path(urls[0].toLocalFile())
        if not folder.is_dir() or run_folder_of(folder) is None:
            return False
        event.acceptProposedAction()
        self.opened.append(folder)
        self.viewer.open(str(folder), plugin=PLUGIN)
        return True


def handle_run_folder_drops(viewer, widget: QWidget) -> RunFolderDrop | None:
    """Install :class:`RunFolderDrop` for the window ``widget`` is docked in (once per window)."""
    window = widget.window()
    app = QApplication.instance()
    if window is None or window is widget or app is None:
        return None
    existing = window.findChild(RunFolderDrop)
    if existing is not None:
        return existing
    handler = RunFolderDrop(viewer, window)
    app.installEventFilter(handler)  # a child of the window: Qt removes the filter with it
    return handler
