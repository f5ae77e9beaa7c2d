"""The reconstruct stage end to end on many particles at a large box: deformed against standard
reconstruction, time and peak memory, with the learned inverse field and the stage's defaults.

Usage:
  python bench/bench_reconstruct_stage.py --work WORK [--box 256] [--particles 20000]
      [--base-particles 128] [--device cpu] [--threads 1]
      [--output bench/results/reconstruct_stage_box256_n20000.json]

Training a run on tens of thousands of particles at box 256 takes days on a CPU, and the
reconstruction's cost does not depend on what the latent codes are, so:

1. ``engine.simulate`` makes ``--base-particles`` images of adenylate kinase at ``--box`` (pixel
   1.5 Å × 64 / box, as bench_scale.py; SNR 0.05, frames every 24th of the trajectory);
2. the consensus model (``--gaussians``, 10,000) is fitted to the first ground-truth frame (a clean
   map, so the Gaussians, and the region where the inverse field is evaluated, are the molecule's);
3. ``optimize_deformations`` trains on the base set with a short schedule (``--epochs``,
   ``--refinement-rounds``), then ``optimize_inverse_deformations`` (``--inverse-epochs``);
4. the finished run is copied with its particles repeated to ``--particles`` rows: particles.star
   (half set and validation flag of the repeated particle), the latent means, and a memory-mapped
   stack written block by block; run.json's particle count and the inverse summary's stamp are
   updated to match (the stage refuses a run whose outputs disagree with its count);
5. ``reconstruct_run`` on that run, standard (``deformations=False``) and deformed (defaults:
   32 k-means clusters per half, grid factor 2, constant filter), each in a fresh process.

Each reconstruction is timed per phase from its progress events (inserting half 1, half 2,
inverting and writing, after the last event) and its peak memory is the process's: the peak
anonymous memory (RssAnon sampled every 0.2 s: what the stage holds) and the peak resident set
(VmHWM, which also counts the pages of the memory-mapped stack read), on CUDA also the peak
allocated. The JSON records the ratio of the two, the resolutions the stage reports, the
machine's load average and every setting; a PNG beside it shows the phases.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_scale import (
    AnonymousPeak,
    peak_host_mib,
    phases,
    pixel_size,
    simulate_adk,
    timed_events,
)

STEPS = ("simulate", "consensus", "training", "inverse")
RECONSTRUCTIONS = ("standard", "deformed")
BLOCK = 1000  # images per block while the repeated stack is written


def folders(args) -> dict[str, Path]:
    work = Path(args.work) / f"box{args.box}_base{args.base_particles}"
    return {
        "sim": work / "sim",
        "consensus": work / "consensus",
        "run": work / "run",
        "repeated": work / f"run_n{args.particles}",
    }


def child(args) -> dict:
    """One step in this process; returns its measurements."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    paths = folders(args)
    from napari_dynamight.engine.progress import run as drive

    result: dict = {"step": args.child}
    started = time.perf_counter()
    if args.child == "simulate":
        simulate_adk(paths["sim"], args.base_particles, args.box, 24, device)
    elif args.child == "consensus":
        from napari_dynamight.engine.consensus_stage import fit_consensus

        drive(
            fit_consensus(
                clean_map(paths["sim"]),
                paths["consensus"],
                n_gaussians=args.gaussians,
                n_steps=args.consensus_steps,
                device=str(device),
            )
        )
    elif args.child == "training":
        from dataclasses import replace

        from napari_dynamight.engine.deformation.run import optimize_deformations
        from napari_dynamight.engine.deformation.settings import DeformationSettings
        from napari_dynamight.engine.run_folder import ConsensusFolder

        settings = replace(
            DeformationSettings(),
            epochs=args.epochs,
            warmup_epochs=0,
            refinement_rounds=args.refinement_rounds,
            refinement_epochs=1,
            batch_size=min(64, args.base_particles),
        )
        _, events = timed_events(
            optimize_deformations(
                paths["sim"] / "particles.star",
                clean_map(paths["sim"]),
                paths["run"],
                settings=settings,
                consensus_model=ConsensusFolder(paths["consensus"]).model,
                device=device,
            )
        )
        result["phases"] = phases(events)
    elif args.child == "inverse":
        from napari_dynamight.engine.inverse.run import optimize_inverse_deformations
        from napari_dynamight.engine.inverse.settings import InverseSettings

        drive(
            optimize_inverse_deformations(
                paths["run"], settings=InverseSettings(epochs=args.inverse_epochs), device=device
            )
        )
    elif args.child in RECONSTRUCTIONS:
        from napari_dynamight.engine.reconstruction.stage import reconstruct_run

        with AnonymousPeak() as anonymous:
            outcome, events = timed_events(
                reconstruct_run(
                    paths["repeated"], deformations=args.child == "deformed", device=device
                )
            )
            finished = time.perf_counter() - started
        result["phases"] = stage_phases(events, finished)
        result["peak_anonymous_mib"] = anonymous.peak
        result["particles"] = args.particles
        result["resolution_angstrom"] = outcome.resolution_angstrom
        result["resolution_standard_angstrom"] = outcome.resolution_standard_angstrom
    result["seconds"] = time.perf_counter() - started
    result["peak_host_mib"] = peak_host_mib()
    if device.type == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def stage_phases(events, finished: float) -> dict[str, float]:
    """Seconds of each half set's insertion (with deformations: its clusters, field evaluations
    and warps) and of the inversions and writing, which follow the stage's last event."""
    seconds, previous = {}, 0.0
    for _, message, now in events:
        seconds[message] = seconds.get(message, 0.0) + now - previous
        previous = now
    seconds["inverting and writing"] = seconds.pop("inverting", 0.0) + finished - previous
    return seconds


def clean_map(sim: Path) -> Path:
    """The first ground-truth frame of the simulation: the bench's consensus map."""
    return sorted((sim / "ground_truth").glob("frame_*.mrc"))[0]


def repeat_run(source: Path, target: Path, count: int) -> None:
    """A copy of the finished run ``source`` whose particles are repeated to ``count`` rows (see the
    module docstring, step 4). The repeated stack is written into ``target``, which becomes the
    run's image folder (``data_root``)."""
    import mrcfile
    import starfile

    from napari_dynamight.engine.data.subset import read_run_particles
    from napari_dynamight.engine.run_folder import RunFolder
    from napari_dynamight.engine.run_identity import run_stamp

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("reconstruction*", "subsets"))
    run = RunFolder(target)
    info = run.read_info()
    table = read_run_particles(run.path, info)
    blocks = starfile.read(run.particles, always_dict=True)
    rows = np.arange(count) % len(table)
    stack_name = "particles_repeated.mrcs"
    table.check_images()
    files, box = table.image_files, int(table.image_box[0])
    with mrcfile.new_mmap(
        target / stack_name, shape=(count, box, box), mrc_mode=2, overwrite=True
    ) as stack:
        for start in range(0, count, BLOCK):
            block = rows[start : start + BLOCK]
            for file in np.unique(files[block]):
                chosen = np.nonzero(files[block] == file)[0]
                with mrcfile.mmap(file, mode="r") as images:
                    stack.data[start + chosen] = images.data[table.image_indices[block[chosen]]]
        stack.voxel_size = float(table.pixel_size_angstrom[0])
    repeated = blocks["particles"].iloc[rows].reset_index(drop=True)
    repeated["rlnImageName"] = [f"{i + 1:06d}@{stack_name}" for i in range(count)]
    blocks["particles"] = repeated
    starfile.write(blocks, run.particles, overwrite=True)
    for path in (run.latents, run.latents_half2):
        if path.is_file():
            np.save(path, np.load(path)[rows])
    info["n_particles"] = count
    info["data_root"] = str(target.resolve())
    if isinstance(info.get("identity"), dict):
        info["identity"]["n_particles"] = count
    run.info.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    summary = json.loads(run.inverse.summary.read_text(encoding="utf-8"))
    summary["deformation_run"] = run_stamp(info)
    run.inverse.summary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def run_child(args, step: str) -> dict:
    """``step`` in a fresh child process of this script (its peak memory is its own)."""
    command = [sys.executable, __file__, *sys.argv[1:], "--child", step]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{step}: failed")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def command_line(args) -> str:
    """The command that reproduces this run, with the scratch folder as WORK."""
    options = " ".join(
        f"--{name.replace('_', '-')} {value}"
        for name, value in vars(args).items()
        if name not in ("work", "child", "output")
    )
    return f"python bench/bench_reconstruct_stage.py --work WORK {options} --output {args.output}"


def summarise(rows: dict[str, dict], particles: int) -> dict:
    """Seconds per particle of each reconstruction, and the deformed one's cost over the
    standard's."""
    standard, deformed = rows["standard"], rows["deformed"]
    return {
        "seconds_per_particle_standard": standard["seconds"] / particles,
        "seconds_per_particle_deformed": deformed["seconds"] / particles,
        "deformed_over_standard": deformed["seconds"] / standard["seconds"],
        "peak_anonymous_gib_standard": standard["peak_anonymous_mib"] / 1024,
        "peak_anonymous_gib_deformed": deformed["peak_anonymous_mib"] / 1024,
    }


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from napari_dynamight.engine.io.figure import save_figure

    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    names = list(RECONSTRUCTIONS)
    kinds = sorted({kind for name in names for kind in data["reconstructions"][name]["phases"]})
    bottom = np.zeros(len(names))
    for kind in kinds:
        values = np.array([data["reconstructions"][n]["phases"].get(kind, 0.0) for n in names])
        axes.bar(names, values / 60, bottom=bottom / 60, label=kind)
        bottom += values
    axes.set_ylabel("minutes")
    axes.set_title(
        f"reconstruct stage, {data['particles']:,} particles at box {data['box']} "
        f"({data['device_name']})",
        fontsize=9,
    )
    axes.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (data, runs)")
    parser.add_argument("--box", type=int, default=256)
    parser.add_argument("--particles", type=int, default=20_000)
    parser.add_argument("--base-particles", type=int, default=128)
    parser.add_argument("--gaussians", type=int, default=10_000)
    parser.add_argument("--consensus-steps", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--refinement-rounds", type=int, default=1)
    parser.add_argument("--inverse-epochs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--output", type=Path, default=Path("bench/results/reconstruct_stage_box256_n20000.json")
    )
    parser.add_argument("--child", choices=STEPS + RECONSTRUCTIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    paths = folders(args)
    started, loads = time.perf_counter(), [os.getloadavg()[0]]
    preparation = {}
    done = {
        "simulate": (paths["sim"] / "particles.star").is_file(),
        "consensus": paths["consensus"].is_dir(),
        "training": (paths["run"] / "latent_means.npy").is_file(),
        "inverse": (paths["run"] / "inverse" / "summary.json").is_file(),
    }
    for step in STEPS:
        if not done[step]:
            preparation[step] = run_child(args, step)
    repeat_run(paths["run"], paths["repeated"], args.particles)
    reconstructions = {}
    for name in RECONSTRUCTIONS:
        loads.append(os.getloadavg()[0])
        reconstructions[name] = run_child(args, name)
    loads.append(os.getloadavg()[0])
    import torch

    data = {
        "benchmark": "reconstruct stage: deformed against standard, particles repeated",
        "command": command_line(args),
        "device": args.device,
        "device_name": torch.cuda.get_device_name(torch.device(args.device))
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "box": args.box,
        "pixel_size_angstrom": pixel_size(args.box),
        "particles": args.particles,
        "base_particles": args.base_particles,
        "gaussians": args.gaussians,
        "training": {
            "epochs": args.epochs,
            "refinement_rounds": args.refinement_rounds,
            "inverse_epochs": args.inverse_epochs,
            "consensus_steps": args.consensus_steps,
        },
        "load_average_during_run": loads,
        "preparation": preparation,
        "reconstructions": reconstructions,
        "summary": summarise(reconstructions, args.particles),
        "seconds": time.perf_counter() - started,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(data, indent=1))
    plot(data, args.output.with_suffix(".png"))
    print(json.dumps(data["summary"], indent=1))


if __name__ == "__main__":
    main()
