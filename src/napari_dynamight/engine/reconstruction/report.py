"""The files of the reconstruction stage: half maps, full map, FSC table and plot, and a ChimeraX
script that opens the maps (all atomic)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..chimerax import level_of, write_maps_script
from ..io.atomic import atomic_path
from ..io.figure import save_figure
from ..io.mrc import write_map
from ..run_folder import ReconstructionFolder


def write_outputs(
    folder: ReconstructionFolder,
    maps: dict,
    voxel_size_angstrom: float,
    frequency: np.ndarray,
    curves: dict[str, np.ndarray],
) -> None:
    """The half maps, the full map, the FSC table (frequency 1/Å, resolution Å, one column per
    curve) and its plot in ``folder``; last, ``maps.cxc`` opens the maps in ChimeraX."""
    folder.path.mkdir(parents=True, exist_ok=True)
    for name, path in folder.maps.items():
        write_map(path, maps[name], voxel_size_angstrom)
    resolution = np.divide(1.0, frequency, out=np.full_like(frequency, np.inf), where=frequency > 0)
    table = np.column_stack([frequency, resolution, *curves.values()])
    with atomic_path(folder.fsc_table) as tmp:
        np.savetxt(
            tmp,
            table,
            delimiter=",",
            fmt="%.6g",
            comments="",
            header=",".join(["frequency_per_angstrom", "resolution_angstrom", *curves]),
        )
    figure = Figure(figsize=(5, 3.5))
    axis = figure.subplots()
    for name, curve in curves.items():
        axis.plot(frequency, curve, label=name.replace("fsc_", ""))
    axis.axhline(0.143, color="grey", lw=0.8, ls="--")
    axis.set_xlabel("spatial frequency (1/Å)")
    axis.set_ylabel("half-map FSC")
    axis.legend()
    figure.tight_layout()
    save_figure(figure, folder.fsc_plot, dpi=80)
    write_maps_script(
        folder.chimerax_script,
        folder.half_maps,
        folder.full_map,
        [level_of(maps[name]) for name in folder.maps],
    )
