"""bench/bench_reconstruct_stage.py measures the reconstruct stage on a trained run whose particles
are repeated; repeating every particle the same number of times must leave the maps unchanged (the
sums scale, and the constant filter's regularisation scales with them; the k-means centres are the
same), so the bench times the stage on the run it would reconstruct."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from napari_dynamight.engine.io.mrc import read_map
from napari_dynamight.engine.progress import run
from napari_dynamight.engine.reconstruction.stage import reconstruct_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_reconstruct_stage import repeat_run  # noqa: E402

REPEATS = 3


@pytest.mark.parametrize("deformations", [False, True], ids=["standard", "deformed"])
def test_a_run_repeated_three_times_reconstructs_to_the_same_maps(
    moving_run, tmp_path, deformations
):
    repeated = tmp_path / "repeated"
    count = REPEATS * len(np.load(moving_run / "latent_means.npy"))
    repeat_run(moving_run, repeated, count)
    options = dict(deformations=deformations, batch_size=100, clusters=8)
    base = run(reconstruct_run(moving_run, output=tmp_path / "base", **options))
    again = run(reconstruct_run(repeated, **options))
    for ours, theirs in zip(base.half_maps, again.half_maps, strict=True):
        first, second = read_map(ours)[0], read_map(theirs)[0]
        assert np.abs(second - first).max() <= 1e-4 * np.abs(first).max()
    assert again.resolution_angstrom == pytest.approx(base.resolution_angstrom, rel=1e-3)
