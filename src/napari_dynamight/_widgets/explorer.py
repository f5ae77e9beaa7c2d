"""The latent-space explorer dock widget: scatter/density plot, click-to-decode, lasso, export,
paths.

The per-particle model (embedding, class ids, columns) lives in ``engine.explore``; this widget only
draws it and forwards events. The two half sets' latent spaces are unrelated coordinate systems, so
the widget shows one half set at a time (the *half set* selector): its particles (validation
particles with that half's codes), an embedding fitted on them alone, and that half's decoder. A
click (or drag) in "decode" mode decodes the latent point under the cursor in a latest-request-wins
worker and updates one image layer (the volume), one points layer (the deformed Gaussians) and one
vectors layer (their displacements from the consensus). A lasso in "lasso" mode selects the
particles inside; a selection is named, stored as rows of the original STAR file, exported as a STAR
subset, or reconstructed (**Reconstruct selection**: its half maps, full map and FSC, ``reconstruct
--subset``). Two clicked points define a path (``_explorer_paths``) to save as MRC files (with a
ChimeraX script) or a movie. A run opens with its median particle decoded (``_explorer_view``:
iso-surface, camera fitted to the molecule); the rarer controls sit in tabs (``_sections``) so the
dock fits 800 px. :func:`open_explorer` docks it in a viewer with a run loaded (the run reader, the
demo); :func:`show_explorer` opens a napari window with it (``napari-dynamight explore``).
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    RadioButtons,
    SpinBox,
)
from qtpy.QtWidgets import QFileDialog, QVBoxLayout, QWidget

from ._explorer_common import BOTH, COMMON_LABEL, CommonSpaceView, common_columns, view_label
from ._explorer_paths import PathExport
from ._explorer_validation import ValidationViews
from ._explorer_view import median_point, show_decoded
from ._plot import LatentPlot
from ._run_drop import handle_run_folder_drops, prefer_this_plugin
from ._sections import compact, join_plugin_docks_when_shown, tabs
from ._tasks import LatestRequestRunner, TaskPanel
from ._warnings import WarningsLabel
from .reconstruction import fsc_plot

VOLUME_LAYER = "decoded volume"
POINTS_LAYER = "deformed Gaussians"
VECTORS_LAYER = "displacements"
PLOT_HEIGHT = 260  # the latent plot's least height (px); it grows with the dock
SECTION_HEIGHT = 200  # the tabs' most height (px); their pages scroll


def _row(*widgets) -> Container:
    """Widgets side by side, each after its label if it has one (keeps the dock short)."""
    labels = any(
        widget.label and widget.label != widget.name
        for widget in widgets
        if not isinstance(widget, (PushButton, CheckBox))
    )
    row = Container(widgets=list(widgets), layout="horizontal", labels=labels)
    row.margins = (0, 0, 0, 0)
    return row


def _half_choices(halves) -> list[tuple[str, int]]:
    """Combo-box entries for the half sets; 0 stands for "all particles" (no half sets)."""
    return [("all particles", 0) if half is None else (f"half {half}", half) for half in halves]


class ExplorerWidget(PathExport, ValidationViews, CommonSpaceView, QWidget):
    """Explore a run's latent space (``open_run``) or any ``ExplorerData`` (``set_data``)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.run = FileEdit(label="run folder", mode="d")
        self.open_button = PushButton(text="Open run")
        self.half = ComboBox(label="half set", choices=_half_choices([1, 2]), value=1)
        self.method = ComboBox(label="embedding", choices=["pca", "umap"], value="pca")
        self.colour = ComboBox(label="colour by", choices=[])
        self.mode = RadioButtons(
            label="mouse", choices=["decode", "lasso"], value="decode", orientation="horizontal"
        )
        top = Container(
            widgets=[
                _row(self.run, self.open_button),
                _row(self.half, self.method),
                _row(self.colour, self.mode),
            ]
        )
        self.plot = LatentPlot(on_point=self.decode_at, on_lasso=self.select_polygon)
        self.selected_label = Label(value="selected: 0")
        self.selection_name = LineEdit(label="name", value="selection 1")
        self.add_button = PushButton(text="Add selection")
        self.selections_box = ComboBox(label="selections", choices=[])
        self.keep_results = CheckBox(
            text="export with the results",
            value=False,
            tooltip="add the dm* result columns (STAR) or fields (.cs)",
        )
        self.export_button = PushButton(text="Export STAR ...")
        self.deformed = CheckBox(
            text="deformed",
            value=False,
            tooltip="deformed maps (the run needs its inverse deformations)",
        )
        self.reconstruct_button = PushButton(text="Reconstruct selection", enabled=False)
        selection = Container(
            widgets=[
                self.selected_label,
                self.selection_name,
                self.add_button,
                self.selections_box,
                _row(self.keep_results, self.export_button),
                _row(self.deformed, self.reconstruct_button),
            ]
        )
        self.fsc_plot = (
            fsc_plot()
        )  # the reconstructed selection's half-map FSC, shown once there is one
        self.fsc_plot.setVisible(False)
        self.path_kind = ComboBox(
            label="path", choices=["straight", "along the data"], value="straight"
        )
        self.frames = SpinBox(label="frames", min=2, max=1000, value=20)
        self.start_button = PushButton(text="Start here")
        self.end_button = PushButton(text="End here")
        self.volumes_button = PushButton(text="Save volumes (MRC) ...")
        self.movie_button = PushButton(text="Export movie ...")
        self.chimerax_movie = CheckBox(
            text="ChimeraX movie",
            value=False,
            tooltip="path.cxc, written with the volumes, also records path.mp4",
        )
        paths = Container(
            widgets=[
                _row(self.start_button, self.end_button),
                self.path_kind,
                self.frames,
                _row(self.volumes_button, self.chimerax_movie),
                self.movie_button,
            ]
        )
        self.errors_button = PushButton(text="Show Gaussian error estimates")
        self.compare_button = PushButton(text="Compare halves at the nearest validation particle")
        self.status = Label(value="open a deformation run folder")
        self.status.native.setWordWrap(True)  # long paths wrap instead of widening the dock
        self.warnings_label = WarningsLabel()  # run.json's watchdog warnings
        self.tasks = TaskPanel()
        # sized for a 1280×800 screen: the rarer controls in tabs that scroll, the status line,
        # progress bar and Cancel always in view below them
        self.sections = tabs(
            {
                "Selection": [selection, self.fsc_plot],
                "Paths": [paths],
                "Validation": [self.errors_button, self.compare_button],
            },
            max_height=SECTION_HEIGHT,
        )
        compact(self.half, self.method, self.colour, self.selections_box, self.path_kind)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        for widget in (
            top.native,
            self.plot,
            self.sections,
            self.warnings_label.native,
            self.status.native,
            self.tasks,
        ):
            layout.addWidget(widget)
        layout.setStretch(1, 1)  # the plot takes the height there is
        self.plot.setMinimumHeight(PLOT_HEIGHT)

        self.data = None
        self.view = None
        self.columns: dict = {}
        self.embedding = None
        self.selections = None
        self.decoder = None
        self.current_mask = None
        self.current_name = None  # the chosen named selection, if the current one is one
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
        self.reconstruct_button.changed.connect(lambda *_: self.reconstruct_selection())
        self.start_button.changed.connect(lambda *_: self.set_path_end(0))
        self.end_button.changed.connect(lambda *_: self.set_path_end(1))
        self.volumes_button.changed.connect(lambda *_: self._volumes_dialog())
        self.movie_button.changed.connect(lambda *_: self._movie_dialog())
        self.errors_button.changed.connect(lambda *_: self.show_gaussian_errors())
        self.compare_button.changed.connect(lambda *_: self.compare_halves())
        self.half.changed.connect(self._half_chosen)

    def showEvent(self, event):
        super().showEvent(event)
        join_plugin_docks_when_shown(self)  # this plugin's docks share one column of tabs
        handle_run_folder_drops(self.viewer, self)  # a dropped run folder opens here, no dialog

    # --- data ---------------------------------------------------------------------------------
    def open_run(self, path) -> None:
        """Load a run folder's latent means and particles, and its decoder if it has one."""
        from ..engine.errors import InputError
        from ..engine.explore import load_run
        from ..engine.explore.run_decoder import open_decoder
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
        self.show_run_warnings(path)
        prefer_this_plugin(path)  # dropping this run folder later opens it without the dialog

    def show_run_warnings(self, path) -> list[str]:
        """The run's watchdog warnings (the run file's ``warnings``), above the status and as a
        napari notification each, so a stalled half set is not discovered from the plot."""
        from pathlib import Path

        from ..engine.errors import InputError
        from ..engine.run_folder import read_run_info

        try:
            warnings = read_run_info(Path(path)).get("warnings") or []
        except (InputError, AttributeError):  # no or no readable run.json: nothing to warn about
            warnings = []
        return self.warnings_label.show(warnings, source=Path(path).name)

    def set_data(self, data, decoder=None) -> None:
        """Show ``data`` (``engine.explore.ExplorerData``); ``decoder`` decodes clicked points."""
        from ..engine.explore import Selections

        self.data, self.decoder, self.embedding, self.view = data, decoder, None, None
        self.selections = Selections(len(data))
        self.runner = LatestRequestRunner(decoder.decode, self._show_decoded) if decoder else None
        can_compare = decoder is not None and hasattr(decoder, "compare_halves")
        self.comparer = (
            LatestRequestRunner(decoder.compare_halves, self._show_comparison, "compare halves")
            if can_compare
            else None
        )
        self.selections_box.choices = []
        choices = _half_choices(data.halves) + self.common_choices(data, decoder)
        if list(self.half.choices) != [value for _, value in choices]:
            self.half.choices = choices  # may emit changed before self.view is set: ignored
        if self.half.value not in (value for _, value in choices):
            self.half.value = choices[0][1]
        self.show_half(self.half.value or None)

    def set_half(self, half: int | None) -> None:
        """Show half set ``half`` (1 or 2; None without half sets): its particles, embedding,
        decoder."""
        if (half or 0) not in self.half.choices:
            self._error(
                f"{COMMON_LABEL} needs a run folder with its decoders"
                if half == BOTH
                else f"half set {half} is not in these data"
            )
            return
        self.half.value = half or 0  # emits changed → _half_chosen when it differs

    def _half_chosen(self, value) -> None:
        if self.data is not None and self.view is not None and (value or None) != self.view.half:
            self.show_half(value or None)

    def show_half(self, half: int | None) -> None:
        """Embed, colour and decode half ``half``'s particles (see :meth:`set_half`)."""
        from ..engine.errors import InputError
        from ._tasks import one_line

        try:
            view = self.common_view() if half == BOTH else self.data.view(half)
        except InputError as error:
            self._error(one_line(error))
            return
        if view is None:  # the common space is being computed; shown when ready
            return
        self.view = view
        if self.decoder is not None and hasattr(self.decoder, "set_half") and half != BOTH:
            self.decoder.set_half(half or 1)
        self.columns, self.embedding = self.data.columns(self.view), None
        if half == BOTH:
            self.columns = common_columns(self.columns)
        self.current_mask = np.zeros(len(self.view), dtype=bool)
        self.current_name = None
        self.selected_label.value = "selected: 0"
        self._selection_changed()
        self.last_point, self.path_ends, self.path_latents = None, [None, None], None
        self.plot.clear_marks()
        previous = self.colour.value
        with self.colour.changed.blocked():  # the plot is redrawn once, by _embed
            self.colour.choices = list(self.columns)
            if previous in self.columns:
                self.colour.value = previous
        self._embed()
        self.mark_validation()
        if half == BOTH:
            self.show_common()
            return
        own = len(self.view) - int(self._validation_in_view().sum())
        self.status.value = (
            f"{self.view.label}: {len(self.view)} of {len(self.data)} particles ({own} own, "
            f"{len(self.view) - own} validation), latent dimension {self.view.latents.shape[1]}"
            + ("" if self.decoder else "; no decoder: clicks only mark points")
        )

    def _validation_in_view(self) -> np.ndarray:
        values = self.columns.get("dmValidation")
        return np.zeros(len(self.view), bool) if values is None else values != 0

    def _embed(self) -> None:
        from ..engine.errors import InputError
        from ..engine.explore import embed
        from ._tasks import one_line

        if self.view is None:
            return
        try:
            self.embedding = (
                self.common.embedding()
                if self.view.half == BOTH
                else embed(self.view.latents, self.method.value)
            )
        except InputError as error:
            self._error(one_line(error))
            self.method.value = "pca"
            return
        name = self.colour.value or next(iter(self.columns))
        self.plot.set_data(
            self.embedding.coords, self.columns[name], name, self.embedding.axis_labels()
        )
        if self.runner is not None:  # a volume at once: the median particle's, marked on the plot
            self.decode_at(median_point(self.embedding.coords))

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
        if self.view.half == BOTH:
            self.decode_nearest(self.last_point)  # the halves' codes do not mix: one particle's own
        elif self.runner is not None:
            self.runner.request(self.embedding.to_latent(self.last_point))

    def _show_decoded(self, decoded) -> None:
        show_decoded(self.viewer, decoded, VOLUME_LAYER, POINTS_LAYER, VECTORS_LAYER)
        self.last_decoded = decoded

    # --- selections ---------------------------------------------------------------------------
    def select_polygon(self, vertices) -> np.ndarray:
        """Select the particles inside a polygon drawn on the plot; returns the mask."""
        from ..engine.explore import points_in_polygon

        self.current_mask = points_in_polygon(self.embedding.coords, vertices)
        self.current_name = None
        self.plot.set_selected(self.current_mask)
        self.selected_label.value = f"selected: {int(self.current_mask.sum())}"
        self._selection_changed()
        if self.view.half == BOTH:
            self.status.value = self.selection_counts(self.view.rows[self.current_mask])
        return self.current_mask

    def _selection_changed(self) -> None:
        """Reconstructing needs a selection of a run's particles."""
        self.reconstruct_button.enabled = bool(
            self.current_mask is not None
            and self.current_mask.any()
            and self.data is not None
            and self.data.table is not None
        )

    def add_selection(self, name: str) -> None:
        """Keep the current lasso selection (rows of the original STAR) under ``name``."""
        from ..engine.errors import InputError
        from ._tasks import one_line

        try:
            self.selections.add(name, self.view.rows[self.current_mask], self.view.half)
        except InputError as error:
            self._error(one_line(error))
            return
        counts = self.selections.counts()
        with self.selections_box.changed.blocked():  # no detour through another selection's half
            self.selections_box.choices = [
                (f"{key} ({view_label(self.data, self.selections.half_of[key])})", key)
                for key in counts
            ]
        self.selections_box.value = name.strip()
        self.selection_name.value = f"selection {len(counts) + 1}"
        self.status.value = ", ".join(f"{key}: {value}" for key, value in counts.items())

    def _selection_chosen(self, name) -> None:
        if not name or self.selections is None or name not in self.selections.names:
            return
        self.set_half(self.selections.half_of[name])  # a selection is shown in its own half
        self.current_mask = self.selections.mask(name)[self.view.rows]
        self.current_name = name
        self.plot.set_selected(self.current_mask)
        self.selected_label.value = f"selected: {int(self.current_mask.sum())} ({name})"
        self._selection_changed()

    def export_selection(self, path, name: str | None = None) -> int:
        """Write a named selection (default: the current one) as a STAR subset of the original
        particles (all columns, the optics table), or as cryoSPARC .cs for a name ending in .cs;
        returns the count."""
        from ..engine.errors import InputError
        from ._tasks import one_line

        try:
            rows = self.view.rows[self.current_mask] if name is None else self.selections.rows(name)
            count = self.data.export(path, rows, keep_results=self.keep_results.value)
        except InputError as error:
            self._error(one_line(error))
            return 0
        self.status.value = f"wrote {count} particles to {path}"
        if self.view.half == BOTH:
            self.status.value += f" ({self.selection_counts(np.asarray(rows))})"
        return count

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export selection", "selection.star", "RELION STAR (*.star);;cryoSPARC (*.cs)"
        )
        if path:
            self.export_selection(path)

    def reconstruct_selection(self):
        """Reconstruct the current selection's particles in a worker (``reconstruct --subset``:
        standard half maps, or deformed ones) into ``RUN/subsets/NAME/``; then show the half maps
        and the full map as layers and the FSC curve."""
        from ..engine.errors import InputError
        from ..engine.io.guard import holding
        from ..engine.reconstruction.stage import subset_folder, subset_name
        from ..engine.run_folder import RunFolder
        from ._tasks import one_line
        from .reconstruction import reconstruct_and_read

        if self.current_mask is None or not self.current_mask.any():
            self._error("select particles first (lasso mode)")
            return None
        run = RunFolder.of(self.data.source) if self.data.source is not None else None
        if run is None or not run.is_run():
            self._error(
                f"{self.data.source}: not a deformation run folder; open the run folder "
                "to reconstruct"
            )
            return None
        rows = self.view.rows[self.current_mask]
        name = subset_name(self.current_name or "selection")
        deformed = bool(self.deformed.value)
        folder = subset_folder(run.path, name, deformed)
        try:
            operation = reconstruct_and_read(
                run.path, deformations=deformed, subset=rows, output=folder.path
            )
            operation = holding(
                operation,
                run.path,
                "run folder",
                "reconstruct",
                outputs=str(folder.path.relative_to(run.path)),
            )
        except InputError as error:
            self._error(one_line(error))
            return None

        return self.tasks.start(
            operation,
            "reconstruct selection",
            lambda outputs: self._show_reconstruction(name, folder, outputs),
        )

    def _show_reconstruction(self, name: str, folder, outputs) -> None:
        from .reconstruction import show_outputs

        result, maps, fsc = outputs
        show_outputs(self.viewer, self.fsc_plot, name, maps, fsc)
        self.fsc_plot.setVisible(True)
        self.status.value = (
            f"{name}: half-map FSC 0.143 at {result.resolution_angstrom:.2f} Å; maps and "
            f"{folder.chimerax_script.name} (ChimeraX) in {folder.path}"
        )

    # --- messages -----------------------------------------------------------------------------
    def _done(self, message: str) -> None:
        self.status.value = message

    def _error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status.value = message
        show_error(message)


def open_explorer(
    viewer, run_path, embedding: str = "pca", half: int | None = None, errors: bool = False
) -> ExplorerWidget:
    """Dock the explorer in ``viewer`` and load ``run_path`` into it; returns the widget. ``half``:
    the half set to show first (default: half 1); ``errors``: also show the Gaussians' error
    estimates."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-dynamight", "Latent-space explorer")
    widget.method.value = embedding
    widget.run.value = run_path
    widget.open_run(run_path)
    if half is not None and widget.data is not None:
        widget.set_half(half)
    if errors and widget.data is not None:
        widget.show_gaussian_errors()
    return widget


def show_explorer(
    run_path, embedding: str = "pca", half: int | None = None, errors: bool = False
) -> None:
    """Open napari with the explorer on ``run_path`` (see :func:`open_explorer`) until the window
    closes."""
    import napari

    viewer = napari.Viewer(title=f"napari-dynamight explore {run_path}")
    open_explorer(viewer, run_path, embedding, half, errors)
    napari.run()
