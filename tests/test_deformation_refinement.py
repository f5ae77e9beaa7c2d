"""Posterior refinement (EM on candidate latents): the E-step's posteriors, the M-step's effect,
resume."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.deformation_data import FAST, deformation_operation, train
from napari_dynamight.engine.deformation import checkpoint
from napari_dynamight.engine.deformation.batches import ParticleBatches
from napari_dynamight.engine.deformation.inference import half_candidates
from napari_dynamight.engine.deformation.inputs import moving_flags, read_inputs
from napari_dynamight.engine.deformation.refinement import refine_round, responsibilities
from napari_dynamight.engine.deformation.trainer import HalfSet
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.evaluation import latent_frame_ordering
from napari_dynamight.engine.gaussians import GaussianModel
from napari_dynamight.engine.progress import run

# one thread: with two, on a loaded machine a resumed run once ended more than the 1e-3 these tests
# allow away from the straight run (the refinement's draws amplify rounding differences)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TWO_ROUNDS = replace(FAST, refinement_rounds=2, refinement_epochs=2)


def _half_of_trained_run(simulated, folder, settings):
    """Half 1 of a finished run rebuilt from its final checkpoint, with its batches."""
    train(simulated, folder, settings)
    state = checkpoint.load_checkpoint(checkpoint.final_path(folder))
    inputs = read_inputs(
        simulated.star,
        simulated.consensus,
        None,
        simulated.model,
        None,
        None,
        None,
        "cpu",
        settings.validation_fraction,
        settings.seed,
    )
    batches = ParticleBatches(inputs.table, inputs.train_box, "cpu")
    initial = GaussianModel.from_state_dict(state["initial_model"])
    moving = moving_flags(initial.positions_angstrom, inputs.mask, inputs.voxel_size_angstrom)
    half = HalfSet(
        1,
        initial,
        state["halves"][0]["train_rows"].numpy(),
        state["halves"][0]["validation_rows"].numpy(),
        batches.box,
        40.0,
        settings,
        moving,
        torch.device("cpu"),
    )
    checkpoint.load_half_state(half, state["halves"][0])
    return half, batches


def test_identical_candidates_get_equal_posteriors(simulated, tmp_path):
    """A decoder that ignores the latent (zero-initialised, no training) makes every candidate the
    same model: each row's posterior is exactly uniform, and rows sum to one."""
    settings = replace(FAST, epochs=1, warmup_epochs=1, refinement_rounds=0)
    half, batches = _half_of_trained_run(simulated, tmp_path / "run", settings)
    latents = torch.randn(16, settings.latent_dim, generator=torch.Generator().manual_seed(0))
    posterior = run(responsibilities(half, batches, half.train_rows[:40], latents))
    assert posterior.shape == (40, 16)
    assert torch.allclose(posterior, torch.full_like(posterior, 1 / 16), atol=1e-6)


def test_rounds_move_the_candidates_and_keep_the_ordering(simulated, tmp_path):
    """After the VAE epochs, two rounds of refinement move the candidate points away from the
    encoder codes they start from and the posterior latents order the particles by their true frame
    at least as well as with the encoder's candidates (SNR 1, 400 particles)."""
    settings = replace(FAST, epochs=12, refinement_rounds=0, refinement_epochs=3)
    half, batches = _half_of_trained_run(simulated, tmp_path / "run", settings)
    rows = np.concatenate([half.train_rows, half.validation_rows])
    frames = simulated.labels.frame.to_numpy()[rows]

    def ordering(candidates) -> float:
        posterior = run(responsibilities(half, batches, rows, candidates))
        return latent_frame_ordering((posterior @ candidates).numpy(), frames).best

    initial = half_candidates(half, batches).latents
    before = ordering(initial)
    events = list(_drain(refine_round(half, batches, 1, 2)))
    losses = [_last(refine_round(half, batches, 2, 2))]
    after = ordering(half.candidates)
    print(f"ordering {before:.3f} -> {after:.3f}; round 2 {losses}")
    assert events[0].stage.endswith("posteriors") and events[-1].step == settings.refinement_epochs
    assert (half.candidates - initial).norm(dim=1).mean() > 1e-3
    assert after >= before - 0.02
    assert after > 0.5


def _drain(generator):
    try:
        while True:
            yield next(generator)
    except StopIteration:
        return


def _last(generator):
    try:
        while True:
            next(generator)
    except StopIteration as stop:
        return stop.value


@pytest.fixture(scope="module")
def straight(simulated, tmp_path_factory):
    """A run with two refinement rounds, never interrupted."""
    return train(simulated, tmp_path_factory.mktemp("straight") / "run", TWO_ROUNDS)


def test_a_run_killed_inside_refinement_resumes_to_the_same_result(simulated, straight, tmp_path):
    """Round 2 restarts from the checkpoint of round 1. The VAE epochs resume to ~1e-6; the M-step
    (Adam on the candidates, draws from the posteriors) amplifies such rounding, so the latents
    (spanning about ±1) agree to 1e-3 rather than 1e-6."""
    out = tmp_path / "killed"
    operation = deformation_operation(simulated, out, TWO_ROUNDS)
    for event in operation:
        if event.stage == "half 1: refinement round 2/2" and event.step == 1:
            break
    operation.close()
    latest = checkpoint.latest_checkpoint(out)
    assert latest.name == "epoch_0008.pt"  # 6 VAE epochs + round 1's 2 epochs
    state = checkpoint.load_checkpoint(latest)
    assert state["refinement_round"] == 1 and state["halves"][0]["candidates"].shape == (128, 6)
    train(simulated, out, TWO_ROUNDS, resume=True)
    assert (
        np.abs(np.load(out / "latent_means.npy") - np.load(straight / "latent_means.npy")).max()
        < 1e-3
    )
    modes = [
        line for line in (out / "losses.jsonl").read_text().splitlines() if "refinement" in line
    ]
    assert len(modes) == 4  # two rounds, two halves


def test_refinement_rounds_can_be_added_to_a_finished_run(simulated, straight, tmp_path):
    """A finished run resumed with more rounds refines further and gives what a straight run
    gives."""
    one = replace(TWO_ROUNDS, refinement_rounds=1)
    out = tmp_path / "run"
    train(simulated, out, one)
    train(simulated, out, TWO_ROUNDS, resume=True)
    assert (
        np.abs(np.load(out / "latent_means.npy") - np.load(straight / "latent_means.npy")).max()
        < 1e-3
    )
    with pytest.raises(InputError, match="refinement_epochs=2"):
        train(simulated, out, replace(TWO_ROUNDS, refinement_epochs=3), resume=True)
