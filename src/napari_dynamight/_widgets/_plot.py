"""The latent scatter plot: matplotlib in Qt, points up to a threshold and a density image above it.

The plot only draws; the selection model lives in numpy (``engine.explore``). Above
:data:`DENSITY_THRESHOLD` points a 2D histogram is drawn instead of markers (a full scatter of 10⁶
points takes seconds; a histogram image tens of milliseconds), coloured by the mean of the chosen
value in each bin. Clicks, drags and lassos are reported through callbacks in data coordinates. A
drag is coalesced: the cursor's latest position is reported at most every :data:`DRAG_INTERVAL_MS`
(and on release), so a fast drag over a slow redraw never queues redraws or decodes.

The plot says what it shows: axis labels from the embedding (a PCA axis with its share of the
variance, "PC 1 (43%)"), equal aspect (distances in the plot are comparable in both directions), a
colour bar for continuous values and a legend of named categories for discrete columns (half set,
validation flag, optics group, ...).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.widgets import LassoSelector
from qtpy.QtCore import QTimer

DENSITY_THRESHOLD = 200_000
BINS = 200
DRAG_INTERVAL_MS = 100  # a drag reports its latest position at most this often
MAX_CATEGORIES = 10  # integer columns with at most this many values get a legend, not a colour bar
CATEGORY_NAMES = {
    "dmHalfSet": {1: "half 1", 2: "half 2"},
    "dmValidation": {0: "training", 1: "validation"},
}


def categories(values) -> np.ndarray | None:
    """The sorted distinct values of a discrete column (integers, at most :data:`MAX_CATEGORIES`),
    else None."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or not np.isfinite(values).all() or (values != np.round(values)).any():
        return None
    distinct = np.unique(values)
    return distinct if len(distinct) <= MAX_CATEGORIES else None


def category_label(column: str, value: float) -> str:
    """A category's name in the legend ("half 2", "validation", else the value)."""
    return CATEGORY_NAMES.get(column, {}).get(int(value), f"{column} {int(value)}")


def binned_mean(coords: np.ndarray, values: np.ndarray, extent, bins: int = BINS):
    """(bins, bins) mean of ``values`` per bin (NaN where empty), indexed [y, x]; and the counts."""
    (x0, x1), (y0, y1) = extent
    ix = np.clip(((coords[:, 0] - x0) / max(x1 - x0, 1e-12) * bins).astype(np.int64), 0, bins - 1)
    iy = np.clip(((coords[:, 1] - y0) / max(y1 - y0, 1e-12) * bins).astype(np.int64), 0, bins - 1)
    flat = iy * bins + ix
    counts = np.bincount(flat, minlength=bins * bins)
    sums = np.bincount(flat, weights=values, minlength=bins * bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
    return mean.reshape(bins, bins), counts.reshape(bins, bins)


class LatentPlot(FigureCanvasQTAgg):
    """Scatter or density of 2D coordinates; ``mode`` "decode" (click/drag) or "lasso"."""

    def __init__(
        self,
        on_point: Callable | None = None,
        on_lasso: Callable | None = None,
        density_threshold: int = DENSITY_THRESHOLD,
    ):
        self.figure = Figure(figsize=(4, 3), layout="constrained")
        super().__init__(self.figure)
        self.axes = self.figure.add_subplot(1, 1, 1)
        self.axes.margins(0)  # the extent carries its own padding
        self.on_point, self.on_lasso = on_point, on_lasso
        self.density_threshold = density_threshold
        self.coords = np.zeros((0, 2), np.float32)
        self.artist = None
        self.selected_artist = None
        self.marker = self.axes.plot([], [], "x", color="red", markersize=10, mew=2)[0]
        self.path_line = self.axes.plot([], [], "-", color="black", lw=1.5)[0]
        self.colorbar = None
        self.legend = None
        self.cmap = "viridis"
        self.mode = "decode"
        self._dragging = False
        self._drag_point = None  # the latest position of a drag, not reported yet
        self._drag_timer = QTimer(self)
        self._drag_timer.setSingleShot(True)
        self._drag_timer.timeout.connect(self._report_drag)
        self.lasso = LassoSelector(self.axes, self._lasso_done, useblit=False)
        self.lasso.set_active(False)
        self.mpl_connect("button_press_event", self._press)
        self.mpl_connect("motion_notify_event", self._motion)
        self.mpl_connect("button_release_event", self._release)

    @property
    def density(self) -> bool:
        return len(self.coords) > self.density_threshold

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.lasso.set_active(mode == "lasso")

    def set_data(
        self,
        coords: np.ndarray,
        values: np.ndarray,
        label: str,
        axis_labels: tuple[str, str] = ("", ""),
        cmap: str = "viridis",
    ):
        """Draw ``coords`` coloured by ``values`` (a new data set: axes limits reset), with the axes
        labelled ``axis_labels``."""
        self.coords = np.asarray(coords, dtype=np.float32)
        self.cmap = cmap
        if self.artist is not None:
            self._drop_colorbar()  # it belongs to the artist being replaced
            self.artist.remove()
            self.artist = None
        low, high = self.coords.min(axis=0), self.coords.max(axis=0)
        pad = 0.02 * np.maximum(high - low, 1e-6)
        self.extent = ((low[0] - pad[0], high[0] + pad[0]), (low[1] - pad[1], high[1] + pad[1]))
        self.axes.set_xlabel(axis_labels[0])
        self.axes.set_ylabel(axis_labels[1])
        if self.density:
            image, _ = binned_mean(self.coords, values, self.extent)
            (x0, x1), (y0, y1) = self.extent
            self.artist = self.axes.imshow(
                image,
                origin="lower",
                extent=(x0, x1, y0, y1),
                aspect="auto",
                cmap=cmap,
                interpolation="nearest",
            )
        else:
            size = float(np.clip(2e4 / max(len(self.coords), 1), 0.5, 20))
            self.artist = self.axes.scatter(
                self.coords[:, 0],
                self.coords[:, 1],
                c=values,
                s=size,
                cmap=cmap,
                linewidths=0,
                rasterized=True,
            )
        self._frame()
        self.set_selected(np.zeros(len(self.coords), dtype=bool))
        self.recolour(values, label)

    def _frame(self) -> None:
        """Show the whole extent at equal aspect (the limits widen along the shorter axis)."""
        (x0, x1), (y0, y1) = self.extent
        self.axes.set_aspect("equal", adjustable="datalim")  # imshow sets its own aspect
        self.axes.dataLim.set_points(np.array([[x0, y0], [x1, y1]], dtype=np.float64))
        self.axes.set_autoscale_on(True)
        self.axes.autoscale_view(tight=True)

    def recolour(self, values: np.ndarray, label: str) -> None:
        """Colour by new per-particle ``values`` without redrawing the points' positions: a legend
        for a discrete column (scatter), else a colour bar (density: the mean per bin)."""
        values = np.asarray(values, dtype=np.float64)
        found = None if self.density else categories(values)
        if found is not None:
            self._show_categories(values, found, label)
            self.draw_idle()
            return
        if self.legend is not None:
            self.legend.remove()
            self.legend = None
        self.artist.set_cmap(self.cmap)
        if self.density:
            image, _ = binned_mean(self.coords, values, self.extent)
            self.artist.set_data(image)
            shown = image[np.isfinite(image)]
        else:
            self.artist.set_array(values)
            shown = values[np.isfinite(values)]
        low, high = (float(shown.min()), float(shown.max())) if len(shown) else (0.0, 1.0)
        self.artist.set_clim(low, high if high > low else low + 1e-6)
        if self.colorbar is None:
            self.colorbar = self.figure.colorbar(self.artist, ax=self.axes)
        else:
            self.colorbar.update_normal(self.artist)
        self.colorbar.set_label(f"mean {label} per bin" if self.density else label)
        self.draw_idle()

    def _drop_colorbar(self) -> None:
        if self.colorbar is not None:
            self.colorbar.remove()
            self.colorbar = None

    def _show_categories(self, values: np.ndarray, found: np.ndarray, label: str) -> None:
        from matplotlib.colors import ListedColormap
        from matplotlib.lines import Line2D

        self._drop_colorbar()
        if self.legend is not None:
            self.legend.remove()
        colours = [f"C{k}" for k in range(len(found))]
        self.artist.set_cmap(ListedColormap(colours))
        self.artist.set_array(np.searchsorted(found, values).astype(np.float64))
        self.artist.set_clim(-0.5, len(found) - 0.5)
        handles = [
            Line2D(
                [], [], marker="o", linestyle="", color=colour, label=category_label(label, value)
            )
            for colour, value in zip(colours, found)
        ]
        self.legend = self.axes.legend(
            handles=handles,
            title=label,
            fontsize="small",
            title_fontsize="small",
            loc="best",
            framealpha=0.8,
        )

    def set_selected(self, mask: np.ndarray) -> None:
        """Outline the selected particles (density mode: a red-tinted image of their bins)."""
        if self.selected_artist is not None:
            self.selected_artist.remove()
            self.selected_artist = None
        if mask.any():
            if self.density:
                _, counts = binned_mean(self.coords[mask], np.zeros(int(mask.sum())), self.extent)
                (x0, x1), (y0, y1) = self.extent
                overlay = np.zeros((*counts.shape, 4), np.float32)
                overlay[counts > 0] = (1, 0, 0, 0.5)
                self.selected_artist = self.axes.imshow(
                    overlay, origin="lower", aspect="auto", extent=(x0, x1, y0, y1)
                )
                self.axes.set_aspect("equal", adjustable="datalim")
            else:
                chosen = self.coords[mask]
                self.selected_artist = self.axes.scatter(
                    chosen[:, 0],
                    chosen[:, 1],
                    s=8,
                    facecolors="none",
                    edgecolors="red",
                    linewidths=0.6,
                    rasterized=True,
                )
        self.draw_idle()

    def show_marker(self, point) -> None:
        self.marker.set_data([point[0]], [point[1]])
        self.draw_idle()

    def clear_marks(self) -> None:
        """Remove the decode marker and the path (a new data set or half set)."""
        self.marker.set_data([], [])
        self.path_line.set_data([], [])
        self.draw_idle()

    def show_path(self, points_2d) -> None:
        points_2d = np.asarray(points_2d)
        self.path_line.set_data(points_2d[:, 0], points_2d[:, 1]) if len(
            points_2d
        ) else self.path_line.set_data([], [])
        self.draw_idle()

    def _press(self, event) -> None:
        if self.mode != "decode" or event.inaxes is not self.axes or event.button != 1:
            return
        self._dragging = True
        self._drag_point = None
        self._report(np.array([event.xdata, event.ydata], dtype=np.float64))

    def _motion(self, event) -> None:
        """Keep the drag's latest position; report it when the interval has passed (coalescing)."""
        if self._dragging and event.inaxes is self.axes:
            self._drag_point = np.array([event.xdata, event.ydata], dtype=np.float64)
            if not self._drag_timer.isActive():
                self._drag_timer.start(DRAG_INTERVAL_MS)

    def _release(self, event) -> None:
        self._dragging = False
        self._drag_timer.stop()
        self._report_drag()  # where the drag ended is always served

    def _report_drag(self) -> None:
        point, self._drag_point = self._drag_point, None
        if point is not None:
            self._report(point)

    def _report(self, point) -> None:
        self.show_marker(point)
        if self.on_point is not None:
            self.on_point(point)

    def _lasso_done(self, vertices) -> None:
        if self.on_lasso is not None and len(vertices) >= 3:
            self.on_lasso(np.asarray(vertices, dtype=np.float64))
