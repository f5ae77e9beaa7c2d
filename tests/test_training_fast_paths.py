"""The training step's fast paths compute the same function as the plain formulas: the image splat
with its hand-written derivatives, the regulariser from the factorised decoder's basis, and the
deformed positions as one matrix product (values and gradients, to float rounding)."""

from dataclasses import replace

import numpy as np
import torch

from napari_dynamight.engine.deformation.graph import build_graph
from napari_dynamight.engine.deformation.losses import (
    distance_loss,
    linear_regularisation_loss,
    regularisation_loss,
    repulsion_loss,
)
from napari_dynamight.engine.deformation.settings import DeformationSettings
from napari_dynamight.engine.deformation.trainer import HalfSet
from napari_dynamight.engine.gaussians import GaussianModel, _Splat, _splat_checked


def _points(box, generator):
    """Points inside, on the border and outside the grid (double precision)."""
    coords = torch.rand(3, 60, 2, generator=generator, dtype=torch.float64) * (box + 6) - 3
    coords[0, :6] = torch.tensor(
        [
            [-1.0, 3.5],
            [box - 1.0, 2.2],
            [0.0, 0.0],
            [box - 0.5, -0.5],
            [-0.5, box - 0.25],
            [-2.5, box + 1.5],
        ],
        dtype=torch.float64,
    )
    return coords


def _tangent(splat, coords, weights, channel, box, tangents):
    """Forward-mode derivative of ``splat`` along ``tangents`` (dual numbers)."""
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        grid = splat(
            fwad.make_dual(coords, tangents[0]),
            fwad.make_dual(weights, tangents[1]),
            channel,
            2,
            box,
        )
        return fwad.unpack_dual(grid).tangent.clone()


def test_image_splat_matches_the_bounds_checked_splat_with_both_derivatives():
    generator, box = torch.Generator().manual_seed(0), 10
    coords = _points(box, generator)
    channel = torch.randint(0, 2, (60,), generator=generator)
    for weights in (
        torch.rand(60, generator=generator, dtype=torch.float64),
        torch.rand(3, 60, generator=generator, dtype=torch.float64),
    ):
        upstream = torch.randn(3, 2, box, box, generator=generator, dtype=torch.float64)
        tangents = (
            torch.randn(coords.shape, generator=generator, dtype=torch.float64),
            torch.randn(weights.shape, generator=generator, dtype=torch.float64),
        )
        results = []
        for splat in (_Splat.apply, _splat_checked):
            c, w = coords.clone().requires_grad_(True), weights.clone().requires_grad_(True)
            grid = splat(c, w, channel, 2, box)
            (grid * upstream).sum().backward()
            results.append(
                (
                    grid.detach(),
                    c.grad,
                    w.grad,
                    _tangent(splat, coords, weights, channel, box, tangents),
                )
            )
        (fast, fast_c, fast_w, fast_t), (slow, slow_c, slow_w, slow_t) = results
        assert torch.allclose(fast, slow, atol=1e-12)
        assert torch.allclose(fast_c, slow_c, atol=1e-12) and torch.allclose(
            fast_w, slow_w, atol=1e-12
        )
        assert torch.allclose(fast_t, slow_t, atol=1e-12) and float(fast_t.abs().max()) > 0
        assert float(fast_c[0, 5].abs().max()) == 0.0  # outside the padding: no gradient


def test_regulariser_from_the_basis_equals_the_regulariser_of_the_deformed_positions():
    generator = torch.Generator().manual_seed(1)
    reference = (torch.randn(200, 3, generator=generator, dtype=torch.float64) * 8).requires_grad_(
        True
    )
    graph = build_graph(reference)
    basis = (torch.randn(5, 600, generator=generator, dtype=torch.float64) * 0.6).requires_grad_(
        True
    )
    coefficients = torch.randn(7, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    deformed = reference + (coefficients @ basis).view(7, 200, 3)
    expected = distance_loss(deformed, reference, graph) + repulsion_loss(
        deformed, reference, graph
    )
    assert float(repulsion_loss(deformed, reference, graph)) > 0  # both terms take part
    gradients = torch.autograd.grad(expected, (reference, basis, coefficients))
    for loss in (
        regularisation_loss(reference + (coefficients @ basis).view(7, 200, 3), reference, graph),
        linear_regularisation_loss(coefficients, basis, reference, graph),
    ):
        assert float(loss) == float(expected) or abs(float(loss - expected)) < 1e-12
        for got, want in zip(
            torch.autograd.grad(loss, (reference, basis, coefficients)), gradients, strict=True
        ):
            assert torch.allclose(got, want, atol=1e-12)


def test_factorised_deformation_as_one_matrix_product_matches_the_decoder():
    generator = torch.Generator().manual_seed(2)
    n = 120
    model = GaussianModel(
        torch.randn(n, 3, generator=generator) * 6, torch.ones(n), torch.full((n,), 2.0)
    )
    settings = replace(
        DeformationSettings(),
        decoder="factorised",
        decoder_rank=4,
        decoder_width=16,
        decoder_depth=1,
    )
    moving = (torch.rand(n, generator=generator) > 0.2).float()
    half = HalfSet(
        1, model, np.arange(10), np.arange(10, 12), 32, 40.0, settings, moving, torch.device("cpu")
    )
    torch.nn.init.normal_(half.decoder.basis[-1].weight, std=0.1, generator=generator)
    z = torch.randn(5, settings.latent_dim, generator=generator, requires_grad=True)
    for frozen in (False, True):
        results = []
        for fast in (True, False):
            half.decoder.zero_grad(set_to_none=True)
            half.positions.grad, z.grad = None, None
            deformed = (
                half._deform(z, frozen, half.linear_basis())[0]
                if fast
                else half._deform_general(z, frozen)
            )
            deformed.pow(2).sum().backward()
            grads = [p.grad for p in half.decoder.parameters()] + [half.positions.grad, z.grad]
            results.append((deformed.detach(), grads))
        (fast, fast_grads), (plain, plain_grads) = results
        assert torch.allclose(fast, plain, atol=1e-5)
        assert torch.equal(
            fast[:, moving == 0], half.positions.detach()[moving == 0].expand(5, -1, -1)
        )
        for a, b in zip(fast_grads, plain_grads, strict=True):
            assert (a is None) == (
                b is None
            )  # frozen: no gradient reaches the decoder or the Gaussians
            if a is not None:
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
