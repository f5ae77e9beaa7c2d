"""Time per particle and peak memory of every stage at box 64 / 128 / 256 / 384 with 10,000
Gaussians, on one device, and a projection to a user's data set (default: 100,000 particles at box
320).

Usage:
  python bench/bench_scale.py --work WORK [--device cpu|cuda] [--threads 1] [--boxes 64 128 256 384]
      [--output bench/results/scale_cpu.json]
  python bench/bench_scale.py --work WORK --memory [--memory-box 64] [--memory-particles 2000 20000]
      [--memory-reconstruct 2000]
      (adds the memory check to --output; memory_check_boxB when B != 64)
  python bench/bench_scale.py --work WORK --inversion [--inversion-boxes 256 384]
      [--inversion-variants standard deformed stage] [--inversion-iterations 10] [--label NAME]
      (adds the reconstruction's peak memory per box and variant to --output, rows named by --label)

For each box a small simulated adenylate-kinase set (``engine.simulate``; the pixel size scales with
the box, 1.5 Å × 64 / box, so the molecule fills the same part of every box) goes through the
stages, each in a fresh child process so that its peak memory is its own (``VmHWM``, the peak
resident set; on CUDA also ``torch.cuda.max_memory_allocated``):
  consensus    fit_consensus with 10,000 Gaussians (a per-map cost: seconds per optimiser step)
  training     optimize_deformations, one VAE epoch and one refinement round of one M-step epoch
               (default settings otherwise: posterior inference, factorised decoder)
  inverse      optimize_inverse_deformations, one epoch
  standard     the standard reconstruction: insertion per particle, and one inversion (per map)
  deformed     the deformed reconstruction with the run's learned inverse field and region:
               insertion per particle, and per latent code the field evaluation and the warp
  decode       decode one latent code and render its map at the box
Few particles per box (--particles), so the whole CPU run takes minutes; per-particle costs come
from the progress events of each stage, fixed costs (inversions, warps, per-map steps) are reported
apart. Training needs 16 particles per half set, so it and the inverse stage run only up to box 128
(TRAINED_UP_TO_BOX); above it their per-particle costs are extrapolated, the deformed reconstruction
uses an analytic domain motion (the learned network's cost per code is extrapolated from the smaller
boxes) and decode renders the consensus model. A stage whose estimated memory exceeds what the
machine has available is skipped and says so in its row.
Memory check (--memory): a simulated set of 500 particles repeated into memory-mapped stacks of each
count; the peak memory of training's set-up and first batches (MEMORY_EVENTS progress events) and of
a standard reconstruction of every particle, as the peak resident set (VmHWM, which includes the
pages of the memory-mapped stack that were read) and the peak anonymous memory (RssAnon, sampled at
every progress event: what the process itself holds). With --memory-reconstruct the reconstruction
takes that many particles spread over the whole stack (its memory does not depend on how many).
Reconstruction memory (--inversion): random images at each box, no data set; the peak memory of a
standard accumulator and its map, of a deformed one (analytic motion, one warped code) and its map,
and of two deformed half sets held at once with the map of one (the reconstruct stage's peak).
The projection interpolates every cost as a power law of the box between the two measured boxes
around the target and adds them up for the stage defaults (epochs, refinement rounds, inverse
epochs, clusters, five inversions per reconstruction). The JSON records the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BOXES = (64, 128, 256, 384)
PARTICLES = {64: 32, 128: 32, 256: 8, 384: 4}
#: Training needs 16 particles per half set; above this box training and the inverse stage are not
#: run (their cost per particle is projected from the smaller boxes), and the deformed
#: reconstruction uses an analytic domain motion as its inverse field, evaluated in the region of
#: the consensus map.
TRAINED_UP_TO_BOX = 128
GAUSSIANS = 10_000
STAGES = ("simulate", "consensus", "training", "inverse", "standard", "deformed", "decode")
CONSENSUS_STEPS = 5  # measured steps; the stage default is 300
CODES = 3  # latent codes (clusters) measured in the deformed reconstruction
#: Inversions of the reconstruct stage: two half maps and the full map, and with deformations the
#: two standard half maps for the standard FSC.
INVERSIONS = {"standard": 3, "deformed": 5}


def pixel_size(box: int) -> float:
    return 1.5 * 64 / box


def simulate_adk(output_directory: Path, count: int, box: int, frame_step: int, device) -> None:
    """The benches' simulated adenylate-kinase set: ``count`` particles at ``box`` (pixel
    :func:`pixel_size`), SNR 0.05, seed 0, from every ``frame_step``-th frame of the trajectory."""
    from napari_dynamight.engine.example_data import STRUCTURE, example_file
    from napari_dynamight.engine.progress import run
    from napari_dynamight.engine.simulate import simulate

    adk = example_file(STRUCTURE).parent
    run(
        simulate(
            adk / "adk_closed.pdb",
            adk / "adk_dims.dcd",
            output_directory=output_directory,
            n_particles=count,
            box=box,
            pixel_size_angstrom=pixel_size(box),
            snr=0.05,
            seed=0,
            frames=list(range(0, 98, frame_step)),
            device=device,
        )
    )


def peak_host_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_events(operation) -> tuple[object, list[tuple[str, str, float]]]:
    """Drive a progress generator; its result and (stage, message, seconds since start) of each
    event."""
    events, started = [], time.perf_counter()
    while True:
        try:
            event = next(operation)
        except StopIteration as stop:
            return stop.value, events
        events.append((event.stage, event.message or "", time.perf_counter() - started))


def phase_seconds(events, select) -> float:
    """Seconds spent in the events whose stage ``select`` accepts: each event's time since the one
    before."""
    total, previous = 0.0, 0.0
    for stage, _, now in events:
        if select(stage):
            total += now - previous
        previous = now
    return total


def phases(events) -> dict[str, float]:
    """Seconds per kind of event (stage names without their numbers)."""
    import re

    kinds: dict[str, float] = {}
    previous = 0.0
    for stage, _, now in events:
        kind = re.sub(r"\d+(/\d+)?", "#", stage)
        kinds[kind] = kinds.get(kind, 0.0) + now - previous
        previous = now
    return kinds


def child(args) -> dict:
    """One stage at one box in this process; returns its measurements."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    work, box, count = (
        Path(args.child_work or Path(args.work) / f"box{args.box}"),
        args.box,
        args.particles,
    )
    gaussians = args.gaussians
    sim, consensus, run_dir = work / "sim", work / "consensus", work / "run"

    result: dict = {"stage": args.stage, "box": box, "particles": count}
    started = time.perf_counter()
    if (
        args.stage == "simulate"
        and available_gib() < SIMULATE_GIB_AT_256 * (box / 256) ** 3 + HEADROOM_GIB
    ):
        result["skipped"] = (
            f"{available_gib():.1f} GiB available on the shared machine; simulate needs about "
            f"{SIMULATE_GIB_AT_256 * (box / 256) ** 3:.0f} GiB at this box"
        )
    elif args.stage == "simulate":
        simulate_adk(sim, count, box, 4 if box <= TRAINED_UP_TO_BOX else 24, device)
        result["seconds_per_particle"] = (time.perf_counter() - started) / count
    elif args.stage == "consensus":
        from napari_dynamight.engine.consensus_stage import fit_consensus

        _, events = timed_events(
            fit_consensus(
                sim / "consensus.mrc",
                consensus,
                n_gaussians=gaussians,
                n_steps=CONSENSUS_STEPS,
                device=str(device),
            )
        )
        fitting = [now for stage, _, now in events if stage == "fit consensus"]
        result["seconds_fill"] = fitting[0]
        result["seconds_per_step"] = (fitting[-1] - fitting[0]) / CONSENSUS_STEPS
    elif args.stage == "training":
        from dataclasses import replace

        from napari_dynamight.engine.deformation.run import optimize_deformations
        from napari_dynamight.engine.deformation.settings import DeformationSettings
        from napari_dynamight.engine.run_folder import ConsensusFolder

        settings = replace(
            DeformationSettings(),
            epochs=1,
            warmup_epochs=0,
            refinement_rounds=1,
            refinement_epochs=1,
            checkpoint_every=1,
            batch_size=min(64, count),
        )
        _, events = timed_events(
            optimize_deformations(
                sim / "particles.star",
                sim / "consensus.mrc",
                run_dir,
                settings=settings,
                consensus_model=ConsensusFolder(consensus).model,
                device=device,
            )
        )
        epoch = phase_seconds(events, lambda s: ": epoch " in s)
        refinement = phase_seconds(events, lambda s: "refinement round" in s)
        result["phases"] = phases(events)
        result.update(
            seconds_epoch_per_particle=epoch / count,
            seconds_refinement_round_per_particle=refinement / count,
            seconds_other=time.perf_counter() - started - epoch - refinement,
        )
    elif args.stage == "inverse":
        from napari_dynamight.engine.inverse.run import optimize_inverse_deformations
        from napari_dynamight.engine.inverse.settings import InverseSettings

        _, events = timed_events(
            optimize_inverse_deformations(
                run_dir, settings=InverseSettings(epochs=1), device=device
            )
        )
        epoch = phase_seconds(events, lambda s: ": epoch " in s)
        result.update(
            seconds_epoch_per_particle=epoch / count,
            seconds_other=time.perf_counter() - started - epoch,
        )
    elif args.stage in ("standard", "deformed") and not memory_allows(args.stage, box):
        result["skipped"] = (
            f"{available_gib():.1f} GiB available on the shared machine, about "
            f"{needed_gib(args.stage, box):.0f} GiB needed (+ {HEADROOM_GIB} GiB headroom)"
        )
    elif args.stage in ("standard", "deformed"):
        trained = (run_dir / "inverse").is_dir()
        result.update(
            reconstruction(run_dir, args.stage == "deformed", device)
            if trained
            else analytic_reconstruction(work, args.stage == "deformed", device)
        )
        result["inverse_field"] = "learned" if trained else "analytic domain motion"
    elif args.stage == "memory_training":
        result.update(memory_training(work, device))
    elif args.stage == "memory_reconstruction":
        result.update(memory_reconstruction(work, device, args.memory_reconstruct))
    elif args.stage.startswith("inversion_"):
        variant = args.stage.removeprefix("inversion_")
        result.update(inversion_memory(box, variant, device, args.inversion_iterations))
    elif (
        args.stage == "decode" and not (run_dir / "inverse").is_dir()
    ):  # render the consensus model only
        from napari_dynamight.engine.consensus import load_model
        from napari_dynamight.engine.gaussians import render_volume
        from napari_dynamight.engine.run_folder import ConsensusFolder

        model = load_model(ConsensusFolder(consensus).model).to(device)
        start = time.perf_counter()
        for _ in range(3):
            render_volume(model, box, pixel_size(box))
            if cuda:
                torch.cuda.synchronize(device)
        result["seconds_per_volume"] = (time.perf_counter() - start) / 3
        result["decoder"] = "render only (no trained run at this box)"
    elif args.stage == "decode":
        from napari_dynamight.engine.deformation.decode import DeformationRun

        forward = DeformationRun.load(run_dir, device)
        latents = np.load(forward_latents(run_dir))[:3]
        forward.volume(latents[0])  # warm-up
        start = time.perf_counter()
        for latent in latents:
            forward.volume(latent)
            if cuda:
                torch.cuda.synchronize(device)
        result["seconds_per_volume"] = (time.perf_counter() - start) / len(latents)
    result["seconds"] = time.perf_counter() - started
    result["peak_host_mib"] = peak_host_mib()
    if cuda:
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


HEADROOM_GIB = 2.0
SIMULATE_GIB_AT_256 = (
    2.2  # engine.simulate's measured peak at box 256 (5 ground-truth frames), growing as box³
)


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def needed_gib(stage: str, box: int) -> float:
    """A generous estimate of a reconstruction child's peak: the padded sums (standard; deformed
    also the pending sums) and the inversion's complex and real (2L)³ arrays."""
    sums = 3 * (2 * box + 2) ** 2 * (box + 2) * 4 / 2**30
    spectrum = (2 * box) ** 2 * (box + 1) * 8 / 2**30
    return (2 if stage == "deformed" else 1) * sums + 5 * spectrum


def memory_allows(stage: str, box: int) -> bool:
    return available_gib() >= needed_gib(stage, box) + HEADROOM_GIB


def rss_anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class AnonymousPeak:
    """The largest anonymous resident memory (RssAnon: what the process itself holds, without the
    pages of memory-mapped stacks that VmHWM counts) seen by a thread sampling every ``interval``
    seconds, MiB."""

    def __init__(self, interval: float = 0.2):
        import threading

        self.peak, self._interval = 0.0, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon_mib())
            self._stop.wait(self._interval)

    def __enter__(self) -> AnonymousPeak:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_mib())


MEMORY_EVENTS = (
    6  # training progress events driven in the memory check (set-up and the first batches)
)


def memory_training(work: Path, device) -> dict:
    """Peak memory of training's set-up and first batches on a memory-mapped stack of ``work``."""
    import shutil
    from dataclasses import replace

    from napari_dynamight.engine.deformation.run import optimize_deformations
    from napari_dynamight.engine.deformation.settings import DeformationSettings
    from napari_dynamight.engine.run_folder import ConsensusFolder

    shutil.rmtree(work / "run", ignore_errors=True)  # a fresh run each time
    settings = replace(
        DeformationSettings(), epochs=1, warmup_epochs=0, refinement_rounds=0, checkpoint_every=1
    )
    operation = optimize_deformations(
        work / "stack" / "particles.star",
        work.parent / "base" / "sim" / "consensus.mrc",
        work / "run",
        settings=settings,
        consensus_model=ConsensusFolder(work.parent / "base" / "consensus").model,
        device=device,
    )
    with AnonymousPeak(interval=0.01) as peak:  # often enough to see the table's parsing
        for _ in zip(range(MEMORY_EVENTS), operation):
            pass
        operation.close()
    return {"peak_anonymous_mib": peak.peak, "events": MEMORY_EVENTS}


def memory_reconstruction(work: Path, device, limit: int = 0) -> dict:
    """Peak memory of the standard reconstruction of the particles of the stack of ``work``: all,
    or ``limit`` of them spread evenly over the stack (the table and dataset still of all)."""
    from napari_dynamight.engine.data.particle_file import read_particles
    from napari_dynamight.engine.reconstruction.streaming import reconstruct_particles

    with AnonymousPeak(interval=0.01) as peak:
        table = read_particles(work / "stack" / "particles.star")
        indices = None
        if 0 < limit < len(table):
            indices = np.unique(np.linspace(0, len(table) - 1, limit).round().astype(np.int64))
        for _ in reconstruct_particles(table, indices, batch_size=64, device=device):
            pass
    count = len(table) if indices is None else len(indices)
    return {"peak_anonymous_mib": peak.peak, "reconstructed_particles": count}


INVERSION_VARIANTS = ("standard", "deformed", "stage")
INVERSION_PARTICLES = 8  # per half set; the memory does not depend on it


def inversion_memory(box: int, variant: str, device, iterations: int = 10) -> dict:
    """Peak memory of one reconstruction at ``box`` on random images (no data set needed):
    ``standard`` one FourierAccumulator and its map; ``deformed`` one DeformedAccumulator with an
    analytic domain motion (one latent code, warped) in a central region (radius 0.42 box) and its
    map; ``stage`` two such half sets held at once (as the reconstruct stage holds them) and the map
    of the first, the stage's peak (its five inversions share one working set). ``iterations``:
    gridding iterations (the memory does not depend on them, the time does)."""
    import torch

    from napari_dynamight.engine.geometry import euler_to_matrix
    from napari_dynamight.engine.reconstruction.deformed import DeformedAccumulator
    from napari_dynamight.engine.reconstruction.standard import FourierAccumulator

    voxel = pixel_size(box)
    generator = torch.Generator().manual_seed(0)

    def field(latents, points):
        return points - torch.sigmoid(points[:, 0] / 3.0)[None, :, None] * latents[:, None, :]

    axis = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    squared = axis**2
    radius = (squared[:, None, None] + squared[None, :, None] + squared[None, None, :]).sqrt()
    region = radius < 0.42 * box
    del radius
    halves = 2 if variant == "stage" else 1
    accumulators = []
    started = time.perf_counter()
    for _ in range(halves):
        if variant == "standard":
            accumulator = FourierAccumulator(box, voxel, device=device)
        else:
            accumulator = DeformedAccumulator(box, voxel, field, region, device=device)
        images = torch.randn(INVERSION_PARTICLES, box, box, generator=generator)
        rotations = euler_to_matrix(torch.rand(INVERSION_PARTICLES, 3, generator=generator) * 180)
        shifts = torch.zeros(INVERSION_PARTICLES, 2)
        if variant == "standard":
            accumulator.add(images, rotations, shifts)
        else:
            codes = torch.tensor([[1.0, 2.0, -1.0]]).expand(INVERSION_PARTICLES, 3)
            accumulator.add(images, rotations, shifts, None, codes)
            accumulator.flush()
        accumulators.append(accumulator)
    inserted = time.perf_counter()
    volume = accumulators[0].reconstruct(gridding_iterations=iterations)
    return {
        "variant": variant,
        "gridding_iterations": iterations,
        "particles_per_half": INVERSION_PARTICLES,
        "half_sets_held": halves,
        "insertion_and_warp_seconds": inserted - started,
        "inversion_seconds": time.perf_counter() - inserted,
        "map_sum": float(volume.double().sum()),
    }


def inversion_check(args) -> list[dict]:
    """Peak memory of the reconstruction's accumulation and inversion at each box and variant; a
    variant whose estimate exceeds the memory available is skipped and says so."""
    rows = []
    for box in args.inversion_boxes:
        for variant in args.inversion_variants:
            held = 2 if variant == "stage" else 1
            need = held * needed_gib("deformed" if variant != "standard" else "standard", box) / 2
            if available_gib() < need + HEADROOM_GIB:
                row = {"stage": f"inversion_{variant}", "box": box, "skipped": "memory"}
                row["estimate_gib"] = need
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            rows.append(run_child(args, f"inversion_{variant}", box, INVERSION_PARTICLES))
    return rows


def tiled_stack(base: Path, out: Path, count: int) -> None:
    """``out/particles.star`` and ``particles.mrcs``: the base set's particles repeated to ``count``
    rows, written image block by image block (never all in memory)."""
    import mrcfile
    import starfile

    blocks = starfile.read(base / "particles.star", always_dict=True)
    particles = blocks["particles"]
    with mrcfile.mmap(base / "particles.mrcs", mode="r") as source:
        images = source.data
        voxel = float(source.voxel_size.x)
        out.mkdir(parents=True, exist_ok=True)
        with mrcfile.new_mmap(
            out / "particles.mrcs", shape=(count, *images.shape[1:]), mrc_mode=2, overwrite=True
        ) as target:
            for start in range(0, count, 1000):
                rows = np.arange(start, min(start + 1000, count)) % len(images)
                target.data[start : start + len(rows)] = images[rows]
            target.voxel_size = voxel
    rows = np.arange(count) % len(particles)
    tiled = particles.iloc[rows].reset_index(drop=True)
    tiled["rlnImageName"] = [f"{i + 1:06d}@particles.mrcs" for i in range(count)]
    tiled["rlnRandomSubset"] = np.arange(count) % 2 + 1
    blocks["particles"] = tiled
    starfile.write(blocks, out / "particles.star", overwrite=True)


def memory_check(args) -> list[dict]:
    """Peak memory of training's start and of a standard reconstruction against the particle
    count."""
    base = Path(args.work) / f"memory_box{args.memory_box}" / "base"
    rows = []
    for stage in ("simulate", "consensus"):
        if not (base / ("sim" if stage == "simulate" else "consensus")).is_dir():
            rows.append(
                run_child(
                    args,
                    stage,
                    args.memory_box,
                    MEMORY_BASE,
                    base.parent / "base",
                    MEMORY_GAUSSIANS,
                )
            )
    for count in args.memory_particles:
        work = base.parent / f"n{count}"
        if not (work / "stack" / "particles.star").is_file():
            tiled_stack(base / "sim", work / "stack", count)
        for stage in ("memory_training", "memory_reconstruction"):
            row = run_child(args, stage, args.memory_box, count, work, MEMORY_GAUSSIANS)
            row["stack_bytes"] = (work / "stack" / "particles.mrcs").stat().st_size
            rows.append(row)
    return rows


MEMORY_BASE = 500  # simulated particles, repeated to each count of the memory check
MEMORY_GAUSSIANS = 2000


def run_child(
    args, stage: str, box: int, particles: int, work: Path | None = None, gaussians: int = None
) -> dict:
    """Runs ``stage`` at ``box`` on ``particles`` in a child process of this script (a fresh
    process: its peak memory is its own); prints and returns its row."""
    command = [
        sys.executable,
        __file__,
        "--work",
        str(args.work),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--child",
        stage,
        "--box",
        str(box),
        "--particles",
        str(particles),
    ]
    if work is not None:
        command += ["--child-work", str(work)]
    command += ["--inversion-iterations", str(args.inversion_iterations)]
    command += ["--memory-reconstruct", str(args.memory_reconstruct)]
    if gaussians is not None:
        command += ["--gaussians", str(gaussians)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"box {box}, {stage}: failed")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def forward_latents(run_dir: Path) -> Path:
    from napari_dynamight.engine.run_folder import RunFolder

    return RunFolder(run_dir).latents


def reconstruction(run_dir: Path, deformed: bool, device) -> dict:
    """Insertion per particle (both halves, the stage's data path), per-code costs, one
    inversion."""
    from napari_dynamight.engine.data.subset import read_run_particles
    from napari_dynamight.engine.reconstruction import stage
    from napari_dynamight.engine.run_folder import RunFolder
    from napari_dynamight.engine.run_identity import check_finished_run, run_stamp

    run = RunFolder(run_dir)
    info = check_finished_run(run.path)
    box, voxel = int(info["consensus_box"]), float(info["voxel_size_angstrom"])
    table = read_run_particles(run.path, info)
    halves = table.particles["dmHalfSet"].to_numpy().astype(int)
    fields, latents = (
        stage._deformation_inputs(run, run_stamp(info), table, halves, device)
        if deformed
        else ({}, None)
    )
    field, region, _ = fields.get(1, (None, None, None))
    chosen = latents[np.linspace(0, len(latents) - 1, CODES).astype(int)] if deformed else None
    return insertion_costs(table, np.arange(len(table)), box, voxel, field, region, chosen, device)


def insertion_costs(table, rows, box, voxel, field, region, chosen, device) -> dict:
    """Seconds per particle of the insertion, per latent code of the field and of the warp
    (``chosen`` codes, consecutive), and of one inversion with the default 10 gridding
    iterations."""
    import torch

    from napari_dynamight.engine.ctf import compute_ctf
    from napari_dynamight.engine.data.dataset import ParticleDataset
    from napari_dynamight.engine.reconstruction import stage
    from napari_dynamight.engine.reconstruction.deformed import DeformedAccumulator

    deformed = field is not None
    codes = (
        chosen[np.minimum(np.arange(len(rows)) * CODES // len(rows), CODES - 1)]
        if deformed
        else None
    )
    sync = (
        (lambda: torch.cuda.synchronize(device))
        if torch.device(device).type == "cuda"
        else (lambda: None)
    )

    def insert(accumulator, with_codes):
        start = time.perf_counter()
        with ParticleDataset(
            table,
            rows,
            target_box=box,
            target_pixel_size_angstrom=voxel,
            normalise=False,
            device=device,
        ) as dataset:
            for batch in dataset.batches(64):
                ctf = compute_ctf(batch.ctf, box, dataset.pixel_size_angstrom)
                batch_codes = codes[batch.rows] if with_codes else None
                accumulator.add(
                    batch.images, batch.rotations, batch.origin_angstrom, ctf, batch_codes
                )
            accumulator.flush()
        sync()
        return time.perf_counter() - start

    accumulator = DeformedAccumulator(box, voxel, field, region, device=device)
    field_seconds = 0.0
    if deformed:  # the field's cost per code, apart
        start = time.perf_counter()
        for code in chosen:
            accumulator.field(
                torch.as_tensor(code[None], device=device), accumulator._points_angstrom
            )
        sync()
        field_seconds = (time.perf_counter() - start) / len(chosen)
    inserting = insert(accumulator, deformed)
    per_code = 0.0
    if (
        deformed
    ):  # per code: the same particles with their codes, minus the standard insertion measured alike
        standard_inserting = insert(DeformedAccumulator(box, voxel, None, device=device), False)
        per_code = max(0.0, inserting - standard_inserting - field_seconds * len(chosen)) / len(
            chosen
        )
        inserting = standard_inserting
    iterations = 10 if box <= 128 else 1
    start = time.perf_counter()
    accumulator.reconstruct(stage.WIENER_CONSTANT, gridding_iterations=iterations)
    sync()
    one = time.perf_counter() - start
    result = {
        "seconds_insert_per_particle": inserting / len(rows),
        "seconds_inversion_measured": one,
        "gridding_iterations_measured": iterations,
    }
    if (
        iterations < 10
    ):  # the rest of the default 10 iterations: two transforms of the padded grid each
        start = time.perf_counter()
        n = 2 * box
        grid = torch.zeros(n, n, n // 2 + 1, dtype=torch.complex64, device=device)
        torch.fft.rfftn(torch.fft.irfftn(grid, s=(n, n, n)))
        sync()
        one += 9 * (time.perf_counter() - start)
        del grid
    result["seconds_inversion"] = one
    if deformed:
        result.update(
            seconds_field_per_code=field_seconds,
            seconds_warp_per_code=per_code,
            warped_fraction_of_box=accumulator.warped_voxels / max(accumulator.warps, 1) / box**3,
            region_fraction_of_box=float(region.float().mean()) if region is not None else 1.0,
        )
    return result


def analytic_reconstruction(work: Path, deformed: bool, device) -> dict:
    """As :func:`reconstruction` on the simulated set itself: the inverse field an analytic domain
    motion (the half x > 0 moves by the code, Å), evaluated in the region of the consensus map
    (dilated 8 Å)."""
    import torch

    from napari_dynamight.engine.consensus import automatic_threshold
    from napari_dynamight.engine.data.particle_file import read_particles
    from napari_dynamight.engine.io.mrc import read_map

    table = read_particles(work / "sim" / "particles.star")
    volume, voxel = read_map(work / "sim" / "consensus.mrc")
    box = volume.shape[0]
    region = None
    if deformed:
        occupied = torch.as_tensor(
            volume > automatic_threshold(volume), dtype=torch.float32, device=device
        )
        region = dilate(occupied, int(math.ceil(8.0 / voxel))) > 0

    def field(latents, points):
        return points - torch.sigmoid(points[:, 0] / 3.0)[None, :, None] * latents[:, None, :]

    chosen = np.array([[0.0, 1.0, 0.0], [0.0, 2.0, -1.0], [1.0, -1.0, 0.5]], np.float32)[:CODES]
    return insertion_costs(
        table,
        np.arange(len(table)),
        box,
        voxel,
        field if deformed else None,
        region if deformed else None,
        chosen if deformed else None,
        device,
    )


def dilate(volume, reach: int):
    """Cube dilation by ``reach`` voxels, one axis at a time."""
    import torch

    volume = volume[None, None]
    for kernel in ((2 * reach + 1, 1, 1), (1, 2 * reach + 1, 1), (1, 1, 2 * reach + 1)):
        volume = torch.nn.functional.max_pool3d(volume, kernel, 1, tuple(k // 2 for k in kernel))
    return volume[0, 0]


def power_law(x: float, points: list[tuple[float, float]]) -> float:
    """Interpolate (or extrapolate from the last two) y(x) as a power law between measured
    points."""
    points = sorted((a, b) for a, b in points if b is not None and b > 0 and math.isfinite(b))
    if not points:
        return float("nan")
    if len(points) == 1:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x <= x1 or (x1, y1) == points[-1]:
            exponent = math.log(y1 / y0) / math.log(x1 / x0)
            return y0 * (x / x0) ** exponent
    return points[-1][1]


def project(rows: list[dict], box: int, particles: int) -> dict:
    """Hours and peak memory of a whole run with the stage defaults, from the measured costs."""
    from napari_dynamight.engine.deformation.settings import DeformationSettings
    from napari_dynamight.engine.inverse.settings import InverseSettings
    from napari_dynamight.engine.reconstruction.clusters import DEFAULT_CLUSTERS

    for row in rows:
        if row["stage"] == "training" and "phases" in row:
            row["seconds_error_estimates_per_particle"] = (
                row["phases"].get("error estimates", 0.0) / row["particles"]
            )

    def value(stage, key):
        chosen = [r for r in rows if r["stage"] == stage]
        if key == "seconds_field_per_code":  # the learned network's cost (boxes with a trained run)
            chosen = [r for r in chosen if r.get("inverse_field", "learned") == "learned"]
        return power_law(box, [(r["box"], r.get(key)) for r in chosen])

    settings, inverse = DeformationSettings(), InverseSettings()
    seconds = {
        "consensus": value("consensus", "seconds_fill")
        + 300 * value("consensus", "seconds_per_step"),
        "training": particles
        * (
            settings.epochs * value("training", "seconds_epoch_per_particle")
            + settings.refinement_rounds
            * value("training", "seconds_refinement_round_per_particle")
            + value("training", "seconds_error_estimates_per_particle")
        ),
        "inverse": particles * inverse.epochs * value("inverse", "seconds_epoch_per_particle"),
        "standard reconstruction": particles * value("standard", "seconds_insert_per_particle")
        + INVERSIONS["standard"] * value("standard", "seconds_inversion"),
        # the insertion and the inversions are the standard ones (the same operations; measured
        # once)
        "deformed reconstruction": particles * value("standard", "seconds_insert_per_particle")
        + INVERSIONS["deformed"] * value("standard", "seconds_inversion")
        + 2
        * DEFAULT_CLUSTERS
        * (
            value("deformed", "seconds_field_per_code") + value("deformed", "seconds_warp_per_code")
        ),
        "decode one map": value("decode", "seconds_per_volume"),
    }

    def peak(stage, key):  # memory grows with the box: never below the largest box measured
        measured = [(r["box"], r[key]) for r in rows if r["stage"] == stage and r.get(key)]
        if not measured:
            return float("nan")
        return max(value(stage, key), max(measured)[1])

    peaks = {stage: peak(stage, "peak_host_mib") for stage in STAGES if stage != "simulate"}
    gpu = {stage: peak(stage, "peak_gpu_mib") for stage in STAGES if stage != "simulate"}
    total = sum(v for k, v in seconds.items() if k != "decode one map")
    return {
        "box": box,
        "particles": particles,
        "gaussians": GAUSSIANS,
        "hours": {k: v / 3600 for k, v in seconds.items()},
        "hours_total": total / 3600,
        "peak_host_gib": {k: v / 1024 for k, v in peaks.items()},
        "peak_gpu_gib": {k: v / 1024 for k, v in gpu.items() if math.isfinite(v)},
        "assumptions": {
            "epochs": settings.epochs,
            "refinement_rounds": settings.refinement_rounds,
            "refinement_epochs_measured_per_round": 1,
            "inverse_epochs": inverse.epochs,
            "clusters_per_half": DEFAULT_CLUSTERS,
            "inversions": INVERSIONS,
            "training_and_inverse_measured_up_to_box": TRAINED_UP_TO_BOX,
            "consensus_steps": 300,
        },
    }


def plot(data: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4))
    times, memory = figure.subplots(1, 2)
    rows = data["rows"]
    for key, stage, label in (
        ("seconds_epoch_per_particle", "training", "training epoch"),
        ("seconds_refinement_round_per_particle", "training", "refinement round"),
        ("seconds_epoch_per_particle", "inverse", "inverse epoch"),
        ("seconds_insert_per_particle", "standard", "reconstruction insertion"),
        ("seconds_warp_per_code", "deformed", "warp per code"),
        ("seconds_inversion", "standard", "one inversion"),
        ("seconds_per_volume", "decode", "decode + render"),
    ):
        points = [(r["box"], r[key]) for r in rows if r["stage"] == stage and r.get(key)]
        if points:
            times.loglog(*zip(*points), "o-", label=label)
    times.set(
        xlabel="box (px)",
        ylabel="seconds (per particle, per code or per map)",
        title=f"{data['device']} ({data['threads']} threads)",
    )
    times.legend(fontsize=7)
    for stage in STAGES[1:]:
        points = [(r["box"], r["peak_host_mib"] / 1024) for r in rows if r["stage"] == stage]
        if points:
            memory.loglog(*zip(*points), "o-", label=stage)
    memory.set(
        xlabel="box (px)", ylabel="peak host memory (GiB)", title="peak resident memory per stage"
    )
    memory.legend(fontsize=7)
    figure.tight_layout()
    from napari_dynamight.engine.io.figure import save_figure

    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", type=Path, required=True, help="scratch folder for the data sets and runs"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--boxes", type=int, nargs="+", default=list(BOXES))
    parser.add_argument("--stages", nargs="+", default=list(STAGES))
    parser.add_argument("--project-box", type=int, default=320)
    parser.add_argument("--project-particles", type=int, default=100_000)
    parser.add_argument("--output", type=Path, default=Path("bench/results/scale_cpu.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--box", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--particles", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-work", help=argparse.SUPPRESS)
    parser.add_argument("--gaussians", type=int, default=GAUSSIANS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--memory",
        action="store_true",
        help="only the memory check: peak memory against the particle count (adds to --output)",
    )
    parser.add_argument("--memory-box", type=int, default=64)
    parser.add_argument(
        "--project-only", action="store_true", help="recompute the projection from --output"
    )
    parser.add_argument("--memory-particles", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument(
        "--inversion",
        action="store_true",
        help="only the reconstruction's peak memory at --inversion-boxes (adds to --output)",
    )
    parser.add_argument("--inversion-boxes", type=int, nargs="+", default=[256, 384])
    parser.add_argument(
        "--inversion-variants",
        nargs="+",
        default=list(INVERSION_VARIANTS),
        choices=INVERSION_VARIANTS,
    )
    parser.add_argument("--inversion-iterations", type=int, default=10)
    parser.add_argument(
        "--memory-reconstruct",
        type=int,
        default=0,
        help="--memory: reconstruct this many particles spread over the stack (0: all)",
    )
    parser.add_argument(
        "--label", default="current", help="names the code measured in the --inversion rows"
    )
    args = parser.parse_args()
    if args.child:
        args.stage = args.child
        print(json.dumps(child(args)))
        return
    if args.project_only:  # the projection again from the rows of --output
        data = json.loads(args.output.read_text())
        data["projection"] = project(data["rows"], args.project_box, args.project_particles)
        args.output.write_text(json.dumps(data, indent=1))
        plot(data, args.output.with_suffix(".png"))
        print(json.dumps(data["projection"], indent=1))
        return
    if args.inversion:
        data = json.loads(args.output.read_text()) if args.output.is_file() else {}
        loads = [os.getloadavg()[0]]
        check = inversion_check(args)
        loads.append(os.getloadavg()[0])
        for row in check:
            row["code"] = args.label
            row["load_average_during_run"] = loads
        section = data.setdefault("inversion_memory", {"rows": []})
        measured = {(r["box"], r["stage"], args.label) for r in check}
        section["rows"] = [
            r for r in section["rows"] if (r["box"], r["stage"], r.get("code")) not in measured
        ] + check
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(data, indent=1))
        return
    if args.memory:
        data = json.loads(args.output.read_text()) if args.output.is_file() else {}
        loads = [os.getloadavg()[0]]
        check = memory_check(args)
        loads.append(os.getloadavg()[0])
        key = "memory_check" if args.memory_box == 64 else f"memory_check_box{args.memory_box}"
        data[key] = {
            "box": args.memory_box,
            "reconstructed_particles_limit": args.memory_reconstruct,
            "gaussians": MEMORY_GAUSSIANS,
            "base_particles": MEMORY_BASE,
            "training_events": MEMORY_EVENTS,
            "load_average_during_run": loads,
            "rows": [r for r in check if r["stage"].startswith("memory")],
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(data, indent=1))
        return
    rows, started = [], time.perf_counter()
    loads = [os.getloadavg()[0]]
    previous = json.loads(args.output.read_text()) if args.output.is_file() else {}
    kept = [
        r
        for r in previous.get("rows", [])
        if (r["box"], r["stage"]) not in {(b, s) for b in args.boxes for s in args.stages}
    ]
    for box in args.boxes:
        for stage in args.stages:
            if stage in ("training", "inverse") and box > TRAINED_UP_TO_BOX:
                continue
            row = run_child(args, stage, box, PARTICLES[box])
            rows.append(row)
            loads.append(os.getloadavg()[0])
            if stage == "simulate" and "skipped" in row:
                break  # no data set at this box
    rows = sorted(kept + rows, key=lambda r: (r["box"], STAGES.index(r["stage"])))
    import torch

    device_name = (
        torch.cuda.get_device_name(torch.device(args.device))
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine()
    )
    data = {
        "device": args.device,
        "device_name": device_name,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "gaussians": GAUSSIANS,
        "particles_per_box": PARTICLES,
        "pixel_size": "1.5 Å × 64 / box",
        "load_average_during_run": [min(loads), max(loads)],
        "machine_note": (
            "2-core machine shared with other jobs during the run: times are inflated by the "
            "load average above"
        )
        if args.device == "cpu"
        else "",
        "seconds": time.perf_counter() - started,
        "rows": rows,
        "projection": project(rows, args.project_box, args.project_particles),
    }
    data = {**previous, **data}  # keeps the memory checks and notes of earlier runs
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(data, indent=1))
    plot(data, args.output.with_suffix(".png"))
    print(json.dumps(data["projection"], indent=1))


if __name__ == "__main__":
    main()
