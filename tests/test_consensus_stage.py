"""Stage 2 from the command line: files written, model quality, and errors for bad input."""

import numpy as np
import pytest
import torch

from napari_dynamight.cli import main
from napari_dynamight.engine.consensus import load_model
from napari_dynamight.engine.consensus_stage import suggested_gaussian_count
from napari_dynamight.engine.gaussians import GaussianModel, render_volume
from napari_dynamight.engine.io.mrc import read_map, write_map


@pytest.fixture()
def consensus_map(tmp_path):
    generator = torch.Generator().manual_seed(2)
    truth = GaussianModel(
        torch.randn(150, 3, generator=generator) * torch.tensor([9.0, 6.0, 4.0]),
        torch.ones(150),
        torch.full((150,), 2.5),
    )
    path = tmp_path / "consensus.mrc"
    write_map(path, render_volume(truth, 32, 2.0).numpy(), 2.0)
    return path


def test_fit_consensus_writes_a_model_that_reproduces_the_map(tmp_path, consensus_map, capsys):
    out = tmp_path / "run"
    status = main(
        [
            "fit-consensus",
            "--consensus",
            str(consensus_map),
            "--output-directory",
            str(out),
            "--n-gaussians",
            "300",
            "--steps",
            "120",
        ]
    )
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "consensus_gaussians.csv",
        "consensus_gaussians.json",
        "consensus_gaussians.mrc",
        "consensus_gaussians.pt",
    ]
    model = load_model(out / "consensus_gaussians.pt")
    assert model.n_gaussians == 300
    rendered, voxel = read_map(out / "consensus_gaussians.mrc")
    original, _ = read_map(consensus_map)
    assert voxel == pytest.approx(2.0)
    assert np.corrcoef(rendered.ravel(), original.ravel())[0, 1] > 0.98
    assert "correlation with the map" in capsys.readouterr().out
    table = np.loadtxt(out / "consensus_gaussians.csv", delimiter=",", skiprows=1)
    assert np.allclose(table[:, :3], model.positions_angstrom.numpy(), atol=1e-4)


def test_mask_of_another_box_is_refused(tmp_path, consensus_map, capsys):
    write_map(tmp_path / "mask.mrc", np.ones((16, 16, 16)), 2.0)
    status = main(
        [
            "fit-consensus",
            "--consensus",
            str(consensus_map),
            "--mask",
            str(tmp_path / "mask.mrc"),
            "--output-directory",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "mask.mrc" in err[0] and "16" in err[0]
    assert not (tmp_path / "run").exists()


def test_default_count_is_two_per_residue():
    volume = np.zeros((20, 20, 20), dtype=np.float32)
    volume[:10, :10, :10] = 1.0  # 1000 voxels of 1 Å³ = 1000 Å³ ≈ 7.5 residues
    assert suggested_gaussian_count(volume, 1.0, 0.5) == 15
