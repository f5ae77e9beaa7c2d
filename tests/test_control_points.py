"""Decoder control points: exact for affine displacement fields; a run with them trains, and its
decode API gives the displacements the trainer measured."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.deformation_data import FAST, deformation_operation
from napari_dynamight.engine.data.particle_file import read_particles
from napari_dynamight.engine.deformation.control_points import (
    ControlPoints,
    farthest_points,
    interpolation,
)
from napari_dynamight.engine.deformation.decode import DeformationRun
from napari_dynamight.engine.deformation.settings import DeformationSettings
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.progress import run


def _blob(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g) * torch.tensor([12.0, 8.0, 6.0])


def _affine(points, seed=1):
    g = torch.Generator().manual_seed(seed)
    matrix, offset = torch.randn(3, 3, generator=g), torch.randn(3, generator=g) * 5
    return points @ matrix.T + offset


def test_interpolation_is_exact_for_affine_fields():
    positions = _blob()
    controls = ControlPoints(40).update(positions)
    assert controls.centres.shape == (40, 3)
    values = _affine(controls.centres).unsqueeze(0)  # (1, M, 3)
    interpolated = controls.to_reference(values)[0]
    assert torch.allclose(controls.to_reference.weights.sum(1), torch.ones(600), atol=1e-5)
    assert (interpolated - _affine(positions)).abs().max() < 1e-3
    other = _blob(200, seed=5)  # points that are not the reference, as validation.py asks
    decoded = controls.displacement(
        lambda z, c: _affine(c).expand(len(z), -1, -1), torch.zeros(2, 6), other
    )
    assert decoded.shape == (2, 200, 3)
    assert (decoded - _affine(other)).abs().max() < 1e-3
    # a non-affine field is not reproduced exactly: the test above can fail
    bent = controls.to_reference(torch.sin(controls.centres / 4).unsqueeze(0))[0]
    assert (bent - torch.sin(positions / 4)).abs().max() > 1e-2


def test_control_points_are_spread_and_rebuilt_with_the_reference():
    positions = _blob()
    chosen = positions[farthest_points(positions, 50)]
    spacing = torch.cdist(chosen, chosen).fill_diagonal_(1e9).min(1).values
    nearest = torch.cdist(positions, chosen).min(1).values
    assert nearest.max() < spacing.max() * 1.5  # every Gaussian has a control point nearby
    controls = ControlPoints(50).update(positions)
    weights = controls.to_reference
    assert controls.update(positions.clone()).to_reference is weights  # same reference: kept
    assert controls.update(positions + 1.0).to_reference is not weights  # replaced: rebuilt
    exact = interpolation(
        controls.centres, controls.centres
    )  # a Gaussian on a control point takes its value
    assert torch.allclose(exact(controls.centres.unsqueeze(0))[0], controls.centres, atol=1e-4)


def test_setting_defaults_to_zero_and_is_checked():
    old = {k: v for k, v in DeformationSettings().to_dict().items() if k != "control_points"}
    assert DeformationSettings.from_dict(old).control_points == 0  # runs made before the setting
    with pytest.raises(InputError, match="control-points"):
        DeformationSettings(control_points=2).check()


def test_run_with_control_points_trains_and_decodes_consistently(simulated, tmp_path):
    settings = replace(FAST, epochs=4, control_points=60, latent_inference="encoder")
    out = tmp_path / "run"
    result = run(deformation_operation(simulated, out, settings))
    assert result.epochs == 4
    decoded = DeformationRun.load(out)
    half = decoded._half(1)
    assert half.controls is not None and half.controls.centres.shape == (60, 3)
    table = read_particles(out / "particles.star").particles
    rows = np.nonzero(table["dmValidation"].to_numpy() == 0)[0][:40]
    measured = table["dmDisplacementAngstrom"].to_numpy()[rows]
    ours = []
    for i in rows:
        h = decoded.half_of(int(i))
        moved = (
            decoded.positions(decoded.latents[i], h)[0] - decoded.reference(h).positions_angstrom
        )
        ours.append(float(moved.pow(2).sum(-1).mean().sqrt()))
    assert measured.mean() > 0.01  # it learned some motion, so the comparison means something
    np.testing.assert_allclose(ours, measured, rtol=1e-3, atol=1e-4)
    # the control points change the field: decoding every Gaussian directly gives other positions
    z = torch.as_tensor(decoded.latents[rows[:8]])
    direct = half.decoder.deform(z, half.model.positions_angstrom, half.moving)
    assert not torch.allclose(direct, decoded.positions(z, 1), atol=1e-5)


def test_cli_option_reaches_the_settings():
    import argparse

    from napari_dynamight.cli import optimize_deformations as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    required = ["--particles", "p.star", "--consensus", "c.mrc", "--output-directory", "run"]
    assert cli.settings_from(parser.parse_args(required)).control_points == 0
    assert (
        cli.settings_from(parser.parse_args([*required, "--control-points", "800"])).control_points
        == 800
    )
