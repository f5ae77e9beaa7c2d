"""The common motion space places both half sets' particles by their motion, in one coordinate
system.

On the tiny simulated AdK run (true frame known), the common space's best axis must order the
particles of each half about as well as that half's own latent space does, and particles of the two
halves with the same true frame must land at the same place: the ordering of all particles together
stays high, the per-half regression lines of the coordinate on the frame agree, and in the 2D plot
the two halves' particles of one frame lie close together (plain PCA's second axis pulls them apart:
an X).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.stats import spearmanr

from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.evaluation.metrics import latent_frame_ordering
from napari_dynamight.engine.explore import Selections, load_run
from napari_dynamight.engine.explore.common_space import BOTH, common_space, point_subset
from napari_dynamight.engine.progress import run
from napari_dynamight.engine.run_folder import RunFolder


def collect(operation):
    """(result, number of progress events) of a progress generator."""
    events = []
    return run(operation, events.append), len(events)


def test_both_halves_land_where_their_true_frames_are(moving_run, simulated, tmp_path):
    folder = shutil.copytree(moving_run, tmp_path / "run")
    space, _ = collect(common_space(folder))
    data = load_run(folder)
    frames = simulated.labels.frame.to_numpy()
    halves = data.table.particles.dmHalfSet.to_numpy()
    own = [
        latent_frame_ordering(view.latents, frames[view.rows]).best
        for view in (data.own_half(h) for h in (1, 2))
    ]
    rho = [abs(spearmanr(space.coords[:, k], frames).correlation) for k in range(2)]
    axis = space.coords[:, int(np.argmax(rho))]
    per_half = [abs(spearmanr(axis[halves == h], frames[halves == h]).correlation) for h in (1, 2)]
    lines = [np.polyfit(frames[halves == h], axis[halves == h], 1) for h in (1, 2)]
    grid = np.unique(frames)
    gap = (
        np.sqrt(np.mean((np.polyval(lines[0], grid) - np.polyval(lines[1], grid)) ** 2))
        / axis.std()
    )
    centres = np.array(
        [[space.coords[(halves == h) & (frames == f)].mean(axis=0) for f in grid] for h in (1, 2)]
    )
    spread = np.sqrt(((space.coords - space.coords.mean(axis=0)) ** 2).sum(axis=1).mean())
    apart = np.linalg.norm(centres[0] - centres[1], axis=1).mean() / spread
    print(
        f"own latent |Spearman| {np.round(own, 3)}, common space: all {max(rho):.3f}, per half "
        f"{np.round(per_half, 3)}, slopes {lines[0][0]:.4f} {lines[1][0]:.4f} Å/frame, line gap "
        f"{gap:.3f} std, same-frame centres {apart:.3f} RMS apart"
    )
    # measured: own 0.986 / 0.976; common space: all 0.980, per half 0.984 / 0.977, slopes -0.0282 /
    # -0.0285 Å per frame, lines 0.08 std apart, same-frame centres 0.09 RMS apart (on another run
    # with these settings, plain PCA: centres 0.43 apart; centred on the whole data set: lines 0.31
    # apart)
    assert max(rho) > 0.9 and max(rho) > min(own) - 0.05, (rho, own)
    assert all(p > o - 0.05 for p, o in zip(per_half, own)), (per_half, own)
    assert 0.8 < lines[0][0] / lines[1][0] < 1.25, lines
    assert gap < 0.2, gap
    assert apart < 0.25, apart


def test_validation_particles_are_placed_by_their_own_half_and_the_result_is_cached(
    finished_run, tmp_path
):
    folder = RunFolder(shutil.copytree(finished_run, tmp_path / "run"))
    operation = common_space(folder.path, n_points=64, batch_size=64)
    next(operation)
    operation.close()  # cancelled after the first batch: nothing written
    assert not folder.common_space.exists() and not list(folder.path.glob(".common_motion_space*"))
    space, events = collect(common_space(folder.path, n_points=64, batch_size=64))
    table = load_run(folder.path).table.particles
    assert events > 0 and space.coords.shape == (len(table), 2) and np.isfinite(space.coords).all()
    assert ((space.explained_variance > 0) & (space.explained_variance <= 1)).all()
    np.testing.assert_array_equal(space.validation, table.dmValidation.to_numpy() != 0)
    np.testing.assert_array_equal(
        space.decoded_by, table.dmHalfSet.to_numpy()
    )  # validation: own half
    half2 = np.load(folder.latents_half2)
    moved = space.validation & (space.decoded_by == 2)
    assert moved.any()
    np.testing.assert_array_equal(space.codes[moved], half2[moved])

    again, events = collect(common_space(folder.path, n_points=64, batch_size=64))  # the cache
    assert events == 0 and folder.common_space.is_file()
    np.testing.assert_array_equal(again.coords, space.coords)

    info = folder.read_info()  # the run changed (another epoch count): computed again
    info["result"]["epochs"] += 1
    folder.info.write_text(json.dumps(info), encoding="utf-8")
    _, events = collect(common_space(folder.path, n_points=64, batch_size=64))
    assert events > 0
    _, events = collect(
        common_space(folder.path, n_points=32, batch_size=64)
    )  # other points: again
    assert events > 0


def test_without_half2_codes_plain_pca_of_the_own_codes(finished_run):
    from napari_dynamight.engine.deformation.decode import DeformationRun
    from napari_dynamight.engine.explore.common_space import compute_common_space

    deformation = DeformationRun.load(finished_run)
    reference = deformation.reference(
        1
    ).positions_angstrom  # half 1 at its own Gaussians: positions
    code = deformation.latents[0]
    moved = deformation.displacements_at_half1(code, 1, np.arange(len(reference)))[0]
    np.testing.assert_allclose(reference + moved, deformation.positions(code, 1)[0], atol=1e-5)
    space = run(compute_common_space(deformation, None, n_points=64))
    assert (space.decoded_by[space.validation] == 1).all()  # only half 1's codes are known
    assert (
        space.explained_variance.sum() <= 1
        and space.explained_variance[0] >= space.explained_variance[1]
    )
    events = list(compute_common_space(deformation, None, n_points=64, batch_size=50))
    assert [event.step for event in events] == list(range(1, events[-1].total + 1))


def test_bad_input_is_one_error_line(finished_run, tmp_path):
    with pytest.raises(InputError, match="at least 1 point"):
        point_subset(300, 0)
    assert len(point_subset(300, 1000)) == 300 and len(point_subset(300, 64)) == 64
    with pytest.raises(InputError):
        run(common_space(tmp_path))  # not a run folder
    selections = Selections(5)
    selections.add("open", [0, 1], BOTH)
    with pytest.raises(InputError, match="drawn in the common motion space"):
        selections.add("open", [2], 1)
