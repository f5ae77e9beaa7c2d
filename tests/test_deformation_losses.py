"""Losses: data term and noise weights, regularisers (zero for rigid motion), λ from the stiffness
ratio."""

import math

import pytest
import torch

from napari_dynamight.engine.deformation.graph import build_graph
from napari_dynamight.engine.deformation.losses import (
    NoiseModel,
    data_loss,
    data_stiffness,
    distance_loss,
    regulariser_stiffness,
    repulsion_loss,
    stiffness_lambda,
)
from napari_dynamight.engine.fourier import radial_index
from napari_dynamight.engine.gaussians import GaussianModel, project_spectrum
from napari_dynamight.engine.geometry import euler_to_matrix


def reference_points(seed=0, n=120):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=generator, dtype=torch.float64) * torch.tensor(
        [10.0, 7.0, 5.0], dtype=torch.float64
    )


def rotation(angle, axis):
    axis = torch.nn.functional.normalize(torch.tensor(axis, dtype=torch.float64), dim=0)
    k = torch.tensor(
        [[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]],
        dtype=torch.float64,
    )
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def test_regularisers_are_zero_for_rigid_motions():
    reference = reference_points()
    graph = build_graph(reference)
    moved = torch.stack(
        [
            reference @ rotation(a, ax).T + shift
            for a, ax, shift in (
                (0.7, [1.0, 2.0, 0.5], torch.tensor([3.0, -2.0, 8.0], dtype=torch.float64)),
                (2.5, [0.0, 0.0, 1.0], torch.zeros(3, dtype=torch.float64)),
            )
        ]
    )
    assert float(distance_loss(moved, reference, graph)) < 1e-20
    assert float(repulsion_loss(moved, reference, graph)) < 1e-20


def test_stretching_is_penalised_and_compression_is_repelled():
    reference = reference_points()
    graph = build_graph(reference)
    stretched = (reference * torch.tensor([1.2, 1.0, 1.0], dtype=torch.float64))[None]
    assert float(distance_loss(stretched, reference, graph)) > 0.1
    assert float(repulsion_loss(stretched, reference, graph)) == 0.0  # nothing got shorter
    squeezed = (reference * 0.6)[None]
    assert float(repulsion_loss(squeezed, reference, graph)) > 0.1
    # the distance term alone: mean of (0.4 · rest length)² over the edges
    expected = float((0.4 * graph.rest_lengths).pow(2).mean())
    assert float(distance_loss(squeezed, reference, graph)) == pytest.approx(expected, rel=1e-5)


def test_regulariser_stiffness_is_the_trace_of_the_distance_terms_gauss_newton_hessian():
    reference = reference_points(n=40)
    graph = build_graph(reference)
    moving = (torch.arange(40) % 3 != 0).double()  # a third of the Gaussians held still

    def lengths(flat):
        points = flat.view(-1, 3)
        return (points[graph.edges[:, 0]] - points[graph.edges[:, 1]]).norm(dim=-1)

    jacobian = torch.autograd.functional.jacobian(
        lengths, reference.reshape(-1)
    ) * moving.repeat_interleave(3)
    trace = float(2.0 * jacobian.pow(2).sum() / len(graph.edges))
    assert regulariser_stiffness(graph, moving) == pytest.approx(trace, rel=1e-9)


def test_data_stiffness_is_the_trace_of_the_data_terms_gauss_newton_hessian():
    """Against autograd through the real projector: the weighted squared derivative of the
    CTF-filtered projection spectrum, summed over moving Gaussians and axes, averaged over
    particles."""
    box, pixel, n = 32, 2.0, 12
    generator = torch.Generator().manual_seed(1)
    positions = torch.randn(n, 3, generator=generator, dtype=torch.float64) * 8.0
    model = GaussianModel(
        positions,
        torch.rand(n, generator=generator, dtype=torch.float64) + 0.5,
        torch.full((n,), 3.0, dtype=torch.float64),
    )
    moving = torch.ones(n, dtype=torch.float64)
    moving[3] = 0.0
    rotations = euler_to_matrix(torch.rand(6, 3, generator=generator, dtype=torch.float64) * 360.0)
    shifts = torch.zeros(6, 2, dtype=torch.float64)
    ctf = torch.cos(
        radial_index((box, box)).double() * (0.3 + 0.1 * torch.arange(6).view(-1, 1, 1))
    )
    noise = NoiseModel(box)
    noise.power = 1.0 + torch.arange(noise.n_shells, dtype=torch.float32)
    weights = noise.weights.double()

    def spectra(flat):
        projected = project_spectrum(model, rotations, shifts, box, pixel, flat.view(n, 3)) * ctf
        return torch.view_as_real(projected)

    jacobian = torch.autograd.functional.jacobian(
        spectra, positions.reshape(-1), vectorize=True, strategy="forward-mode"
    )  # (B, L, L', 2, 3n)
    squared = jacobian.pow(2).sum(3) * moving.repeat_interleave(3)
    expected = 2.0 * float((squared.sum(-1) * weights).sum()) / len(rotations) / noise.n_frequencies
    got = data_stiffness(model, moving, ctf.pow(2).mean(0), weights, noise.n_frequencies, pixel)
    assert got == pytest.approx(
        expected, rel=0.1
    )  # the projector splats bilinearly; the trace is analytic


def test_lambda_is_the_stiffness_ratio():
    assert stiffness_lambda(2.0, 4.0, 0.9) == pytest.approx(0.45)
    assert stiffness_lambda(2.0, 0.0, 0.9) == 0.0  # no edges: nothing to regularise


def test_noise_weights_follow_the_residual_power_and_data_loss_is_one_on_pure_noise():
    box = 32
    noise = NoiseModel(box)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        images = torch.randn(16, box, box, generator=generator)
        spectra = torch.fft.rfft2(images) * (1 + noise.radius.float() / 4)
        noise.accumulate(spectra)
    noise.update()
    assert noise.power[1] < noise.power[10] < noise.power[16]
    fresh = torch.fft.rfft2(torch.randn(64, box, box, generator=generator)) * (
        1 + noise.radius.float() / 4
    )
    loss = data_loss(torch.zeros_like(fresh), fresh, noise.weights, noise.n_frequencies)
    assert float(loss.mean()) == pytest.approx(1.0, abs=0.05)
    assert float(data_loss(fresh, fresh, noise.weights, noise.n_frequencies).abs().max()) == 0.0
    assert (
        float(noise.weights[noise.radius > box // 2].abs().max()) == 0.0
    )  # corners beyond Nyquist
