"""End to end on a tiny simulated ADK data set: outputs, row order, STAR columns, learning
signal."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from scipy.stats import spearmanr

from helpers.deformation_data import (
    FAST,
    FAST_CHECKPOINTS,
    LEARNING,
    deformation_operation,
    train,
)
from napari_dynamight.engine.consensus import load_model
from napari_dynamight.engine.deformation.checkpoint import final_path
from napari_dynamight.engine.deformation.decode import DeformationRun
from napari_dynamight.engine.io.mrc import read_map
from napari_dynamight.engine.progress import run


@pytest.fixture(scope="module")
def trained(simulated, tmp_path_factory):
    out = tmp_path_factory.mktemp("deform") / "run"
    events = []
    result = run(deformation_operation(simulated, out, FAST), on_progress=events.append)
    return out, result, events


def best_pc_spearman(latents: np.ndarray, frames: np.ndarray) -> float:
    centred = latents - latents.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    pcs = centred @ vt.T
    return max(abs(spearmanr(pcs[:, k], frames).correlation) for k in range(pcs.shape[1]))


def test_run_writes_every_output(trained):
    out, result, events = trained
    names = {p.name for p in out.iterdir()}
    assert {
        "latent_means.npy",
        "latent_means_half2_validation.npy",
        "particles.star",
        "consensus_half1.pt",
        "consensus_half2.pt",
        "consensus_half1.mrc",
        "consensus_half2.mrc",
        "gaussian_errors.csv",
        "losses.jsonl",
        "losses.png",
        "run.json",
        "consensus_initial.pt",
        "checkpoints",
    } <= names
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == FAST_CHECKPOINTS
    assert result.epochs == 6 and not result.stopped_early and result.train_box == 32
    recorded = json.loads((out / "run.json").read_text())["result"]
    assert (
        recorded["epochs"] == 6
        and recorded["stopped_early"] is False
        and recorded["world_size"] == 1
    )
    assert recorded["seconds_last_start"] == pytest.approx(result.seconds) and result.seconds > 0
    assert (out / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = pd.read_json(out / "losses.jsonl", lines=True)
    assert (
        list(log.epoch) == [e for e in (1, 2, 3, 4, 5, 6, 8) for _ in (1, 2)]
        and list(log.half) == [1, 2] * 7
    )
    assert list(log["mode"][::2]) == [
        "warmup",
        "full",
        "full",
        "full",
        "full",
        "consensus",
        "refinement",
    ]
    vae, refinement = log[log["mode"] != "refinement"], log[log["mode"] == "refinement"]
    assert np.isfinite(vae[["data", "regularisation", "kl", "lambda"]].to_numpy()).all()
    assert np.isfinite(
        refinement[["data", "regularisation", "lambda", "posterior_entropy"]].to_numpy()
    ).all()
    assert (refinement.posterior_entropy <= np.log(FAST.posterior_candidates) + 1e-6).all()
    progress = [e for e in events if "epoch" in e.metrics]
    assert {"data", "lambda", "epoch"} <= set(progress[-1].metrics)
    for half in (1, 2):
        model = load_model(out / f"consensus_half{half}.pt")
        assert model.n_gaussians == 300
        volume, voxel = read_map(out / f"consensus_half{half}.mrc")
        assert volume.shape == (32, 32, 32) and voxel == pytest.approx(2.5)


def test_checkpoints_hold_only_tensors_and_plain_values(trained):
    out, _, _ = trained
    state = torch.load(final_path(out), map_location="cpu", weights_only=True)
    assert state["epoch"] == 6 and len(state["halves"]) == 2
    assert set(state["halves"][0]["decoder"]) >= {"basis.0.weight", "coefficients.0.weight"}

    def leaves(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from leaves(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from leaves(v)
        else:
            yield value

    assert all(
        isinstance(v, (torch.Tensor, int, float, str, bool, type(None))) for v in leaves(state)
    )


def test_latents_and_star_keep_input_row_order_and_columns(trained, simulated):
    out, _, _ = trained
    latents = np.load(out / "latent_means.npy")
    second = np.load(out / "latent_means_half2_validation.npy")
    assert latents.shape == (400, 6) and latents.dtype == np.float32 and np.isfinite(latents).all()
    original = starfile.read(simulated.star, always_dict=True)
    written = starfile.read(out / "particles.star", always_dict=True)
    pd.testing.assert_frame_equal(written["optics"], original["optics"])
    before, after = original["particles"], written["particles"]
    pd.testing.assert_frame_equal(after[before.columns], before)
    assert list(after.columns[len(before.columns) :]) == [f"dmLatent{k}" for k in range(1, 7)] + [
        "dmHalfSet",
        "dmValidation",
        "dmErrorAngstrom",
        "dmDisplacementAngstrom",
    ]
    assert np.allclose(after[[f"dmLatent{k}" for k in range(1, 7)]].to_numpy(), latents, atol=1e-6)
    assert (after.dmHalfSet == before.rlnRandomSubset).all()
    validation = after.dmValidation.to_numpy() == 1
    for half in (1, 2):
        assert validation[before.rlnRandomSubset == half].sum() == 20  # 10% of 200
    assert np.isnan(second[~validation]).all() and np.isfinite(second[validation]).all()
    assert (after.dmErrorAngstrom >= 0).all() and np.isfinite(after.dmErrorAngstrom).all()
    errors = np.loadtxt(out / "gaussian_errors.csv", delimiter=",", skiprows=1)
    assert errors.shape == (300, 4) and (errors[:, 3] >= 0).all()


def test_decode_api_matches_latents_and_renders_at_consensus_box(trained):
    out, _, _ = trained
    model = DeformationRun.load(out)
    latents = np.load(out / "latent_means.npy")
    positions = model.particle_positions(5)
    assert positions.shape == (300, 3)
    assert torch.allclose(positions, model.positions(latents[5], model.half_of(5))[0])
    volume = model.particle_volume(5)
    assert volume.shape == (32, 32, 32)
    several = model.positions(latents[:4], half=2)
    assert several.shape == (4, 300, 3)


def test_learning_signal_latent_orders_particles_by_true_frame(simulated, tmp_path):
    """SNR 1, 400 particles: the best principal component of each half's latents follows the
    frame."""
    train(simulated, tmp_path / "run", replace(LEARNING, seed=0))
    latents = np.load(tmp_path / "run" / "latent_means.npy")
    labels = simulated.labels
    halves = labels.random_subset.to_numpy()
    scores = [
        best_pc_spearman(latents[halves == h], labels.frame.to_numpy()[halves == h]) for h in (1, 2)
    ]
    print("best-PC |Spearman| per half", scores)
    assert min(scores) > 0.5, scores
    # the decoded deformed models move: their RMS displacement is well above the noise control's
    # 0.1 Å scale
    moved = starfile.read(tmp_path / "run" / "particles.star")["particles"].dmDisplacementAngstrom
    assert moved.mean() > 0.3
    # decoded volumes match the particle's true frame map better than the half's reference model
    # does
    decoder = DeformationRun.load(tmp_path / "run")
    truth_folder = simulated.star.parent / "ground_truth"
    maps = {f: read_map(truth_folder / f"frame_{f:03d}.mrc")[0] for f in np.unique(labels.frame)}
    mask = np.max(np.stack(list(maps.values())), 0) > 0.02 * max(m.max() for m in maps.values())

    def cc(a, b):
        a, b = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
        return float(a @ b / np.sqrt((a @ a) * (b @ b)))

    for half in (1, 2):
        reference = read_map(tmp_path / "run" / f"consensus_half{half}.mrc")[0]
        rows = np.nonzero(halves == half)[0][::5]
        decoded = [cc(decoder.particle_volume(i).numpy(), maps[labels.frame[i]]) for i in rows]
        static = [cc(reference, maps[labels.frame[i]]) for i in rows]
        print(
            f"half {half}: decoded vs true map {np.mean(decoded):.4f}, reference "
            f"{np.mean(static):.4f}"
        )
        assert np.mean(decoded) > np.mean(static)


def test_only_gaussians_inside_the_mask_move(simulated, tmp_path):
    from napari_dynamight.engine.io.mrc import write_map

    mask = np.zeros((32, 32, 32), np.float32)
    mask[:, :, 16:] = 1.0  # x ≥ 0 Å
    write_map(tmp_path / "mask.mrc", mask, 2.5)
    settings = replace(FAST, epochs=3, checkpoint_every=3)
    train(simulated, tmp_path / "run", settings, mask=tmp_path / "mask.mrc")
    decoded = DeformationRun.load(tmp_path / "run")
    latents = np.load(tmp_path / "run" / "latent_means.npy")
    for half in (1, 2):
        reference = decoded.reference(half).positions_angstrom
        moved = (decoded.positions(latents[:50], half) - reference).norm(dim=-1)  # (50, N)
        inside = torch.as_tensor(
            np.rint(load_model(simulated.model).positions_angstrom[:, 0].numpy() / 2.5) >= 0
        )
        assert float(moved[:, ~inside].abs().max()) == 0.0
        assert float(moved[:, inside].max()) > 1e-3
