"""The torch.distributed path on CPU: two gloo processes on this machine against one process.

Layouts: two ranks split the half sets (each half on its own rank: the single-process arithmetic, so
the latents must agree to float rounding), and two ranks both training each half data-parallel
(shares of every batch, gradients all-reduced: float summation order differs, so we compare the
latents' difference and correlation). Checkpoints written by one layout resume in another. The
standard reconstruction on two ranks backprojects half of the particles on each and gives the maps
of one process.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.deformation_data import FAST, FAST_CHECKPOINTS
from helpers.distributed import WORLD, launch
from napari_dynamight.engine import distributed
from napari_dynamight.engine.deformation.run import optimize_deformations
from napari_dynamight.engine.progress import run

# The layouts are compared at regularisation ratio 0.9, not the default 9: the stiffer regulariser
# holds the Gaussian positions where their total gradient is nearly zero, and there Adam's
# normalised steps turn the reduction order's float rounding into position differences of ~2e-3 Å
# by epoch 4 (2e-6 to 6e-6 Å at 0.9), which would hide a real mismatch between the layouts.
FAST = replace(FAST, regularisation_ratio=0.9)


def train(star, consensus, model, out, settings, resume=False) -> None:
    run(
        optimize_deformations(
            star, consensus, out, settings=settings, consensus_model=model, resume=resume
        )
    )


@pytest.fixture(scope="module")
def single(simulated, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each rank: BLAS rounding depends on the thread count
    try:
        train(simulated.star, simulated.consensus, simulated.model, out, FAST)
    finally:
        torch.set_num_threads(threads)
    return out


def test_context_without_torchrun_is_one_process_and_free():
    context = distributed.single()
    assert (context.rank, context.world_size, context.is_main, context.halves_split) == (
        0,
        1,
        True,
        False,
    )
    rows = np.arange(10)
    assert context.shard(rows) is rows
    t = torch.ones(3)
    assert context.all_reduce_sum_(t) is t and t.tolist() == [1.0, 1.0, 1.0]
    assert context.broadcast_object("x") == "x" and context.all_gather_object(5) == [5]
    assert context.device_for("cpu") == torch.device("cpu")


def test_shares_cover_the_rows_in_order():
    for n in (0, 1, 5, 32):
        for size in (2, 3, 4):
            group = distributed.Group(tuple(range(size)), 0)
            parts = [np.arange(n)[group.share(n, k)] for k in range(size)]
            assert np.array_equal(np.concatenate(parts), np.arange(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_two_ranks_split_halves_match_one_process(simulated, single, tmp_path):
    out = tmp_path / "run"
    launch(train, simulated.star, simulated.consensus, simulated.model, out, FAST)
    ours, theirs = np.load(out / "latent_means.npy"), np.load(single / "latent_means.npy")
    difference = float(np.abs(ours - theirs).max())
    print("split halves: max |latent difference|", difference)
    assert difference < 1e-5
    assert (out / "losses.jsonl").read_text() == (single / "losses.jsonl").read_text()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == FAST_CHECKPOINTS


def test_data_parallel_halves_match_one_process_and_resume_across_layouts(
    simulated, single, tmp_path
):
    """Both halves data-parallel over two ranks up to epoch 4, resumed with the halves split (two
    ranks) for epochs 5-6 and the refinement round, then compared with the straight single-process
    run."""
    out = tmp_path / "run"
    launch(
        train,
        simulated.star,
        simulated.consensus,
        simulated.model,
        out,
        replace(FAST, epochs=4, refinement_rounds=0),
        split=False,
    )
    middle = torch.load(out / "checkpoints" / "epoch_0004.pt", weights_only=True)
    reference = torch.load(single / "checkpoints" / "epoch_0004.pt", weights_only=True)
    for ours, theirs in zip(middle["halves"], reference["halves"], strict=True):
        drift = float((ours["positions"] - theirs["positions"]).abs().max())
        print("data parallel, epoch 4: max |Gaussian position difference| Å", drift)
        assert drift < 1e-4
    launch(train, simulated.star, simulated.consensus, simulated.model, out, FAST, True)
    ours, theirs = np.load(out / "latent_means.npy"), np.load(single / "latent_means.npy")
    difference = float(np.abs(ours - theirs).max())
    correlation = min(np.corrcoef(ours[:, k], theirs[:, k])[0, 1] for k in range(ours.shape[1]))
    print(
        f"data parallel + resume: max |latent difference| {difference:.3g} "
        f"(latent range {np.ptp(theirs):.3g}), lowest per-dimension correlation {correlation:.6f}"
    )
    # refinement amplifies rounding (test_deformation_refinement): 0.00025-0.0011 of a latent range
    # of 3.6 measured, depending on the threads and the load
    assert difference < 1e-3 * np.ptp(theirs) and correlation > 0.9999


def train_recording_cache(star, consensus, model, out, settings, folder) -> None:
    """Train, and record which rows this rank's image cache kept and each row's half set."""
    from napari_dynamight.engine.deformation import run as deformation_run

    class Recording(deformation_run.ParticleBatches):
        def close(self) -> None:
            rank = distributed.current().rank
            np.save(folder / f"kept{rank}.npy", np.nonzero(self._slot >= 0)[0])
            np.save(folder / f"halves{rank}.npy", self.table.half_sets(settings.seed))
            super().close()

    deformation_run.ParticleBatches = Recording
    train(star, consensus, model, out, settings)


def test_each_rank_caches_only_its_half_set(simulated, tmp_path):
    """Halves split over 2 ranks: each rank keeps the prepared images of its own half set's rows
    (those it trains on), not the other half's (which it sees once, in the final estimates)."""
    launch(
        train_recording_cache,
        simulated.star,
        simulated.consensus,
        simulated.model,
        tmp_path / "run",
        FAST,
        tmp_path,
    )
    for rank, half in ((0, 1), (1, 2)):
        kept, halves = (
            np.load(tmp_path / f"kept{rank}.npy"),
            np.load(tmp_path / f"halves{rank}.npy"),
        )
        assert np.array_equal(kept, np.nonzero(halves == half)[0])
        assert len(kept) < 0.6 * len(halves)


def reconstruct_counting(run_directory, counts_folder) -> None:
    """Reconstruct (standard) and record how many images this rank backprojected."""
    from napari_dynamight.engine.reconstruction import deformed
    from napari_dynamight.engine.reconstruction.stage import reconstruct_run

    seen = 0
    original = deformed.DeformedAccumulator.add

    def counting(self, images, *rest):
        nonlocal seen
        seen += len(images)
        return original(self, images, *rest)

    deformed.DeformedAccumulator.add = counting
    run(reconstruct_run(run_directory, deformations=False))
    (counts_folder / f"rank{distributed.current().rank}").write_text(str(seen))


def test_two_ranks_reconstruct_the_half_maps_of_one_process(single, tmp_path):
    import shutil

    from napari_dynamight.engine.io.mrc import read_map
    from napari_dynamight.engine.reconstruction.stage import reconstruct_run

    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(single, one)
    shutil.copytree(single, two)
    run(reconstruct_run(one, deformations=False))
    launch(reconstruct_counting, two, tmp_path)
    counts = [int((tmp_path / f"rank{r}").read_text()) for r in range(WORLD)]
    assert sum(counts) == 400 and abs(counts[0] - counts[1]) <= 2, counts  # each rank its share
    for name in ("half1.mrc", "half2.mrc", "full.mrc"):
        ours = read_map(two / "reconstruction_standard" / name)[0]
        theirs = read_map(one / "reconstruction_standard" / name)[0]
        correlation = np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]
        print(f"{name}: correlation of two ranks with one process {correlation:.8f}")
        assert correlation >= 0.999


def on_two_processes(simulated, out):
    """The tiny set's run into ``out`` on two local processes (``processes=2``), as a generator."""
    return optimize_deformations(
        simulated.star,
        simulated.consensus,
        out,
        settings=FAST,
        consensus_model=simulated.model,
        processes=2,
    )


def test_local_processes_train_the_halves_side_by_side_as_one_process(simulated, single, tmp_path):
    """``processes=2`` (the command line's default on a CPU given 2 threads) spawns two ranks, one
    per half set, each with half the threads: the single-process arithmetic at one thread, so the
    same latents and loss log; the caller sees rank 0's progress and its result."""
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    events = []
    try:
        result = run(
            on_two_processes(simulated, out),
            events.append,
        )
    finally:
        torch.set_num_threads(threads)
    ours, theirs = np.load(out / "latent_means.npy"), np.load(single / "latent_means.npy")
    difference = float(np.abs(ours - theirs).max())
    print("local processes: max |latent difference|", difference)
    assert difference < 1e-5
    assert np.array_equal(result.latents, ours) and result.epochs == FAST.epochs
    assert (out / "losses.jsonl").read_text() == (single / "losses.jsonl").read_text()
    stages = {event.stage for event in events}
    assert any(stage.startswith("half 1: refinement") for stage in stages)
    assert not any(stage.startswith("half 2") for stage in stages)  # rank 1's stay there
    assert not mp.active_children()


def test_local_processes_pass_on_a_one_line_error_and_stop_on_cancel(simulated, tmp_path):
    from napari_dynamight.engine.errors import InputError

    missing = tmp_path / "no_such_map.mrc"
    with pytest.raises(InputError, match="no_such_map.mrc"):
        run(optimize_deformations(simulated.star, missing, tmp_path / "bad", processes=2))
    assert not (tmp_path / "bad").exists() and not mp.active_children()

    out = tmp_path / "cancelled"
    operation = on_two_processes(simulated, out)
    for event in operation:
        if event.stage.startswith("half 1: epoch 4"):
            break
    operation.close()
    assert not mp.active_children()  # both ranks stopped
    assert not [p.name for p in out.rglob(".*")], "a temporary file was left"
    # what is on disk is a run that resumes: the checkpoint of epoch 2 (one every 2 epochs)
    assert (out / "checkpoints" / "epoch_0002.pt").exists()


def test_local_processes_that_are_slow_to_exit_end_without_a_traceback(capfd):
    """A process that has sent its result but is still exiting (exit handlers, here 1 s) ends
    quietly: no exception from the stop signal is printed in an exit handler."""
    from helpers.local_operations import slow_to_exit
    from napari_dynamight.engine.local_processes import on_local_processes

    events = []
    result = run(on_local_processes(slow_to_exit, {"seconds": 1.0}, 2, 1), events.append)
    assert result == "done" and [e.stage for e in events] == ["working"]
    assert not mp.active_children()
    errors = capfd.readouterr().err
    assert "Traceback" not in errors and "_Stopped" not in errors, errors


def test_process_counts_that_cannot_run_are_refused_in_one_line():
    from napari_dynamight.engine.errors import InputError
    from napari_dynamight.engine.local_processes import automatic_processes, check_processes

    assert automatic_processes("cpu", 2) == 2 and automatic_processes("cpu", 8) == 2
    assert automatic_processes("cpu", 1) == 1
    with pytest.raises(InputError, match="--processes 0: give at least 1"):
        check_processes(0, "cpu")
    if torch.cuda.is_available():
        with pytest.raises(InputError, match="each process needs its own GPU"):
            check_processes(torch.cuda.device_count() + 1, "cuda")
    else:
        with pytest.raises(InputError, match="--device cuda: CUDA is not available"):
            check_processes(2, "cuda")
    with pytest.raises(InputError, match="--device 'warp9' is not a torch device"):
        check_processes(2, "warp9")
    assert automatic_processes("warp9", 2) == 1  # the operation itself refuses it, in one line


def test_the_command_trains_the_halves_side_by_side_given_two_threads(
    simulated, finished_run, tmp_path
):
    """``optimize-deformations --threads 2`` on a CPU runs two processes of one thread (run.json's
    world size 2) and writes what ``--threads 1`` (one process: ``finished_run``) writes;
    ``--processes 1`` keeps one process."""
    import argparse
    import json

    from helpers.optimize_cli import optimize_command
    from napari_dynamight.cli import main
    from napari_dynamight.cli._progress import processes_from

    threads = torch.get_num_threads()
    out = tmp_path / "two"
    try:
        assert main(optimize_command(simulated, out, "--threads", "2")) == 0
        torch.set_num_threads(2)
        for given, expected in ((None, 2), (1, 1), (3, 3)):
            args = argparse.Namespace(processes=given, device="cpu")
            assert processes_from(args) == expected
    finally:
        torch.set_num_threads(threads)
    sizes = [
        json.loads((r / "run.json").read_text())["result"]["world_size"]
        for r in (finished_run, out)
    ]
    assert sizes == [1, 2]
    one, two = (np.load(r / "latent_means.npy") for r in (finished_run, out))
    assert float(np.abs(one - two).max()) < 1e-5
    assert (finished_run / "losses.jsonl").read_text() == (out / "losses.jsonl").read_text()
