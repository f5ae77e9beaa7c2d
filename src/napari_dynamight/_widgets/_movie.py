"""Capture movie frames from napari's 3D canvas, each rendered once; the movie's volumes and their
ChimeraX script go to a folder beside it (:func:`chimerax_folder`).

A layer update asks the canvas to repaint on screen, and a screenshot renders the scene again into
an image: two renders per frame, each hundreds of milliseconds with a software renderer. While a
:class:`FrameCapture` is open, the canvas's on-screen repaints are paused, so each frame is rendered
once, straight into the captured image; the scale bar is hidden, since frames are cropped to the
molecule (``engine.io.movie.crop_to_content``). On closing, the canvas repaints once with the last
frame. The movie itself is written by the engine's one writer (``engine.io.movie.write_movie``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def chimerax_folder(movie) -> Path:
    """``NAME_chimerax/`` beside movie ``NAME.gif``: the movie's volumes and a ChimeraX script that
    plays and records them."""
    movie = Path(movie)
    return movie.with_name(f"{movie.stem}_chimerax")


def _scale_bar(viewer):
    overlays = getattr(viewer.canvas, "overlays", None)  # napari ≥ 0.9: viewer.canvas.overlays
    return overlays.scale_bar if overlays is not None else viewer.scale_bar


def canvas_widget(widget):
    """The Qt widget of the napari canvas in ``widget``'s window (its one OpenGL widget), or
    None."""
    from qtpy.QtOpenGLWidgets import QOpenGLWidget

    window = widget.window() if widget is not None else None
    found = window.findChildren(QOpenGLWidget) if window is not None else []
    return found[0] if len(found) == 1 else None


class FrameCapture:
    """Render-once frame capture from ``viewer``'s canvas (see the module's text); ``frames`` holds
    the captured RGB images. ``widget`` (a widget docked in the viewer's window) leads to the canvas
    whose on-screen repaints are paused; without it frames are still captured, rendered twice."""

    def __init__(self, viewer, widget=None):
        self.viewer = viewer
        self.frames: list[np.ndarray] = []
        self._canvas = canvas_widget(widget)
        self._open = False
        self._scale_bar_visible = None

    def open(self) -> FrameCapture:
        if not self._open:
            self._open = True
            if self._canvas is not None:
                self._canvas.setUpdatesEnabled(False)  # no on-screen repaint per layer update
            bar = _scale_bar(self.viewer)
            self._scale_bar_visible, bar.visible = bar.visible, False
        return self

    def capture(self) -> np.ndarray:
        """Render the current scene once and keep it as the next frame."""
        image = np.asarray(self.viewer.screenshot(canvas_only=True, flash=False))[..., :3]
        self.frames.append(image)
        return image

    def close(self) -> None:
        """Show the canvas again (one repaint, the last frame)."""
        if not self._open:
            return
        self._open = False
        _scale_bar(self.viewer).visible = bool(self._scale_bar_visible)
        if self._canvas is not None:
            self._canvas.setUpdatesEnabled(True)

    def __enter__(self) -> FrameCapture:
        return self.open()

    def __exit__(self, *_exc) -> None:
        self.close()
