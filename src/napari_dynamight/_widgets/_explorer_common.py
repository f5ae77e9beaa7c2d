"""The explorer's common motion space: both half sets' particles in one plot, one lasso for both.

A mixin of :class:`~napari_dynamight._widgets.explorer.ExplorerWidget` (it uses the widget's
``data``, ``decoder``, ``runner``, ``tasks``, ``plot``, ``status`` and ``show_half``). The space
(``engine.explore.common_space``) places every particle by the displacements its own half's decoder
gives it, so it needs the run folder and its decoders; it is computed once in a worker (progress
bar, Cancel) and cached in the run folder. A click decodes the nearest particle with its own half.
"""

from __future__ import annotations

import numpy as np

from ..engine.explore.common_space import BOTH

__all__ = ["BOTH", "COMMON_LABEL", "CommonSpaceView", "common_columns", "view_label"]

COMMON_LABEL = "both (common motion space)"
HALF_COLUMN = "dmHalfSet"
SUBSET_COLUMN = "rlnRandomSubset"
MAX_VALIDATION_DOTS = 20_000  # density mode: validation particles drawn as dots, at most this many


def common_columns(columns: dict) -> dict:
    """The per-particle colours of the common view: the STAR columns (each half's latent dimensions
    are another coordinate system, so they are left out)."""
    return {name: values for name, values in columns.items() if not name.startswith("latent ")}


def view_label(data, half: int | None) -> str:
    """The name of a half-set view in lists (selections, status lines)."""
    return COMMON_LABEL if half == BOTH else data.view(half).label


class CommonSpaceView:
    """The *both (common motion space)* choice of the half-set selector."""

    common = None  # the run's CommonSpace, once computed or read

    def common_choices(self, data, decoder) -> list[tuple[str, int]]:
        """The common view's selector entry, when there are two halves and a run's decoders."""
        self.common = None
        usable = data.halves == [1, 2] and decoder is not None and hasattr(decoder, "run")
        return [(COMMON_LABEL, BOTH)] if usable else []

    def common_view(self):
        """The common space's view, or None while it is being computed (then shown when done)."""
        if self.common is not None:
            return self.common.view()
        from ..engine.explore.common_space import common_space

        self.status.value = "common motion space: decoding every particle's motion ..."
        self.tasks.start(
            common_space(self.decoder.run_directory, self.decoder.run),
            "common motion space",
            self._common_ready,
        )
        return None

    def _common_ready(self, space) -> None:
        self.common = space
        if self.half.value == BOTH:
            self.show_half(BOTH)

    def show_common(self) -> None:
        """Colour by half set and say how the space was made (after the plot is drawn)."""
        if HALF_COLUMN in self.columns:
            self.colour_by(HALF_COLUMN)
        variance = ", ".join(f"{100 * v:.1f} %" for v in self.common.explained_variance)
        self.status.value = (
            f"{COMMON_LABEL}, axes with {variance} of the motion's variance: "
            + self.selection_counts(self.view.rows)
        )

    def mark_validation(self) -> None:
        """Mark the validation particles: hollow black rings on the scatter plot; on the density
        image (many particles), small black dots, at most :data:`MAX_VALIDATION_DOTS` of them (a
        seeded random subset, the legend says how many are shown)."""
        marks, legend = (
            getattr(self, "_validation_marks", None),
            getattr(self, "_validation_legend", None),
        )
        if marks is not None:
            marks.remove()
            self._validation_marks = None
        if legend is not None and legend.axes is not None:
            legend.remove()
        self._validation_legend = None
        if self.view is None or self.view.half != BOTH:
            return
        rows = np.nonzero(self.common.validation)[0]
        chosen = self.embedding.coords[rows]
        if not self.plot.density:
            self._validation_marks = self.plot.axes.scatter(
                chosen[:, 0],
                chosen[:, 1],
                s=14,
                facecolors="none",
                edgecolors="black",
                linewidths=0.5,
                label="validation",
            )
        else:
            label = f"validation ({len(rows)})"
            if len(rows) > MAX_VALIDATION_DOTS:
                keep = np.sort(
                    np.random.default_rng(0).choice(len(rows), MAX_VALIDATION_DOTS, replace=False)
                )
                chosen = chosen[keep]
                label = f"validation ({MAX_VALIDATION_DOTS} of {len(rows)} shown)"
            self._validation_marks = self.plot.axes.scatter(
                chosen[:, 0],
                chosen[:, 1],
                s=1.5,
                color="black",
                linewidths=0,
                rasterized=True,
                label=label,
            )
            self._validation_legend = self.plot.axes.legend(
                handles=[self._validation_marks],
                loc="upper right",
                fontsize="small",
                markerscale=4,
                framealpha=0.8,
            )
        self.plot.draw_idle()

    def selection_counts(self, rows: np.ndarray) -> str:
        """Counts of particles (STAR rows) per random subset and half set, and of validation
        ones."""
        parts = []
        frame = None if self.data.table is None else self.data.table.particles
        for column in (SUBSET_COLUMN, HALF_COLUMN):
            if frame is not None and column in frame.columns:
                values, counts = np.unique(frame[column].to_numpy()[rows], return_counts=True)
                parts.append(f"{column} " + ", ".join(f"{v}: {c}" for v, c in zip(values, counts)))
        validation = int(self.common.validation[rows].sum()) if self.common is not None else 0
        return "; ".join([f"{len(rows)} particles", *parts, f"{validation} validation"])

    def decode_nearest(self, point_2d) -> int:
        """Decode the particle nearest a plot position with its own half; returns its STAR row."""
        row = int(self.view.rows[self.embedding.nearest(point_2d)])
        self.plot.show_marker(self.embedding.coords[row])
        if self.runner is not None:
            self.runner.request(self.common.codes[row], half=int(self.common.decoded_by[row]))
        return row
