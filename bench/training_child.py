"""One configuration of bench_training.py, measured in a fresh process so that its peak memory is its own.

Usage (by bench_training.py): ``python bench/training_child.py '{"star": ..., "epochs": 3, ...}'``; prints
one JSON line. Trains with :func:`optimize_deformations` and times every epoch from its Progress events:
an epoch of one half lasts from the event before its first one to its last one. ``"stop_early"`` closes
the generator (the engine's cancellation) once the last epoch ends, skipping the final outputs;
otherwise the run completes and the best-PC |Spearman| of each half's latents with the true frames
is measured. ``"decoder"`` picks the deformation network (default: the engine's). ``"cache": false`` builds the particle batches with ``max_cache_bytes=0``, so every
batch is read from the memory-mapped stack.
"""

from __future__ import annotations

import functools
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from napari_dynamight.engine.deformation import run as deformation_run
from napari_dynamight.engine.deformation.batches import ParticleBatches
from napari_dynamight.engine.deformation.settings import DeformationSettings
from napari_dynamight.engine.evaluation import latent_frame_ordering
from napari_dynamight.engine.io.star import read_particles


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status in MiB: ``RssAnon`` (resident anonymous memory now, i.e.
    without the file pages of the memory-mapped stack) or ``VmHWM`` (peak RSS of this program; unlike
    getrusage's ru_maxrss it does not count the parent's RSS at fork, which Linux keeps across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_anon_mib() -> float:
    return _status_mib("RssAnon")


def epoch_seconds(events: list[tuple[str, float]]) -> dict[str, float]:
    """Seconds of each ``half h: epoch e/E (mode)`` stage, from (stage, time) events."""
    starts, ends, previous = {}, {}, None
    for stage, now in events:
        if stage.startswith("half ") and ": epoch " in stage:
            starts.setdefault(stage, now if previous is None else previous)
            ends[stage] = now
        previous = now
    return {stage: ends[stage] - start for stage, start in starts.items()}


def measure(config: dict) -> dict:
    torch.set_num_threads(int(config["threads"]))
    if not config.get("cache", True):
        deformation_run.ParticleBatches = functools.partial(ParticleBatches, max_cache_bytes=0)
    settings = DeformationSettings(epochs=config["epochs"], warmup_epochs=1, batch_size=config["batch_size"],
                                   latent_inference="encoder", checkpoint_every=1000, refinement_rounds=0,
                                   control_points=config.get("control_points", 0),
                                   decoder=config.get("decoder", DeformationSettings.decoder), seed=0)
    last = f"half 2: epoch {settings.epochs}/{settings.epochs}"
    generator = deformation_run.optimize_deformations(
        config["star"], config["consensus"], config["run_directory"], settings=settings,
        consensus_model=config["model"], box=config["train_box"], device="cpu")
    events, peak_anon, started, result = [], _rss_anon_mib(), time.perf_counter(), None
    try:
        while True:
            event = next(generator)
            events.append((event.stage, time.perf_counter()))
            peak_anon = max(peak_anon, _rss_anon_mib())
            if config["stop_early"] and event.stage.startswith(last) and event.step == event.total:
                break
    except StopIteration as stop:
        result = stop.value
    finally:
        generator.close()
    per_stage = epoch_seconds(events)
    timed = range(2, settings.epochs + 1)  # epoch 1 is the warm-up
    halves = {h: [per_stage[s] for s in per_stage for e in timed if s.startswith(f"half {h}: epoch {e}/")]
              for h in (1, 2)}
    both = [a + b for a, b in zip(halves[1], halves[2], strict=True)]
    out = {
        "n_particles": config["n_particles"],
        "timed_full_epochs": len(both),
        "seconds_per_epoch_half1": float(np.mean(halves[1])),
        "seconds_per_epoch_half2": float(np.mean(halves[2])),
        "particle_epochs_per_second_both_halves": config["n_particles"] / float(np.mean(both)),
        "peak_rss_mib": _status_mib("VmHWM"),
        "getrusage_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_anon_mib_sampled": peak_anon,
        "wall_seconds": time.perf_counter() - started,
        "torch_threads": torch.get_num_threads(),
    }
    out["train_box"] = json.loads((Path(config["run_directory"]) / "run.json").read_text())["train_box"]
    if result is not None:
        frames = pd.read_csv(config["labels"])["frame"].to_numpy()
        latents = np.asarray(result.latents)  # each particle by its own half, STAR row order
        half_sets = read_particles(Path(config["run_directory"]) / "particles.star").particles["dmHalfSet"].to_numpy()
        frames = frames[: len(latents)]  # the STAR is the first rows of the simulation
        out["best_pc_abs_spearman"] = {
            str(h): float(latent_frame_ordering(latents[half_sets == h], frames[half_sets == h]).best)
            for h in (1, 2)}
    return out


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))), flush=True)
