"""Both half sets learn, on every seed: a half whose decoder freezes while the other learns fails.

A noisier variant of the tiny AdK set (SNR 0.1 instead of 1) trained with three seeds. Each half's
latent must order its particles by true frame and its decoder must move the Gaussians about as much
as the other half's: the regulariser's weight once fed back on the motion (a half that moved little
got a larger λ, which moved it less) and froze one half in most runs on such data.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from helpers.deformation_data import HALVES_SETTINGS as SETTINGS
from helpers.deformation_data import Simulated, simulate_tiny, train
from napari_dynamight.engine.evaluation.metrics import latent_frame_ordering
from napari_dynamight.engine.explore import load_run

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> Simulated:
    return simulate_tiny(tmp_path_factory.mktemp("adk_noisy"), n_particles=500, snr=0.1, seed=1)


@pytest.mark.parametrize("seed", SEEDS)
def test_both_halves_learn_the_motion(noisy, tmp_path, seed):
    out = train(noisy, tmp_path / "run", replace(SETTINGS, seed=seed))
    data = load_run(out)
    halves, frames = data.table.particles.dmHalfSet.to_numpy(), noisy.labels.frame.to_numpy()
    table = data.table.particles
    ordering = [
        latent_frame_ordering(view.latents, frames[view.rows]).best
        for view in (data.own_half(h) for h in (1, 2))
    ]
    moved = [float(table.dmDisplacementAngstrom[halves == h].mean()) for h in (1, 2)]
    print(f"seed {seed}: |Spearman| {ordering}, mean displacement {moved} Å")
    # measured: |Spearman| 0.83-0.87 (half 1) and 0.91-0.92 (half 2), displacement ratios 1.5-1.7
    # (the halves' references differ, so their mean displacements do too); with the gradient-norm λ
    # seeds 0 and 1 failed: half 1 at 0.76 / 0.48 moving 0.56 / 0.50 Å against 1.77 / 1.91 Å in
    # half 2
    assert min(ordering) > 0.7, ordering
    assert min(moved) > 0.3, moved
    assert max(moved) < 2.5 * min(moved), moved
