"""The latent-space explorer dock widget: scatter/density plot, click-to-decode, lasso, export, paths.

The per-particle model (embedding, class ids, columns) lives in ``engine.explore``; this widget only
draws it and forwards events. A click (or drag) in "decode" mode decodes the latent point under the
cursor in a latest-request-wins worker and updates one image layer (the volume), one points layer (the
deformed Gaussians) and one vectors layer (their displacements from the consensus). A lasso in
"lasso" mode selects the particles inside; a selection is named, and exported as a STAR subset.
Two clicked points define a path (straight or along the kNN graph) to save as MRC files or a movie.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, PushButton,
                              RadioButtons, SpinBox)
from qtpy.QtWidgets import QFileDialog, QVBoxLayout, QWidget

from ._layers import show_map, show_points, show_vectors
from ._plot import LatentPlot
from ._tasks import LatestRequestRunner, TaskPanel

VOLUME_LAYER = "decoded volume"
POINTS_LAYER = "deformed Gaussians"
VECTORS_LAYER = "displacements"
ERRORS_LAYER = "Gaussian error estimates"
HALVES_LAYER = "half 1 vs half 2"


class ExplorerWidget(QWidget):
    """Explore a run's latent space (``open_run``) or any ``ExplorerData`` (``set_data``)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.run = FileEdit(label="run folder", mode="d")
        self.open_button = PushButton(text="Open run")
        self.method = ComboBox(label="embedding", choices=["pca", "umap"], value="pca")
        self.colour = ComboBox(label="colour by", choices=[])
        self.mode = RadioButtons(label="mouse", choices=["decode", "lasso"], value="decode",
                                 orientation="horizontal")
        self.half = ComboBox(label="decoder of half", choices=[1, 2], value=1)
        top = Container(widgets=[self.run, self.open_button, self.method, self.colour, self.mode,
                                 self.half])
        self.plot = LatentPlot(on_point=self.decode_at, on_lasso=self.select_polygon)
        self.selected_label = Label(value="selected: 0")
        self.selection_name = LineEdit(label="name", value="selection 1")
        self.add_button = PushButton(text="Add selection")
        self.selections_box = ComboBox(label="selections", choices=[])
        self.keep_results = CheckBox(text="export with the dm* result columns", value=False)
        self.export_button = PushButton(text="Export STAR ...")
        selection = Container(widgets=[self.selected_label, self.selection_name, self.add_button,
                                       self.selections_box, self.keep_results, self.export_button])
        self.path_kind = ComboBox(label="path", choices=["straight", "along the data"],
                                  value="straight")
        self.frames = SpinBox(label="frames", min=2, max=1000, value=20)
        self.start_button = PushButton(text="Start here")
        self.end_button = PushButton(text="End here")
        self.volumes_button = PushButton(text="Save volumes (MRC) ...")
        self.movie_button = PushButton(text="Export movie ...")
        paths = Container(widgets=[self.start_button, self.end_button, self.path_kind, self.frames,
                                   self.volumes_button, self.movie_button])
        self.errors_button = PushButton(text="Show Gaussian error estimates")
        self.compare_button = PushButton(text="Compare halves at the nearest validation particle")
        self.status = Label(value="open a deformation run folder")
        self.tasks = TaskPanel()
        layout = QVBoxLayout(self)
        for widget in (top.native, self.plot, selection.native, paths.native,
                       self.errors_button.native, self.compare_button.native, self.status.native,
                       self.tasks):
            layout.addWidget(widget)
        self.plot.setMinimumHeight(300)

        self.data = None
        self.embedding = None
        self.selections = None
        self.decoder = None
        self.current_mask = None
        self.last_point = None
        self.path_ends: list = [None, None]
        self.path_latents = None
        self.runner = None
        self.movie_frames: list[np.ndarray] = []
        self.open_button.changed.connect(lambda *_: self.open_run(self.run.value))
        self.method.changed.connect(lambda *_: self._embed())
        self.colour.changed.connect(self.colour_by)
        self.mode.changed.connect(self.plot.set_mode)
        self.add_button.changed.connect(lambda *_: self.add_selection(self.selection_name.value))
        self.selections_box.changed.connect(self._selection_chosen)
        self.export_button.changed.connect(lambda *_: self._export_dialog())
        self.start_button.changed.connect(lambda *_: self.set_path_end(0))
        self.end_button.changed.connect(lambda *_: self.set_path_end(1))
        self.volumes_button.changed.connect(lambda *_: self._volumes_dialog())
        self.movie_button.changed.connect(lambda *_: self._movie_dialog())
        self.errors_button.changed.connect(lambda *_: self.show_gaussian_errors())
        self.compare_button.changed.connect(lambda *_: self.compare_halves())
        self.half.changed.connect(self.set_half)

    # --- data ---------------------------------------------------------------------------------
    def open_run(self, path) -> None:
        """Load a run folder's latent means and particles, and its decoder if it has one."""
        from ..engine.errors import InputError
        from ..engine.explore import load_run
        from ..engine.explore.decoding import open_decoder
        from ._tasks import one_line

        try:
            data = load_run(path)
        except InputError as error:
            self._error(one_line(error))
            return
        try:
            decoder = open_decoder(path)
        except (InputError, ImportError) as error:
            decoder = None
            self._error(f"decoding unavailable: {one_line(error)}")
        self.set_data(data, decoder)

    def set_data(self, data, decoder=None) -> None:
        """Show ``data`` (``engine.explore.ExplorerData``); ``decoder`` decodes clicked points."""
        from ..engine.explore import Selections

        self.data, self.decoder, self.embedding = data, decoder, None
        self.selections = Selections(len(data))
        self.current_mask = np.zeros(len(data), dtype=bool)
        self.columns = data.columns()
        self.runner = LatestRequestRunner(decoder.decode, self._show_decoded) if decoder else None
        can_compare = decoder is not None and hasattr(decoder, "compare_halves")
        self.comparer = LatestRequestRunner(decoder.compare_halves, self._show_comparison,
                                            "compare halves") if can_compare else None
        if decoder is not None and hasattr(decoder, "set_half"):
            decoder.set_half(int(self.half.value))
        self.colour.choices = list(self.columns)
        self.selections_box.choices = []
        self._embed()
        self.status.value = (f"{len(data)} particles, latent dimension {data.latents.shape[1]}"
                             + ("" if decoder else "; no decoder: clicks only mark points"))

    def _embed(self) -> None:
        from ..engine.errors import InputError
        from ..engine.explore import embed
        from ._tasks import one_line

        if self.data is None:
            return
        try:
            self.embedding = embed(self.data.latents, self.method.value)
        except InputError as error:
            self._error(one_line(error))
            self.method.value = "pca"
            return
        name = self.colour.value or next(iter(self.columns))
        self.plot.set_data(self.embedding.coords, self.columns[name], name)

    def colour_by(self, name: str) -> None:
        """Colour the plot by a per-particle column (latent dimension, STAR column, ...)."""
        if self.embedding is None or not name or name not in self.columns:
            return
        if self.colour.value != name:
            self.colour.value = name  # calls back here
            return
        self.plot.recolour(self.columns[name], name)

    # --- decoding -----------------------------------------------------------------------------
    def decode_at(self, point_2d) -> None:
        """Decode the latent point under a plot position (latest request wins)."""
        if self.embedding is None:
            return
        self.last_point = np.asarray(point_2d, dtype=np.float64)
        self.plot.show_marker(self.last_point)
        if self.runner is not None:
            self.runner.request(self.embedding.to_latent(self.last_point))

    def _show_decoded(self, decoded) -> None:
        first = VOLUME_LAYER not in self.viewer.layers
        threshold = 0.3 * float(decoded.volume.max()) if first else None
        show_map(self.viewer, VOLUME_LAYER, decoded.volume, decoded.voxel_size_angstrom,
                 threshold=threshold, colormap="gray", opacity=0.7)
        sigma = 1.5 * decoded.voxel_size_angstrom
        show_points(self.viewer, POINTS_LAYER, decoded.positions_angstrom, size_angstrom=sigma)
        show_vectors(self.viewer, VECTORS_LAYER, decoded.consensus_angstrom,
                     decoded.displacements_angstrom)
        if first:
            self.viewer.dims.ndisplay = 3
        self.last_decoded = decoded

    def show_gaussian_errors(self):
        """Half 1's reference Gaussians coloured by their deformation error estimate (validation)."""
        from ..engine.errors import InputError
        from ..engine.explore.table import read_gaussian_errors
        from ._tasks import one_line

        source = None if self.data is None else self.data.source
        if source is None or not Path(source).is_dir():
            self._error("open a run folder to see its error estimates")
            return None
        try:
            positions, errors = read_gaussian_errors(source)
        except InputError as error:
            self._error(one_line(error))
            return None
        if ERRORS_LAYER in self.viewer.layers:
            self.viewer.layers.remove(ERRORS_LAYER)
        layer = show_points(self.viewer, ERRORS_LAYER, positions, size_angstrom=3.0,
                            features={"error_angstrom": errors}, face_color="error_angstrom",
                            face_colormap="inferno")
        self.status.value = (f"Gaussian error estimates: median {np.median(errors):.2f} Å, "
                             f"max {errors.max():.2f} Å")
        return layer

    def set_half(self, half: int) -> None:
        """Decode with half ``half``'s decoder from now on (and redo the last point)."""
        if self.decoder is None or not hasattr(self.decoder, "set_half"):
            return
        self.decoder.set_half(int(half))
        if self.last_point is not None:
            self.decode_at(self.last_point)

    def compare_halves(self, point_2d=None) -> int | None:
        """Decode the validation particle nearest the last click with both halves; returns its row."""
        point = self.last_point if point_2d is None else np.asarray(point_2d, dtype=np.float64)
        if self.comparer is None or point is None:
            self._error("open a run folder and click near a validation particle first")
            return None
        rows = np.nonzero(self.decoder.validation)[0]
        if len(rows) == 0:
            self._error("this run has no validation particles")
            return None
        nearest = rows[np.argmin(np.linalg.norm(self.embedding.coords[rows] - point, axis=1))]
        self.plot.show_marker(self.embedding.coords[nearest])
        self.comparer.request(int(nearest))
        return int(nearest)

    def _show_comparison(self, comparison) -> None:
        self._show_decoded(comparison.half1)
        if HALVES_LAYER in self.viewer.layers:
            self.viewer.layers.remove(HALVES_LAYER)
        show_points(self.viewer, HALVES_LAYER, comparison.half1.positions_angstrom,
                    size_angstrom=3.0, features={"difference_angstrom": comparison.difference_angstrom},
                    face_color="difference_angstrom", face_colormap="inferno")
        self.last_comparison = comparison
        self.status.value = (f"particle {comparison.particle}: the halves' displacements differ by "
                             f"{comparison.rms_angstrom:.2f} Å RMS (max "
                             f"{comparison.difference_angstrom.max():.2f} Å)")

    # --- selections ---------------------------------------------------------------------------
    def select_polygon(self, vertices) -> np.ndarray:
        """Select the particles inside a polygon drawn on the plot; returns the mask."""
        from ..engine.explore import points_in_polygon

        self.current_mask = points_in_polygon(self.embedding.coords, vertices)
        self.plot.set_selected(self.current_mask)
        self.selected_label.value = f"selected: {int(self.current_mask.sum())}"
        return self.current_mask

    def add_selection(self, name: str) -> None:
        """Keep the current lasso selection under ``name``."""
        from ..engine.errors import InputError
        from ._tasks import one_line

        try:
            self.selections.add(name, self.current_mask)
        except InputError as error:
            self._error(one_line(error))
            return
        counts = self.selections.counts()
        self.selections_box.choices = list(counts)
        self.selections_box.value = name
        self.selection_name.value = f"selection {len(counts) + 1}"
        self.status.value = ", ".join(f"{key}: {value}" for key, value in counts.items())

    def _selection_chosen(self, name) -> None:
        if name and self.selections is not None and name in self.selections.names:
            self.current_mask = self.selections.mask(name)
            self.plot.set_selected(self.current_mask)
            self.selected_label.value = f"selected: {int(self.current_mask.sum())} ({name})"

    def export_selection(self, path, name: str | None = None) -> int:
        """Write a named selection (default: the current one) as a STAR subset; returns the count."""
        from ..engine.errors import InputError
        from ._tasks import one_line

        try:
            mask = self.current_mask if name is None else self.selections.mask(name)
            count = self.data.export(path, mask, keep_results=self.keep_results.value)
        except InputError as error:
            self._error(one_line(error))
            return 0
        self.status.value = f"wrote {count} particles to {path}"
        return count

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export selection", "selection.star", "*.star")
        if path:
            self.export_selection(path)

    # --- paths --------------------------------------------------------------------------------
    def set_path_end(self, which: int, point_2d=None) -> None:
        """Use the last clicked point (or ``point_2d``) as the path's start (0) or end (1)."""
        point = self.last_point if point_2d is None else np.asarray(point_2d, dtype=np.float64)
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
                latents, rows = graph_path(self.data.latents, start, end, n)
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
        """Decode the path and write one MRC file per point into ``folder`` (in a worker)."""
        from ..engine.explore.series import decode_path

        latents = self._path_for_export()
        if latents is None:
            return None
        return self.tasks.start(decode_path(self.decoder, latents, folder), "save volumes",
                                lambda files: self._done(f"wrote {len(files)} volumes to {folder}"))

    def export_movie(self, path, fps: int = 10):
        """Decode the path, show each volume with the current camera, capture it, write a movie."""
        from ..engine.explore.series import decode_path
        from ._movie import check_movie_path, write_movie

        latents = self._path_for_export()
        if latents is None or not check_movie_path(path, self._error):
            return None
        self.movie_frames = []

        def frame(event) -> None:
            self._show_decoded(event.decoded)
            self.movie_frames.append(self.viewer.screenshot(canvas_only=True, flash=False))

        def finish(_) -> None:
            write_movie(path, self.movie_frames, fps)
            self._done(f"wrote {len(self.movie_frames)} frames to {path}")

        return self.tasks.start(decode_path(self.decoder, latents), "movie", finish, frame)

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

    # --- messages -----------------------------------------------------------------------------
    def _done(self, message: str) -> None:
        self.status.value = message

    def _error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status.value = message
        show_error(message)
