"""The run folder layout: the file names existing runs have on disk, reading them back, finished or
not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.run_folder import (
    Checkpoints,
    DemoFolder,
    RunFolder,
    read_loss_log,
    read_run_info,
)


def test_the_layout_keeps_the_names_of_existing_runs():
    run = RunFolder("r")
    names = {
        run.info: "r/run.json",
        run.initial_model: "r/consensus_initial.pt",
        run.latents: "r/latent_means.npy",
        run.latents_half2: "r/latent_means_half2_validation.npy",
        run.particles: "r/particles.star",
        run.gaussian_errors: "r/gaussian_errors.csv",
        run.loss_log: "r/losses.jsonl",
        run.loss_plot: "r/losses.png",
        run.half_model(2): "r/consensus_half2.pt",
        run.half_map(1): "r/consensus_half1.mrc",
        run.final_checkpoint: "r/checkpoints/final.pt",
        run.checkpoints.epoch(7): "r/checkpoints/epoch_0007.pt",
        run.inverse.final: "r/inverse/final.pt",
        run.inverse.summary: "r/inverse/summary.json",
        run.inverse.loss_log: "r/inverse/losses.jsonl",
        run.inverse.checkpoints.epoch(3): "r/inverse/checkpoints/epoch_0003.pt",
        run.reconstruction().full_map: "r/reconstruction/full.mrc",
        run.reconstruction(False).fsc_table: "r/reconstruction_standard/fsc.csv",
        run.reconstruction().fsc_plot: "r/reconstruction/fsc.png",
        DemoFolder("d").run.latents: "d/run/latent_means.npy",
        DemoFolder("d").consensus.model: "d/consensus/consensus_gaussians.pt",
    }
    for path, expected in names.items():
        assert path == Path(expected)
    assert run.reconstruction().half_maps == (
        Path("r/reconstruction/half1.mrc"),
        Path("r/reconstruction/half2.mrc"),
    )
    assert list(run.reconstruction().maps) == ["half1", "half2", "full"]


def test_newest_checkpoint_is_final_then_the_highest_epoch(tmp_path):
    run = RunFolder(tmp_path)
    assert run.newest_checkpoint() is None and Checkpoints(tmp_path).latest() is None
    run.checkpoints.folder.mkdir()
    for epoch in (2, 10, 9):
        run.checkpoints.epoch(epoch).write_bytes(b"")
    (run.checkpoints.folder / "epoch_x.pt").write_bytes(b"")
    assert run.newest_checkpoint() == run.checkpoints.epoch(10)
    run.final_checkpoint.write_bytes(b"")
    assert run.newest_checkpoint() == run.final_checkpoint


def test_reading_the_run_file_and_the_loss_log(tmp_path):
    run = RunFolder(tmp_path)
    with pytest.raises(InputError, match="not found; choose the folder of a deformation run"):
        read_run_info(tmp_path)
    assert not run.is_run() and run.read_loss_log() == [] and read_loss_log(tmp_path / "x") == []
    run.info.write_text("{", encoding="utf-8")
    with pytest.raises(InputError, match="unreadable"):
        run.read_info()
    run.info.write_text(json.dumps({"n_particles": 3, "result": None}), encoding="utf-8")
    assert read_run_info(tmp_path) == {"n_particles": 3, "result": None}
    run.loss_log.write_text('{"epoch": 1}\n\n{"epoch": 2}\n', encoding="utf-8")
    assert [row["epoch"] for row in run.read_loss_log()] == [1, 2]


def test_a_run_is_finished_with_a_result_and_latent_means(tmp_path):
    run = RunFolder(tmp_path)
    with pytest.raises(InputError, match="not a deformation run"):
        run.require_finished()
    run.info.write_text(json.dumps({"result": None}), encoding="utf-8")
    with pytest.raises(InputError, match="has not finished"):
        run.require_finished()
    run.info.write_text(json.dumps({"result": {"epochs": 1}}), encoding="utf-8")
    with pytest.raises(InputError, match="has not finished"):
        run.require_finished()
    run.latents.write_bytes(b"")
    run.require_finished()


def test_the_run_of_a_particle_table_is_its_folder(tmp_path):
    run = RunFolder(tmp_path)
    run.particles.write_text("", encoding="utf-8")
    assert RunFolder.of(run.particles) == RunFolder(run.particles)  # no run file: the path itself
    run.info.write_text("{}", encoding="utf-8")
    assert RunFolder.of(run.particles) == run and RunFolder.of(tmp_path) == run
