"""Every option of the reconstruct stage in one place (the command line and the napari form are
made from them); :func:`engine.reconstruction.stage.reconstruct_run` takes the settings record,
whose defaults are the only ones."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings_record import SettingsRecord, option
from .clusters import DEFAULT_CLUSTERS

FILTERS = ("constant", "wiener")
DEFAULT_FILTER = "constant"  # measured in bench/bench_filter.py (docs/reconstruction.md)


@dataclass(frozen=True)
class ReconstructionSettings(SettingsRecord):
    """Options of :func:`engine.reconstruction.stage.reconstruct_run`, each declared once with
    :func:`option` (engine/settings_record.py)."""

    batch_size: int = option(64, "particles per batch", minimum=1, maximum=8192, metavar="B")
    grid_factor: int = option(
        2,
        "evaluate the inverse field on a grid F times coarser than the map",
        minimum=1,
        maximum=16,
        metavar="F",
    )
    filter: str = option(
        DEFAULT_FILTER,
        "regularisation: constant = CTF² + 0.001 × its shell "
        "mean, unfiltered half maps as relion_reconstruct and RELION's refinement "
        "write them (for relion_postprocess); wiener = a Wiener filter from the "
        "half-map FSC",
        choices=FILTERS,
    )
    clusters: int = option(
        DEFAULT_CLUSTERS,
        "k-means clusters of each half's latent codes: the "
        "inverse field is evaluated and the backprojection warped once per "
        "cluster centre; 0 = per particle (slow)",
        minimum=0,
        maximum=100_000,
        metavar="K",
    )
