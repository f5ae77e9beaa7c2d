"""The watchdog: quiet while both halves learn, one line when a half stalls, the halves disagree, or
the images do not show the consensus map (rules on synthetic histories; short runs of the tiny AdK
set)."""

import json
import re
import shutil
from dataclasses import replace

import mrcfile
import numpy as np
import pytest

from helpers.deformation_data import FAST, LEARNING, train
from napari_dynamight.engine.deformation import trainer, watchdog
from napari_dynamight.engine.errors import InputError


def row(epoch, half, rms, gain_z, gain=None, mode="full", lam=0.1):
    gain = 0.01 * gain_z if gain is None else gain
    return {
        "epoch": epoch,
        "half": half,
        "mode": mode,
        "data": 1.0,
        "regularisation": 0.0,
        "kl": 0.0,
        "lambda": lam,
        "rms_displacement_angstrom": rms,
        "validation_data": 1.0,
        "deformation_gain": gain,
        "deformation_gain_z": gain_z,
        "latent_gain": gain,
        "latent_gain_z": gain_z,
    }


def history(rows_of_half_1, rows_of_half_2, warmup=2):
    """Rows per epoch: ``warmup`` epochs without motion, then the given (rms, z) pairs per half."""
    out = []
    for epoch in range(1, warmup + 1):
        out += [row(epoch, 1, 0.0, 0.0, mode="warmup"), row(epoch, 2, 0.0, 0.0, mode="warmup")]
    for k, (one, two) in enumerate(zip(rows_of_half_1, rows_of_half_2, strict=True)):
        out += [row(warmup + 1 + k, 1, *one), row(warmup + 1 + k, 2, *two)]
    return out


HEALTHY = [(0.5 + 0.1 * k, 4.0 + 0.1 * k) for k in range(12)]  # as measured: 0.50-1.9 Å, z 3.4-6.4


def test_quiet_while_both_halves_learn():
    assert watchdog.check(history(HEALTHY, [(rms * 0.8, z - 0.5) for rms, z in HEALTHY])) == []


def test_a_stalled_half_is_named_once_enough_epochs_have_trained():
    stalled = [(0.02, 0.3)] * 12
    log = history(HEALTHY, stalled)
    warnings = watchdog.check(log)
    assert len(warnings) == 1 and warnings[0].startswith("half 2 has stalled:"), warnings
    assert "0.02 Å RMS (half 1: 1.60 Å)" in warnings[0] and "gain z = 0.3" in warnings[0]
    assert "\n" not in warnings[0]
    assert watchdog.warning_key(warnings[0]) == "half 2 has stalled"
    # not during warm-up, nor before MIN_FULL_EPOCHS network-training epochs
    assert watchdog.check(history(HEALTHY[:9], stalled[:9])) == []
    assert watchdog.check(history(HEALTHY[:3], stalled[:3]), min_full_epochs=3)[0].startswith(
        "half 2 has stalled"
    )
    # a half that barely moves but whose latents clearly improve the fit has not stalled (it lags)
    keys = [watchdog.warning_key(w) for w in watchdog.check(history(HEALTHY, [(0.05, 6.0)] * 12))]
    assert keys == ["the two halves disagree"]
    # rows of runs made before the watchdog are ignored
    old = [{k: v for k, v in r.items() if k not in watchdog.FIELDS} for r in log]
    assert watchdog.check(old) == []


def test_both_halves_stalled_gives_a_line_each():
    warnings = watchdog.check(history([(0.0, 0.0)] * 12, [(0.01, 1.0)] * 12))
    assert [watchdog.warning_key(w) for w in warnings] == [
        "half 1 has stalled",
        "half 2 has stalled",
    ]


def test_halves_that_move_by_very_different_amounts_disagree():
    warnings = watchdog.check(history(HEALTHY, [(0.3, 4.0)] * 12))  # half 1 ends at 1.6 Å: 5x more
    assert len(warnings) == 1 and warnings[0].startswith("the two halves disagree:"), warnings
    assert "half 2 lags behind" in warnings[0]
    # gains 0.2 ± 0.02 and 0.01 ± 0.003: 9 standard errors and a factor of 20 apart
    gains = history([(1.0, 10.0, 0.2)] * 12, [(0.8, 3.5, 0.01)] * 12)
    assert watchdog.warning_key(watchdog.check(gains)[0]) == "the two halves disagree"
    # within the errors: quiet
    assert watchdog.check(history([(1.0, 4.0, 0.2)] * 12, [(0.8, 3.5, 0.05)] * 12)) == []


# --- end to end on the tiny simulated set ---------------------------------------------------------

SHORT = replace(FAST, epochs=8, refinement_rounds=0, latent_inference="encoder", checkpoint_every=8)
# 8 epochs: the sabotaged run's working half 1 then moves its Gaussians by about 1 Å (at 6, 0.12 Å:
# too close to the 0.1 Å below which a half counts as stalled)
# Encoder latents, no refinement: both halves learn 1.6-1.9 Å within 20 epochs (no consensus epochs
# within them; final agreement 0.92).
LEARNING_ENCODER = replace(LEARNING, refinement_rounds=0, latent_inference="encoder")


def run_warnings(out):
    return json.loads((out / "run.json").read_text())["warnings"]


@pytest.fixture(scope="module")
def stalled_run(simulated, tmp_path_factory, one_torch_thread):
    """Half 2's decoder never learns (learning rate 0); judged from the 2nd network epoch on."""
    patch = pytest.MonkeyPatch()
    original = trainer.HalfSet.__init__

    def frozen_half_2(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.half == 2:
            for group in self.optimisers["decoder"].param_groups:
                group["lr"] = 0.0

    patch.setattr(trainer.HalfSet, "__init__", frozen_half_2)
    patch.setattr(watchdog, "MIN_FULL_EPOCHS", 2)
    try:
        return train(simulated, tmp_path_factory.mktemp("stalled") / "run", SHORT)
    finally:
        patch.undo()


def test_a_sabotaged_half_is_named_in_run_json_and_the_loss_log(stalled_run):
    warnings = run_warnings(stalled_run)
    keys = [watchdog.warning_key(w) for w in warnings]
    assert "half 2 has stalled" in keys and "half 1 has stalled" not in keys, warnings
    assert "the two halves disagree" in keys  # the final check: agreement 0
    log = [json.loads(line) for line in (stalled_run / "losses.jsonl").read_text().splitlines()]
    assert all(set(watchdog.FIELDS) <= set(r) for r in log)
    half_2 = [r for r in log if r["half"] == 2]
    assert all(r["rms_displacement_angstrom"] == 0.0 and r["latent_gain_z"] == 0.0 for r in half_2)
    assert max(r["rms_displacement_angstrom"] for r in log if r["half"] == 1) > 0.1


def test_the_cli_prints_each_warning_as_one_line(stalled_run, capsys):
    from napari_dynamight.cli._progress import drive
    from napari_dynamight.engine.progress import Progress

    def operation():
        yield Progress("half 1: epoch 1/2", 1, 2)
        yield Progress(
            "watchdog", 1, None, message="half 2 has stalled: x", warning="half 2 has stalled: x"
        )
        yield Progress("half 1: epoch 2/2", 1, 2)
        return 7

    assert drive(operation(), "optimize deformations") == 7
    assert "warning: half 2 has stalled: x\n" in capsys.readouterr().err


def test_images_that_do_not_show_the_map_are_refused_before_anything_is_written(
    simulated, tmp_path, one_torch_thread
):
    noise = tmp_path / "noise"
    shutil.copytree(simulated.star.parent, noise, ignore=shutil.ignore_patterns("ground_truth"))
    for stack in noise.rglob("*.mrcs"):
        with mrcfile.open(stack, "r+") as handle:
            handle.data[...] = np.random.default_rng(1).normal(
                0, handle.data.std(), handle.data.shape
            )
    noisy = replace(simulated, star=noise / simulated.star.name)
    with pytest.raises(InputError, match="the images do not show the consensus map") as refused:
        train(noisy, tmp_path / "run", replace(SHORT, epochs=6))
    message = str(refused.value)
    assert "\n" not in message and str(noisy.star) in message
    scores = [float(z) for z in re.findall(r"(-?[0-9.]+) in half [12]", message)]
    assert len(scores) == 2 and all(abs(z) < 4 for z in scores), message  # standard normal
    assert not (tmp_path / "run").exists()


def test_the_amplitude_fit_s_z_score_is_large_on_particles_of_the_map(
    simulated, tmp_path, one_torch_thread, monkeypatch
):
    from napari_dynamight.engine.deformation import run as deformation_run

    threshold = deformation_run.MIN_AMPLITUDE_Z
    monkeypatch.setattr(
        deformation_run, "MIN_AMPLITUDE_Z", float("inf")
    )  # always refuse, to read z
    with pytest.raises(InputError) as refused:
        train(simulated, tmp_path / "run", replace(SHORT, epochs=1))
    scores = [float(z) for z in re.findall(r"(-?[0-9.]+) in half [12]", str(refused.value))]
    assert len(scores) == 2 and min(scores) > 3 * threshold, scores


def test_quiet_when_both_halves_learn(simulated, tmp_path, one_torch_thread):
    out = train(simulated, tmp_path / "run", LEARNING_ENCODER)
    assert run_warnings(out) == []
    result = json.loads((out / "run.json").read_text())["result"]
    agreement = result["halves_agreement"]
    assert agreement["agreement"] >= watchdog.FINAL_AGREEMENT
    assert 0.2 < agreement["motion_half1_angstrom"] / agreement["motion_half2_angstrom"] < 5
    assert min(result["amplitude_z"].values()) > 50  # the images show the map


def test_the_widgets_show_a_run_s_warnings(stalled_run, qtbot):
    pytest.importorskip("napari")
    from napari.components import ViewerModel

    from napari_dynamight._widgets.deformations import DeformationsWidget
    from napari_dynamight._widgets.explorer import ExplorerWidget

    widget = DeformationsWidget(ViewerModel())
    qtbot.addWidget(widget)
    assert widget.open_run(stalled_run)
    assert not widget.warnings_label.native.isHidden()
    assert "warning: half 2 has stalled" in widget.warnings_label.value
    explorer = ExplorerWidget(ViewerModel())
    qtbot.addWidget(explorer)
    assert any(w.startswith("half 2 has stalled") for w in explorer.show_run_warnings(stalled_run))
    assert "warning: half 2 has stalled" in explorer.warnings_label.value
    assert not explorer.warnings_label.native.isHidden()
