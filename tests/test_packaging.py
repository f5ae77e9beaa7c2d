"""The built wheel works outside the source checkout: the example files the demo and napari's sample
data use are package data, found and readable from an unpacked wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

# Runs in a fresh interpreter whose only copy of the package is the unpacked wheel.
CHECK = """
import json, sys
from pathlib import Path
import napari_dynamight
from napari_dynamight._reader import read_mrc, read_star
from napari_dynamight._sample import simulated_adk
from napari_dynamight.engine.example_data import (
    EXAMPLE_STRUCTURE, EXAMPLE_TRAJECTORY, check_example_file
)
from napari_dynamight.engine.io.dcd import read_dcd_info
from napari_dynamight.engine.io.structure import read_structure

check_example_file(EXAMPLE_STRUCTURE, "--structure")
check_example_file(EXAMPLE_TRAJECTORY, "--trajectory")
folder = simulated_adk(Path(sys.argv[1]))
[(volume, _, kind)] = read_mrc(folder / "consensus.mrc")
points = read_star(folder / "particles.star")
print(json.dumps({
    "package": napari_dynamight.__file__, "structure": str(EXAMPLE_STRUCTURE),
    "trajectory": str(EXAMPLE_TRAJECTORY),
    "atoms": len(read_structure(EXAMPLE_STRUCTURE).atomic_numbers),
    "frames": read_dcd_info(EXAMPLE_TRAJECTORY).n_frames, "volume": list(volume.shape),
    "kind": kind,
    "points": [len(data) for data, _, _ in points],
}))
"""


@pytest.mark.slow
def test_wheel_ships_the_example_data(wheel, tmp_path):
    """Unpack the wheel away from the checkout and simulate the sample data set from it."""
    assert wheel.stat().st_size < 5e6
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(unpacked)
    assert {
        "napari_dynamight/sample_data/adk_closed.pdb",
        "napari_dynamight/sample_data/adk_dims.dcd",
        "napari_dynamight/napari.yaml",
    } <= names
    environment = os.environ | {"PYTHONPATH": str(unpacked)}
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(tmp_path / "sample")],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("package", "structure", "trajectory"):
        assert Path(found[key]).is_relative_to(unpacked / "napari_dynamight"), found[key]
    assert found["atoms"] == 3341 and found["frames"] == 98
    assert found["volume"] == [64, 64, 64] and found["kind"] == "image" and found["points"] == [200]
