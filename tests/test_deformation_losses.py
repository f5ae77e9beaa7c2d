"""Losses: data term and noise weights, regularisers (zero for rigid motion), λ balancing."""

import math

import pytest
import torch

from napari_dynamight.engine.deformation.graph import build_graph
from napari_dynamight.engine.deformation.losses import (
    GradientBalance, NoiseModel, balanced_lambda, data_loss, distance_loss, regularisation_loss,
    repulsion_loss)
from napari_dynamight.engine.deformation.networks import DeformationDecoder


def reference_points(seed=0, n=120):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=generator, dtype=torch.float64) * torch.tensor([10.0, 7.0, 5.0],
                                                                                        dtype=torch.float64)


def rotation(angle, axis):
    axis = torch.nn.functional.normalize(torch.tensor(axis, dtype=torch.float64), dim=0)
    k = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def test_regularisers_are_zero_for_rigid_motions():
    reference = reference_points()
    graph = build_graph(reference)
    moved = torch.stack([reference @ rotation(a, ax).T + shift for a, ax, shift in (
        (0.7, [1.0, 2.0, 0.5], torch.tensor([3.0, -2.0, 8.0], dtype=torch.float64)),
        (2.5, [0.0, 0.0, 1.0], torch.zeros(3, dtype=torch.float64)))])
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


def test_lambda_gives_the_requested_gradient_norm_ratio():
    torch.manual_seed(0)
    decoder = DeformationDecoder(latent_dim=2, extent_angstrom=30.0, n_frequencies=3, width=16, depth=1)
    torch.nn.init.normal_(decoder.out.weight, std=0.05)
    reference = reference_points(n=60).float()
    graph = build_graph(reference)
    target = reference + 2.0
    params = list(decoder.parameters())
    balance = GradientBalance()
    for batch in range(6):
        latents = torch.randn(8, 2)
        deformed = decoder.deform(latents, reference)
        data = (deformed - target).pow(2).mean()
        reg = regularisation_loss(deformed, reference, graph)
        balance.add(torch.autograd.grad(data, params, retain_graph=True),
                    torch.autograd.grad(reg, params))
    data_norm, reg_norm = balance.norms()
    lam = balanced_lambda(data_norm, reg_norm, 0.9, previous=0.0)
    assert lam > 0
    assert lam * reg_norm / data_norm == pytest.approx(0.9, rel=1e-9)
    assert balanced_lambda(1.0, 0.0, 0.9, previous=3.0) == 3.0  # no regulariser gradient yet


def test_expected_gradient_norm_removes_batch_noise():
    generator = torch.Generator().manual_seed(0)
    signal = torch.full((1000,), 0.05)
    balance = GradientBalance()
    for _ in range(100):
        noise = torch.randn(1000, generator=generator)
        balance.add([signal + noise], [signal])
    raw = float(sum(g for g in balance.sums["data"]).norm()) / 100
    assert raw > 2 * float(signal.norm())  # the plain mean is dominated by noise
    assert balance.expected_norm("data") == pytest.approx(float(signal.norm()), rel=0.25)
    assert balance.expected_norm("regulariser") == pytest.approx(float(signal.norm()), rel=1e-4)


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
    fresh = torch.fft.rfft2(torch.randn(64, box, box, generator=generator)) * (1 + noise.radius.float() / 4)
    loss = data_loss(torch.zeros_like(fresh), fresh, noise.weights, noise.n_frequencies)
    assert float(loss.mean()) == pytest.approx(1.0, abs=0.05)
    assert float(data_loss(fresh, fresh, noise.weights, noise.n_frequencies).abs().max()) == 0.0
    assert float(noise.weights[noise.radius > box // 2].abs().max()) == 0.0  # corners beyond Nyquist
