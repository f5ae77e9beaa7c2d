"""Lasso/polygon selection in numpy, and named selections as one class id per particle.

The hit test is matplotlib's ``Path.contains_points`` on the points inside the polygon's bounding box
(a cheap pre-filter): about 30 ms for 10⁶ points, so selection never waits for the plot.
"""

from __future__ import annotations

import numpy as np
from matplotlib.path import Path

from ..errors import InputError


def points_in_polygon(coords: np.ndarray, polygon) -> np.ndarray:
    """Boolean mask (N,) of the 2D ``coords`` inside the closed ``polygon`` (M, 2), M ≥ 3."""
    polygon = np.asarray(polygon, dtype=np.float64)
    if polygon.ndim != 2 or polygon.shape[1] != 2 or len(polygon) < 3:
        raise InputError("a selection polygon needs at least 3 vertices (x, y), got shape "
                         f"{polygon.shape}")
    coords = np.asarray(coords)
    low, high = polygon.min(axis=0), polygon.max(axis=0)
    box = np.nonzero((coords[:, 0] >= low[0]) & (coords[:, 0] <= high[0]) &
                     (coords[:, 1] >= low[1]) & (coords[:, 1] <= high[1]))[0]
    inside = np.zeros(len(coords), dtype=bool)
    if len(box):
        inside[box] = Path(polygon).contains_points(coords[box])
    return inside


class Selections:
    """Named selections of N particles, stored as ``labels`` (N,) int: 0 = none, k = k-th name.

    A particle belongs to at most one selection: adding a selection takes its particles from the
    earlier ones (like painting classes onto the data).
    """

    def __init__(self, n: int):
        self.labels = np.zeros(n, dtype=np.int32)
        self.names: list[str] = []

    def add(self, name: str, mask) -> int:
        """Assign the particles in ``mask`` to ``name`` (new or existing); returns its class id."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.labels.shape:
            raise InputError(f"selection mask has {mask.shape[0]} entries for "
                             f"{len(self.labels)} particles")
        name = name.strip()
        if not name:
            raise InputError("a selection needs a name")
        if name not in self.names:
            self.names.append(name)
        label = self.names.index(name) + 1
        self.labels[mask] = label
        return label

    def mask(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise InputError(f"no selection named {name!r}; existing: {', '.join(self.names) or 'none'}")
        return self.labels == self.names.index(name) + 1

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.labels, minlength=len(self.names) + 1)
        return {name: int(found[k + 1]) for k, name in enumerate(self.names)}
