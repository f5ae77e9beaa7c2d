"""The explorer's validation views: the run's per-Gaussian error estimates, and one validation
particle decoded by both halves.

A mixin of :class:`~napari_dynamight._widgets.explorer.ExplorerWidget` (it uses the widget's
``data``, ``view``, ``embedding``, ``decoder``, ``comparer``, ``plot``, ``viewer`` and
``_show_decoded``). Validation particles were held out of both halves' training and encoded by both,
so they appear in both halves' views, each time with that half's code. Both views colour the
Gaussians by a distance in Å and show the colour bar that reads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engine.explore.common_space import BOTH
from ._layers import show_points

ERRORS_LAYER = "Gaussian error estimates"
HALVES_LAYER = "half 1 vs half 2"
COLOURED = {"opacity": 1.0, "blending": "translucent_no_depth"}  # every Gaussian, over the density


def with_colour_legend(layer):
    """Show a points layer's face colour bar (its feature's values in Å) on the canvas."""
    colorbar = getattr(layer, "face_colorbar", None)  # napari ≥ 0.9
    if colorbar is not None:
        colorbar.visible = True
    return layer


class ValidationViews:
    """Gaussian error estimates and the two halves' predictions for a validation particle."""

    def show_gaussian_errors(self):
        """Half 1's reference Gaussians coloured by their deformation error estimate
        (validation)."""
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
        layer = show_points(
            self.viewer,
            ERRORS_LAYER,
            positions,
            size_angstrom=3.0,
            features={"error_angstrom": errors},
            face_color="error_angstrom",
            face_colormap="inferno",
            **COLOURED,
        )
        with_colour_legend(layer)
        self.status.value = (
            f"Gaussian error estimates: median {np.median(errors):.2f} Å, max {errors.max():.2f} Å"
        )
        return layer

    def compare_halves(self, point_2d=None) -> int | None:
        """Decode the validation particle nearest the last click with both halves; returns its STAR
        row. The current half's prediction is shown, coloured by the distance to the other's."""
        point = self.last_point if point_2d is None else np.asarray(point_2d, dtype=np.float64)
        if self.comparer is None or point is None:
            self._error("open a run folder and click near a validation particle first")
            return None
        shown = np.nonzero(self.decoder.validation[self.view.rows])[0]
        if len(shown) == 0:
            self._error("this run has no validation particles")
            return None
        nearest = shown[np.argmin(np.linalg.norm(self.embedding.coords[shown] - point, axis=1))]
        self.plot.show_marker(self.embedding.coords[nearest])
        row = int(self.view.rows[nearest])
        self.comparer.request(row)
        return row

    def _show_comparison(self, comparison) -> None:
        half = self.view.half
        if half == BOTH:  # the common view: the particle's own half set
            half = int(self.common.decoded_by[comparison.particle])
        own = comparison.half2 if half == 2 else comparison.half1
        self._show_decoded(own)
        if HALVES_LAYER in self.viewer.layers:
            self.viewer.layers.remove(HALVES_LAYER)
        layer = show_points(
            self.viewer,
            HALVES_LAYER,
            own.positions_angstrom,
            size_angstrom=3.0,
            features={"difference_angstrom": comparison.difference_angstrom},
            face_color="difference_angstrom",
            face_colormap="inferno",
            **COLOURED,
        )
        with_colour_legend(layer)
        self.last_comparison = comparison
        self.status.value = (
            f"particle {comparison.particle}: the halves' displacements differ by "
            f"{comparison.rms_angstrom:.2f} Å RMS "
            f"(max {comparison.difference_angstrom.max():.2f} Å)"
        )
