"""The Deformations widget's atomic-model picker (Xvfb): it reaches the settings, a misplaced model
is one line, a run made with the prior shows the model-bias warning when opened, and "Check model
bias" runs the control and shows its report."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from helpers.atomic_data import closed_model_in_tiny_set
from helpers.deformation_data import FAST
from napari_dynamight.engine.atomic_model import coarse_grain, write_moved_structure
from napari_dynamight.engine.deformation.run import optimize_deformations
from napari_dynamight.engine.deformation.settings import DeformationSettings
from napari_dynamight.engine.example_data import example_file
from napari_dynamight.engine.io.structure import read_structure
from napari_dynamight.engine.model_bias import BIAS_THRESHOLD, automatic_region
from napari_dynamight.engine.progress import run as drive
from napari_dynamight.engine.run_folder import RunFolder


def test_picker_reaches_the_settings_and_a_misplaced_model_is_one_line(
    qtbot, make_napari_viewer, simulated, tmp_path
):
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-dynamight", "Deformations")
    assert widget.settings().atomic_model is None  # off by default
    pdb = example_file("adk_closed.pdb")
    atoms = read_structure(pdb, drop_hydrogens=True)
    centre = np.average(atoms.positions_angstrom, axis=0, weights=atoms.atomic_numbers)
    shifted = write_moved_structure(
        pdb, tmp_path / "shifted.pdb", 16 * 2.5 - centre + np.array([0.0, 10.0, 0.0])
    )
    widget.particles.value, widget.consensus.value = simulated.star, simulated.consensus
    widget.run.value = tmp_path / "run"
    widget.atomic_model.value = shifted
    assert widget.settings().atomic_model == str(shifted.resolve())
    worker = widget.start()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.tasks.running, timeout=120_000)
    status = widget.tasks.status.text()
    assert widget.tasks.last_outcome.error is not None
    assert "\n" not in status and "off by a shift" in status and str(shifted) in status
    assert not (tmp_path / "run").exists()
    # a run file made with the prior: the form shows the model, the warnings the missing report
    run = tmp_path / "prior_run"
    run.mkdir()
    settings = replace(DeformationSettings(), atomic_model=str(shifted.resolve()))
    (run / "run.json").write_text(
        json.dumps(
            {
                "particles": str(simulated.star),
                "consensus": str(simulated.consensus),
                "n_particles": 400,
                "n_gaussians": 544,
                "train_box": 32,
                "settings": settings.to_dict(),
                "result": None,
                "warnings": [],
            }
        )
    )
    assert widget.open_run(run)
    assert widget.atomic_model.value == shifted.resolve()
    assert any("no model-bias report" in line for line in widget.warnings_label.shown)


def test_check_model_bias_button_runs_the_control_and_shows_its_report(
    qtbot, make_napari_viewer, simulated, tmp_path
):
    model = closed_model_in_tiny_set(tmp_path)
    run = tmp_path / "run"
    settings = replace(FAST, epochs=3, refinement_rounds=0, atomic_model=str(model.resolve()))
    drive(optimize_deformations(simulated.star, simulated.consensus, run, settings=settings))
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-dynamight", "Deformations")
    assert widget.open_run(run)
    assert any("no model-bias report" in line for line in widget.warnings_label.shown)
    widget.threads.value = 1
    widget.bias.residues.value = "A:9-3"  # a bad region: one line, nothing starts
    assert widget.check_model_bias() is None
    assert "--residues" in widget.summary.value and "\n" not in widget.summary.value
    widget.bias.residues.value = ""  # the automatic region
    widget.bias.shift.value = 3.0
    widget.bias.epochs.value = 1
    widget.bias.inverse_epochs.value = 1
    worker = widget.check_model_bias()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.tasks.running, timeout=300_000)
    assert widget.tasks.last_outcome.error is None, widget.tasks.status.text()
    report = json.loads((run / "model_bias.json").read_text())
    right = coarse_grain(model)
    region = automatic_region(right)
    inside = [region.contains(*right.residues[r][:2]) for r in right.residue]
    assert report["region"] == str(region) and report["mode"] == "move"
    assert report["n_gaussians_changed"] == sum(inside) > 0
    assert np.linalg.norm(report["shift_angstrom"]) == pytest.approx(3.0)
    assert (report["epochs"], report["inverse_epochs"]) == (1, 1)
    placements = report["placements"]
    assert abs(placements["consensus"]["t"]) <= 0.15  # the consensus map shows the right model
    score = placements["wrong_model_run"]["t"] - placements["consensus"]["t"]
    assert report["score_wrong_model"] == pytest.approx(score)
    assert report["reproduced_percent"] == round(100 * score)
    decoded = report["placements_decoded"]["wrong_model_run"]["t"] - placements["consensus"]["t"]
    assert report["score_wrong_model_decoded"] == pytest.approx(decoded)
    assert report["reproduced_percent_decoded"] == round(100 * decoded)
    limit = report["threshold"]
    assert limit == BIAS_THRESHOLD == 0.3
    assert (report["biased_map"], report["biased_decoded"]) == (score > limit, decoded > limit)
    assert report["biased"] == (score > limit or decoded > limit)
    # one epoch is the warm-up: the decoders have not moved the held wrong model, the run's own
    # decoders (right model) keep the region where the data have it
    assert decoded >= 0.8 and report["biased_decoded"] and report["biased"]
    assert abs(report["score_run_decoded"]) <= 0.2
    assert (run / "model_bias" / "run" / "reconstruction" / "full.mrc").is_file()
    assert (
        f"reproduces {report['reproduced_percent']}% of the wrong feature, its decoded volumes "
        f"{report['reproduced_percent_decoded']}%" in widget.summary.value
    )
    warning = RunFolder(run).model_bias_warning()
    assert widget.warnings_label.shown == ([warning] if warning else [])
    assert not any("no model-bias report" in line for line in widget.warnings_label.shown)
