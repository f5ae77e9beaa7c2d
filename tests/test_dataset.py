"""ParticleDataset: lazy batches with poses, shifts, CTF, resampling and normalisation."""

from __future__ import annotations

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from conftest import DATA, STAR_FILES, TRPV1_MAP, TRPV1_STACK
from napari_dynamight.engine.data.dataset import ParticleDataset, background_mask
from napari_dynamight.engine.data.particle_file import read_particles
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.geometry import euler_to_matrix
from napari_dynamight.engine.io.mrc import read_map

BLOBS = [((6.0, -4.0), 4.0, 1.0), ((-9.0, 7.0), 3.0, 0.6)]  # (x, y) Å, sigma Å, amplitude


def smooth_images(n: int, box: int, pixel_size: float) -> np.ndarray:
    """``n`` copies (shifted a little each) of a smooth two-blob image sampled at ``pixel_size``."""
    axis = (np.arange(box) - box // 2) * pixel_size
    y, x = np.meshgrid(axis, axis, indexing="ij")
    images = np.zeros((n, box, box), dtype=np.float32)
    for k in range(n):
        for (cx, cy), sigma, amp in BLOBS:
            images[k] += amp * np.exp(-((x - cx - k) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    return images


def write_two_group_dataset(folder) -> tuple:
    """STAR + two stacks: group 1 at 1.0 Å (box 80), group 2 at 1.25 Å (box 64), same objects."""
    stacks = {"a.mrcs": smooth_images(3, 80, 1.0), "b.mrcs": smooth_images(3, 64, 1.25)}
    for name, data in stacks.items():
        with mrcfile.new(folder / name) as mrc:
            mrc.set_data(data)
            mrc.set_image_stack()
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1, 2],
            "rlnOpticsGroupName": ["g1", "g2"],
            "rlnVoltage": [300.0, 200.0],
            "rlnSphericalAberration": [2.7, 2.0],
            "rlnAmplitudeContrast": [0.1, 0.07],
            "rlnImagePixelSize": [1.0, 1.25],
            "rlnImageSize": [80, 64],
            "rlnImageDimensionality": [2, 2],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{k}@a.mrcs" for k in (1, 2, 3)] + [f"{k}@b.mrcs" for k in (1, 2, 3)],
            "rlnOpticsGroup": [1, 1, 1, 2, 2, 2],
            "rlnDefocusU": np.linspace(10000, 15000, 6),
            "rlnDefocusV": np.linspace(9800, 14800, 6),
            "rlnAngleRot": np.linspace(0, 50, 6),
            "rlnAngleTilt": np.linspace(10, 80, 6),
            "rlnAnglePsi": np.linspace(-30, 30, 6),
            "rlnOriginXAngst": np.arange(6.0),
            "rlnOriginYAngst": -np.arange(6.0),
        }
    )
    starfile.write({"optics": optics, "particles": particles}, folder / "mixed.star")
    return folder / "mixed.star", stacks


def correlation(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_batches_carry_images_poses_shifts_and_ctf(trpv1_star):
    table = read_particles(trpv1_star)
    with mrcfile.open(TRPV1_STACK) as mrc:
        raw = np.array(mrc.data)
    with ParticleDataset(table, normalise=False) as dataset:
        assert len(dataset) == 10 and dataset.box == 48
        assert dataset.pixel_size_angstrom == pytest.approx(4.88)
        batches = list(dataset.batches(4))
    assert [len(b.rows) for b in batches] == [4, 4, 2]
    first = batches[0]
    assert first.images.shape == (4, 48, 48) and first.images.dtype == torch.float32
    np.testing.assert_array_equal(first.images.numpy(), raw[:4])
    expected = euler_to_matrix(torch.as_tensor(table.euler_degrees[:4])).float()
    torch.testing.assert_close(first.rotations, expected)
    np.testing.assert_allclose(first.origin_angstrom.numpy(), table.origin_angstrom[:4], rtol=1e-6)
    np.testing.assert_allclose(first.ctf.defocus_u_angstrom.numpy(), 14657.509766, rtol=1e-6)
    np.testing.assert_allclose(first.ctf.voltage_kilovolts.numpy(), 300.0)
    assert first.pixel_size_angstrom == pytest.approx(4.88) and first.box == 48
    assert np.concatenate([b.rows for b in batches]).tolist() == list(range(10))


def test_shuffle_is_a_seeded_permutation_of_the_subset(trpv1_star):
    table = read_particles(trpv1_star)
    dataset = ParticleDataset(table, indices=[1, 3, 5, 7, 9], normalise=False)
    order = [b.rows.tolist() for b in dataset.batches(2, shuffle=True, seed=4)]
    flat = sum(order, [])
    assert sorted(flat) == [1, 3, 5, 7, 9] and flat != [1, 3, 5, 7, 9]
    again = [b.rows.tolist() for b in dataset.batches(2, shuffle=True, seed=4)]
    assert again == order
    batch = dataset.batch([9])
    with mrcfile.open(TRPV1_STACK) as mrc:
        np.testing.assert_array_equal(batch.images[0].numpy(), mrc.data[9])


def test_background_normalisation(trpv1_star):
    dataset = ParticleDataset(read_particles(trpv1_star))
    images = dataset.batch(np.arange(10)).images
    mask = background_mask(48)
    assert mask.sum() == 48 * 48 - int(
        (np.hypot(*np.meshgrid(np.arange(48) - 24, np.arange(48) - 24)) <= 24).sum()
    )
    np.testing.assert_allclose(images[:, mask].mean(1).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(images[:, mask].std(1).numpy(), 1.0, atol=1e-5)


def test_flat_background_uses_whole_image_scale(tmp_path):
    star, _ = write_two_group_dataset(tmp_path)
    images = ParticleDataset(read_particles(star), indices=[3, 4]).batch([3, 4]).images
    assert torch.isfinite(images).all()
    np.testing.assert_allclose(images.flatten(1).std(1).numpy(), 1.0, rtol=1e-4)


def test_fourier_downsampling_keeps_a_smooth_image(tmp_path):
    star, stacks = write_two_group_dataset(tmp_path)
    table = read_particles(star)
    dataset = ParticleDataset(table, indices=[0, 1, 2], target_box=40, normalise=False)
    assert dataset.box == 40 and dataset.pixel_size_angstrom == pytest.approx(2.0)  # 80 px × 1 Å
    small = dataset.batch([0, 1, 2]).images.numpy()
    expected = smooth_images(3, 40, 2.0)
    for k in range(3):
        assert correlation(small[k], expected[k]) > 0.999
    np.testing.assert_allclose(small, expected, atol=2e-3)


def test_real_particle_downsampling_is_a_low_pass_and_decimation():
    table = read_particles(STAR_FILES["relion31"])
    dataset = ParticleDataset(table, target_box=64, normalise=False)
    assert dataset.pixel_size_angstrom == pytest.approx(2.806 * 4)
    small = dataset.batch(np.arange(5)).images.numpy()
    with mrcfile.open(DATA / "cryodrgn" / "relion31.mrcs", permissive=True) as mrc:
        full = np.array(mrc.data, dtype=np.float64)
    keep = np.abs(np.fft.fftfreq(256, d=1 / 256) + 0.5) < 32  # frequencies -32..31 per axis
    low = np.fft.ifft2(np.fft.fft2(full) * (keep[:, None] & keep[None, :])).real
    decimated = low[:, ::4, ::4]  # new pixel 32 is old pixel 128: the box centre stays put
    for k in range(5):
        assert correlation(small[k], decimated[k]) > 0.9999
    np.testing.assert_allclose(small, decimated, atol=1e-3 * np.abs(decimated).max())


def test_optics_groups_with_different_pixel_sizes_meet_at_one(tmp_path):
    star, _ = write_two_group_dataset(tmp_path)
    table = read_particles(star)
    np.testing.assert_array_equal(table.pixel_size_angstrom, [1.0] * 3 + [1.25] * 3)
    dataset = ParticleDataset(table, normalise=False)
    assert dataset.pixel_size_angstrom == 1.25 and dataset.box == 64
    batch = dataset.batch(np.arange(6))
    images = batch.images.numpy()
    assert images.shape == (6, 64, 64) and batch.pixel_size_angstrom == 1.25
    for k in range(3):  # group 1 resampled from 1.0 Å equals group 2 sampled at 1.25 Å
        assert correlation(images[k], images[k + 3]) > 0.999
        np.testing.assert_allclose(images[k], images[k + 3], atol=2e-3)
    np.testing.assert_allclose(batch.ctf.voltage_kilovolts.numpy(), [300] * 3 + [200] * 3)
    np.testing.assert_allclose(
        batch.ctf.amplitude_contrast.numpy(), [0.1] * 3 + [0.07] * 3, rtol=1e-6
    )
    fine = ParticleDataset(table, target_pixel_size_angstrom=2.5, target_box=24, normalise=False)
    out = fine.batch([0, 5]).images.numpy()
    assert out.shape == (2, 24, 24)
    assert correlation(out[0], smooth_images(1, 24, 2.5)[0]) > 0.999


def test_check_map_accepts_the_matching_map_only(trpv1_star):
    dataset = ParticleDataset(read_particles(trpv1_star))
    volume, voxel = read_map(TRPV1_MAP)
    dataset.check_map(volume.shape, voxel, "trpv1_volume.mrc")
    with pytest.raises(InputError, match=r"trpv1_volume.mrc.*box 48"):
        dataset.check_map((64, 64, 64), voxel, "trpv1_volume.mrc")
    with pytest.raises(InputError, match="1.2 Å"):
        dataset.check_map(volume.shape, 1.2, "trpv1_volume.mrc")


@pytest.mark.cuda
def test_batches_on_cuda(trpv1_star):
    batch = ParticleDataset(read_particles(trpv1_star), device="cuda").batch([0, 1])
    assert batch.images.is_cuda and batch.rotations.is_cuda and batch.ctf.scale.is_cuda


def test_few_stacks_open_at_once(tmp_path, monkeypatch):
    from napari_dynamight.engine.data import dataset as dataset_module

    monkeypatch.setattr(dataset_module, "MAX_OPEN_STACKS", 1)
    star, stacks = write_two_group_dataset(tmp_path)
    dataset = ParticleDataset(read_particles(star), normalise=False, target_box=64)
    for row in (0, 3, 1, 4):
        image = dataset.batch([row]).images[0].numpy()
        assert len(dataset._stacks) == 1
        if row >= 3:
            np.testing.assert_array_equal(image, stacks["b.mrcs"][row - 3])
    dataset.close()
    assert not dataset._stacks
