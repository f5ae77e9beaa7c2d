"""The Deformations widget's atomic-model picker (Xvfb): it reaches the settings, a misplaced model
is one line, and a run made with the prior shows the model-bias warning when opened."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from napari_dynamight.engine.atomic_model import write_moved_structure
from napari_dynamight.engine.deformation.settings import DeformationSettings
from napari_dynamight.engine.example_data import example_file
from napari_dynamight.engine.io.structure import read_structure


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
