"""The atomic-model prior in training: the bond graph replaces the radius graph's distance term,
--atomic-model reaches the settings and the run identity, a misplaced model is refused in one line,
and the reference stays the model in training."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.optimize_cli import one_line_error, optimize_command, quick_options
from napari_dynamight.cli import main
from napari_dynamight.cli.optimize_deformations import add_arguments, settings_from
from napari_dynamight.engine.atomic_model import write_moved_structure
from napari_dynamight.engine.deformation.graph import bond_graph, build_graph
from napari_dynamight.engine.deformation.losses import (
    distance_loss,
    regularisation_loss,
    repulsion_loss,
)
from napari_dynamight.engine.deformation.run import optimize_deformations
from napari_dynamight.engine.deformation.settings import DeformationSettings
from napari_dynamight.engine.errors import Cancelled
from napari_dynamight.engine.example_data import example_file
from napari_dynamight.engine.io.structure import read_structure
from napari_dynamight.engine.progress import run
from napari_dynamight.engine.run_folder import RunFolder

QUICK = quick_options(epochs=1, refinement_rounds=0)


def fitted_adk(folder, box=32, pixel=2.5, offset=(0.0, 0.0, 0.0)):
    """The closed AdK structure moved into the tiny simulation's map (plus ``offset`` Å)."""
    pdb = example_file("adk_closed.pdb")
    atoms = read_structure(pdb, drop_hydrogens=True)
    centre = np.average(atoms.positions_angstrom, axis=0, weights=atoms.atomic_numbers)
    return write_moved_structure(
        pdb, folder / "fitted.pdb", box // 2 * pixel - centre + np.array(offset)
    )


def test_bond_graph_replaces_the_distance_term_and_repulsion_stays():
    # a chain of four points 3.8 Å apart: bonds 0-1, 1-2, 2-3; the radius graph also links 0-2
    reference = torch.tensor([[0.0, 0, 0], [3.8, 0, 0], [3.8, 3.8, 0], [0.0, 3.8, 0]])
    graph = build_graph(reference)
    bonds = bond_graph(
        torch.tensor([[0, 1], [1, 2], [2, 3]]), reference, graph.mean_neighbour_distance
    )
    assert torch.allclose(bonds.rest_lengths, torch.full((3,), 3.8))
    # fold the chain open at the middle bond: bond lengths stay, the 0-2 and 0-3 distances change
    opened = torch.tensor([[[0.0, 0, 0], [3.8, 0, 0], [7.6, 0, 0], [7.6, 3.8, 0]]])
    assert distance_loss(opened, reference, bonds) == pytest.approx(0.0, abs=1e-10)
    assert distance_loss(opened, reference, graph) > 1.0
    assert regularisation_loss(opened, reference, graph, bonds) == pytest.approx(0.0, abs=1e-10)
    # swinging point 2 about point 1 towards point 0 (and 3 with it) keeps every bond, costs
    # repulsion
    phi = np.radians(80.0)
    x, y = 3.8 - 3.8 * np.sin(phi), 3.8 * np.cos(phi)
    squeezed = torch.tensor(
        [[[0.0, 0, 0], [3.8, 0, 0], [x, y, 0], [x, y, 3.8]]], dtype=torch.float32
    )
    assert distance_loss(squeezed, reference, bonds) == pytest.approx(0.0, abs=1e-8)
    assert repulsion_loss(squeezed, reference, graph) > 0.1
    assert regularisation_loss(squeezed, reference, graph, bonds) == pytest.approx(
        float(repulsion_loss(squeezed, reference, graph))
    )


def test_option_reaches_the_settings_off_by_default(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--particles", "p.star", "--consensus", "c.mrc", "--output-directory", "run"]
    assert settings_from(parser.parse_args(base)).atomic_model is None
    assert DeformationSettings().atomic_model is None
    chosen = settings_from(parser.parse_args(base + ["--atomic-model", str(tmp_path / "m.pdb")]))
    assert chosen.atomic_model == str((tmp_path / "m.pdb").resolve())
    assert DeformationSettings.from_dict(chosen.to_dict()) == chosen


def _command(simulated, out, model, *extra):
    return optimize_command(
        simulated, out, "--atomic-model", str(model), *extra, quick=QUICK, consensus_model=False
    )


def test_run_with_the_prior_records_it_and_refuses_another_model(simulated, tmp_path, capsys):
    (tmp_path / "shifted").mkdir()
    shifted = fitted_adk(tmp_path / "shifted", offset=(10.0, 0.0, 0.0))
    out = tmp_path / "run"
    one_line_error(
        capsys,
        main(_command(simulated, out, shifted)),
        "off by a shift",
        "moved by (-7.5, 0.0, 0.0)",
    )  # the map fits best 2.5 Å off anyway
    assert not out.exists()
    one_line_error(
        capsys,
        main(_command(simulated, out, fitted_adk(tmp_path), "--n-gaussians", "300")),
        "--n-gaussians",
    )
    # the run starts (stopped once its run file is written: training is not what is tested here)
    settings = replace(
        DeformationSettings(epochs=1), atomic_model=str(fitted_adk(tmp_path).resolve())
    )
    with pytest.raises(Cancelled):
        run(
            optimize_deformations(simulated.star, simulated.consensus, out, settings=settings),
            should_stop=lambda: RunFolder(out).info.is_file(),
        )
    info = json.loads((out / "run.json").read_text())
    assert info["settings"]["atomic_model"] == str((tmp_path / "fitted.pdb").resolve())
    assert info["n_gaussians"] == 544 and info["identity"]["atomic_model_sha256"]
    assert "no model-bias report" in RunFolder(out).model_bias_warning()
    # a resume with another model (same path, other content) is refused before anything is written
    write_moved_structure(tmp_path / "fitted.pdb", tmp_path / "fitted.pdb", (0.5, 0.0, 0.0))
    one_line_error(
        capsys, main(_command(simulated, out, tmp_path / "fitted.pdb", "--resume")), "atomic model"
    )


def test_model_bias_warning_follows_the_report(tmp_path):
    folder = RunFolder(tmp_path)
    settings = replace(DeformationSettings(), atomic_model="model.pdb").to_dict()
    folder.info.write_text(json.dumps({"settings": DeformationSettings().to_dict()}))
    assert folder.model_bias_warning() is None  # no prior, no warning
    folder.info.write_text(json.dumps({"settings": settings}))
    assert "no model-bias report" in folder.model_bias_warning()
    folder.model_bias_report.write_text(json.dumps({"biased": True, "reproduced_percent": 80}))
    assert "80%" in folder.model_bias_warning()
    # the decoded volumes' share, where the report has it
    report = {"biased": True, "reproduced_percent": 10, "reproduced_percent_decoded": 75}
    folder.model_bias_report.write_text(json.dumps(report))
    assert "10% of a deliberately wrong feature" in folder.model_bias_warning()
    assert "75% in its decoded volumes" in folder.model_bias_warning()
    folder.model_bias_report.write_text(json.dumps({"biased": False, "reproduced_percent": 10}))
    assert folder.model_bias_warning() is None


def test_with_the_prior_the_reference_stays_the_model(simulated, tmp_path):
    """The model is the reference: neither the Gaussians' updates nor the reference replacements
    (here after every epoch) move it; the deformations alone do."""
    from helpers.deformation_data import FAST
    from napari_dynamight.engine.consensus import load_model
    from napari_dynamight.engine.deformation.decode import DeformationRun

    model = str(fitted_adk(tmp_path).resolve())
    settings = replace(
        FAST, epochs=4, reference_update_every=1, refinement_rounds=0, atomic_model=model
    )
    out = tmp_path / "run"
    run(optimize_deformations(simulated.star, simulated.consensus, out, settings=settings))
    initial = load_model(RunFolder(out).initial_model)
    trained = DeformationRun.load(out)
    for half in (1, 2):
        reference = trained.reference(half)
        assert torch.equal(reference.positions_angstrom, initial.positions_angstrom.float())
    log = RunFolder(out).read_loss_log()
    assert max(row["rms_displacement_angstrom"] for row in log) > 0.05  # the decoders did move


def test_a_run_with_the_prior_ends_with_its_bias_report(simulated, tmp_path):
    """Training with the prior runs the model-bias control as it ends (the run's report is written,
    no reminder left); with the check off the run ends with the reminder and no report."""
    from helpers.atomic_data import closed_model_in_tiny_set
    from helpers.deformation_data import FAST
    from napari_dynamight.engine.model_bias import BiasCheckSettings, optimize_deformations_checked

    model = str(closed_model_in_tiny_set(tmp_path).resolve())
    settings = replace(FAST, epochs=3, refinement_rounds=0, atomic_model=model)
    control = BiasCheckSettings(shift=3.0, epochs=1, inverse_epochs=1)
    out = tmp_path / "run"
    result = run(
        optimize_deformations_checked(
            simulated.star, simulated.consensus, out, settings=settings, control=control
        )
    )
    report = json.loads(RunFolder(out).model_bias_report.read_text())
    assert result.bias_report.report == report
    assert (report["epochs"], report["inverse_epochs"], report["mode"]) == (1, 1, "move")
    assert np.linalg.norm(report["shift_angstrom"]) == pytest.approx(3.0)
    # the rerun's one epoch is the warm-up: its decoders keep the held wrong model
    assert report["score_wrong_model_decoded"] >= 0.8 and report["biased"]
    assert not any("model-bias" in line for line in result.warnings)
    assert f"{report['reproduced_percent']}%" in RunFolder(out).model_bias_warning()

    unchecked = tmp_path / "unchecked"
    result = run(
        optimize_deformations_checked(
            simulated.star,
            simulated.consensus,
            unchecked,
            settings=replace(settings, bias_check=False, epochs=1),
        )
    )
    assert result.bias_report is None and not RunFolder(unchecked).model_bias_report.exists()
    assert any(f"model-bias {unchecked}" in line for line in result.warnings)
    assert "no model-bias report" in RunFolder(unchecked).model_bias_warning()
