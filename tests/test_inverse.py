"""Stage 4: the inverse networks undo the forward deformations, resume exactly, and refuse bad
inputs."""

import json
import shlex
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.deformation_data import FAST, deformation_operation
from napari_dynamight.cli import build_parser, main
from napari_dynamight.engine.deformation import checkpoint
from napari_dynamight.engine.deformation.decode import DeformationRun
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.inverse.field import load_inverse_field
from napari_dynamight.engine.inverse.run import optimize_inverse_deformations
from napari_dynamight.engine.inverse.settings import InverseSettings
from napari_dynamight.engine.progress import run

INVERSE = InverseSettings(epochs=40, batch_size=16)
SHORT = InverseSettings(epochs=4, batch_size=32, checkpoint_every=2)
ERROR_BOUND_ANGSTROM = (
    0.6  # a quarter of a pixel at 2.5 Å: measured 0.50 / 0.51 Å held out, 0.5 Å training
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def forward_run(simulated, tmp_path_factory):
    """A tiny deformation run trained long enough (30 epochs) to learn motions of about 1.7 Å
    RMS."""
    out = tmp_path_factory.mktemp("inverse") / "run"
    run(deformation_operation(simulated, out, replace(FAST, epochs=30)))
    return out


@pytest.fixture(scope="module")
def inverse_run(forward_run):
    return forward_run, run(optimize_inverse_deformations(forward_run, settings=INVERSE))


def copy_forward(forward_run, target):
    shutil.copytree(forward_run, target, ignore=shutil.ignore_patterns("inverse"))
    return target


# The inverse must undo most of the motion. Measured held out, on the factorised decoder's fields
# (1.95 / 1.74 Å of motion): 37% / 36% of it after 20 epochs, 25% / 24% after 60; the MLP decoder's
# fields (1.67 / 1.74 Å): 30% / 30% after 20 epochs, 23% / 22% after 60.
INVERSE_FRACTION = 0.35


def test_held_out_inverse_error_is_a_small_fraction_of_the_motion(inverse_run):
    directory, result = inverse_run
    summary = json.loads((directory / "inverse" / "summary.json").read_text())
    assert summary["half1"] == result.summary["half1"] and summary["epochs"] == INVERSE.epochs
    for half in ("half1", "half2"):
        numbers = summary[half]
        assert numbers["n_held_out"] == 40 and numbers["n_train"] == 180
        assert numbers["held_out_displacement_angstrom"] > 0.3  # there is motion to undo
        assert (
            numbers["held_out_error_angstrom"]
            < INVERSE_FRACTION * numbers["held_out_displacement_angstrom"]
        )
        assert numbers["held_out_error_angstrom"] < ERROR_BOUND_ANGSTROM
        assert numbers["train_error_angstrom"] < ERROR_BOUND_ANGSTROM
    log = [
        json.loads(line)
        for line in (directory / "inverse" / "losses.jsonl").read_text().splitlines()
    ]
    assert [(e["epoch"], e["half"]) for e in log] == [
        (k, h) for k in range(1, INVERSE.epochs + 1) for h in (1, 2)
    ]
    assert (
        log[-1]["held_out_error_angstrom"] < 0.5 * log[0]["held_out_error_angstrom"]
    )  # it learned


def test_forward_then_inverse_returns_the_gaussians(inverse_run):
    directory, result = inverse_run
    forward = DeformationRun.load(directory)
    latents = torch.as_tensor(
        np.load(directory / "latent_means_half2_validation.npy")[forward.validation]
    )
    field = load_inverse_field(directory, 2, "cpu")
    assert field.latent_dim == 6
    deformed = forward.positions(latents, half=2)
    back = field.consensus_positions(latents, deformed)
    reference = forward.reference(2).positions_angstrom
    rms = float((back - reference).pow(2).sum(-1).mean().sqrt())
    assert rms == pytest.approx(result.summary["half2"]["held_out_error_angstrom"], rel=1e-4)
    assert rms < INVERSE_FRACTION * float((deformed - reference).pow(2).sum(-1).mean().sqrt())
    shared = field.consensus_positions(
        latents[:3], reference
    )  # (P, 3) points are shared by the batch
    assert torch.allclose(
        shared, field.consensus_positions(latents[:3], reference.expand(3, -1, -1)), atol=1e-5
    )


def last_basis_layer(decoder_state: dict) -> int:
    """Index of the factorised decoder's last basis layer in its state dict."""
    return max(int(name.split(".")[1]) for name in decoder_state if name.startswith("basis."))


def test_inverse_of_a_run_without_motion_is_the_identity(forward_run, tmp_path):
    directory = copy_forward(forward_run, tmp_path / "still")
    state = checkpoint.load_checkpoint(checkpoint.final_path(directory))
    for half in state["halves"]:
        half["decoder"][f"basis.{last_basis_layer(half['decoder'])}.weight"].zero_()
        half["decoder"][f"basis.{last_basis_layer(half['decoder'])}.bias"].zero_()
    checkpoint.save_checkpoint(checkpoint.final_path(directory), state)
    result = run(optimize_inverse_deformations(directory, settings=replace(SHORT, epochs=2)))
    assert result.summary["half1"]["train_displacement_angstrom"] == 0.0
    extent = 0.5 * 32 * 2.5
    grid = (torch.rand(500, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1) * extent
    latents = torch.randn(4, 6, generator=torch.Generator().manual_seed(2)) * 3
    for half in (1, 2):
        mapped = load_inverse_field(directory, half).consensus_positions(latents, grid)
        assert (mapped - grid).abs().max() < 1e-4


def test_resume_after_a_stop_gives_the_uninterrupted_networks(forward_run, tmp_path):
    straight = copy_forward(forward_run, tmp_path / "straight")
    run(optimize_inverse_deformations(straight, settings=SHORT))
    stopped = copy_forward(forward_run, tmp_path / "stopped")
    operation = optimize_inverse_deformations(stopped, settings=SHORT)
    for event in operation:  # stop (= close the generator, the engine's cancel) inside epoch 3
        if "epoch 3/" in event.stage and event.step == 2:
            break
    operation.close()
    assert checkpoint.latest_checkpoint(stopped / "inverse").name == "epoch_0002.pt"
    assert not (stopped / "inverse" / "final.pt").exists()
    with pytest.raises(InputError, match="--resume"):
        run(optimize_inverse_deformations(stopped, settings=SHORT))
    run(optimize_inverse_deformations(stopped, settings=SHORT, resume=True))
    ours = checkpoint.load_checkpoint(stopped / "inverse" / "final.pt")["halves"]
    theirs = checkpoint.load_checkpoint(straight / "inverse" / "final.pt")["halves"]
    for a, b in zip(ours, theirs, strict=True):
        for name, value in a["network"].items():
            assert (value - b["network"][name]).abs().max() <= 1e-6, name
    assert (stopped / "inverse" / "losses.jsonl").read_text().count("\n") == 8
    with pytest.raises(InputError, match="width"):
        run(optimize_inverse_deformations(stopped, settings=replace(SHORT, width=16), resume=True))


def test_bad_inputs_name_the_path(forward_run, tmp_path):
    with pytest.raises(InputError, match=str(tmp_path)):
        run(optimize_inverse_deformations(tmp_path))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({"result": None}))
    with pytest.raises(InputError, match="unfinished.*not finished"):
        run(optimize_inverse_deformations(unfinished))
    with pytest.raises(InputError, match="inverse/final.pt"):
        load_inverse_field(tmp_path, 1)
    with pytest.raises(InputError, match="--epochs"):
        run(optimize_inverse_deformations(forward_run, settings=replace(SHORT, epochs=0)))
    with pytest.raises(InputError, match="half set"):
        load_inverse_field(forward_run, 3)
    assert not (tmp_path / "inverse").exists() and not (unfinished / "inverse").exists()


def test_command_line_runs_end_to_end_and_its_example_parses(forward_run, tmp_path, capsys):
    directory = copy_forward(forward_run, tmp_path / "cli")
    assert (
        main(
            [
                "optimize-inverse-deformations",
                str(directory),
                "--epochs",
                "2",
                "--batch-size",
                "64",
                "--smoothness-weight",
                "0.2",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "held out" in out and "2 epochs" in out
    assert (
        json.loads((directory / "inverse" / "summary.json").read_text())["settings"][
            "smoothness_weight"
        ]
        == 0.2
    )
    assert main(["optimize-inverse-deformations", str(directory), "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and str(directory) in err[0]
    with pytest.raises(SystemExit):
        main(["optimize-inverse-deformations", "--help"])
    lines = capsys.readouterr().out.splitlines()
    examples = [
        line.strip()
        for line in lines
        if line.strip().startswith("napari-dynamight optimize-inverse")
    ]
    assert examples
    for example in examples:
        args = build_parser("optimize-inverse-deformations").parse_args(shlex.split(example)[1:])
        assert args.command == "optimize-inverse-deformations" and args.epochs > 0
