"""Reading every RELION STAR fixture (3.0, 3.1, 5) and writing exact subsets back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, STAR_FILES, edit_star
from napari_dynamight.engine.data.particle_file import read_particles, write_particles
from napari_dynamight.engine.io.mrc import open_stack
from napari_dynamight.engine.io.star import read_particle_blocks, write_star_blocks

# label: (count, version, pixel sizes Å, voltages kV, Cs mm, Q0 (None: missing), has poses)
EXPECTED = {
    "relion31": (5, "3.1", {2.806}, {300.0}, {0.01}, {0.1}, True),
    "relion31_6optics": (139, "3.1", {1.24, 1.25}, {200.0}, {2.6, 2.7}, {0.1}, True),
    "relion5": (17, "3.1", {0.89}, {100.0}, {1.6}, {0.1}, True),
    "empiar10076_relion30": (7, "3.0", {1.31}, {300.0}, {2.7}, {0.07}, False),
    "pfcrt_relion30": (5, "3.0", {1.035}, {300.0}, {0.001}, None, True),
    "trpv1": (10, "3.1", {4.88}, {300.0}, {2.0}, {0.1}, True),
    "aspire65": (5, "3.0", None, None, None, None, True),
    "aspire65_shifted": (4, "3.1", {1.0}, {300.0}, {2.7}, None, True),
    "starfile_inter1965": (1, "3.1", {1.04}, {300.0}, {2.7}, {0.07}, True),
}


def rounded(values, digits: int = 6) -> set[float]:
    return {round(float(v), digits) for v in values}


def test_every_fixture_loads_with_its_values(star_label, star_path):
    count, version, pixel, voltage, cs, q0, poses = EXPECTED[star_label]
    table = read_particles(star_path)
    assert len(table) == count and table.version == version and table.has_poses == poses
    assert table.euler_degrees.shape == (count, 3) and table.origin_angstrom.shape == (count, 2)
    if pixel is None:
        assert np.isnan(table.pixel_size_angstrom).all()
    else:
        assert rounded(table.pixel_size_angstrom, 4) == pixel
    if voltage is not None:
        assert rounded(table.ctf.voltage_kilovolts) == voltage
        assert rounded(table.ctf.spherical_aberration_millimetres) == cs
    if q0 is None:
        assert "rlnAmplitudeContrast" in table.missing_ctf_columns
    else:
        assert rounded(table.ctf.amplitude_contrast) == q0
    assert (table.image_indices >= 0).all()


def test_relion31_values():
    table = read_particles(STAR_FILES["relion31"])
    np.testing.assert_allclose(table.origin_angstrom[0], [0.019324, -0.64686])
    np.testing.assert_allclose(table.euler_degrees[0], [-102.30296, 82.318041, 124.706463])
    np.testing.assert_allclose(table.ctf.defocus_u_angstrom[0], 13108.082418)
    np.testing.assert_allclose(table.ctf.defocus_angle_degrees[0], -160.39)
    assert list(table.image_indices) == [0, 1, 2, 3, 4]
    assert set(table.image_files) == {str((DATA / "cryodrgn" / "relion31.mrcs").resolve())}
    assert list(table.image_box) == [256] * 5 and list(table.optics_group) == [1] * 5
    # 26 columns in the file's order, untouched
    assert table.particles.shape == (5, 26) and table.particles.columns[21] == "rlnImageName"


def test_relion30_pixel_origins_become_angstrom():
    table = read_particles(STAR_FILES["pfcrt_relion30"])
    np.testing.assert_allclose(table.pixel_size_angstrom, 1.035)  # 1.035 µm detector / 10000×
    np.testing.assert_allclose(table.origin_angstrom[0], [-0.14063 * 1.035, -0.04688 * 1.035])
    np.testing.assert_allclose(table.origin_angstrom[3], [0.140625 * 1.035, 0.015625 * 1.035])
    shifted = read_particles(STAR_FILES["aspire65_shifted"])
    np.testing.assert_allclose(shifted.origin_angstrom, [[6, 10], [10, -5], [-8, 11], [-13, -3]])


def test_relion30_magnification_pixel_size_and_ctf_defaults():
    table = read_particles(STAR_FILES["empiar10076_relion30"])
    np.testing.assert_allclose(table.pixel_size_angstrom, 5 * 1e4 / 38168)
    assert abs(table.pixel_size_angstrom[0] - 1.31) < 1e-4
    np.testing.assert_allclose(table.ctf.defocus_angle_degrees, 5.28)
    np.testing.assert_allclose(table.ctf.phase_shift_degrees, 0.0)
    np.testing.assert_allclose(table.ctf.bfactor_angstrom2, 0.0)
    np.testing.assert_allclose(table.ctf.scale, 1.0)
    assert (table.euler_degrees == 0).all() and (table.origin_angstrom == 0).all()
    assert table.has_ctf and list(table.image_indices) == list(range(7))


def test_six_optics_groups_map_per_particle():
    table = read_particles(STAR_FILES["relion31_6optics"])
    counts = dict(zip(*np.unique(table.optics_group, return_counts=True), strict=True))
    assert counts == {1: 48, 2: 29, 3: 5, 4: 7, 5: 26, 6: 24}
    expected_pixel = {1: 1.25, 2: 1.24, 3: 1.25, 4: 1.25, 5: 1.24, 6: 1.25}
    expected_cs = {1: 2.7, 2: 2.7, 3: 2.7, 4: 2.6, 5: 2.7, 6: 2.7}
    for group in range(1, 7):
        rows = table.optics_group == group
        np.testing.assert_allclose(table.pixel_size_angstrom[rows], expected_pixel[group])
        np.testing.assert_allclose(
            table.ctf.spherical_aberration_millimetres[rows], expected_cs[group]
        )
    # rlnMicrographPixelSize (1.035 Å for group 6) is not the particle pixel size
    assert table.optics.loc[5, "rlnMicrographPixelSize"] == 1.035
    np.testing.assert_allclose(table.origin_angstrom[0], [13.284554, -3.21701])
    assert (table.image_box == 196).all() and table.has_ctf


def _assert_same(a, b):
    pd.testing.assert_frame_equal(a.particles, b.particles, check_exact=True)
    if a.optics is None:
        assert b.optics is None
    else:
        pd.testing.assert_frame_equal(a.optics, b.optics, check_exact=True)
    assert a.version == b.version


def test_round_trip_is_exact(star_path, tmp_path):
    table = read_particles(star_path)
    out = tmp_path / "out.star"
    write_particles(out, table)
    again = read_particles(out, data_root=star_path.parent)
    _assert_same(table, again)
    np.testing.assert_array_equal(again.pixel_size_angstrom, table.pixel_size_angstrom)
    np.testing.assert_array_equal(again.origin_angstrom, table.origin_angstrom)
    assert list(again.image_files) == list(table.image_files)
    write_particles(tmp_path / "twice.star", again)
    assert (tmp_path / "twice.star").read_text() == out.read_text()


def test_io_blocks_are_plain_frames_that_round_trip(star_path, tmp_path):
    """engine.io.star alone (no particle table): the blocks read back identical after writing."""
    particles, optics, names, comments = read_particle_blocks(star_path)
    assert isinstance(particles, pd.DataFrame) and (optics is None) == ("optics" not in names)
    blocks = (
        [(names["optics"], optics, comments.get(names["optics"]))] if optics is not None else []
    )
    blocks.append((names["particles"], particles, comments.get(names["particles"])))
    write_star_blocks(tmp_path / "blocks.star", blocks)
    again = read_particle_blocks(tmp_path / "blocks.star")
    pd.testing.assert_frame_equal(again[0], particles)
    if optics is not None:
        pd.testing.assert_frame_equal(again[1], optics)
    assert again[2] == names


@pytest.mark.parametrize("label", ["relion31", "pfcrt_relion30", "relion31_6optics"])
def test_subset_keeps_columns_and_optics(label, tmp_path):
    table = read_particles(STAR_FILES[label])
    index = np.arange(len(table))[::-2]  # reversed, every other row
    write_particles(tmp_path / "subset.star", table, index)
    subset = read_particles(tmp_path / "subset.star", data_root=STAR_FILES[label].parent)
    expected = table.particles.iloc[index].reset_index(drop=True)
    pd.testing.assert_frame_equal(subset.particles, expected, check_exact=True)
    if table.optics is not None:
        pd.testing.assert_frame_equal(subset.optics, table.optics, check_exact=True)
    np.testing.assert_array_equal(subset.pixel_size_angstrom, table.pixel_size_angstrom[index])
    mask = np.zeros(len(table), dtype=bool)
    mask[index] = True
    write_particles(tmp_path / "mask.star", table, mask)
    assert (
        len(read_particles(tmp_path / "mask.star", data_root=STAR_FILES[label].parent))
        == mask.sum()
    )


def test_version_comments_are_kept(tmp_path):
    write_particles(tmp_path / "a.star", read_particles(STAR_FILES["relion5"]))
    assert (tmp_path / "a.star").read_text().count("# version 50001") == 2
    write_particles(tmp_path / "b.star", read_particles(STAR_FILES["pfcrt_relion30"]), [0])
    text = (tmp_path / "b.star").read_text()
    assert text.startswith("# RELION; version 3.0.6") and "data_images" in text


def test_image_names_with_and_without_zero_padding(tmp_path):
    stack = DATA / "cryodrgn" / "relion31.mrcs"

    def unpad(blocks):
        names = blocks["particles"]["rlnImageName"]
        blocks["particles"]["rlnImageName"] = [f"{int(n.split('@')[0])}@{stack}" for n in names]

    plain = read_particles(edit_star(STAR_FILES["relion31"], tmp_path / "plain.star", unpad))
    padded = read_particles(STAR_FILES["relion31"])
    assert plain.particles["rlnImageName"][1] == f"2@{stack}"
    np.testing.assert_array_equal(plain.image_indices, padded.image_indices)
    assert list(plain.image_files) == list(padded.image_files)


def test_name_without_at_is_the_single_image_of_its_file(tmp_path):
    with open_stack(DATA / "cryodrgn" / "relion31.mrcs") as stack:
        image = stack[2]
    import mrcfile

    mrcfile.new(tmp_path / "one.mrc", data=image).close()

    def single(blocks):
        blocks["particles"] = blocks["particles"].iloc[:1].copy()
        blocks["particles"]["rlnImageName"] = ["one.mrc"]

    table = read_particles(edit_star(STAR_FILES["relion31"], tmp_path / "one.star", single))
    assert list(table.image_indices) == [0] and table.image_files[0] == str(tmp_path / "one.mrc")
    table.check_images()
    assert table.image_box[0] == 256


def test_data_root_overrides_the_star_folder(tmp_path):
    from conftest import write_trpv1_star

    star = write_trpv1_star(tmp_path)  # the stack is not in tmp_path
    moved = read_particles(star, data_root=DATA / "cryojax_trpv1")
    moved.check_images()
    stack = str((DATA / "cryojax_trpv1" / "trpv1_small_stack.mrcs").resolve())
    assert set(moved.image_files) == {stack} and list(moved.image_indices) == list(range(10))
