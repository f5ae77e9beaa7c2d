"""Speed-up of two processes over one for deformation training, and the numbers behind a scaling
estimate.

Usage:
  python bench/bench_distributed.py --output bench/results/distributed.json
      [--n-particles 400] [--epochs 8]

Simulates the AdK closed→open data set (the bundled example files) at box 32, fits the consensus
Gaussians, then trains the same run (same seed, same settings, fixed number of epochs) launched by
``torchrun`` as
- 1 process, 1 thread (the baseline), and 1 process, 2 threads (the other way to use two cores);
- 2 processes × 1 thread, half sets split over the ranks (the default for an even world size);
- 2 processes × 1 thread, both half sets data-parallel over both ranks (shares of every batch,
  gradients all-reduced every step);
- 1 process, 1 thread at half the batch size: the per-step time of one share, which tells how much
  of a step's compute halves when its batch does (the data-parallel scaling of compute alone).
Training time is the wall time from the first to the last training event (start-up, input reading
and error estimates excluded). Also recorded: per-step compute time of the baseline, the parameters
all-reduced per step (bytes = 4 × count), the measured gloo all-reduce time of that buffer, and each
layout's largest latent difference from the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32
LAYOUTS = {  # name: (processes, threads per process, split halves, batch size)
    "1 process, 1 thread": (1, 1, None, BATCH),
    "1 process, 2 threads": (1, 2, None, BATCH),
    "2 processes, halves split": (2, 1, True, BATCH),
    "2 processes, data parallel": (2, 1, False, BATCH),
    "1 process, 1 thread, half batch": (1, 1, None, BATCH // 2),
}


def settings(epochs: int, batch_size: int = BATCH):
    from napari_dynamight.engine.deformation.settings import DeformationSettings

    return DeformationSettings(
        epochs=epochs,
        batch_size=batch_size,
        warmup_epochs=1,
        checkpoint_every=epochs,
        consensus_period=30,
        consensus_epochs=5,
        reference_update_every=2,
        alignment_predictions=10,
        noise_subset=64,
        refinement_rounds=0,
    )


def prepare(folder: Path, n_particles: int) -> dict[str, Path]:
    """The tests' tiny simulated set (``simulate_tiny`` in tests/helpers/deformation_data.py: box
    32, 2.5 Å/px, SNR 1, every 4th frame, seed 0) and its fitted 300-Gaussian consensus model."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.deformation_data import simulate_tiny

    data = simulate_tiny(folder, n_particles)
    return {"star": data.star, "consensus": data.consensus, "model": data.model}


def worker(args) -> None:
    """One rank of a torchrun launch: train, time the epochs, time the gradient all-reduce."""
    from napari_dynamight.engine import distributed
    from napari_dynamight.engine.deformation.run import optimize_deformations

    torch.set_num_threads(args.threads)
    context = distributed.initialise(
        split_halves={"auto": None, "yes": True, "no": False}[args.split]
    )
    stamps: list[tuple[float, str]] = []
    operation = optimize_deformations(
        args.particles,
        args.consensus,
        args.out,
        consensus_model=args.model,
        settings=settings(args.epochs, args.batch_size),
    )
    try:
        while True:
            event = next(operation)
            stamps.append((time.perf_counter(), event.stage))
    except StopIteration:
        pass
    training = [t for t, stage in stamps if "epoch" in stage]
    steps = sum(1 for _, stage in stamps if "epoch" in stage)
    allreduce = _time_allreduce(context, args.parameters)
    if context.is_main:
        Path(args.timing).write_text(
            json.dumps(
                {
                    "training_seconds": training[-1] - training[0],
                    "training_events_rank0": steps,
                    "allreduce_seconds": allreduce,
                }
            ),
            encoding="utf-8",
        )
    distributed.shutdown()


def _time_allreduce(context, count: int, repeats: int = 20) -> float | None:
    """Median seconds of one all-reduce of ``count`` float32 values over the world (None in one
    process)."""
    if context.world_size == 1:
        return None
    buffer = torch.zeros(count)
    times = []
    for _ in range(repeats):
        context.barrier()
        start = time.perf_counter()
        context.all_reduce_sum_(buffer)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def parameter_counts(epochs: int, box: int = 32, n_gaussians: int = 300) -> dict[str, int]:
    from napari_dynamight.engine.deformation.networks import DeformationDecoder, ImageEncoder

    s = settings(epochs)
    encoder = sum(p.numel() for p in ImageEncoder(box, s.latent_dim, s.encoder_width).parameters())
    decoder = sum(
        p.numel()
        for p in DeformationDecoder(
            s.latent_dim, 40.0, s.n_frequencies, s.decoder_width, s.decoder_depth
        ).parameters()
    )
    gaussians = 3 * n_gaussians + 2
    return {
        "encoder": encoder,
        "decoder": decoder,
        "gaussians": gaussians,
        "all_reduced_per_step": encoder + decoder + gaussians,
    }


def launch(name: str, data: dict, folder: Path, epochs: int, parameters: int) -> dict:
    processes, threads, split, batch = LAYOUTS[name]
    tag = f"{processes}_{threads}_{split}_{batch}"
    out, timing = folder / f"run_{tag}", folder / f"timing_{tag}.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--standalone",
        f"--nproc-per-node={processes}",
        __file__,
        "--worker",
        "--particles",
        str(data["star"]),
        "--consensus",
        str(data["consensus"]),
        "--model",
        str(data["model"]),
        "--out",
        str(out),
        "--timing",
        str(timing),
        "--epochs",
        str(epochs),
        "--threads",
        str(threads),
        "--batch-size",
        str(batch),
        "--split",
        {None: "auto", True: "yes", False: "no"}[split],
        "--parameters",
        str(parameters),
    ]
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
    result = json.loads(timing.read_text(encoding="utf-8"))
    result["latents"] = np.load(out / "latent_means.npy")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results" / "distributed.json"
    )
    parser.add_argument("--n-particles", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("particles", "consensus", "model", "out", "timing"):
        parser.add_argument(f"--{name}", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--split", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=BATCH, help=argparse.SUPPRESS)
    parser.add_argument("--parameters", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    counts = parameter_counts(args.epochs)
    load_before = os.getloadavg()[0]
    folder = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    try:
        data = prepare(folder, args.n_particles)
        results = {
            name: launch(name, data, folder, args.epochs, counts["all_reduced_per_step"])
            for name in LAYOUTS
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    base, half = results["1 process, 1 thread"], results["1 process, 1 thread, half batch"]
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_average_1min": [load_before, os.getloadavg()[0]],
        },
        "data": {
            "n_particles": args.n_particles,
            "box": 32,
            "n_gaussians": 300,
            "epochs": args.epochs,
        },
        "parameters": counts,
        "bytes_per_allreduce": 4 * counts["all_reduced_per_step"],
        "steps_both_halves": base["training_events_rank0"],
        "seconds_per_step_one_process": base["training_seconds"] / base["training_events_rank0"],
        "seconds_per_step_half_batch": half["training_seconds"] / half["training_events_rank0"],
        "layouts": {
            name: {
                "training_seconds": r["training_seconds"],
                "speed_up": base["training_seconds"] / r["training_seconds"],
                "allreduce_seconds": r["allreduce_seconds"],
                "max_latent_difference": float(np.abs(r["latents"] - base["latents"]).max()),
            }
            for name, r in results.items()
            if name != "1 process, 1 thread, half batch"
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
