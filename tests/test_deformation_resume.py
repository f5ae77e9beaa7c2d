"""Resume: a run killed after a checkpoint, or during a checkpoint write, ends exactly like a
straight run."""

import numpy as np
import pytest

from helpers.deformation_data import FAST, deformation_operation
from napari_dynamight.engine.deformation import checkpoint
from napari_dynamight.engine.progress import run

# Latents of a resumed run equal the straight run's to rounding: the VAE epochs agree to ~1e-7
# (summation order), which the refinement's posterior sampling can amplify to ~1e-5 (latents span
# about ±1).
SAME = 1e-4


def start(simulated, out, resume=False):
    return deformation_operation(simulated, out, FAST, resume)


@pytest.fixture(scope="module")
def straight(simulated, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    run(start(simulated, out))
    return np.load(out / "latent_means.npy"), out


# Means of near-cancelling differences (loss gains; distance changes along graph edges): rounding
# shows earlier than in the data term.
NEAR_CANCELLING = (
    "deformation_gain",
    "deformation_gain_z",
    "latent_gain",
    "latent_gain_z",
    "regularisation",
)


def assert_same_loss_log(resumed, uninterrupted) -> None:
    """Same epochs, halves and modes; numbers equal to rounding (summation order may differ)."""
    import json

    ours = [json.loads(line) for line in resumed.read_text().splitlines()]
    theirs = [json.loads(line) for line in uninterrupted.read_text().splitlines()]
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys()
        for key in a:
            if key in NEAR_CANCELLING:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (key, a, b)
            elif isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (key, a, b)
            else:
                assert a[key] == b[key]


def test_kill_after_a_checkpoint_then_resume_gives_the_same_result(simulated, straight, tmp_path):
    out = tmp_path / "run"
    operation = start(simulated, out)
    for event in operation:  # stop (= close the generator, the engine's cancel) inside epoch 4
        if "epoch 4/" in event.stage and event.step == 2:
            break
    operation.close()
    assert checkpoint.latest_checkpoint(out).name == "epoch_0002.pt"
    assert not (out / "latent_means.npy").exists()
    run(start(simulated, out, resume=True))
    latents, reference = np.load(out / "latent_means.npy"), straight[0]
    assert np.abs(latents - reference).max() < SAME
    assert_same_loss_log(out / "losses.jsonl", straight[1] / "losses.jsonl")


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(
    simulated, straight, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    real = checkpoint._serialise

    def dying(state, path):
        if state["epoch"] == 4:
            path.write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt  # as if the process were killed here
        real(state, path)

    monkeypatch.setattr(checkpoint, "_serialise", dying)
    with pytest.raises(KeyboardInterrupt):
        run(start(simulated, out))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch_0002.pt"
    ]  # no temp file left
    monkeypatch.setattr(checkpoint, "_serialise", real)
    run(start(simulated, out, resume=True))
    assert np.abs(np.load(out / "latent_means.npy") - straight[0]).max() < SAME


def test_resume_of_a_finished_run_rewrites_the_same_outputs(simulated, straight, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight[1], out)
    (out / "latent_means.npy").unlink()
    result = run(start(simulated, out, resume=True))
    assert result.epochs == 6
    assert np.abs(np.load(out / "latent_means.npy") - straight[0]).max() < SAME
