"""The explorer's numpy model: half-set views, embedding, polygon selection, named selections, STAR
export, paths."""

from __future__ import annotations

import numpy as np
import pytest
import starfile

from helpers.explore_data import CENTRES, clusters, make_run, to_half2
from napari_dynamight.engine.data.particle_file import read_particles
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.explore import (
    ExplorerData,
    Selections,
    embed,
    graph_path,
    load_run,
    points_in_polygon,
    resample_polyline,
    straight_path,
)


@pytest.fixture
def run(tmp_path):
    return load_run(make_run(tmp_path / "run"))


def test_half_views_hold_each_half_with_its_own_codes(run):
    """Half h: its own particles and every validation particle, all with half h's codes."""
    halves = run.table.particles["dmHalfSet"].to_numpy()
    validation = run.table.particles["dmValidation"].to_numpy() == 1
    assert run.halves == [1, 2] and validation[halves == 2].any()
    for half in (1, 2):
        view = run.view(half)
        np.testing.assert_array_equal(view.rows, np.nonzero((halves == half) | validation)[0])
        centres = CENTRES if half == 1 else to_half2(CENTRES)
        nearest = np.argmin(np.linalg.norm(view.latents[:, None] - centres[None], axis=2), axis=1)
        np.testing.assert_array_equal(
            nearest, clusters(len(run))[view.rows]
        )  # codes in half h's frame
    half2 = np.load(run.source / "latent_means_half2_validation.npy")
    view = run.view(2)
    np.testing.assert_array_equal(view.latents[validation[view.rows]], half2[validation])
    columns = run.columns(view)
    np.testing.assert_array_equal(columns["latent 1"], view.latents[:, 0])
    np.testing.assert_array_equal(
        columns["rlnDefocusU"], run.table.particles["rlnDefocusU"].to_numpy()[view.rows]
    )


def test_own_half_holds_only_that_halfs_particles_in_its_own_frame(run):
    """What a half's latent space is judged by: its own particles (validation ones included), each
    with that half's code; half 2's validation particles come from their half-2 file."""
    halves = run.table.particles["dmHalfSet"].to_numpy()
    half2 = np.load(run.source / "latent_means_half2_validation.npy")
    for half in (1, 2):
        own = run.own_half(half)
        np.testing.assert_array_equal(own.rows, np.nonzero(halves == half)[0])
        centres = CENTRES if half == 1 else to_half2(CENTRES)
        nearest = np.argmin(np.linalg.norm(own.latents[:, None] - centres[None], axis=2), axis=1)
        np.testing.assert_array_equal(nearest, clusters(len(run))[own.rows])
    validation = run.table.particles["dmValidation"].to_numpy() == 1
    own = run.own_half(2)
    np.testing.assert_array_equal(
        own.latents[validation[own.rows]], half2[validation & (halves == 2)]
    )


def test_half2_embedding_does_not_depend_on_half1_latents(tmp_path):
    folder = make_run(tmp_path / "run")
    before = load_run(folder)
    halves = before.table.particles["dmHalfSet"].to_numpy()
    validation = before.table.particles["dmValidation"].to_numpy() == 1
    coords = {half: embed(before.view(half).latents).coords for half in (1, 2)}
    assert not np.allclose(embed(before.latents).coords[before.view(2).rows], coords[2], atol=1)
    # replace every half-1 code (half 1's particles, validation particles' half-1 codes)
    latents = np.load(folder / "latent_means.npy")
    from_half1 = (halves == 1) | validation
    latents[from_half1] = np.random.default_rng(5).normal(0, 100, (from_half1.sum(), 4))
    np.save(folder / "latent_means.npy", latents)
    after = load_run(folder)
    np.testing.assert_array_equal(embed(after.view(2).latents).coords, coords[2])
    assert not np.allclose(embed(after.view(1).latents).coords, coords[1], atol=1)


def test_star_alone_keeps_the_half2_codes_and_plain_latents_have_one_view(run):
    alone = load_run(run.source / "particles.star")
    np.testing.assert_allclose(alone.view(2).latents, run.view(2).latents, atol=1e-5)
    plain = ExplorerData(run.latents)
    assert plain.halves == [None]
    np.testing.assert_array_equal(plain.view(None).rows, np.arange(len(run)))
    with pytest.raises(InputError, match="half set 2"):
        plain.view(2)


def test_pca_embedding_matches_the_principal_axes(run):
    embedding = embed(run.latents)
    centred = run.latents - run.latents.mean(axis=0)
    _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    # same plane as numpy's SVD (up to the sign of each axis)
    for axis in range(2):
        reference = centred @ vt[axis]
        assert abs(np.corrcoef(reference, embedding.coords[:, axis])[0, 1]) > 0.9999
    assert embedding.explained_variance[0] >= embedding.explained_variance[1] > 0
    # a point on a cluster in the plot maps back to that cluster's latent centre
    cluster_1 = embedding.coords[1::3].mean(axis=0)
    np.testing.assert_allclose(embedding.to_latent(cluster_1), [6, 0, 1, 0], atol=0.4)


def test_umap_without_the_package_is_a_clear_error(run, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(InputError, match="umap-learn"):
        embed(run.latents, "umap")


def test_polygon_hit_test_against_a_direct_check():
    rng = np.random.default_rng(1)
    coords = rng.uniform(-1, 1, (20_000, 2)).astype(np.float32)
    square = [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]
    expected = (np.abs(coords) < 0.5).all(axis=1)
    np.testing.assert_array_equal(points_in_polygon(coords, square), expected)
    triangle = [(0, 0), (1, 0), (0, 1)]
    expected = (coords[:, 0] > 0) & (coords[:, 1] > 0) & (coords.sum(axis=1) < 1)
    np.testing.assert_array_equal(points_in_polygon(coords, triangle), expected)
    with pytest.raises(InputError, match="3 vertices"):
        points_in_polygon(coords, [(0, 0), (1, 1)])


def test_named_selections_are_one_class_per_particle_and_half():
    selections = Selections(6)
    selections.add("open", np.array([1, 1, 1, 0, 0, 0], dtype=bool), half=1)
    selections.add("closed", [2, 3], half=1)  # STAR rows; takes particle 2 from "open"
    np.testing.assert_array_equal(selections.labels(1), [1, 1, 2, 2, 0, 0])
    assert selections.counts() == {"open": 2, "closed": 2}
    np.testing.assert_array_equal(selections.mask("closed"), [0, 0, 1, 1, 0, 0])
    selections.add(
        "wide", [0, 3, 5], half=2
    )  # another half: takes nothing from half 1's selections
    np.testing.assert_array_equal(selections.rows("wide"), [0, 3, 5])
    np.testing.assert_array_equal(selections.rows("closed"), [2, 3])
    assert selections.half_of == {"open": 1, "closed": 1, "wide": 2}
    with pytest.raises(InputError, match="drawn in half 1"):
        selections.add("open", [4], half=2)
    with pytest.raises(InputError, match="no selection named"):
        selections.mask("other")
    with pytest.raises(InputError, match="0..5"):
        selections.add("bad", [6], half=1)


def test_export_holds_exactly_the_selected_rows_with_all_columns(run, tmp_path):
    embedding = embed(run.latents)
    polygon = [(2, -10), (20, -10), (20, 10), (2, 10)]
    mask = points_in_polygon(embedding.coords, polygon)
    assert 0 < mask.sum() < len(mask)
    written = run.export(tmp_path / "subset.star", mask)
    assert written == mask.sum()
    source = starfile.read(run.source / "particles.star", always_dict=True)
    subset = starfile.read(tmp_path / "subset.star", always_dict=True)
    assert subset["optics"].equals(source["optics"])
    original = [c for c in source["particles"].columns if not c.startswith("dm")]
    assert list(subset["particles"].columns) == original
    expected = source["particles"][original][mask].reset_index(drop=True)
    others = [c for c in original if c != "rlnImageName"]
    assert subset["particles"][others].equals(expected[others])
    # written in another folder, the names lead to the run's original images from there
    assert list(subset["particles"]["rlnImageName"]) == [
        name.replace("@", "@run/") for name in expected["rlnImageName"]
    ]
    np.testing.assert_array_equal(
        read_particles(tmp_path / "subset.star").image_files, run.table.image_files[mask]
    )
    assert (
        run.export(run.source / "same_folder.star", mask) == mask.sum()
    )  # beside the original: unchanged
    assert starfile.read(run.source / "same_folder.star")["particles"]["rlnImageName"].equals(
        expected["rlnImageName"]
    )
    kept = run.export(tmp_path / "with_results.star", np.nonzero(mask)[0], keep_results=True)
    assert kept == mask.sum()
    assert "dmLatent1" in starfile.read(tmp_path / "with_results.star")["particles"].columns


def test_columns_offer_latents_and_numeric_star_columns(run):
    columns = run.columns()
    assert list(columns)[:4] == ["latent 1", "latent 2", "latent 3", "latent 4"]
    for name in ("rlnDefocusU", "dmHalfSet", "dmErrorAngstrom", "dmDisplacementAngstrom"):
        assert len(columns[name]) == len(run)
    assert "rlnImageName" not in columns and "dmLatent1" not in columns


def test_run_star_alone_gives_the_same_latents(run):
    alone = load_run(run.source / "particles.star")
    np.testing.assert_allclose(alone.latents, run.latents, atol=1e-5)  # starfile writes 6 decimals


def test_missing_or_mismatched_run_files(tmp_path):
    folder = make_run(tmp_path / "run", n=30)
    np.save(folder / "latent_means.npy", np.zeros((29, 4), np.float32))
    with pytest.raises(InputError, match="29 latent means for 30 particles"):
        load_run(folder)
    with pytest.raises(InputError, match="no latent_means.npy"):
        load_run(tmp_path)


def test_straight_path_is_evenly_spaced():
    path = straight_path(np.zeros(3), np.array([3.0, 0, 4.0]), 6)
    np.testing.assert_allclose(np.linalg.norm(np.diff(path, axis=0), axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(path[[0, -1]], [[0, 0, 0], [3, 0, 4]])
    bent = resample_polyline([[0, 0], [1, 0], [1, 1]], 5)
    np.testing.assert_allclose(bent, [[0, 0], [0.5, 0], [1, 0], [1, 0.5], [1, 1]], atol=1e-6)


def test_graph_path_goes_around_a_gap():
    """Points on a U: the graph path from one tip to the other follows the U, not the gap."""
    angle = np.linspace(0, np.pi, 200)
    latents = np.column_stack([np.cos(angle), np.sin(angle)]) * 10
    points, rows = graph_path(latents, 0, 199, n_points=50, k=4)
    assert rows[0] == 0 and rows[-1] == 199
    assert (
        np.all(np.diff(rows) > 0) and np.diff(rows).max() <= 4
    )  # neighbour to neighbour along the U
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 10, atol=0.05)
    straight = straight_path(latents[0], latents[199], 50)
    assert np.linalg.norm(straight, axis=1).min() < 1


def test_graph_path_refuses_disconnected_points():
    latents = np.concatenate([np.zeros((5, 2)) + [0, 0], np.zeros((5, 2)) + [100, 0]])
    latents += np.random.default_rng(0).normal(0, 0.1, latents.shape)
    with pytest.raises(InputError, match="not connected"):
        graph_path(latents, 0, 9, n_points=10, k=3)
