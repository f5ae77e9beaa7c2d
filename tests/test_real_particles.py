"""Real TRPV1 particles against projections of their consensus map, through our whole data path."""

import shutil
from pathlib import Path

import numpy as np
import torch

from napari_dynamight.engine.ctf import compute_ctf
from napari_dynamight.engine.data.dataset import ParticleDataset
from napari_dynamight.engine.data.particle_file import read_particles
from napari_dynamight.engine.gaussians import normalised_cross_correlation
from napari_dynamight.engine.geometry import euler_to_matrix, random_euler_angles
from napari_dynamight.engine.image_formation import filter_images
from napari_dynamight.engine.io.mrc import read_map
from napari_dynamight.engine.projector import FourierProjector

TRPV1 = Path(__file__).parent / "data" / "cryojax_trpv1"


def _trpv1_table(tmp_path):
    """The fixture's STAR names its stack './batch_0_restacked.mrc'; point a copy at the real
    stack."""
    text = (
        (TRPV1 / "trpv1_small_stack.star")
        .read_text()
        .replace("./batch_0_restacked.mrc", "trpv1_small_stack.mrcs")
    )
    (tmp_path / "particles.star").write_text(text)
    shutil.copy(TRPV1 / "trpv1_small_stack.mrcs", tmp_path)
    return read_particles(tmp_path / "particles.star")


def test_trpv1_particles_match_their_poses_better_than_random_poses(tmp_path):
    table = _trpv1_table(tmp_path)
    volume, voxel = read_map(TRPV1 / "trpv1_volume.mrc")
    assert np.isclose(table.pixel_size_angstrom[0], 4.88) and np.isclose(voxel, 4.88, atol=0.01)
    dataset = ParticleDataset(table)
    batch = dataset.batch(np.arange(len(table)))
    projector = FourierProjector(torch.tensor(volume), 4.88)
    ctf = compute_ctf(batch.ctf, dataset.box, dataset.pixel_size_angstrom)
    posed = normalised_cross_correlation(
        filter_images(projector.project(batch.rotations, batch.origin_angstrom), ctf), batch.images
    )
    rng = np.random.default_rng(0)
    random_scores = []
    for _ in range(5):
        rotations = euler_to_matrix(
            torch.tensor(random_euler_angles(len(table), rng), dtype=torch.float32)
        )
        random_scores.append(
            normalised_cross_correlation(
                filter_images(projector.project(rotations, batch.origin_angstrom), ctf),
                batch.images,
            )
        )
    random_scores = np.concatenate(random_scores)
    # the contrast sign of this stack is not RELION's, so compare magnitudes
    sign = np.sign(np.mean(posed))
    print(
        f"TRPV1 NCC under STAR poses: {np.round(posed, 3)}; random poses mean "
        f"{random_scores.mean():.3f} (sd {random_scores.std():.3f})"
    )
    assert np.mean(sign * posed) > 0.12
    assert np.mean(sign * posed) > np.mean(sign * random_scores) + 5 * np.std(
        random_scores
    ) / np.sqrt(len(table))
    assert (sign * posed > 0).all()
