"""MRC maps and lazily read particle stacks."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from conftest import DATA, TRPV1_MAP, TRPV1_STACK
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.io.mrc import open_stack, read_map, stack_shape, write_map


def test_read_map_gives_zyx_float32_and_header_voxel_size():
    volume, voxel = read_map(TRPV1_MAP)
    assert volume.shape == (48, 48, 48) and volume.dtype == np.float32
    assert voxel == pytest.approx(4.88, abs=1e-5)
    with mrcfile.open(TRPV1_MAP) as mrc:
        np.testing.assert_array_equal(volume, mrc.data)


def test_write_map_round_trip_with_voxel_size_and_origin(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(16, 20, 24))  # float64 in, float32 out; z, y, x kept
    path = tmp_path / "map.mrc"
    write_map(path, volume, 1.6, origin_angstrom=(-12.8, -16.0, 3.2))
    again, voxel = read_map(path)
    np.testing.assert_array_equal(again, volume.astype(np.float32))
    assert voxel == pytest.approx(1.6, abs=1e-6)
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == 2
        assert (int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)) == (24, 20, 16)
        origin = mrc.header.origin
        np.testing.assert_allclose([origin.x, origin.y, origin.z], [-12.8, -16.0, 3.2], rtol=1e-6)
        np.testing.assert_allclose(mrc.voxel_size.tolist(), [1.6] * 3, rtol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["map.mrc"]


def test_lazy_stack_reads_equal_a_full_read():
    with mrcfile.open(TRPV1_STACK) as mrc:
        full = np.array(mrc.data)
    with open_stack(TRPV1_STACK) as stack:
        assert len(stack) == 10 and stack.shape == (10, 48, 48) and stack.box == 48
        index = np.array([7, 2, 2, 9, 0])
        images = stack[index]
        assert images.dtype == np.float32 and images.shape == (5, 48, 48)
        np.testing.assert_array_equal(images, full[index])
        np.testing.assert_array_equal(stack[3], full[3])
        np.testing.assert_array_equal(stack[2:5], full[2:5])
        images[:] = 0  # a copy: the file and the next read are unaffected
        np.testing.assert_array_equal(stack[[7]], full[[7]])
    assert stack_shape(TRPV1_STACK) == (10, 48, 48)


def test_stack_headers_flagged_as_volumes_are_still_stacks():
    path = DATA / "aspire_relion_proj" / "rln_proj_65.mrcs"  # header space group 1 (volume)
    with open_stack(path) as stack, mrcfile.open(path) as mrc:
        assert stack.shape == (5, 65, 65)
        np.testing.assert_array_equal(stack[[4, 0]], mrc.data[[4, 0]])


def test_single_image_is_a_stack_of_one(tmp_path):
    image = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    mrcfile.new(tmp_path / "one.mrc", data=image).close()
    with open_stack(tmp_path / "one.mrc") as stack:
        assert len(stack) == 1 and stack.shape == (1, 32, 32)
        np.testing.assert_array_equal(stack[[0]][0], image)
        with pytest.raises(InputError, match="one.mrc"):
            stack[[1]]


def test_int16_stack_is_read_as_float32(tmp_path):
    data = np.arange(3 * 8 * 8, dtype=np.int16).reshape(3, 8, 8)
    with mrcfile.new(tmp_path / "ints.mrcs") as mrc:
        mrc.set_data(data)
        mrc.set_image_stack()
    with open_stack(tmp_path / "ints.mrcs") as stack:
        images = stack[[2, 1]]
    assert images.dtype == np.float32
    np.testing.assert_array_equal(images, data[[2, 1]].astype(np.float32))
