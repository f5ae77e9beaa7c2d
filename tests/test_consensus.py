"""Consensus Gaussian model: fill a map and fit it, on maps made from a known Gaussian model."""

import numpy as np
import pytest
import torch

from napari_dynamight.engine.consensus import (
    automatic_threshold,
    fill_with_gaussians,
    fit_to_map,
    load_model,
    save_model,
)
from napari_dynamight.engine.errors import Cancelled, InputError
from napari_dynamight.engine.gaussians import GaussianModel, render_volume
from napari_dynamight.engine.progress import run


@pytest.fixture(scope="module")
def known_map():
    generator = torch.Generator().manual_seed(0)
    truth = GaussianModel(
        torch.randn(200, 3, generator=generator) * torch.tensor([10.0, 6.0, 4.0]),
        torch.ones(200),
        torch.full((200,), 2.5),
    )
    return truth, render_volume(truth, 40, 1.5).numpy()


def test_fill_stays_inside_the_threshold(known_map):
    _, volume = known_map
    model = fill_with_gaussians(volume, 1.5, 300, seed=0)
    index = np.round(model.positions_angstrom.numpy()[:, ::-1] / 1.5 + 20).astype(int)
    values = volume[index[:, 0], index[:, 1], index[:, 2]]
    assert (values >= 0.5 * automatic_threshold(volume)).all()
    assert (
        torch.unique(model.sigmas_angstrom).numel() == 1
        and torch.unique(model.amplitudes).numel() == 1
    )


def test_fit_reaches_high_correlation(known_map):
    _, volume = known_map
    start = fill_with_gaussians(volume, 1.5, 400, seed=1)
    events = []
    result = run(fit_to_map(start, volume, 1.5, n_steps=150), on_progress=events.append)
    assert result.correlation > 0.99
    assert events[-1].step == 150 and "correlation" in events[-1].metrics
    assert events[-1].metrics["correlation"] > events[0].metrics["correlation"]


def test_fit_can_be_cancelled(known_map):
    _, volume = known_map
    start = fill_with_gaussians(volume, 1.5, 100, seed=1)
    with pytest.raises(Cancelled):
        run(fit_to_map(start, volume, 1.5, n_steps=100), should_stop=lambda: True)


def test_empty_threshold_is_a_clear_error(known_map):
    _, volume = known_map
    with pytest.raises(InputError, match="threshold"):
        fill_with_gaussians(volume, 1.5, 10, threshold=1e9)


def test_model_file_round_trip(tmp_path, known_map):
    truth, _ = known_map
    save_model(tmp_path / "model.pt", truth, threshold=0.5)
    loaded = load_model(tmp_path / "model.pt")
    assert torch.equal(loaded.positions_angstrom, truth.positions_angstrom)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(InputError, match="bad.pt"):
        load_model(tmp_path / "bad.pt")


def test_isolated_noise_specks_get_no_gaussians(known_map):
    _, volume = known_map
    specked = volume.copy()
    specked[2:4, 2:4, 2:4] = specked[36:38, 3:5, 30:32] = volume.max()  # 16 voxels of "noise"
    model = fill_with_gaussians(specked, 1.5, 2000, seed=0)
    index = np.round(model.positions_angstrom.numpy()[:, ::-1] / 1.5 + 20).astype(int)
    in_specks = ((index >= [1, 1, 1]) & (index <= [4, 4, 4])).all(1) | (
        (index >= [35, 2, 29]) & (index <= [38, 5, 32])
    ).all(1)
    assert not in_specks.any()
