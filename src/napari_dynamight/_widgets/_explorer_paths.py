"""The explorer's paths: two clicked points, a straight or along-the-data path, volumes and movies.

A mixin of :class:`~napari_dynamight._widgets.explorer.ExplorerWidget` (it uses the widget's
``view``, ``embedding``, ``decoder``, ``plot``, ``tasks``, ``viewer`` and ``_show_decoded``). Paths
live in the current half set's latent space and are decoded by that half's decoder. Saved volumes
come with ``path.cxc``, which opens them in ChimeraX as a volume series (and records ``path.mp4``
when asked); a movie export also writes its volumes and such a script into ``NAME_chimerax/`` beside
it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFileDialog

from ..engine.explore.common_space import BOTH


class PathExport:
    """Path start/end, the path itself, and its export as MRC volumes or a movie."""

    def set_path_end(self, which: int, point_2d=None) -> None:
        """Use the last clicked point (or ``point_2d``) as the path's start (0) or end (1)."""
        point = self.last_point if point_2d is None else np.asarray(point_2d, dtype=np.float64)
        if self.view is not None and self.view.half == BOTH:
            self._error("paths run through one half set's latent space; choose half 1 or half 2")
            return
        if point is None or self.embedding is None:
            self._error("click a point in the latent plot first")
            return
        self.path_ends[which] = point
        self.path_latents = None
        if all(end is not None for end in self.path_ends):
            self.make_path()

    def make_path(self) -> np.ndarray | None:
        """Latent points along the chosen path between the two ends; drawn on the plot."""
        from ..engine.errors import InputError
        from ..engine.explore import graph_path, straight_path
        from ._tasks import one_line

        if any(end is None for end in self.path_ends):
            self._error("choose a path start and end first")
            return None
        n = int(self.frames.value)
        try:
            if self.path_kind.value == "straight":
                ends = [self.embedding.to_latent(end) for end in self.path_ends]
                latents = straight_path(ends[0], ends[1], n)
                rows = None
            else:
                start, end = (self.embedding.nearest(point) for point in self.path_ends)
                latents, rows = graph_path(self.view.latents, start, end, n)
        except InputError as error:
            self._error(one_line(error))
            return None
        self.path_latents = latents
        if rows is not None:
            self.plot.show_path(self.embedding.coords[rows])
        else:
            self.plot.show_path(np.stack(self.path_ends))
        return latents

    def save_volumes(self, folder):
        """Decode the path and write one MRC file per point and ``path.cxc`` (ChimeraX; it records
        ``path.mp4`` when the movie box is ticked) into ``folder`` (in a worker)."""
        from ..engine.explore.series import decode_path
        from ..engine.io.guard import holding

        latents = self._path_for_export()
        if latents is None:
            return None
        movie = "path.mp4" if self.chimerax_movie.value else None
        operation = holding(
            decode_path(self.decoder, latents, folder, movie=movie),
            folder,
            "volume folder",
            "decode",
        )
        return self.tasks.start(
            operation,
            "save volumes",
            lambda files: self._done(
                f"wrote {len(files)} volumes to {folder}; ChimeraX: chimerax "
                f"{Path(folder) / 'path.cxc'}"
            ),
        )

    def export_movie(self, path, fps: int = 10, also=()):
        """Decode the path, show each volume with the current camera, render it once into a frame
        (``_movie.FrameCapture``: no second, on-screen render), crop the frames to the molecule and
        write a movie (and the same frames to every path in ``also``, e.g. a GIF next to an MP4)
        with the engine's writer; the volumes and a ChimeraX script that records the same series as
        ``NAME.mp4`` go to ``NAME_chimerax/``."""
        from ..engine.errors import InputError
        from ..engine.explore.series import decode_path
        from ..engine.io.guard import holding
        from ..engine.io.movie import check_movie_path, crop_to_content, write_movie
        from ._movie import FrameCapture, chimerax_folder
        from ._tasks import one_line

        latents = self._path_for_export()
        paths = [path, *also]
        if latents is None:
            return None
        try:
            for target in paths:
                check_movie_path(target)
        except InputError as error:
            self._error(one_line(error))
            return None
        capture = FrameCapture(self.viewer, self)
        self.movie_capture = capture
        self.movie_frames = capture.frames

        def frame(event) -> None:
            self._show_decoded(event.decoded)
            capture.capture()

        def finish(_) -> None:
            capture.close()
            frames = self.movie_frames = crop_to_content(capture.frames)
            for target in paths:
                write_movie(target, frames, fps)
            self._done(
                f"wrote {len(frames)} frames to {', '.join(map(str, paths))}; volumes and "
                f"path.cxc (ChimeraX) in {folder}"
            )

        folder = chimerax_folder(path)
        operation = holding(
            decode_path(
                self.decoder, latents, folder, movie=f"{Path(path).stem}.mp4", framerate=fps
            ),
            folder,
            "ChimeraX folder",
            "movie",
        )
        capture.open()
        worker = self.tasks.start(operation, "movie", finish, frame)
        if worker is None:
            capture.close()
        else:
            worker.finished.connect(capture.close)  # also after an error or Cancel
        return worker

    def _path_for_export(self):
        if self.decoder is None:
            self._error("this run cannot be decoded; open a finished run folder")
            return None
        if self.path_latents is None:
            return self.make_path()
        return self.path_latents

    def _volumes_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the volumes")
        if folder:
            self.save_volumes(Path(folder))

    def _movie_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export movie", "path.gif", "*.gif *.mp4")
        if path:
            self.export_movie(path)
