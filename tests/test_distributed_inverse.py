"""Stage 4 on the torch.distributed path: two gloo processes on this CPU against one process.

Split halves (each half's inverse network on its own rank) is the single-process arithmetic, so a
one-process checkpoint resumed on two such ranks must end with identical networks, loss log and
errors. Both halves data-parallel over the two ranks (shares of every batch, gradients all-reduced)
differ from one process only by float summation order: measured 1e-5 to 1.5e-4 in the
parameters.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from helpers.deformation_data import FAST, deformation_operation
from helpers.distributed import launch
from napari_dynamight.engine.deformation import checkpoint
from napari_dynamight.engine.inverse.run import optimize_inverse_deformations
from napari_dynamight.engine.inverse.settings import InverseSettings
from napari_dynamight.engine.progress import run

SETTINGS = InverseSettings(epochs=4, batch_size=32, checkpoint_every=2)


def train(directory, settings, resume=False) -> None:
    run(optimize_inverse_deformations(directory, settings=settings, resume=resume))


def networks(directory, name="final.pt") -> list[dict]:
    """Both halves' network state dicts in ``RUN/inverse/name`` (final.pt or
    checkpoints/epoch_*.pt)."""
    return [
        h["network"] for h in checkpoint.load_checkpoint(directory / "inverse" / name)["halves"]
    ]


def largest_difference(ours: list[dict], theirs: list[dict]) -> float:
    return max(
        float((a[name] - b[name]).abs().max())
        for a, b in zip(ours, theirs, strict=True)
        for name in a
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def single(simulated, tmp_path_factory, one_torch_thread):
    """A short deformation run (motions of about 1.6 Å RMS) and its short inverse run in one
    process, on one thread whatever the tests before it left (BLAS rounding)."""
    out = tmp_path_factory.mktemp("distributed_inverse") / "run"
    run(deformation_operation(simulated, out, replace(FAST, epochs=10)))
    train(out, SETTINGS)
    summary = json.loads((out / "inverse" / "summary.json").read_text())
    for half in (
        "half1",
        "half2",
    ):  # a field worth comparing: 4 epochs undo part of a visible motion
        assert summary[half]["held_out_displacement_angstrom"] > 0.2
        assert (
            summary[half]["held_out_error_angstrom"]
            < 0.9 * summary[half]["held_out_displacement_angstrom"]
        )
    return out


@pytest.fixture
def copy(single, tmp_path, monkeypatch):
    """A copy of the deformation run without its inverse run."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the spawned ranks
    return shutil.copytree(single, tmp_path / "run", ignore=shutil.ignore_patterns("inverse"))


def test_two_ranks_split_halves_resume_one_process_exactly(single, copy):
    """The single-process run's epoch-2 checkpoint resumed on two ranks, each training one half."""
    shutil.copytree(
        single / "inverse",
        copy / "inverse",
        ignore=shutil.ignore_patterns("epoch_0004.pt", "final.pt", "summary.json"),
    )
    launch(train, copy, SETTINGS, True)
    difference = largest_difference(networks(copy), networks(single))
    print("split halves, resumed: max |network parameter difference|", difference)
    assert difference == 0.0
    assert (copy / "inverse" / "losses.jsonl").read_text() == (
        single / "inverse" / "losses.jsonl"
    ).read_text()
    ours = json.loads((copy / "inverse" / "summary.json").read_text())
    theirs = json.loads((single / "inverse" / "summary.json").read_text())
    for half in ("half1", "half2"):
        assert ours[half] | {"seconds": 0} == theirs[half] | {"seconds": 0}


def test_two_ranks_data_parallel_agree_with_one_process(single, copy):
    """Both halves data-parallel over the two ranks from the start (shares of every batch)."""
    launch(train, copy, SETTINGS, split=False)
    for name in ("checkpoints/epoch_0002.pt", "final.pt"):
        difference = largest_difference(networks(copy, name), networks(single, name))
        print(f"data parallel, {name}: max |network parameter difference| {difference:.3g}")
        # float summation order, amplified by Adam where gradients are small: 1e-5 to 1.5e-4
        # measured, depending on the forward run (the simulation's thread count); the errors
        # the networks reach must still agree (below)
        assert difference < 1e-3
    ours = json.loads((copy / "inverse" / "summary.json").read_text())
    theirs = json.loads((single / "inverse" / "summary.json").read_text())
    for half in ("half1", "half2"):
        assert ours[half]["n_train"] == theirs[half]["n_train"] and ours[half]["n_held_out"] == 40
        for key in ("train_error_angstrom", "held_out_error_angstrom"):
            relative = abs(ours[half][key] - theirs[half][key]) / theirs[half][key]
            print(
                f"data parallel, {half} {key}: {ours[half][key]:.6f} vs {theirs[half][key]:.6f} Å "
                f"(relative difference {relative:.2g})"
            )
            assert relative < 1e-4
    log = [
        json.loads(line) for line in (copy / "inverse" / "losses.jsonl").read_text().splitlines()
    ]
    assert [(e["epoch"], e["half"]) for e in log] == [(k, h) for k in range(1, 5) for h in (1, 2)]


def test_local_processes_train_the_inverse_halves_side_by_side_as_one_process(single, copy):
    """``processes=2`` (the command line's default on a CPU given 2 threads): two spawned ranks of
    one thread, one per half set, give the one-process networks, loss log and errors exactly."""
    import multiprocessing

    import torch

    torch.set_num_threads(2)
    try:
        result = run(optimize_inverse_deformations(copy, settings=SETTINGS, processes=2))
    finally:
        torch.set_num_threads(1)  # as one_torch_thread keeps it for the module
    assert largest_difference(networks(copy), networks(single)) == 0.0
    assert (copy / "inverse" / "losses.jsonl").read_text() == (
        single / "inverse" / "losses.jsonl"
    ).read_text()
    assert result.epochs == SETTINGS.epochs and not multiprocessing.active_children()
    ours = json.loads((copy / "inverse" / "summary.json").read_text())
    assert result.summary["half1"] == ours["half1"]
