"""Deformed backprojection against a known deformation: one domain of a Gaussian model moves
rigidly by a different amount in every particle; the exact inverse field must undo it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dynamight.engine.ctf import CtfParams, compute_ctf
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.fourier import fsc, resolution_at
from napari_dynamight.engine.gaussians import GaussianModel, render_volume
from napari_dynamight.engine.geometry import euler_to_matrix, random_euler_angles
from napari_dynamight.engine.image_formation import Pose, form_images
from napari_dynamight.engine.reconstruction import FourierAccumulator, deformed
from napari_dynamight.engine.reconstruction.deformed import TAPER_VOXELS, DeformedAccumulator

BOX, PIXEL, N = 40, 2.0, 500
MOTION = 4.0  # Å, the moving domain's largest shift along y and z


def membership(x: torch.Tensor) -> torch.Tensor:
    """Smooth 0 → 1 across the gap between the fixed (x < −2 Å) and moving (x > 2 Å) domains."""
    return torch.sigmoid(x / 0.5)


def domain_motions(n: int, rng) -> torch.Tensor:
    """Shifts (n, 3) of the moving domain in y and z, each one of 5 steps up to ±MOTION, sorted so
    that particles with the same motion (latent code) are consecutive and share one field."""
    steps = np.linspace(-MOTION, MOTION, 5)
    motion = torch.zeros(n, 3)
    motion[:, 1:] = torch.tensor(rng.choice(steps, (n, 2)), dtype=torch.float32)
    return motion[torch.argsort(motion[:, 1] * 100 + motion[:, 2])]


def simulate_domain_motion(
    rng, n, box, pixel, per_domain, sigma, origin, defocus, noise_seed
) -> dict:
    """Noisy CTF images (n, box, box) of a two-domain Gaussian model whose moving domain shifts per
    particle (:func:`domain_motions`); origins up to ±``origin`` Å; ``defocus(rng, n)`` gives the
    CTF's (defocus U, defocus V, astigmatism angle)."""
    fixed = np.column_stack(
        [rng.uniform(-16, -4, per_domain), rng.uniform(-10, 10, (per_domain, 2))]
    )
    moving = np.column_stack(
        [rng.uniform(4, 16, per_domain), rng.uniform(-10, 10, (per_domain, 2))]
    )
    positions = torch.tensor(np.vstack([fixed, moving]), dtype=torch.float32)
    model = GaussianModel(
        positions, torch.ones(2 * per_domain), torch.full((2 * per_domain,), sigma)
    )
    motion = domain_motions(n, rng)
    deformed = positions + membership(positions[:, 0])[None, :, None] * motion[:, None, :]
    rotations = euler_to_matrix(torch.tensor(random_euler_angles(n, rng))).float()
    shifts = torch.tensor(rng.uniform(-origin, origin, (n, 2)), dtype=torch.float32)
    defocus_u, defocus_v, angle = defocus(rng, n)
    params = CtfParams.broadcast(
        n,
        defocus_u_angstrom=defocus_u,
        defocus_v_angstrom=defocus_v,
        defocus_angle_degrees=angle,
        voltage_kilovolts=300.0,
        spherical_aberration_millimetres=2.7,
        amplitude_contrast=0.1,
    ).torch()
    ctf = compute_ctf(params, box, pixel)
    images = form_images(model, Pose(rotations, shifts), box, pixel, ctf, deformed)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(noise_seed))
    images = images + 0.5 * images.std() * noise
    return {
        "truth": render_volume(model, box, pixel).numpy(),
        "images": images,
        "rotations": rotations,
        "shifts": shifts,
        "ctf": ctf,
        "latents": motion,
    }


@pytest.fixture(scope="module")
def data():
    def defocus(rng, n):
        return rng.uniform(8000, 14000, n), rng.uniform(8000, 14000, n), 0.0

    return simulate_domain_motion(
        np.random.default_rng(3),
        N,
        BOX,
        PIXEL,
        per_domain=40,
        sigma=2.0,
        origin=3.0,
        defocus=defocus,
        noise_seed=0,
    )


def exact_inverse(latents: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Deformed → consensus: the moving domain's shift (the latent) taken back (x is unchanged)."""
    return points - membership(points[:, 0])[None, :, None] * latents[:, None, :]


def identity(latents: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return points.expand(len(latents), -1, -1)


def add_parts(accumulator, data, parts, latents=None):
    """Adds the particles of ``data`` to ``accumulator`` in ``parts`` (slices, one batch each), with
    ``latents`` (those of ``data`` if None); returns the accumulator."""
    latents = data["latents"] if latents is None else latents
    for part in parts:
        accumulator.add(
            data["images"][part],
            data["rotations"][part],
            data["shifts"][part],
            data["ctf"][part],
            latents[part],
        )
    return accumulator


TWO_PARTS = (slice(0, 300), slice(300, N))


def reconstruct(data, field, **options) -> np.ndarray:
    accumulator = DeformedAccumulator(BOX, PIXEL, field, **options)
    return add_parts(accumulator, data, TWO_PARTS).reconstruct().numpy()


def scores(volume: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    frequency, curve = fsc(volume, truth, PIXEL)
    return float(np.corrcoef(volume.ravel(), truth.ravel())[0, 1]), resolution_at(
        frequency, curve, 0.5
    )


@pytest.fixture(scope="module")
def maps(data):
    return {"standard": reconstruct(data, None), "deformed": reconstruct(data, exact_inverse)}


def test_exact_inverse_field_beats_the_standard_reconstruction(data, maps):
    standard, deformed = maps["standard"], maps["deformed"]
    (c_std, r_std), (c_def, r_def) = (
        scores(standard, data["truth"]),
        scores(deformed, data["truth"]),
    )
    print(
        f"\nvs truth: standard corr {c_std:.4f}, FSC 0.5 at {r_std:.2f} Å; "
        f"deformed corr {c_def:.4f}, FSC 0.5 at {r_def:.2f} Å"
    )
    assert c_def > c_std + 0.01 and c_def > 0.955
    assert r_def < r_std - 0.3  # measured 4.97 vs 5.47 Å
    coarse = reconstruct(data, exact_inverse, grid_factor=4)
    print(f"grid factor 4: corr {scores(coarse, data['truth'])[0]:.4f}")
    assert scores(coarse, data["truth"])[0] > c_std


def test_identity_field_is_the_standard_reconstruction(data, maps):
    standard = maps["standard"]
    accumulator = FourierAccumulator(BOX, PIXEL)
    accumulator.add(data["images"], data["rotations"], data["shifts"], data["ctf"])
    np.testing.assert_allclose(
        standard, accumulator.reconstruct().numpy(), atol=1e-4 * np.abs(standard).max()
    )
    for codes in (torch.zeros_like(data["latents"]), data["latents"]):
        accumulator = add_parts(DeformedAccumulator(BOX, PIXEL, identity), data, TWO_PARTS, codes)
        same = accumulator.reconstruct().numpy()
        assert accumulator.warps == 0 and not bool(accumulator.correction.any())
        if not codes.any():  # the same batches as the standard reconstruction: the same numbers
            np.testing.assert_array_equal(same, standard)
        else:  # other batches (one per code): the same up to rounding
            np.testing.assert_allclose(same, standard, atol=1e-6 * np.abs(standard).max())


def test_the_correction_covers_the_box_not_the_padded_grid(data):
    """Memory: the real-space correction is the box plus a small margin, not the (2L)³ padded
    grid."""
    accumulator = add_parts(DeformedAccumulator(BOX, PIXEL, exact_inverse), data, [slice(0, 40)])
    accumulator.flush()
    assert accumulator.correction.shape == (BOX + 2 * TAPER_VOXELS,) * 3 and accumulator.warps >= 1


def bump(latents: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """A displacement (the latent, Å) that is a narrow Gaussian bump at (6, 0, 0) Å: constant (zero)
    far from it."""
    weight = torch.exp(-((points - torch.tensor([6.0, 0.0, 0.0])) ** 2).sum(1) / (2 * 3.0**2))
    return points - weight[None, :, None] * latents[:, None, :]


def test_only_the_block_where_the_field_moves_is_warped(data, monkeypatch):
    """A field that moves only a small part of the box warps a block around it, and gives the same
    map as warping the whole box (the residual below RESIDUAL_TOLERANCE taken as it is)."""

    def build():
        accumulator = add_parts(DeformedAccumulator(BOX, PIXEL, bump), data, TWO_PARTS)
        return accumulator, accumulator.reconstruct().numpy()

    local, local_map = build()
    monkeypatch.setattr(deformed, "RESIDUAL_TOLERANCE", 0.0)
    whole, whole_map = build()
    per_warp = local.warped_voxels / local.warps
    print(
        f"\nbump field: {per_warp / BOX**3:.2f} of the box warped per code; whole box "
        f"{whole.warped_voxels / whole.warps / BOX**3:.2f}"
    )
    assert per_warp < 0.5 * BOX**3 and whole.warped_voxels / whole.warps >= BOX**3
    np.testing.assert_allclose(local_map, whole_map, atol=1e-4 * np.abs(whole_map).max())


def test_region_restricted_field_matches_for_a_field_defined_everywhere(data, maps):
    truth = torch.as_tensor(data["truth"])
    region = (
        torch.nn.functional.max_pool3d((truth > 0.05 * truth.max()).float()[None, None], 5, 1, 2)[
            0, 0
        ]
        > 0
    )
    full = maps["deformed"]
    restricted = reconstruct(data, exact_inverse, region=region)
    assert scores(restricted, data["truth"])[0] > scores(full, data["truth"])[0] - 0.01


def test_bad_arguments_are_reported(data):
    with pytest.raises(InputError, match="grid factor"):
        DeformedAccumulator(BOX, PIXEL, identity, grid_factor=0)
    with pytest.raises(InputError, match="latent"):
        DeformedAccumulator(BOX, PIXEL, identity).add(
            data["images"][:2], data["rotations"][:2], data["shifts"][:2], data["ctf"][:2]
        )
    with pytest.raises(InputError, match="inverse field returned"):
        DeformedAccumulator(BOX, PIXEL, lambda z, p: p).add(
            data["images"][:2],
            data["rotations"][:2],
            data["shifts"][:2],
            data["ctf"][:2],
            data["latents"][:2],
        )


# Particles like the simulated AdK set: box 32 at 2.5 Å, origins up to ±8 Å, defocus up to 2.5 µm,
# so the CTF delocalises the signal across the whole (periodic) box.
DELOCALISED = {"box": 32, "pixel": 2.5, "n": 300, "origin": 8.0, "defocus": (5000.0, 25000.0)}
TRANSLATION = torch.tensor([1.3, -0.8, 0.5])  # Å, x y z


@pytest.fixture(scope="module")
def delocalised():
    """One domain moves by up to ±4 Å (y, z) per particle; noisy CTF images of the deformed
    model."""

    def defocus(rng, n):
        values = rng.uniform(*DELOCALISED["defocus"], n)
        return values, values + 300, 30.0

    return simulate_domain_motion(
        np.random.default_rng(5),
        DELOCALISED["n"],
        DELOCALISED["box"],
        DELOCALISED["pixel"],
        per_domain=30,
        sigma=2.5,
        origin=DELOCALISED["origin"],
        defocus=defocus,
        noise_seed=1,
    )


def reconstruct_delocalised(data, field) -> np.ndarray:
    accumulator = DeformedAccumulator(DELOCALISED["box"], DELOCALISED["pixel"], field)
    parts = (slice(0, 200), slice(200, DELOCALISED["n"]))
    return add_parts(accumulator, data, parts).reconstruct().numpy()


def translated(volume: np.ndarray, shift_angstrom: torch.Tensor, pixel: float) -> np.ndarray:
    """``volume`` [z, y, x] moved by ``shift_angstrom`` (x, y, z), exactly (a Fourier phase)."""
    frequencies = [np.fft.fftfreq(size) for size in volume.shape]
    kz, ky, kx = np.meshgrid(*frequencies, indexing="ij")
    t = shift_angstrom.numpy() / pixel
    phase = np.exp(-2j * np.pi * (kx * t[0] + ky * t[1] + kz * t[2]))
    return np.fft.ifftn(np.fft.fftn(volume) * phase).real


def sphere_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation inside the sphere of radius box/2 − 2 (the corners are masked by the
    inversion)."""
    offsets = np.arange(a.shape[0]) - a.shape[0] // 2
    radius = np.sqrt(
        offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2
    )
    inside = radius < a.shape[0] / 2 - 2
    return float(np.corrcoef(a[inside], b[inside])[0, 1])


@pytest.fixture(scope="module")
def delocalised_standard(delocalised):
    return reconstruct_delocalised(delocalised, None)


def test_constant_field_translates_the_standard_reconstruction(delocalised, delocalised_standard):
    """A constant inverse field (every deformed point belongs TRANSLATION further on) must give the
    standard map moved by TRANSLATION, even with delocalised CTFs and large origins."""

    def constant(latents, points):
        return (points + TRANSLATION).expand(len(latents), -1, -1)

    moved = reconstruct_delocalised(delocalised, constant)
    expected = translated(delocalised_standard, TRANSLATION, DELOCALISED["pixel"])
    correlation = sphere_correlation(moved, expected)
    scale = float((moved * expected).sum() / (expected * expected).sum())
    print(
        f"\nconstant field vs translated standard: correlation {correlation:.4f}, scale "
        f"{scale:.4f} (untranslated: {sphere_correlation(delocalised_standard, expected):.4f})"
    )
    assert (
        correlation >= 0.999 and abs(scale - 1) < 0.005
    )  # the translation is exact (origins moved)


def test_exact_inverse_field_with_delocalised_ctfs(delocalised, delocalised_standard):
    """The exact inverse of the domain motion improves on the standard map for AdK-like
    particles."""
    deformed = reconstruct_delocalised(delocalised, exact_inverse)
    truth = delocalised["truth"]
    c_std, c_def = (
        sphere_correlation(delocalised_standard, truth),
        sphere_correlation(deformed, truth),
    )
    print(f"\ndelocalised, vs truth: standard corr {c_std:.4f}, deformed {c_def:.4f}")
    assert c_def > c_std + 0.01


def test_the_number_of_clusters_follows_the_field_error():
    """Codes in three tight groups: one or two clusters leave a field error of about the groups'
    distance, three or more one of about their spread, so the tolerance between them chooses three
    or four."""
    from napari_dynamight.engine.reconstruction.clusters import choose_clusters, field_errors

    rng = np.random.default_rng(0)
    groups = np.array([[-3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [3.0, 0.0, 2.0]])
    latents = (groups[rng.integers(0, 3, 600)] + rng.normal(0, 0.05, (600, 3))).astype(np.float32)
    points = torch.tensor(
        rng.uniform(0, 20, (200, 3)), dtype=torch.float32
    )  # membership ≈ 1: the field moves them
    errors = field_errors(latents, exact_inverse, points, (1, 2, 3, 8))
    print(f"\nfield error by clusters: {errors}")
    assert errors[1] > 2.0 and errors[2] > 1.0 and errors[3] < 0.15 and errors[8] < 0.15
    count, _ = choose_clusters(latents, exact_inverse, points, 0.5, counts=(1, 2, 4, 8))
    assert count == 4
