"""Networks of the deformation VAE: start from no motion, exact split input layer, masks, and the
factorised decoder (same contract, basis fields mixed by latent coefficients)."""

import math

import torch

from napari_dynamight.engine.deformation.losses import kl_divergence
from napari_dynamight.engine.deformation.networks import (
    DeformationDecoder,
    FactorisedDecoder,
    ImageEncoder,
    build_decoder,
    positional_encoding,
    reparameterise,
)
from napari_dynamight.engine.deformation.settings import DeformationSettings


def test_positional_encoding_holds_the_point_and_its_sines_and_cosines():
    points = torch.tensor([[0.25, -0.5, 1.0]])
    encoded = positional_encoding(points, 10)
    assert encoded.shape == (1, 3 + 60)
    assert torch.equal(encoded[0, :3], points[0])
    # sin(2^k π x_axis) sits at 3 + 10·axis + k, the cosines 30 further
    assert math.isclose(float(encoded[0, 3 + 2]), math.sin(4 * math.pi * 0.25), abs_tol=1e-6)
    assert math.isclose(float(encoded[0, 33 + 10 + 1]), math.cos(2 * math.pi * -0.5), abs_tol=1e-6)
    assert torch.equal(positional_encoding(points, 0), points)


def test_zero_initialised_decoder_gives_exactly_zero_displacement():
    torch.manual_seed(0)
    decoder = DeformationDecoder(
        latent_dim=6, extent_angstrom=40.0, n_frequencies=10, width=32, depth=3
    )
    positions = torch.randn(50, 3) * 10
    latents = torch.randn(7, 6) * 5
    displacement = decoder(latents, positions)
    assert displacement.shape == (7, 50, 3)
    assert torch.count_nonzero(displacement) == 0
    assert torch.equal(decoder.deform(latents, positions), positions.expand(7, -1, -1))


def test_decoder_depends_on_latent_and_position_once_trained_and_mask_freezes_gaussians():
    torch.manual_seed(1)
    decoder = DeformationDecoder(
        latent_dim=2, extent_angstrom=40.0, n_frequencies=4, width=16, depth=2
    )
    torch.nn.init.normal_(decoder.out.weight, std=0.1)
    positions = torch.randn(20, 3) * 10
    latents = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    moved = decoder(latents, positions)
    assert (moved[0] - moved[1]).abs().max() > 1e-3  # latent matters
    assert (moved[0, 0] - moved[0, 1]).abs().max() > 1e-3  # position matters
    moving = torch.zeros(20)
    moving[:5] = 1.0
    deformed = decoder.deform(latents, positions, moving)
    assert torch.equal(deformed[:, 5:], positions[5:].expand(2, -1, -1))
    assert (deformed[:, :5] - positions[:5]).abs().max() > 1e-3


def test_split_input_layer_equals_one_layer_on_the_concatenation():
    torch.manual_seed(2)
    decoder = DeformationDecoder(
        latent_dim=3, extent_angstrom=30.0, n_frequencies=5, width=8, depth=1
    )
    positions, latents = torch.randn(11, 3) * 8, torch.randn(4, 3)
    encoded = positional_encoding(positions / 30.0, 5)
    joint = torch.cat([encoded.expand(4, -1, -1), latents[:, None].expand(-1, 11, -1)], -1)
    weight = torch.cat([decoder.position_in.weight, decoder.latent_in.weight], 1)
    first = torch.nn.functional.elu(joint @ weight.T + decoder.position_in.bias)
    torch.nn.init.normal_(decoder.out.weight)
    expected = decoder.out(decoder.hidden(first)) * 30.0
    assert torch.allclose(decoder(latents, positions), expected, atol=1e-5)


def test_encoder_shapes_sampling_and_kl():
    encoder = ImageEncoder(box=16, latent_dim=4, width=32, initial_log_variance=-2.0)
    mean, log_var = encoder(torch.randn(5, 16, 16))
    assert mean.shape == log_var.shape == (5, 4)
    generator = torch.Generator().manual_seed(0)
    a = reparameterise(mean, log_var, generator)
    generator.manual_seed(0)
    assert torch.equal(
        a, reparameterise(mean, log_var, generator)
    )  # reproducible from the generator
    assert float(kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max()) == 0.0
    assert torch.allclose(kl_divergence(torch.ones(1, 4), torch.zeros(1, 4)), torch.tensor([2.0]))


def test_factorised_decoder_starts_still_and_is_a_sum_of_basis_fields():
    torch.manual_seed(3)
    decoder = FactorisedDecoder(
        latent_dim=4, extent_angstrom=30.0, n_frequencies=4, width=16, depth=2, rank=5
    )
    positions, latents = torch.randn(13, 3) * 8, torch.randn(6, 4)
    assert torch.count_nonzero(decoder(latents, positions)) == 0
    assert torch.equal(decoder.deform(latents, positions), positions.expand(6, -1, -1))
    torch.nn.init.normal_(decoder.basis[-1].weight)
    fields, weights = decoder.fields(positions), decoder.coefficients(latents)  # (N, R, 3), (B, R)
    expected = sum(weights[:, r, None, None] * fields[None, :, r] for r in range(5)) * 30.0
    assert torch.allclose(decoder(latents, positions), expected, atol=1e-5)
    # per-particle positions give the same as one shared set
    shared = decoder(latents, positions)
    assert torch.allclose(decoder(latents, positions.expand(6, -1, -1)), shared, atol=1e-5)


def test_factorised_decoder_learns_a_domain_rotation_that_is_nonlinear_in_the_latent():
    """A hinge: points with x > 0 rotate about the z axis by 0.3·z₀ rad (the displacement is
    nonlinear in the latent); the decoder must fit it to a few percent of its size."""
    torch.manual_seed(4)
    positions = torch.randn(200, 3) * 10
    latents = torch.linspace(-1.5, 1.5, 64).view(-1, 1)
    angle = 0.3 * latents.view(-1, 1, 1)
    x, y = positions[:, 0], positions[:, 1]
    domain = (x > 0).float()
    target = torch.stack(
        [
            (torch.cos(angle[:, :, 0]) - 1) * x - torch.sin(angle[:, :, 0]) * y,
            torch.sin(angle[:, :, 0]) * x + (torch.cos(angle[:, :, 0]) - 1) * y,
            torch.zeros(64, 200),
        ],
        -1,
    ) * domain.view(1, -1, 1)
    decoder = FactorisedDecoder(
        latent_dim=1, extent_angstrom=30.0, n_frequencies=4, width=64, depth=2, rank=8
    )
    optimiser = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    for _ in range(600):
        optimiser.zero_grad()
        loss = (decoder(latents, positions) - target).pow(2).mean()
        loss.backward()
        optimiser.step()
    relative = float(loss.detach().sqrt() / target.pow(2).mean().sqrt())
    print(f"relative RMS error {relative:.3f}")
    assert relative < 0.05, relative


def test_build_decoder_follows_the_settings():
    mlp = build_decoder(DeformationSettings(decoder="mlp"), 40.0)
    assert isinstance(build_decoder(DeformationSettings(), 40.0), FactorisedDecoder)  # the default
    factorised = build_decoder(DeformationSettings(decoder="factorised", decoder_rank=7), 40.0)
    assert isinstance(mlp, DeformationDecoder) and isinstance(factorised, FactorisedDecoder)
    assert factorised.rank == 7 and factorised.extent_angstrom == 40.0
