"""The Deformations, Inverse deformations and Reconstruction widgets in a shown viewer (Xvfb).

Every stage runs for real on the tiny simulated ADK set (400 particles, box 32) with FAST settings.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.deformation_data import FAST, train
from napari_dynamight._widgets.deformations import POINTS_LAYER, DeformationsWidget
from napari_dynamight.engine.consensus import load_model
from napari_dynamight.engine.deformation.checkpoint import CHECKPOINT_FOLDER, load_checkpoint
from napari_dynamight.engine.io.lock import LOCK_NAME
from napari_dynamight.engine.progress import run as drive

torch.set_num_threads(1)
TRAINED = replace(FAST, epochs=12)  # enough epochs for displacements of a few tenths of an Å
FAST_INVERSE = dict(
    epochs=10,
    batch_size=32,
    gaussians_per_particle=64,
    smoothness_points=8,
    width=32,
    depth=2,
    checkpoint_every=1,
)


@pytest.fixture(scope="module")
def trained_run(simulated, tmp_path_factory):
    """A deformation run made by the engine, as the command line would (for opening in widgets)."""
    return train(simulated, tmp_path_factory.mktemp("cli_run") / "run", TRAINED)


def dock(make_napari_viewer, name):
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-dynamight", name)
    return viewer, widget


def wait_for(qtbot, widget, worker, timeout=120_000):
    assert worker is not None, widget.summary.value
    qtbot.waitUntil(lambda: not widget.tasks.running, timeout=timeout)
    qtbot.waitUntil(
        lambda: not getattr(widget, "reference_loader", None) or not widget.reference_loader.busy,
        timeout=30_000,
    )


def fill_deformations(widget, simulated, folder, settings=FAST):
    widget.particles.value = simulated.star
    widget.consensus.value = simulated.consensus
    widget.consensus_model.value = simulated.model
    widget.run.value = folder
    widget.base_settings = settings
    widget.options.show(settings)
    widget.threads.value = 1


def assert_complete_checkpoints(folder):
    """Only finished files: no temporary file left, every checkpoint loads."""
    assert not [p.name for p in folder.rglob(".*")], "a temporary file was left"
    checkpoints = sorted((folder / CHECKPOINT_FOLDER).glob("*.pt"))
    assert checkpoints
    for path in checkpoints:
        assert "halves" in load_checkpoint(path)
    return checkpoints


def test_deformations_train_with_live_losses_and_gaussians(
    qtbot, make_napari_viewer, simulated, tmp_path
):
    viewer, widget = dock(make_napari_viewer, "Deformations")
    assert isinstance(widget, DeformationsWidget) and widget.device.choices[0] == "cpu"
    folder = tmp_path / "run"
    fill_deformations(widget, simulated, folder, replace(FAST, epochs=4, latent_dim=3))
    assert widget.settings() == replace(FAST, epochs=4, latent_dim=3)
    wait_for(qtbot, widget, widget.start())
    assert widget.tasks.last_outcome.error is None, widget.tasks.status.text()
    assert np.load(folder / "latent_means.npy").shape == (400, 3)
    log = [json.loads(line) for line in (folder / "losses.jsonl").read_text().splitlines()]
    for half in (1, 2):
        epochs, data = widget.plot.curve(0, f"half {half}")
        _, lam = widget.plot.curve(1, f"half {half}")
        np.testing.assert_array_equal(
            epochs, [1, 2, 3, 4, 6]
        )  # 6: after the refinement round's 2 epochs
        np.testing.assert_allclose(data, [row["data"] for row in log if row["half"] == half])
        np.testing.assert_allclose(lam, [row["lambda"] for row in log if row["half"] == half])
    assert widget.reference_loader.served >= 2  # the Gaussians were updated during training
    points = viewer.layers[POINTS_LAYER].data
    initial = load_model(simulated.model).positions_angstrom.numpy()[:, ::-1]
    final = load_model(folder / "consensus_half1.pt").positions_angstrom.numpy()[:, ::-1]
    np.testing.assert_allclose(points, final, atol=1e-5)
    assert np.abs(points - initial).max() > 0.05
    assert "4 epochs (done)" in widget.summary.value and "400 × 3" in widget.summary.value
    assert not (folder / LOCK_NAME).exists()


def test_open_a_command_line_run_fills_the_form(qtbot, make_napari_viewer, trained_run, simulated):
    viewer, widget = dock(make_napari_viewer, "Deformations")
    assert widget.open_run(trained_run)
    assert widget.particles.value == simulated.star.resolve()
    assert widget.consensus_model.value == simulated.model.resolve()
    assert widget.settings() == TRAINED and widget.epochs.value == TRAINED.epochs
    wait_for(qtbot, widget, True)
    assert (
        len(widget.plot.curve(0, "half 2")[0]) == TRAINED.epochs + TRAINED.refinement_rounds
    )  # a point per round
    assert len(viewer.layers[POINTS_LAYER].data) == 300
    refinement = TRAINED.refinement_rounds * TRAINED.refinement_epochs
    assert (
        f"finished: 12 training epochs + {refinement} refinement epochs "
        f"({TRAINED.refinement_rounds} rounds of {TRAINED.refinement_epochs}) = "
        f"{12 + refinement} epochs" in widget.summary.value
    )


def test_cancel_leaves_loadable_checkpoints_and_resume_finishes(
    qtbot, make_napari_viewer, simulated, tmp_path
):
    viewer, widget = dock(make_napari_viewer, "Deformations")
    folder = tmp_path / "run"
    fill_deformations(widget, simulated, folder, replace(FAST, epochs=40, checkpoint_every=1))
    widget.threads.value = 2  # on a CPU: the half sets in two processes of one thread each
    worker = widget.start()
    qtbot.waitUntil(lambda: (folder / CHECKPOINT_FOLDER).is_dir(), timeout=60_000)
    holder = json.loads((folder / LOCK_NAME).read_text())  # held while the worker runs
    assert holder["pid"] == os.getpid() and holder["command"] == "optimize-deformations"
    assert len(multiprocessing.active_children()) == (2 if (os.cpu_count() or 1) >= 2 else 0)
    widget.tasks.cancel_button.click()
    wait_for(qtbot, widget, worker)
    assert widget.tasks.last_outcome.cancelled and not (folder / LOCK_NAME).exists()
    assert not multiprocessing.active_children()  # the processes stopped with the worker
    widget.threads.value = 1  # and the run resumes in one process
    done = assert_complete_checkpoints(folder)
    assert "final.pt" not in {p.name for p in done} and not (folder / "latent_means.npy").exists()
    epochs_done = max(load_checkpoint(p)["epoch"] for p in done)
    assert epochs_done < 40
    widget.epochs.value = epochs_done + 1  # a resumed run may ask for a different number of epochs
    wait_for(qtbot, widget, widget.start(resume=True))
    assert widget.tasks.last_outcome.error is None, widget.tasks.status.text()
    assert widget.result.epochs == epochs_done + 1 and not (folder / LOCK_NAME).exists()
    assert np.load(folder / "latent_means.npy").shape == (400, FAST.latent_dim)


def test_closing_napari_during_a_run_cancels_it_cleanly(
    qtbot, make_napari_viewer, simulated, tmp_path
):
    viewer, widget = dock(make_napari_viewer, "Deformations")
    folder = tmp_path / "run"
    fill_deformations(widget, simulated, folder, replace(FAST, epochs=40, checkpoint_every=1))
    widget.start()
    qtbot.waitUntil(lambda: (folder / CHECKPOINT_FOLDER).is_dir(), timeout=60_000)
    viewer.close()
    # the widget waited for the engine generator to close and for the worker's last signals
    assert widget._ended.is_set() and not widget.tasks.running
    assert_complete_checkpoints(folder)
    assert not (folder / "latent_means.npy").exists() and not (folder / LOCK_NAME).exists()


def test_bad_input_is_one_line_naming_the_file(qtbot, make_napari_viewer, simulated, tmp_path):
    viewer, widget = dock(make_napari_viewer, "Deformations")
    fill_deformations(widget, simulated, tmp_path / "run")
    missing = tmp_path / "missing.star"
    widget.particles.value = missing
    wait_for(qtbot, widget, widget.start())
    status = widget.tasks.status.text()
    assert widget.tasks.last_outcome.error is not None
    assert "\n" not in status and str(missing) in status
    assert POINTS_LAYER not in viewer.layers
    assert not (tmp_path / "run").exists()  # the folder it made for the run and its lock are gone


@pytest.mark.parametrize("name", ["Inverse deformations", "Reconstruction"])
def test_a_folder_that_is_no_run_is_one_line(qtbot, make_napari_viewer, tmp_path, name):
    viewer, widget = dock(make_napari_viewer, name)
    assert not widget.open_run(tmp_path) and str(tmp_path / "run.json") in widget.summary.value
    wait_for(qtbot, widget, widget.start())
    status = widget.tasks.status.text()
    assert widget.tasks.last_outcome.error is not None
    assert "\n" not in status and f"{tmp_path}: not a" in status and not len(viewer.layers)


def test_inverse_widget_learns_the_inverse(qtbot, make_napari_viewer, trained_run):
    from napari_dynamight.engine.inverse.settings import InverseSettings

    viewer, widget = dock(make_napari_viewer, "Inverse deformations")
    assert widget.open_run(trained_run)
    widget.base_settings = InverseSettings(**FAST_INVERSE)
    widget.epochs.value = 10
    wait_for(qtbot, widget, widget.start())
    assert widget.tasks.last_outcome.error is None, widget.tasks.status.text()
    inverse = trained_run / "inverse"
    assert (inverse / "final.pt").is_file() and (inverse / "summary.json").is_file()
    assert not (trained_run / LOCK_NAME).exists()
    for half in (1, 2):
        summary = widget.result.summary[f"half{half}"]
        # 10 epochs undo part of the motion (measured 1.02 of 1.61 Å); the inverse's accuracy is
        # tested in tests/test_inverse.py
        assert summary["held_out_error_angstrom"] < 0.8 * summary["held_out_displacement_angstrom"]
        epochs, loss = widget.plot.curve(0, f"half {half}")
        np.testing.assert_array_equal(epochs, np.arange(1, 11))
        assert np.isfinite(loss).all() and loss[-1] < loss[0]
        assert len(widget.plot.curve(1, f"half {half}")[1]) == 10
    assert "held-out error" in widget.summary.value
    assert widget.open_run(trained_run)  # Open run: each half's held-out error, and the summary
    assert (
        "half 1: held-out error" in widget.summary.value
        and "training error" in widget.summary.value
    )


def test_reconstruction_widget_shows_half_maps_and_fsc(
    qtbot, make_napari_viewer, trained_run, simulated
):
    from napari_dynamight.engine.inverse.run import optimize_inverse_deformations
    from napari_dynamight.engine.inverse.settings import InverseSettings
    from napari_dynamight.engine.io.mrc import read_map

    if not (trained_run / "inverse" / "final.pt").is_file():  # when run alone
        drive(optimize_inverse_deformations(trained_run, settings=InverseSettings(**FAST_INVERSE)))
    viewer, widget = dock(make_napari_viewer, "Reconstruction")
    assert widget.open_run(trained_run) is None and "no reconstruction yet" in widget.summary.value
    wait_for(qtbot, widget, widget.start())
    assert widget.tasks.last_outcome.error is None, widget.tasks.status.text()
    folder = trained_run / "reconstruction"
    assert not (trained_run / LOCK_NAME).exists()
    consensus, voxel = read_map(simulated.consensus)
    for role, name in (("half 1", "half1.mrc"), ("half 2", "half2.mrc"), ("full", "full.mrc")):
        layer = viewer.layers[f"reconstruction: {role}"]
        volume, size = read_map(folder / name)
        np.testing.assert_allclose(layer.scale, [voxel] * 3)
        np.testing.assert_allclose(layer.data_to_world([16, 16, 16]), [0, 0, 0], atol=1e-9)
        np.testing.assert_array_equal(layer.data, volume)
    full = viewer.layers["reconstruction: full"].data
    assert np.corrcoef(full.ravel(), consensus.ravel())[0, 1] > 0.95  # measured 0.986
    table = np.loadtxt(folder / "fsc.csv", delimiter=",", skiprows=1)
    for column, name in ((2, "deformed"), (3, "standard")):
        frequency, curve = widget.plot.curve(0, name)
        np.testing.assert_allclose(frequency, table[:, 0], rtol=1e-6)
        np.testing.assert_allclose(curve, table[:, column], rtol=1e-6)
        assert curve[1:4].min() > 0.8  # the half maps agree at low resolution
    assert "FSC 0.143 at" in widget.summary.value

    for layer in list(viewer.layers):  # a reconstruction already in the folder opens as it is
        viewer.layers.remove(layer)
    widget.plot.clear()
    wait_for(qtbot, widget, widget.open_run(trained_run))
    assert {"reconstruction: half 1", "reconstruction: half 2"} <= {
        layer.name for layer in viewer.layers
    }
    assert len(widget.plot.curve(0, "deformed")[1]) == len(table)
    assert "half-map FSC 0.143 at" in widget.summary.value and "(deformed)" in widget.summary.value
    assert f"voxel size {voxel:.4g} Å" in widget.summary.value
    full = viewer.layers["reconstruction: full"]  # an iso-surface at the automatic level, in Å
    assert (
        full.rendering == "iso"
        and full.blending == "translucent"
        and str(full.units[0]) == "angstrom"
    )


def test_open_run_summaries_name_their_numbers(trained_run):
    """The inverse summary's held-out errors and the deformation summary's labelled epochs and
    warnings, from the files a run holds."""
    from napari_dynamight._widgets.deformations import run_summary
    from napari_dynamight._widgets.inverse import held_out_errors
    from napari_dynamight.engine.run_folder import read_run_info

    log = [
        {"epoch": epoch, "half": half, "held_out_error_angstrom": 1.0 / epoch + half}
        for epoch in (1, 2)
        for half in (1, 2)
    ]
    assert held_out_errors(log) == [
        "half 1: held-out error 1.50 Å at epoch 2",
        "half 2: held-out error 2.50 Å at epoch 2",
    ]
    info = read_run_info(trained_run) | {"warnings": ["half 2: the data loss stalled"]}
    text = run_summary(trained_run, info, TRAINED)
    assert f"finished: {TRAINED.epochs} training epochs + " in text and "refinement epochs" in text
    assert "1 watchdog warning (in red above)" in text
