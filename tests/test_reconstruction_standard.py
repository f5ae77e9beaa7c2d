"""The standard reconstruction against known volumes, relion_project data and relion_reconstruct."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from helpers.relion_data import (
    BOX,
    N_PARTICLES,
    PIXEL,
    THREE_QUARTER_NYQUIST,
    blob_volume,
    masked_correlation,
    particle_blocks,
    relion,
)
from napari_dynamight.engine.ctf import CtfParams, compute_ctf
from napari_dynamight.engine.data.particle_file import read_particles
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.fourier import fsc
from napari_dynamight.engine.geometry import euler_to_matrix
from napari_dynamight.engine.io.mrc import open_stack
from napari_dynamight.engine.progress import Progress, run
from napari_dynamight.engine.reconstruction import (
    FourierAccumulator,
    reconstruct_from_arrays,
    reconstruct_particles,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module", params=["no_ctf", "ctf"])
def projected(request, tmp_path_factory):
    """relion_project images of ``blob_volume`` as a STAR data set; and relion_reconstruct of it."""
    with_ctf = request.param == "ctf"
    folder = tmp_path_factory.mktemp(f"projected_{request.param}")
    volume = blob_volume()
    with mrcfile.new(folder / "truth.mrc") as handle:
        handle.set_data(volume)
        handle.voxel_size = PIXEL
    blocks = particle_blocks(N_PARTICLES, seed=1, ctf=with_ctf)
    starfile.write(blocks, folder / "angles.star")
    ctf_flag = ["--ctf"] if with_ctf else []
    project = ["relion_project", "--i", "truth.mrc", "--o", "proj", "--ang", "angles.star"]
    relion(folder, *project, *ctf_flag)
    blocks["particles"]["rlnImageName"] = [f"{i + 1:06d}@proj.mrcs" for i in range(N_PARTICLES)]
    starfile.write(blocks, folder / "particles.star")
    relion(folder, "relion_reconstruct", "--i", "particles.star", "--o", "relion.mrc", *ctf_flag)
    return {
        "folder": folder,
        "truth": volume,
        "relion": mrcfile.read(folder / "relion.mrc").astype(np.float32),
        "table": read_particles(folder / "particles.star"),
        "ctf": with_ctf,
    }


def ours(table, rotations=None, shifts=None, use_ctf=True) -> np.ndarray:
    """Our reconstruction of a particle table, optionally with replaced poses or shifts."""
    images = open_stack(table.image_files[0])[table.image_indices]
    if rotations is None:
        rotations = euler_to_matrix(torch.as_tensor(table.euler_degrees))
    if shifts is None:
        shifts = torch.as_tensor(table.origin_angstrom)
    accumulator = FourierAccumulator(BOX, PIXEL)
    ctf = compute_ctf(table.ctf.torch(), BOX, PIXEL) if use_ctf and table.has_ctf else None
    accumulator.add(torch.as_tensor(images), rotations, shifts, ctf)
    return accumulator.reconstruct().numpy()


def fsc_curve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return fsc(a, b, PIXEL)[1]


@pytest.mark.relion
def test_round_trip_recovers_the_volume(projected):
    """relion_project images of a known map come back as that map (FSC ≥ 0.9 to 3/4 Nyquist)."""
    volume = ours(projected["table"])
    truth = projected["truth"]
    curve = fsc_curve(volume, truth)
    scale = float((volume * truth).sum() / (truth * truth).sum())
    print(
        f"\nround trip ({'CTF' if projected['ctf'] else 'no CTF'}): FSC at 1/2 Nyquist "
        f"{curve[BOX // 4]:.4f}, at 3/4 Nyquist {curve[THREE_QUARTER_NYQUIST]:.4f}; "
        f"scale {scale:.4f}; correlation {masked_correlation(volume, truth):.5f}"
    )
    assert curve[1 : THREE_QUARTER_NYQUIST + 1].min() >= 0.9
    assert abs(scale - 1) < 0.03  # same density units as the projected map


@pytest.mark.relion
def test_agrees_with_relion_reconstruct(projected):
    volume = ours(projected["table"])
    reference = projected["relion"]
    curve = fsc_curve(volume, reference)
    correlation = masked_correlation(volume, reference)
    print(
        f"\nvs relion_reconstruct ({'CTF' if projected['ctf'] else 'no CTF'}): correlation "
        f"{correlation:.6f}; FSC at 1/2 Nyquist {curve[BOX // 4]:.4f}, at 3/4 Nyquist "
        f"{curve[THREE_QUARTER_NYQUIST]:.4f}, lowest below Nyquist {curve[1 : BOX // 2].min():.4f}"
    )
    assert correlation >= 0.98
    assert curve[1 : THREE_QUARTER_NYQUIST + 1].min() >= 0.9
    # Same algorithm as RELION (gridding weights, corner mask): measured ≥ 0.9993 to Nyquist;
    # plain division gives 0.994, no corner mask 0.83-0.90.
    assert curve[1 : BOX // 2].min() >= 0.995


@pytest.mark.relion
def test_wrong_conventions_fail(projected):
    """The transposed rotation, the opposite origin sign or a missing CTF clearly do worse."""
    table = projected["table"]
    truth = projected["truth"]
    rotations = euler_to_matrix(torch.as_tensor(table.euler_degrees))
    shifts = torch.as_tensor(table.origin_angstrom)
    band = slice(1, THREE_QUARTER_NYQUIST + 1)
    right = fsc_curve(ours(table), truth)[band].mean()
    transposed = fsc_curve(ours(table, rotations=rotations.transpose(1, 2)), truth)[band].mean()
    opposite = fsc_curve(ours(table, shifts=-shifts), truth)[band].mean()
    print(
        f"\nmean FSC to 3/4 Nyquist: right {right:.3f}, transposed {transposed:.3f}, "
        f"opposite shift {opposite:.3f}"
    )
    assert right > 0.95
    assert transposed < 0.5
    assert opposite < 0.7
    if projected["ctf"]:
        uncorrected = fsc_curve(ours(table, use_ctf=False), truth)[band].mean()
        print(f"without CTF correction {uncorrected:.3f}")
        assert uncorrected < 0.8


@pytest.mark.relion
def test_reconstruct_particles_streams_the_star_file(projected):
    table = projected["table"]
    events = []
    operation = reconstruct_particles(table, batch_size=300, use_ctf=projected["ctf"])
    volume, voxel = run(operation, events.append)
    assert voxel == PIXEL
    assert all(isinstance(event, Progress) for event in events)
    assert [event.step for event in events[:3]] == [300, 600, 800]
    np.testing.assert_allclose(volume, ours(table), atol=1e-4 * np.abs(volume).max())


def aspire(name: str):
    folder = DATA / "aspire_relion_proj"
    table = read_particles(folder / f"{name}.star", pixel_size_angstrom=1.0)
    images = open_stack(table.image_files[0])[table.image_indices]
    truth = np.load(folder / "clean70SRibosome_vol.npy")
    return table, np.asarray(images, dtype=np.float32), truth


# relion_project puts the centre of odd-sized images one pixel past N // 2 (see
# test_projection_relion.py); these stacks are 65 px, so their origins need 1 px more.
ODD_BOX_OFFSET_ANGSTROM = 1.0


@pytest.mark.parametrize("name", ["rln_proj_65", "rln_proj_65_shifted"])
def test_relion_made_projections_reconstruct_their_volume(name):
    """Even 4-5 RELION projections of the ribosome give a map that resembles it, only with the
    right conventions."""
    table, images, truth = aspire(name)
    euler, origin = table.euler_degrees, table.origin_angstrom - ODD_BOX_OFFSET_ANGSTROM

    rotations = euler_to_matrix(torch.as_tensor(euler))

    def correlation(rotations_used, origin_used) -> float:
        accumulator = FourierAccumulator(65, 1.0)
        accumulator.add(torch.as_tensor(images), rotations_used, torch.as_tensor(origin_used))
        volume = accumulator.reconstruct().numpy()
        return float(np.corrcoef(volume.ravel(), truth.ravel())[0, 1])

    right = correlation(rotations, origin)
    transposed = correlation(rotations.transpose(1, 2), origin)
    print(f"\n{name}: correlation with the true map {right:.3f}, transposed {transposed:.3f}")
    assert right > 0.5
    assert transposed < 0.25
    if np.abs(table.origin_angstrom).sum() > 0:
        opposite = correlation(rotations, -table.origin_angstrom - ODD_BOX_OFFSET_ANGSTROM)
        print(f"{name}: opposite origin sign {opposite:.3f}")
        assert opposite < 0.25


def test_partial_sums_merge_exactly():
    table, images, _ = aspire("rln_proj_65_shifted")
    rotations = euler_to_matrix(torch.as_tensor(table.euler_degrees))
    shifts = torch.as_tensor(table.origin_angstrom)
    ctf = compute_ctf(
        CtfParams.broadcast(
            len(table),
            defocus_u_angstrom=[9000, 12000, 15000, 20000],
            defocus_v_angstrom=[8800, 12000, 14000, 20000],
            defocus_angle_degrees=30.0,
            voltage_kilovolts=300.0,
            spherical_aberration_millimetres=2.7,
            amplitude_contrast=0.1,
        ).torch(),
        65,
        1.0,
    )
    whole = FourierAccumulator(65, 1.0)
    whole.add(torch.as_tensor(images), rotations, shifts, ctf)
    first, second = FourierAccumulator(65, 1.0), FourierAccumulator(65, 1.0)
    first.add(torch.as_tensor(images[:1]), rotations[:1], shifts[:1], ctf[:1])
    second.add(torch.as_tensor(images[1:]), rotations[1:], shifts[1:], ctf[1:])
    first.merge(FourierAccumulator.from_state_dict(second.state_dict()))
    assert first.particle_count == whole.particle_count == 4
    torch.testing.assert_close(first.sums, whole.sums, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(first.reconstruct(), whole.reconstruct(), rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="cannot merge"):
        first.merge(FourierAccumulator(64, 1.0))


def test_friedel_halves_are_consistent():
    """Images turned by 180° in-plane (psi + 180°, origins negated) send every Fourier sample to
    the other half of the grid; the stored half spectrum must not notice."""
    table, images, _ = aspire("rln_proj_65_shifted")  # odd box: a 180° turn about N // 2 is a flip
    euler = table.euler_degrees
    turned_euler = euler + np.array([0.0, 0.0, 180.0])
    turned_images = images[:, ::-1, ::-1].copy()
    first = run(reconstruct_from_arrays(images, euler, table.origin_angstrom, None, 1.0))
    turned = reconstruct_from_arrays(turned_images, turned_euler, -table.origin_angstrom, None, 1.0)
    second = run(turned)
    np.testing.assert_allclose(second, first, atol=1e-4 * np.abs(first).max())


IDENTITY = torch.eye(3)[None]
NO_SHIFT = torch.zeros(1, 2)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda a: a.add(torch.zeros(1, 30, 30), IDENTITY, torch.zeros(1, 2)), "box"),
        (lambda a: a.add(torch.zeros(2, 32, 32), IDENTITY, torch.zeros(2, 2)), "rotations"),
        (lambda a: a.add(torch.zeros(1, 32, 32), IDENTITY, NO_SHIFT, torch.ones(1, 32, 32)), "CTF"),
        (lambda a: a.add(torch.full((1, 32, 32), float("nan")), IDENTITY, NO_SHIFT), "NaN"),
        (lambda a: a.reconstruct(), "no particle"),
    ],
)
def test_bad_input_is_reported(call, message):
    with pytest.raises(InputError, match=message):
        call(FourierAccumulator(32, 1.0))


def test_reconstruct_from_arrays_checks_lengths():
    images = np.zeros((3, 8, 8))
    with pytest.raises(InputError, match="Euler"):
        run(reconstruct_from_arrays(images, np.zeros((2, 3)), np.zeros((3, 2)), None, 1.0))
    with pytest.raises(InputError, match="empty"):
        run(reconstruct_from_arrays(images[:0], np.zeros((0, 3)), np.zeros((0, 2)), None, 1.0))
