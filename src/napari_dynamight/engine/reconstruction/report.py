"""The files of the reconstruction stage: half maps, full map, FSC table and plot (all atomic)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io.atomic import atomic_path  # noqa: E402
from ..io.mrc import write_map  # noqa: E402


def write_outputs(directory: Path, maps: dict, voxel_size_angstrom: float, frequency: np.ndarray,
                  curves: dict[str, np.ndarray]) -> dict:
    """half1.mrc, half2.mrc, full.mrc, fsc.csv (frequency 1/Å, resolution Å, one column per curve)
    and fsc.png in ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    halves = (directory / "half1.mrc", directory / "half2.mrc")
    for path, name in zip(halves, ("half1", "half2"), strict=True):
        write_map(path, maps[name], voxel_size_angstrom)
    write_map(directory / "full.mrc", maps["full"], voxel_size_angstrom)
    resolution = np.divide(1.0, frequency, out=np.full_like(frequency, np.inf), where=frequency > 0)
    table = np.column_stack([frequency, resolution, *curves.values()])
    with atomic_path(directory / "fsc.csv") as tmp:
        np.savetxt(tmp, table, delimiter=",", fmt="%.6g", comments="",
                   header=",".join(["frequency_per_angstrom", "resolution_angstrom", *curves]))
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for name, curve in curves.items():
        axis.plot(frequency, curve, label=name.replace("fsc_", ""))
    axis.axhline(0.143, color="grey", lw=0.8, ls="--")
    axis.set_xlabel("spatial frequency (1/Å)")
    axis.set_ylabel("half-map FSC")
    axis.legend()
    figure.tight_layout()
    with atomic_path(directory / "fsc.png") as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)
    return {"halves": halves, "full": directory / "full.mrc", "csv": directory / "fsc.csv"}
