"""The reconstructions on a CUDA device give the CPU's maps (run where torch sees a GPU; skipped
elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dynamight.engine.ctf import CtfParams, compute_ctf
from napari_dynamight.engine.gaussians import GaussianModel
from napari_dynamight.engine.geometry import euler_to_matrix, random_euler_angles
from napari_dynamight.engine.image_formation import Pose, form_images
from napari_dynamight.engine.reconstruction.deformed import DeformedAccumulator

pytestmark = pytest.mark.cuda

BOX, PIXEL, N = 32, 2.5, 120


@pytest.fixture(scope="module")
def particles():
    rng = np.random.default_rng(0)
    positions = torch.tensor(rng.uniform(-20, 20, (60, 3)), dtype=torch.float32)
    model = GaussianModel(positions, torch.ones(60), torch.full((60,), 2.5))
    rotations = euler_to_matrix(torch.tensor(random_euler_angles(N, rng))).float()
    shifts = torch.tensor(rng.uniform(-4, 4, (N, 2)), dtype=torch.float32)
    params = CtfParams.broadcast(
        N,
        defocus_u_angstrom=rng.uniform(8000, 20000, N),
        defocus_v_angstrom=rng.uniform(8000, 20000, N),
        defocus_angle_degrees=0.0,
        voltage_kilovolts=300.0,
        spherical_aberration_millimetres=2.7,
        amplitude_contrast=0.1,
    ).torch()
    ctf = compute_ctf(params, BOX, PIXEL)
    images = form_images(model, Pose(rotations, shifts), BOX, PIXEL, ctf)
    latents = torch.zeros(N, 3)
    latents[:, 1] = (
        torch.arange(N).div(N // 4, rounding_mode="floor").float() - 1.5
    )  # 4 codes, consecutive
    return images, rotations, shifts, ctf, latents


def domain_field(latents: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return points - torch.sigmoid(points[:, 0] / 2.0)[None, :, None] * latents[:, None, :]


@pytest.mark.parametrize("field", [None, domain_field], ids=["standard", "deformed"])
def test_cuda_map_equals_the_cpu_map(particles, field):
    maps = []
    for device in ("cpu", "cuda"):
        accumulator = DeformedAccumulator(BOX, PIXEL, field, device=device)
        accumulator.add(*[part.to(device) for part in particles])
        maps.append(accumulator.reconstruct().cpu().numpy())
    cpu, cuda = maps
    np.testing.assert_allclose(cuda, cpu, atol=1e-4 * np.abs(cpu).max())
