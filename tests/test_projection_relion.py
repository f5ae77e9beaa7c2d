"""Our image formation against RELION's own projector and RELION-made data (conventions.md)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from helpers.relion_data import optics_block
from napari_dynamight.engine.ctf import CtfParams, compute_ctf
from napari_dynamight.engine.gaussians import (
    GaussianModel,
    normalised_cross_correlation,
    project,
    render_volume,
)
from napari_dynamight.engine.geometry import euler_to_matrix
from napari_dynamight.engine.image_formation import Pose, form_images
from napari_dynamight.engine.projector import project_volume, project_volume_fourier

SHARED = Path(__file__).parent / "data"
BOX, PIXEL = 48, 2.0


def _smooth_model(seed: int = 0) -> GaussianModel:
    """Three lobes of different sizes at asymmetric places: no pose can be mistaken for another."""
    generator = torch.Generator().manual_seed(seed)
    lobes = torch.tensor([[16.0, 0.0, 0.0], [0.0, 11.0, 0.0], [-6.0, -6.0, 13.0]])
    sizes = torch.tensor([60, 40, 20])
    centres = torch.cat(
        [lobe + 4.0 * torch.randn(int(n), 3, generator=generator) for lobe, n in zip(lobes, sizes)]
    )
    n = len(centres)
    return GaussianModel(centres, torch.ones(n), torch.full((n,), 3.0))


def _relion_project(
    tmp_path: Path, volume: np.ndarray, particles: pd.DataFrame, ctf: bool
) -> np.ndarray:
    """Run relion_project on ``volume`` with the poses (and CTFs) of ``particles``; return its
    images."""
    with mrcfile.new(tmp_path / "map.mrc", overwrite=True) as handle:
        handle.set_data(volume.astype(np.float32))
        handle.voxel_size = PIXEL
    starfile.write(
        {"optics": optics_block(BOX, PIXEL), "particles": particles},
        tmp_path / "angles.star",
        overwrite=True,
    )
    command = [
        "relion_project",
        "--i",
        "map.mrc",
        "--o",
        "proj",
        "--ang",
        "angles.star",
        "--angpix",
        str(PIXEL),
    ]
    if ctf:
        command.append("--ctf")
    subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)
    with mrcfile.open(tmp_path / "proj.mrcs") as handle:
        return np.asarray(handle.data, dtype=np.float32)


def _random_particles(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    defocus_u = rng.uniform(8000, 20000, n)
    return pd.DataFrame(
        {
            "rlnAngleRot": rng.uniform(-180, 180, n),
            "rlnAngleTilt": rng.uniform(0, 180, n),
            "rlnAnglePsi": rng.uniform(-180, 180, n),
            "rlnOriginXAngst": rng.uniform(-6, 6, n),
            "rlnOriginYAngst": rng.uniform(-6, 6, n),
            "rlnDefocusU": defocus_u,
            "rlnDefocusV": defocus_u - rng.uniform(0, 800, n),
            "rlnDefocusAngle": rng.uniform(-90, 90, n),
            "rlnPhaseShift": rng.uniform(0, 40, n),
            "rlnCtfBfactor": rng.uniform(0, 80, n),
            "rlnOpticsGroup": np.ones(n, dtype=int),
        }
    )


def _poses(particles: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.tensor(particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    shifts = torch.tensor(particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy())
    return euler_to_matrix(angles).float(), shifts.float()


def _ctf(particles: pd.DataFrame) -> torch.Tensor:
    params = CtfParams.broadcast(
        len(particles),
        defocus_u_angstrom=particles.rlnDefocusU,
        defocus_v_angstrom=particles.rlnDefocusV,
        defocus_angle_degrees=particles.rlnDefocusAngle,
        voltage_kilovolts=300.0,
        spherical_aberration_millimetres=2.7,
        amplitude_contrast=0.1,
        phase_shift_degrees=particles.rlnPhaseShift,
        bfactor_angstrom2=particles.rlnCtfBfactor,
    )
    return compute_ctf(params.torch(), BOX, PIXEL)


@pytest.mark.relion
@pytest.mark.parametrize("with_ctf", [False, True], ids=["no-ctf", "ctf"])
def test_gaussian_projections_match_relion_project(tmp_path, with_ctf):
    model = _smooth_model()
    volume = render_volume(model, BOX, PIXEL).numpy()
    particles = _random_particles(12, seed=1)
    theirs = _relion_project(tmp_path, volume, particles, ctf=with_ctf)
    rotations, shifts = _poses(particles)
    ctf = _ctf(particles) if with_ctf else None
    ours = form_images(model, Pose(rotations, shifts), BOX, PIXEL, ctf)
    ncc = normalised_cross_correlation(ours, theirs)
    print(
        f"NCC with relion_project ({'CTF' if with_ctf else 'no CTF'}): min {ncc.min():.4f} mean "
        f"{ncc.mean():.4f}"
    )
    assert ncc.min() >= 0.98
    # the same images with RELION's matrix transposed or the origin sign flipped do not match
    transposed = project(model, rotations.transpose(1, 2), shifts, BOX, PIXEL)
    flipped = project(model, rotations, -shifts, BOX, PIXEL)
    if not with_ctf:
        assert normalised_cross_correlation(transposed, theirs).mean() < 0.8
        assert normalised_cross_correlation(flipped, theirs).mean() < ncc.mean() - 0.05


@pytest.mark.relion
def test_relion_projection_scale_matches_ours(tmp_path):
    """A projection is the line integral over the voxel size, as relion_project's sum along z."""
    model = _smooth_model(seed=3)
    volume = render_volume(model, BOX, PIXEL).numpy()
    particles = _random_particles(4, seed=2)
    theirs = _relion_project(tmp_path, volume, particles, ctf=False)
    rotations, shifts = _poses(particles)
    ours = project(model, rotations, shifts, BOX, PIXEL).numpy()
    ratio = (ours * theirs).sum(axis=(1, 2)) / (theirs**2).sum(axis=(1, 2))
    assert np.allclose(ratio, 1.0, atol=0.03), ratio


def _aspire(name: str):
    folder = SHARED / "aspire_relion_proj"
    volume = torch.tensor(np.load(folder / "clean70SRibosome_vol.npy"), dtype=torch.float32)
    blocks = starfile.read(folder / f"{name}.star", always_dict=True)
    table = blocks.get("particles", next(iter(blocks.values())))
    with mrcfile.open(folder / f"{name}.mrcs") as handle:
        images = np.asarray(handle.data, dtype=np.float32)
    angles = torch.tensor(table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    origin_columns = (
        ["rlnOriginX", "rlnOriginY"]
        if "rlnOriginX" in table
        else ["rlnOriginXAngst", "rlnOriginYAngst"]
    )
    shifts = torch.tensor(table[origin_columns].to_numpy(), dtype=torch.float32)
    return volume, images, euler_to_matrix(angles).float(), shifts  # pixel size 1 Å


# relion_project puts the centre of an odd-sized image one pixel past N // 2 (measured here: a
# constant (+1, +1) pixel offset, whatever the pose, gives NCC 1.0000; RELION only extracts even
# boxes).
ODD_BOX_IMAGE_OFFSET = torch.tensor([1.0, 1.0])


@pytest.mark.parametrize("name", ["rln_proj_65", "rln_proj_65_shifted"])
def test_relion_made_projections_are_reproduced(name):
    volume, images, rotations, shifts = _aspire(name)
    right = shifts - ODD_BOX_IMAGE_OFFSET

    def ncc(rot, origin):
        return normalised_cross_correlation(
            project_volume_fourier(volume, rot, origin, 1.0), images
        )

    correct = ncc(rotations, right)
    plain_centre = ncc(rotations, shifts)
    transposed = ncc(rotations.transpose(1, 2), right)
    print(
        f"{name}: NCC {np.round(correct, 4)}; at centre N//2 {np.round(plain_centre, 3)}; "
        f"transposed {np.round(transposed, 3)}"
    )
    assert correct.min() >= 0.99
    assert plain_centre.min() >= 0.8  # half a pixel of sampling, not a wrong convention
    assert transposed.max() < 0.5
    if shifts.abs().sum() > 0:
        opposite = ncc(rotations, -shifts - ODD_BOX_IMAGE_OFFSET)
        print(f"{name}: NCC with the opposite origin sign {np.round(opposite, 3)}")
        assert opposite.max() < 0.5


def test_real_space_and_fourier_projectors_agree_on_smooth_maps():
    model = _smooth_model(seed=5)
    volume = render_volume(model, BOX, PIXEL)
    particles = _random_particles(6, seed=4)
    rotations, shifts = _poses(particles)
    real_space = project_volume(volume, rotations, shifts, PIXEL)
    fourier = project_volume_fourier(volume, rotations, shifts, PIXEL)
    gaussian = project(model, rotations, shifts, BOX, PIXEL)
    assert normalised_cross_correlation(real_space, fourier).min() > 0.999
    assert normalised_cross_correlation(gaussian, fourier).min() > 0.999
