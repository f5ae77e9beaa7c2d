"""The latent-space explorer's model, in numpy: embedding, selections, paths, the per-particle
table.

No Qt or napari here: the explorer widget draws what these functions compute, and the selection
model (latent N×2, a class id per particle) lives in plain arrays so it stays fast at 10⁶ particles.
The two half sets' latent spaces are separate coordinate systems, so everything works on one half's
view (:class:`HalfView`) at a time.
"""

from .embedding import Embedding, embed
from .halves import HalfView
from .paths import graph_path, resample_polyline, straight_path
from .selection import Selections, points_in_polygon
from .table import ExplorerData, load_run

__all__ = [
    "Embedding",
    "ExplorerData",
    "HalfView",
    "Selections",
    "embed",
    "graph_path",
    "load_run",
    "points_in_polygon",
    "resample_polyline",
    "straight_path",
]
