"""bench/bench_training.py --quick runs end to end on tiny data and writes sane numbers."""

import importlib.util
import json
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_training.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_training", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_training"] = module
    spec.loader.exec_module(module)
    return module


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_benchmark_writes_sane_json(tmp_path):
    bench = _load()
    out = tmp_path / "training.json"
    assert (
        bench.main(
            [
                "--quick",
                "--threads",
                "1",
                "--epochs",
                "2",
                "--output",
                str(out),
                "--work-directory",
                str(tmp_path / "work"),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    for key in ("torch", "cpu_count", "command", "load_average_before", "load_average_after"):
        assert key in report
    assert report["torch_threads"] == 1 and len(report["load_average_before"]) == 3
    assert report["device"] == "cpu" and report["device_name"] and "float32" in report["precision"]
    assert len(report["throughput"]) == len(bench.THROUGHPUT["quick"])
    for row in report["throughput"] + report["memory"]:
        assert row["timed_full_epochs"] == 1 and row["torch_threads"] == 1
        for key in (
            "seconds_per_epoch_half1",
            "seconds_per_epoch_half2",
            "peak_rss_mib",
            "peak_rss_anon_mib_sampled",
        ):
            assert _positive(row[key]), (key, row)
        rate = row["particle_epochs_per_second_both_halves"]
        halves = row["seconds_per_epoch_half1"] + row["seconds_per_epoch_half2"]
        assert math.isclose(
            rate, row["n_particles"] / halves, rel_tol=1e-9
        )  # the counting is as stated
        assert (
            50 < row["peak_rss_mib"] < 8000
            and row["peak_rss_anon_mib_sampled"] <= row["peak_rss_mib"]
        )
    assert {(r["n_particles"], r["image_cache"]) for r in report["memory"]} == {
        (64, True),
        (96, True),
        (64, False),
        (96, False),
    }
    for row in report["throughput"]:
        assert row["train_box"] <= row["image_box"] and _positive(
            row["projection_images_per_second"]
        )
        refine = row["refinement"]
        assert (
            refine["candidates"] == 128
            and 0 < refine["training_particles_both_halves"] < row["n_particles"]
        )
        for key in (
            "e_step_seconds_both_halves",
            "m_step_epoch_seconds_both_halves",
            "e_step_seconds_per_particle",
        ):
            assert _positive(refine[key]), (key, refine)
        assert math.isclose(
            refine["e_step_seconds_per_particle"],
            refine["e_step_seconds_both_halves"] / refine["training_particles_both_halves"],
        )
        assert (
            refine["default_round_seconds_per_particle"]
            > refine["e_step_seconds_both_halves"] / row["n_particles"]
        )
    for row in report["decode"]:
        assert _positive(row["decode_and_render_ms_median"]) and row["threads"] in (1, 2)
        assert _positive(row["decode_only_ms_median"])
