"""ParticleTable: half sets, subsets, CTF defaults, image checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, STAR_FILES, TRPV1_STACK
from napari_dynamight.engine.data.particle_file import read_particles
from napari_dynamight.engine.errors import InputError


def test_half_sets_come_from_rlnRandomSubset(trpv1_star):
    table = read_particles(trpv1_star)
    assert list(table.half_sets()) == [2, 1, 2, 1, 2, 1, 2, 1, 2, 1]
    assert list(table.half_sets(seed=5)) == [
        2,
        1,
        2,
        1,
        2,
        1,
        2,
        1,
        2,
        1,
    ]  # seed is irrelevant here
    pfcrt = read_particles(STAR_FILES["pfcrt_relion30"])
    assert list(pfcrt.half_sets()) == [2, 1, 2, 2, 2]


def test_random_half_sets_are_balanced_and_seeded():
    table = read_particles(STAR_FILES["empiar10076_relion30"])  # 7 rows, no rlnRandomSubset
    halves = table.half_sets(seed=3)
    assert set(halves) == {1, 2} and sorted(np.bincount(halves)[1:]) == [3, 4]
    np.testing.assert_array_equal(halves, table.half_sets(seed=3))
    six = read_particles(STAR_FILES["relion31_6optics"]).select(slice(None))
    six.particles = six.particles.drop(columns="rlnRandomSubset")
    splits = [six.half_sets(seed=s) for s in range(3)]
    assert all(np.bincount(h)[1:].tolist() == [70, 69] for h in splits)
    assert not np.array_equal(splits[0], splits[1])


def test_select_keeps_arrays_aligned():
    table = read_particles(STAR_FILES["relion31_6optics"])
    rows = np.array([138, 0, 57])
    subset = table.select(rows)
    assert len(subset) == 3 and list(subset.particles.index) == [0, 1, 2]
    assert list(subset.particles["rlnImageName"]) == list(
        table.particles["rlnImageName"].iloc[rows]
    )
    np.testing.assert_array_equal(subset.euler_degrees, table.euler_degrees[rows])
    np.testing.assert_array_equal(subset.ctf.defocus_u_angstrom, table.ctf.defocus_u_angstrom[rows])
    np.testing.assert_array_equal(subset.optics_group, table.optics_group[rows])
    assert subset.optics is table.optics


def test_ctf_values_and_defaults():
    table = read_particles(STAR_FILES["relion31"])
    np.testing.assert_allclose(table.ctf.defocus_v_angstrom[4], 12463.0411)
    np.testing.assert_allclose(table.ctf.scale, 1.0)
    trpv1 = read_particles(STAR_FILES["trpv1"])  # no rlnCtfScalefactor column
    np.testing.assert_allclose(trpv1.ctf.scale, 1.0)
    np.testing.assert_allclose(trpv1.ctf.defocus_angle_degrees, 53.749996)
    assert len(trpv1.ctf) == 10 and trpv1.has_ctf
    aspire = read_particles(STAR_FILES["aspire65"])
    assert not aspire.has_ctf
    with pytest.raises(InputError, match="rlnDefocusU"):
        aspire.require_ctf()


def test_trpv1_corrected_copy_points_at_the_real_stack(trpv1_star):
    table = read_particles(trpv1_star)
    table.check_images()
    assert list(table.image_indices) == list(range(10))
    assert all(f.endswith("trpv1_small_stack.mrcs") for f in table.image_files)
    assert list(table.optics_group) == [7] * 10 and (table.image_box == 48).all()
    np.testing.assert_allclose(table.origin_angstrom[0], [-8.149219, -6.120969])


def test_box_comes_from_the_stack_when_the_star_has_none():
    table = read_particles(STAR_FILES["aspire65"])  # no rlnImageSize, no optics table
    assert list(table.image_box) == [65] * 5
    table.check_images()
    assert table.pixel_size_angstrom.shape == (5,)
    fixed = read_particles(STAR_FILES["aspire65"], pixel_size_angstrom=1.0)
    np.testing.assert_array_equal(fixed.pixel_size_angstrom, 1.0)
    fixed.require_pixel_size()
    with pytest.raises(InputError, match="rln_proj_65.star"):
        table.require_pixel_size()


def test_pixel_size_comes_from_star_not_stack_header():
    table = read_particles(STAR_FILES["relion31"])  # the stack header says 1.0 Å
    np.testing.assert_allclose(table.pixel_size_angstrom, 2.806)
    assert TRPV1_STACK.exists() and (DATA / "cryodrgn" / "relion31.mrcs").exists()


def test_particles_of_one_stack_share_its_path(tmp_path):
    """One path object per stack, not one per particle: 100,000 particles would otherwise hold
    ~10 MB of copies of the same few paths."""
    import pandas as pd

    from napari_dynamight.engine.data.particles import table_from_blocks

    names = [f"{i % 50 + 1:06d}@Extract/job007/{'ab'[i % 2]}.mrcs" for i in range(200)]
    frame = pd.DataFrame({"rlnImageName": names, "rlnImageSize": 64})
    table = table_from_blocks(frame, None, tmp_path / "particles.star")
    assert len(set(table.image_files)) == 2
    assert len({id(name) for name in table.image_files}) == 2
    assert [Path(f).name for f in table.image_files] == ["ab"[i % 2] + ".mrcs" for i in range(200)]
    assert Path(table.image_files[0]).parent == (tmp_path / "Extract" / "job007").resolve()
    np.testing.assert_array_equal(table.image_indices, np.arange(200) % 50)


def test_release_freed_memory_keeps_live_data():
    from napari_dynamight.engine.memory import release_freed_memory

    table = read_particles(STAR_FILES["relion31_6optics"])
    before = table.particles.copy()
    release_freed_memory()
    assert table.particles.equals(before)
