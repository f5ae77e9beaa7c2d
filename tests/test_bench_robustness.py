"""The robustness benchmark in --quick mode: one variant and the two controls (pure noise, one
conformation), one seed."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_robustness.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_robustness", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_a_complete_report(bench, tmp_path):
    output = tmp_path / "robustness.json"
    status = bench.main(
        [
            "--quick",
            "--variants",
            "snr001_n4000",
            "pure_noise_n1000",
            "one_conformation_snr001_n1000",
            "--seeds",
            "0",
            "--output",
            str(output),
            "--work-directory",
            str(tmp_path / "work"),
        ]
    )
    report = json.loads(output.read_text())
    assert status == 0, [r.get("traceback") for r in report["runs"]]
    assert output.with_suffix(".png").stat().st_size > 1000
    assert report["quick"] is True and report["seeds"] == [0]
    assert report["maps_measured_for"] == ["snr001_n4000"]
    assert report["deformation_overrides"]["epochs"] == 3
    assert report["deformation_settings"]["epochs"] == 3 and "torch" in report
    assert [(r["variant"], r["seed"]) for r in report["runs"]] == [
        ("snr001_n4000", 0),
        ("pure_noise_n1000", 0),
        ("one_conformation_snr001_n1000", 0),
    ]
    signal, noise, rigid = report["runs"]
    for run in report["runs"]:
        assert "error" not in run and run["wall_seconds"] > 0
        assert run["simulation"]["n_particles"] == 200
    # pure noise is refused before training: the amplitude fit finds no trace of the map
    assert "the images do not show the consensus map" in noise["refused"]
    assert noise["refused"].startswith("WORK/pure_noise_n1000/seed_0/data/particles.star: ")
    assert str(tmp_path) not in output.read_text()  # no path of this machine in the report
    assert "per_half" not in noise and "training" not in noise
    assert report["aggregate"]["pure_noise_n1000"]["refused_seeds"] == [0]
    # one conformation: nothing to order, the motion and the halves' agreement are recorded
    assert rigid["ceiling"] == {"skipped": "one conformation: there is no order to recover"}
    assert set(rigid["per_half"]["1"]) >= {"rms_displacement_angstrom", "decoded_volumes"}
    assert "frame" not in rigid["per_half"]["1"]
    # the per-Gaussian error estimate against the true motion: a rank correlation for the signal,
    # none without motion
    assert -1 <= signal["gaussian_error_vs_motion_spearman"] <= 1
    assert rigid["gaussian_error_vs_motion_spearman"] is None
    for run in (signal, rigid):
        assert min(run["watchdog"]["amplitude_z"].values()) > 8
        assert isinstance(run["watchdog"]["warnings"], list)
    for half in ("1", "2"):
        entry = signal["per_half"][half]
        ceiling = entry["frame"]["ceiling_abs_spearman"]
        rho = entry["frame"]["best_abs_spearman"]
        assert 0.0 <= ceiling <= 1.0 and 0.0 <= rho <= 1.0 and math.isfinite(rho)
        assert entry["frame"]["gap_to_ceiling"] == pytest.approx(ceiling - rho)
        assert entry["rms_displacement_angstrom"] >= 0
    # the signal's ceiling is well above chance; pure noise's is at chance
    assert min(signal["per_half"][h]["frame"]["ceiling_abs_spearman"] for h in "12") > 0.5
    for half in "12":
        assert noise["ceiling"]["abs_spearman_by_half"][half] < 0.35
        decoded = signal["per_half"][half]["decoded_volumes"]
        assert (
            -1 <= decoded["mean_cc_decoded"] <= 1 and 0 <= decoded["fraction_decoded_better"] <= 1
        )
        assert decoded["gain"] == pytest.approx(
            decoded["mean_cc_decoded"] - decoded["mean_cc_consensus"]
        )
        # two training pixels: the quick set is box 32 at 3 Å, Fourier-cropped to the training box
        assert decoded["train_nyquist_angstrom"] == pytest.approx(
            2 * 3.0 * 32 / signal["training"]["train_box"]
        )
        assert -2 <= decoded["gain_to_train_nyquist"] <= 2
        assert -2 <= decoded["reference_gain"] <= 2
        maps = signal["maps"]["per_half"][half]
        assert (
            maps["deformed"]["resolution_fsc05_angstrom"] > 0
            and 0 < maps["deformed"]["fsc_area"] <= 1
        )
        assert maps["relion"]["resolution_fsc05_angstrom"] > 0
    assert "maps" not in noise and "maps" not in rigid
    aggregate = report["aggregate"]["snr001_n4000"]
    worst = min(signal["per_half"][h]["frame"]["best_abs_spearman"] for h in "12")
    assert aggregate["frame"]["worst_half_abs_spearman"]["min"] == pytest.approx(worst)
    assert "acceptance" in aggregate and isinstance(aggregate["acceptance"]["met"], bool)
    assert "maps" in aggregate
    assert (
        report["aggregate"]["one_conformation_snr001_n1000"][
            "rms_displacement_larger_half_angstrom"
        ]["n"]
        == 1
    )

    def reused(*arguments: str) -> dict:
        """The one run of a --quick --reuse call of seed 0 in the same folders."""
        common = ["--quick", "--seeds", "0", "--reuse", "--output", str(output)]
        status = bench.main([*common, "--work-directory", str(tmp_path / "work"), *arguments])
        assert status == 0
        return json.loads(output.read_text())["runs"][0]

    # --reuse takes finished runs as they are
    assert reused("--variants", "pure_noise_n1000").get("reused") is True
    # ... and measures again what a run measured before a metric existed, without training
    result_path = tmp_path / "work" / "snr001_n4000" / "seed_0" / "result.json"
    older = json.loads(result_path.read_text())
    for half in "12":
        del older["per_half"][half]["decoded_volumes"]["gain_to_train_nyquist"]
        del older["per_half"][half]["decoded_volumes"]["reference_gain"]
    result_path.write_text(json.dumps(older))
    again = reused("--variants", "snr001_n4000", "--maps", "snr001_n4000")
    assert again["training"] == signal["training"]
    for half in "12":
        assert again["per_half"][half]["decoded_volumes"]["gain_to_train_nyquist"] == (
            pytest.approx(signal["per_half"][half]["decoded_volumes"]["gain_to_train_nyquist"])
        )
        assert again["per_half"][half]["decoded_volumes"]["reference_gain"] == (
            pytest.approx(signal["per_half"][half]["decoded_volumes"]["reference_gain"])
        )
    # --reuse with --maps adds the maps to a run trained without them, and does not train again
    variant = "one_conformation_snr001_n1000"
    run = reused("--variants", variant, "--maps", variant)
    assert run.get("reused") is True and run["training"] == rigid["training"]
    assert run["maps_measured"] is True and run["run_settings"]["maps"] is True
    for half in "12":
        assert run["maps"]["per_half"][half]["deformed"]["resolution_fsc05_angstrom"] > 0
    # ... and a later --reuse without --maps takes that run as it is, maps included
    again = reused("--variants", variant, "--maps", "snr001_n4000")  # no maps for this variant
    assert again.get("reused") is True and again["training"] == rigid["training"]
    assert again["maps"] == run["maps"]


def test_unknown_variant_is_refused(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--variants", "snr_banana"])
    assert "unknown variant" in capsys.readouterr().err
