"""The simulation's ground truth and the publishing of its outputs.

``ground_truth/``: each frame's (or state's) map rendered without CTF or envelope, ``labels.csv``,
``states.csv`` with independent domains, and ``simulation.json`` (the settings and noise level).
Everything is written to a staging folder first; :func:`publish` moves it into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..gaussians import render_volume
from ..io.atomic import atomic_path
from ..io.mrc import write_map
from ..progress import Progress
from ..scene import Scene


def truth_map_name(frame: int, state: bool) -> str:
    """The ground-truth map of a frame (or, with independent domains, a state)."""
    return f"state_{frame:04d}.mrc" if state else f"frame_{frame:03d}.mrc"


def write_ground_truth(
    staging: Path,
    scene: Scene,
    labels: pd.DataFrame,
    box: int,
    pixel_size: float,
    state_frames: np.ndarray | None,
    settings: dict,
):
    """Write ``staging/ground_truth``: the frame (or state) maps, ``labels.csv``, ``states.csv``
    when ``state_frames`` is given, and ``simulation.json`` (``settings``); yields Progress."""
    truth = staging / "ground_truth"
    truth.mkdir()
    for k, frame in enumerate(scene.frames):
        volume = render_volume(scene.at_frame(k), box, pixel_size).cpu().numpy()
        write_map(truth / truth_map_name(frame, state_frames is not None), volume, pixel_size)
        yield Progress("rendering frame maps", k + 1, len(scene.frames))
    with atomic_path(truth / "labels.csv") as tmp:
        labels.to_csv(tmp, index=False)
    if state_frames is not None:
        with atomic_path(truth / "states.csv") as tmp:
            pd.DataFrame(
                {
                    "state": scene.frames,
                    "domain1_frame": state_frames[:, 0],
                    "domain2_frame": state_frames[:, 1],
                }
            ).to_csv(tmp, index=False)
    with atomic_path(truth / "simulation.json") as tmp:
        tmp.write_text(json.dumps(settings, indent=2) + "\n")


def publish(staging: Path, output: Path) -> None:
    """Move the finished outputs from the staging folder into place (renames on one file system).

    An old ``ground_truth`` folder is replaced as a whole so no stale frame maps remain.
    """
    old_truth = output / "ground_truth"
    retired = None
    if old_truth.exists():
        retired = Path(tempfile.mkdtemp(prefix=".old-ground-truth-", dir=output))
        os.replace(old_truth, retired / "ground_truth")
    for name in ("particles.mrcs", "consensus.mrc", "ground_truth", "particles.star"):
        os.replace(staging / name, output / name)
    staging.rmdir()
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
