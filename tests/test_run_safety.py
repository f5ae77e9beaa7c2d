"""No run is destroyed, mixed up or left half-written: signals, kill -9, a second writer, leftovers
and multi-file sets.

SIGTERM/SIGHUP cancel like Ctrl-C (exit 143/129, no partial outputs, no hidden files, the lock
released) and a normal ``--resume`` then ends with the uninterrupted result; after ``kill -9`` the
next start takes over the stale lock and removes the leftovers; a second writer of a folder is
refused in one line; fit-consensus replaces its three files together or not at all.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import napari_dynamight
from helpers.optimize_cli import one_line_error, optimize_command
from napari_dynamight.cli import main
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.io import lock
from napari_dynamight.engine.io.file_set import check_file_set
from napari_dynamight.engine.io.leftovers import find_leftovers, remove_leftovers

# latents of a resumed run equal the uninterrupted run's to rounding (test_deformation_resume)
SAME = 1e-4
SRC = str(Path(napari_dynamight.__file__).parents[1])


def start_command(argv: list[str]) -> subprocess.Popen:
    """The command line in a new process (this checkout's package), stderr captured."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = "import sys; from napari_dynamight.cli import main; sys.exit(main())"
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def resume_in_process(simulated, out):
    import torch

    threads = torch.get_num_threads()
    try:
        return main(optimize_command(simulated, out, "--resume"))
    finally:
        torch.set_num_threads(threads)


def assert_uninterrupted_result(out: Path, finished: Path) -> None:
    latents, reference = np.load(out / "latent_means.npy"), np.load(finished / "latent_means.npy")
    assert np.abs(latents - reference).max() < SAME
    info = json.loads((out / "run.json").read_text())
    assert (
        info["result"]["epochs"] == 2
        and info["identity"] == json.loads((finished / "run.json").read_text())["identity"]
    )


def test_sigterm_cancels_cleanly_a_second_writer_is_refused_and_resume_ends_as_uninterrupted(
    simulated, finished_run, tmp_path, capsys
):
    out = tmp_path / "run"
    process = start_command(optimize_command(simulated, out))
    try:
        wait_for(out / "checkpoints" / "epoch_0001.pt", process)
        # a second writer while the first runs: refused in one line naming the holder, nothing
        # changed
        one_line_error(
            capsys,
            main(optimize_command(simulated, out, "--resume")),
            f"in use by process {process.pid}",
        )
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "cancelled (SIGTERM)" and "Traceback" not in stderr
    assert (
        not (out / "latent_means.npy").exists() and not (out / "checkpoints" / "final.pt").exists()
    )
    assert json.loads((out / "run.json").read_text())["result"] is None
    assert find_leftovers(out) == [] and not (out / lock.LOCK_NAME).exists()
    assert resume_in_process(simulated, out) == 0
    assert_uninterrupted_result(out, finished_run)


def test_kill_9_then_a_normal_start_takes_the_stale_lock_removes_leftovers_and_resumes(
    simulated, finished_run, tmp_path
):
    out = tmp_path / "run"
    process = start_command(optimize_command(simulated, out))
    try:
        wait_for(out / "checkpoints" / "epoch_0001.pt", process)
        process.kill()
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    owner = json.loads((out / lock.LOCK_NAME).read_text())
    assert owner["pid"] == process.pid and owner["host"] == socket.gethostname()  # the stale lock
    planted = [
        out / ".latent_means.npy.k9a7x2qz.tmp.npy",
        out / "checkpoints" / ".epoch_0002.pt.ab12cd34.tmp.pt",
    ]
    for path in planted:  # what a kill during an atomic write leaves
        path.write_bytes(b"half")
    (out / ".simulate-zz99yy88").mkdir()
    assert len(find_leftovers(out)) >= 3
    assert resume_in_process(simulated, out) == 0
    assert find_leftovers(out) == [] and not (out / lock.LOCK_NAME).exists()
    assert_uninterrupted_result(out, finished_run)


def test_sighup_cancels_with_129_and_leaves_no_partial_output(
    simulated, tmp_path, monkeypatch, capsys
):
    from napari_dynamight.engine.deformation import checkpoint

    real = checkpoint.save_checkpoint

    def save_then_hang_up(path, state):
        real(path, state)
        os.kill(os.getpid(), signal.SIGHUP)  # the terminal closes right after the first checkpoint

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_hang_up)
    out = tmp_path / "run"
    import torch

    threads = torch.get_num_threads()
    previous = signal.signal(
        signal.SIGHUP, signal.SIG_DFL
    )  # as in a terminal (nohup ignores it: next test)
    try:
        assert main(optimize_command(simulated, out)) == 129
        assert (
            signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
        )  # handlers restored after the command
    finally:
        signal.signal(signal.SIGHUP, previous)
        torch.set_num_threads(threads)
    assert capsys.readouterr().err.strip().splitlines()[-1] == "cancelled (SIGHUP)"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0001.pt"]
    assert not (out / "latent_means.npy").exists() and find_leftovers(out) == []
    assert not (out / lock.LOCK_NAME).exists()


def test_an_ignored_sighup_stays_ignored_as_under_nohup(simulated, tmp_path, monkeypatch):
    from napari_dynamight.engine.deformation import checkpoint

    real = checkpoint.save_checkpoint
    hung_up = []

    def save_then_hang_up(path, state):
        real(path, state)
        if not hung_up:
            hung_up.append(path)
            os.kill(os.getpid(), signal.SIGHUP)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_hang_up)
    import torch

    threads = torch.get_num_threads()
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert main(optimize_command(simulated, tmp_path / "run")) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
        torch.set_num_threads(threads)
    assert hung_up and (tmp_path / "run" / "latent_means.npy").is_file()


def test_lock_refuses_a_live_writer_and_takes_over_a_dead_one(tmp_path):
    held = lock.acquire(tmp_path, "first")
    with pytest.raises(
        InputError, match=f"in use by process {os.getpid()} on {socket.gethostname()} \\(first\\)"
    ):
        lock.acquire(tmp_path, "second")
    lock.release(held)
    assert not (tmp_path / lock.LOCK_NAME).exists()

    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / lock.LOCK_NAME).write_text(
        json.dumps({"host": socket.gethostname(), "pid": gone.pid})
    )
    handle = lock.acquire(tmp_path, "after a crash")  # dead PID on this host: stale, taken over
    assert json.loads((tmp_path / lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release(handle)

    # a live process of this host named in the file holds it, even where flock is free
    (tmp_path / lock.LOCK_NAME).write_text(
        json.dumps({"host": socket.gethostname(), "pid": os.getppid()})
    )
    with pytest.raises(InputError, match=f"process {os.getppid()}"):
        lock.acquire(tmp_path, "second")


def test_leftovers_are_the_hidden_temporaries_and_staging_folders_only(tmp_path):
    keep = [
        tmp_path / "latent_means.npy",
        tmp_path / ".hidden",
        tmp_path / "a.tmp",
        tmp_path / "sub" / "x.mrc",
    ]
    stale = [
        tmp_path / ".latent_means.npy.abcd_123.tmp.npy",
        tmp_path / "sub" / ".run.json.zzzzzzzz.tmp.json",
        tmp_path / ".summary.q1w2e3r4.tmp",
    ]
    for path in keep + stale:
        path.parent.mkdir(exist_ok=True)
        path.write_text("x")
    (tmp_path / ".simulate-a1b2c3d4" / "ground_truth").mkdir(parents=True)
    (tmp_path / "maps").mkdir()  # another writer's folder inside: its temporaries are its own
    (tmp_path / "maps" / lock.LOCK_NAME).write_text("{}")
    (tmp_path / "maps" / ".latent_0000.mrc.abcdefgh.tmp.mrc").write_text("x")
    removed = remove_leftovers(tmp_path)
    assert sorted(removed) == sorted(stale + [tmp_path / ".simulate-a1b2c3d4"])
    assert (
        all(path.exists() for path in keep)
        and (tmp_path / "maps" / ".latent_0000.mrc.abcdefgh.tmp.mrc").exists()
    )


def fit_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_fit_consensus_replaces_its_files_as_a_set(simulated, tmp_path, monkeypatch, capsys):
    from napari_dynamight.engine import consensus_stage

    out = tmp_path / "fit"
    command = [
        "fit-consensus",
        "--consensus",
        str(simulated.consensus),
        "--output-directory",
        str(out),
        "--n-gaussians",
        "50",
        "--steps",
        "2",
    ]
    assert main(command) == 0
    names = [
        "consensus_gaussians.csv",
        "consensus_gaussians.json",
        "consensus_gaussians.mrc",
        "consensus_gaussians.pt",
    ]
    assert sorted(p.name for p in out.iterdir()) == names
    check_file_set(out / "consensus_gaussians.json")
    before = fit_files(out)

    def killed(path, model):
        Path(path).write_text("half a table")
        raise KeyboardInterrupt  # killed after the new .pt was written, while writing the .csv

    monkeypatch.setattr(consensus_stage, "_write_table", killed)
    assert main(command + ["--seed", "1"]) == 130
    assert fit_files(out) == before  # the old set, whole

    def full(path, model):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(consensus_stage, "_write_table", full)
    capsys.readouterr()
    assert main(command + ["--seed", "1"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in err, (
        err
    )
    assert fit_files(out) == before and find_leftovers(out) == []

    (out / "consensus_gaussians.csv").write_text("edited")
    with pytest.raises(InputError, match="consensus_gaussians.csv"):
        check_file_set(out / "consensus_gaussians.json")


def test_inverse_and_reconstruct_refuse_outputs_of_another_state_of_the_run(
    finished_run, tmp_path, capsys
):
    import torch

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "inverse").mkdir()
    assert main(["reconstruct", str(run)]) == 2
    assert "summary.json" in capsys.readouterr().err  # the inverse stage did not finish
    shutil.rmtree(run / "inverse")
    inverse = [
        "optimize-inverse-deformations",
        str(run),
        "--epochs",
        "1",
        "--checkpoint-every",
        "1",
        "--width",
        "16",
        "--depth",
        "1",
        "--threads",
        "1",
    ]
    threads = torch.get_num_threads()
    try:
        assert main(inverse) == 0
    finally:
        torch.set_num_threads(threads)
    info = json.loads((run / "run.json").read_text())
    info["result"]["epochs"] += 2  # as after optimize-deformations --resume --epochs 4
    (run / "run.json").write_text(json.dumps(info))
    before = {p: p.stat().st_mtime_ns for p in (run / "inverse").rglob("*")}
    capsys.readouterr()
    for command in (inverse[:3] + ["2"] + inverse[4:] + ["--resume"], ["reconstruct", str(run)]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another state of the deformation run" in err[0], err
    assert {p: p.stat().st_mtime_ns for p in (run / "inverse").rglob("*")} == before
    assert not (run / "reconstruction").exists()
