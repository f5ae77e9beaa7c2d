"""One configuration of bench_training.py, measured in a fresh process so that its peak memory is
its own.

Usage (by bench_training.py): ``python bench/training_child.py '{"star": ..., "epochs": 3, ...}'``;
prints one JSON line. Trains with :func:`optimize_deformations` and times every epoch from its
Progress events: an epoch of one half lasts from the event before its first one to its last one.
``"stop_early"`` closes the generator (the engine's cancellation) once the last epoch (or, with
``"refinement": true``, the one refinement round of one M-step epoch) ends, skipping the final
outputs; otherwise the run completes and the best-PC |Spearman| of each half's latents with the true
frames is measured. A refinement round is timed in two parts: its E-step (the posteriors over the
candidates: from the event before the first ``posteriors`` event to the last) and its M-step epoch
(from there to the round's last event). ``"projection": true`` then times the projector alone (64
images of the run's Gaussians at the training box, forward and backward with respect to per-image
positions, CTF and data loss included). ``"decoder"`` picks the deformation network (default: the
engine's). ``"cache": false`` builds the particle batches with ``max_cache_bytes=0``, so every batch
is read from the memory-mapped stack.
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

from napari_dynamight.engine.data.particle_file import read_particles
from napari_dynamight.engine.deformation import run as deformation_run
from napari_dynamight.engine.deformation.batches import ParticleBatches
from napari_dynamight.engine.deformation.settings import DeformationSettings
from napari_dynamight.engine.evaluation import latent_frame_ordering


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status in MiB: ``RssAnon`` (resident anonymous memory now, i.e.
    without the file pages of the memory-mapped stack) or ``VmHWM`` (peak RSS of this program;
    unlike getrusage's ru_maxrss it does not count the parent's RSS at fork, which Linux keeps
    across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_anon_mib() -> float:
    return _status_mib("RssAnon")


def _stage_seconds(events: list[tuple[str, int, int, float]], match) -> dict[str, float]:
    """Seconds of each stage that ``match(stage)`` accepts: from the event before its first to its
    last."""
    starts, ends, previous = {}, {}, None
    for stage, _, _, now in events:
        if match(stage):
            starts.setdefault(stage, now if previous is None else previous)
            ends[stage] = now
        previous = now
    return {stage: ends[stage] - start for stage, start in starts.items()}


def projection_rate(
    model_path: str, box: int, pixel: float, device: str, repeats: int = 3
) -> float:
    """Images per second of the projector's forward and backward (per-image positions, CTF, data
    loss)."""
    from napari_dynamight.engine.consensus import load_model
    from napari_dynamight.engine.deformation.losses import data_loss
    from napari_dynamight.engine.gaussians import project_spectrum

    model = load_model(model_path).to(device)
    generator = torch.Generator().manual_seed(0)
    batch = 64
    rotations = torch.linalg.qr(torch.randn(batch, 3, 3, generator=generator))[0].to(device)
    shifts = torch.randn(batch, 2, generator=generator).to(device)
    ctf = torch.randn(batch, box, box // 2 + 1, generator=generator).to(device)
    observed = torch.randn(batch, box, box // 2 + 1, dtype=torch.complex64, generator=generator).to(
        device
    )
    weights = torch.ones(box, box // 2 + 1, device=device)
    seconds = []
    for _ in range(repeats + 1):
        positions = model.positions_angstrom.expand(batch, -1, -1).clone().requires_grad_(True)
        _synchronise(device)
        start = time.perf_counter()
        predicted = (
            project_spectrum(model, rotations, shifts, box, pixel, positions_angstrom=positions)
            * ctf
        )
        data_loss(predicted, observed, weights, box * box).mean().backward()
        _synchronise(device)
        seconds.append(time.perf_counter() - start)
    return batch / float(np.median(seconds[1:]))


def _synchronise(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(config: dict) -> dict:
    torch.set_num_threads(int(config["threads"]))
    device = config.get("device", "cpu")
    if not config.get("cache", True):
        deformation_run.ParticleBatches = functools.partial(ParticleBatches, max_cache_bytes=0)
    refine = bool(config.get("refinement", False))
    settings = DeformationSettings(
        epochs=config["epochs"],
        warmup_epochs=1,
        batch_size=config["batch_size"],
        latent_inference="encoder",
        checkpoint_every=1000,
        refinement_rounds=1 if refine else 0,
        refinement_epochs=1,
        control_points=config.get("control_points", 0),
        decoder=config.get("decoder", DeformationSettings.decoder),
        seed=0,
    )
    last = (
        "half 2: refinement round 1/1"
        if refine
        else f"half 2: epoch {settings.epochs}/{settings.epochs}"
    )
    generator = deformation_run.optimize_deformations(
        config["star"],
        config["consensus"],
        config["run_directory"],
        settings=settings,
        consensus_model=config["model"],
        box=config["train_box"],
        device=device,
    )
    events, peak_anon, started, result = [], _rss_anon_mib(), time.perf_counter(), None
    try:
        while True:
            event = next(generator)
            _synchronise(device)
            events.append((event.stage, event.step, event.total, time.perf_counter()))
            peak_anon = max(peak_anon, _rss_anon_mib())
            finished = event.stage == last if refine else event.stage.startswith(last + " (")
            if config["stop_early"] and finished and event.step == event.total:
                break
    except StopIteration as stop:
        result = stop.value
    finally:
        generator.close()
    per_stage = _stage_seconds(
        events, lambda stage: stage.startswith("half ") and ": epoch " in stage
    )
    timed = range(2, settings.epochs + 1)  # epoch 1 is the warm-up
    halves = {
        h: [per_stage[s] for s in per_stage for e in timed if s.startswith(f"half {h}: epoch {e}/")]
        for h in (1, 2)
    }
    both = [a + b for a, b in zip(halves[1], halves[2], strict=True)]
    out = {
        "n_particles": config["n_particles"],
        "device": str(device),
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
    if torch.device(device).type == "cuda":
        out["peak_cuda_memory_mib"] = torch.cuda.max_memory_allocated() / 1024**2
    info = json.loads((Path(config["run_directory"]) / "run.json").read_text())
    out["train_box"] = info["train_box"]
    if refine:
        e_step = _stage_seconds(
            events, lambda stage: stage.endswith("refinement round 1/1: posteriors")
        )
        m_step = _stage_seconds(events, lambda stage: stage.endswith("refinement round 1/1"))
        train_rows = info["n_particles"] - info["n_validation"]
        out["refinement"] = {
            "candidates": settings.posterior_candidates,
            "training_particles_both_halves": train_rows,
            "e_step_seconds_both_halves": float(sum(e_step.values())),
            "m_step_epoch_seconds_both_halves": float(sum(m_step.values())),
        }
        out["refinement"]["e_step_seconds_per_particle"] = (
            out["refinement"]["e_step_seconds_both_halves"] / train_rows
        )
    if config.get("projection"):
        pixel = info["voxel_size_angstrom"] * info["consensus_box"] / info["train_box"]
        out["projection_images_per_second"] = projection_rate(
            config["model"], info["train_box"], pixel, device
        )
    if result is not None:
        frames = pd.read_csv(config["labels"])["frame"].to_numpy()
        latents = np.asarray(result.latents)  # each particle by its own half, STAR row order
        half_sets = (
            read_particles(Path(config["run_directory"]) / "particles.star")
            .particles["dmHalfSet"]
            .to_numpy()
        )
        frames = frames[: len(latents)]  # the STAR is the first rows of the simulation
        out["best_pc_abs_spearman"] = {
            str(h): float(
                latent_frame_ordering(latents[half_sets == h], frames[half_sets == h]).best
            )
            for h in (1, 2)
        }
    return out


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))), flush=True)
