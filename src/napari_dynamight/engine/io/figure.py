"""Save a matplotlib figure as a PNG file without pyplot, so no global backend is chosen or changed.

The engine draws on a bare ``matplotlib.figure.Figure``; this attaches an Agg canvas to it and
writes the file atomically. Inside napari (which uses the Qt backend) nothing global is touched.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .atomic import atomic_path


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> None:
    """Render ``figure`` with Agg and write it to ``path`` as PNG (atomically)."""
    FigureCanvasAgg(figure)
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
