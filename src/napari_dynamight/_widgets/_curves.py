"""Small line plots for the stage widgets (losses per epoch, λ, FSC curves): matplotlib in Qt.

A :class:`CurvePlot` has one or more panels; ``set_curve(panel, label, x, y)`` adds or replaces the
named line of a panel, so a live plot is redrawn from the whole history each time (it is short).
``curve(panel, label)`` gives the plotted values back (for tests and the status line).
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure


class CurvePlot(FigureCanvasQTAgg):
    """Panels of named lines; ``titles`` gives each panel's y label."""

    def __init__(self, titles: list[str], xlabel: str, height: float = 2.6):
        self.figure = Figure(figsize=(4, height), layout="constrained")
        super().__init__(self.figure)
        self.axes = [self.figure.add_subplot(1, len(titles), k + 1) for k in range(len(titles))]
        for axes, title in zip(self.axes, titles, strict=True):
            axes.set_ylabel(title)
            axes.set_xlabel(xlabel)
        self.lines: list[dict] = [{} for _ in titles]
        self.setMinimumHeight(int(height * 60))

    def set_curve(self, panel: int, label: str, x, y, **style) -> None:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        axes, lines = self.axes[panel], self.lines[panel]
        if label in lines:
            lines[label].set_data(x, y)
        else:
            lines[label] = axes.plot(x, y, marker="o", markersize=3, label=label, **style)[0]
            axes.legend(fontsize="small")
        axes.relim()
        axes.autoscale_view()
        self.draw_idle()

    def curve(self, panel: int, label: str) -> tuple[np.ndarray, np.ndarray]:
        line = self.lines[panel].get(label)
        if line is None:
            return np.zeros(0), np.zeros(0)
        return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)

    def clear(self) -> None:
        for axes, lines in zip(self.axes, self.lines, strict=True):
            for line in lines.values():
                line.remove()
            lines.clear()
            legend = axes.get_legend()
            if legend is not None:
                legend.remove()
        self.draw_idle()


def plot_history(plot: CurvePlot, log: list[dict], keys: list[str]) -> None:
    """Panel k shows ``keys[k]`` of an epoch log (entries with epoch, half) as one line per half."""
    for half in (1, 2):
        for panel, key in enumerate(keys):
            rows = [row for row in log if row.get("half") == half and row.get(key) is not None]
            plot.set_curve(
                panel, f"half {half}", [row["epoch"] for row in rows], [row[key] for row in rows]
            )
