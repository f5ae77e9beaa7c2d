"""Training throughput, peak memory and decode-and-render time of the deformation engine on CPU.

Usage:
  python bench/bench_training.py --output bench/results/training.json [--threads 2] [--quick]
  python bench/bench_training.py --quality --output bench/results/training_quality.json

Data: simulated adenylate kinase (the bundled example files, ``engine.simulate``, SNR 0.05, defocus 0.5-2.5 µm) at
image box 64 (1.5 Å) and box 128 (0.75 Å: the same 96 Å field of view, twice the sampling).
Every configuration runs in a fresh process (bench/training_child.py): warm-up epoch, then timed full
epochs of ``optimize_deformations`` (batch 64, latent dimension 6, the default networks).
Counting: one full epoch of a half goes through that half's training and validation particles, so
both halves together see every particle once; particle-epochs per second = particles / (seconds of
half 1's epoch + half 2's epoch), the way the reference's 4,000 particles / 23.5 s = 170 is counted.
Memory: the child's peak RSS (VmHWM; it includes the file pages of the memory-mapped stack it has
read, which the kernel may drop; getrusage's ru_maxrss is kept too, but Linux carries the parent's RSS
at fork into it) and its peak anonymous RSS sampled at every progress event, for two particle counts
with the image cache on (default) and off (every batch read from the stack).
Decode: ``DeformationRun.volume`` at box 128, median of repeats, 1 and 2 threads.
``--decoders``: the two deformation networks ("mlp", "factorised") side by side at 1,000, 10,000 and
30,000 Gaussians, image box 64 at the default training crop (``DECODERS`` lists the particle counts).
``--quality``: best-PC |Spearman| with the true frame and throughput, 10,000 Gaussians, with and
without decoder control points (a short run on the SNR 0.05 data).
The recorded command shows absolute paths as WORK/... inside the work directory, else relative to the
repository, else by name.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_dynamight.engine.consensus import fill_with_gaussians, save_model
from napari_dynamight.engine.consensus_stage import fit_consensus
from napari_dynamight.engine.deformation.control_points import ControlPoints
from napari_dynamight.engine.deformation.decode import DeformationRun, _Half
from napari_dynamight.engine.deformation.networks import DeformationDecoder
from napari_dynamight.engine.example_data import STRUCTURE, example_file
from napari_dynamight.engine.gaussians import GaussianModel
from napari_dynamight.engine.io.atomic import atomic_path
from napari_dynamight.engine.io.mrc import read_map
from napari_dynamight.engine.io.star import read_particles, write_particles
from napari_dynamight.engine.progress import run
from napari_dynamight.engine.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
ADK = example_file(STRUCTURE).parent
CHILD = Path(__file__).with_name("training_child.py")
# name: (image box, pixel Å, particles simulated)
DATA = {"full": {"box64": (64, 1.5, 4000), "box128": (128, 0.75, 1000)},
        "quick": {"box64": (32, 3.0, 96), "box128": (40, 2.4, 64)}}
# (data, Gaussians, training box or None for the default crop, particles, control points)
THROUGHPUT = {"full": [("box64", 1000, 64, 3000, 0), ("box64", 1000, None, 3000, 0), ("box64", 2000, 64, 1500, 0),
                       ("box64", 10000, 64, 384, 0), ("box64", 10000, 64, 1000, 1000),
                       ("box128", 2000, 128, 1000, 0), ("box128", 10000, 128, 384, 0),
                       ("box128", 10000, 128, 640, 1000)],
              "quick": [("box64", 100, 32, 96, 0), ("box128", 200, 40, 64, 30)]}
MEMORY = {"full": ("box64", 1000, 64, (1000, 4000)), "quick": ("box64", 100, 32, (64, 96))}
# Gaussians -> particles timed, for --decoders (fewer where the MLP decoder is slow)
DECODERS = {"full": {1000: 1500, 10000: 384, 30000: 192}, "quick": {100: 96, 300: 64}}
DECODE = {"full": (128, 0.75, (1000, 2000, 10000), 20), "quick": (32, 3.0, (100, 300), 2)}


def _dataset(folder: Path, box: int, pixel: float, n: int) -> Path:
    if not (folder / "particles.star").is_file():
        run(simulate(ADK / "adk_closed.pdb", ADK / "adk_dims.dcd", output_directory=folder, n_particles=n, box=box,
                     pixel_size_angstrom=pixel, snr=0.05, defocus_range_angstrom=(5000.0, 25000.0), seed=0))
    return folder


def _subset(folder: Path, n: int) -> Path:
    """A STAR file of the first ``n`` particles, beside the stack (same image names)."""
    path = folder / f"particles_{n}.star"
    if not path.is_file():
        write_particles(path, read_particles(folder / "particles.star"), index=np.arange(n))
    return path


def _portable(word: str, work: Path) -> str:
    """A command-line word with an absolute path in it (``/p`` or ``--option=/p``) shown as WORK/... inside
    the work directory, relative to the repository inside it, else by name."""
    option, equals, value = word.rpartition("=") if word.startswith("--") else ("", "", word)
    if not os.path.isabs(value):
        return word
    resolved = Path(value).resolve()
    for base, prefix in ((work.resolve(), "WORK"), (ROOT, ".")):
        if resolved == base or base in resolved.parents:
            return option + equals + (Path(prefix) / resolved.relative_to(base)).as_posix()
    return option + equals + Path(value).name


def _model(folder: Path, n_gaussians: int) -> Path:
    """Gaussians spread inside the consensus map (no fit: timing does not depend on it)."""
    path = folder / f"gaussians_{n_gaussians}.pt"
    if not path.is_file():
        volume, voxel = read_map(folder / "consensus.mrc")
        save_model(path, fill_with_gaussians(volume, voxel, n_gaussians), box=volume.shape[0], voxel_size_angstrom=voxel)
    return path


def _child(config: dict) -> dict:
    done = subprocess.run([sys.executable, str(CHILD), json.dumps(config)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"configuration {config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _config(folder: Path, work: Path, n_gauss: int, train_box, n: int, epochs: int, threads: int,
            controls: int = 0, cache: bool = True, decoder: str = "mlp") -> dict:
    return {"star": str(_subset(folder, n)), "consensus": str(folder / "consensus.mrc"),
            "model": str(_model(folder, n_gauss)), "train_box": train_box, "n_particles": n,
            "run_directory": str(work / "runs" / f"{folder.name}_{n_gauss}_{train_box}_{n}_{controls}_{cache}_{decoder}"),
            "epochs": epochs, "batch_size": 64, "threads": threads, "control_points": controls,
            "cache": cache, "decoder": decoder, "stop_early": True}


def decoders(work: Path, data: dict, mode: str, threads: int, epochs: int, echo) -> list[dict]:
    """Throughput of each deformation network at each number of Gaussians (box 64, default crop)."""
    rows = []
    for n_gauss, n in DECODERS[mode].items():
        for decoder in ("mlp", "factorised"):
            out = {"data": "box64", "image_box": DATA[mode]["box64"][0], "n_gaussians": n_gauss, "decoder": decoder,
                   **_child(_config(data["box64"], work, n_gauss, None, n, epochs, threads, decoder=decoder))}
            echo(f"{decoder} decoder, {n_gauss} Gaussians, train box {out['train_box']}, {n} particles: "
                 f"{out['particle_epochs_per_second_both_halves']:.0f} particle-epochs/s, "
                 f"peak RSS {out['peak_rss_mib']:.0f} MiB")
            rows.append(out)
    return rows


def _training(work: Path, data: dict, mode: str, threads: int, epochs: int, echo) -> tuple[list, list]:
    def config(name, n_gauss, train_box, n, controls=0, cache=True):
        return _config(data[name], work, n_gauss, train_box, n, epochs, threads, controls, cache)

    def row(name, n_gauss, train_box, n, controls=0, cache=True):
        out = {"data": name, "image_box": DATA[mode][name][0], "pixel_size_angstrom": DATA[mode][name][1],
               "n_gaussians": n_gauss, "control_points": controls, "image_cache": cache,
               **_child(config(name, n_gauss, train_box, n, controls, cache))}
        echo(f"{name} {n_gauss} Gaussians, train box {out['train_box']}, {n} particles, control points "
             f"{controls}, cache {cache}: {out['particle_epochs_per_second_both_halves']:.0f} particle-epochs/s, "
             f"peak RSS {out['peak_rss_mib']:.0f} MiB (anon {out['peak_rss_anon_mib_sampled']:.0f})")
        return out

    throughput = [row(*spec) for spec in THROUGHPUT[mode]]
    name, n_gauss, train_box, counts = MEMORY[mode]
    memory = [row(name, n_gauss, train_box, n, 0, cache) for cache in (True, False) for n in counts]
    return throughput, memory


def decode_times(mode: str, threads: tuple[int, ...], echo) -> list[dict]:
    """``DeformationRun.volume`` of one latent point: a box-128 run with decoders whose last layer is
    random (so the decoder really computes), for each Gaussian count, thread count, with and without
    1,000 control points (for 10,000 Gaussians)."""
    box, voxel, counts, repeats = DECODE[mode]
    rows, previous = [], torch.get_num_threads()
    for n in counts:
        generator = torch.Generator().manual_seed(n)
        decoder = DeformationDecoder(6, 0.5 * box * voxel)
        torch.nn.init.normal_(decoder.out.weight, std=0.01, generator=generator)
        positions = torch.randn(n, 3, generator=generator) * 0.12 * box * voxel
        model_args = (positions, torch.ones(n), torch.full((n,), 2.0 * voxel))
        for controls in (0, 1000) if n > 2000 or mode == "quick" else (0,):
            control = ControlPoints(min(controls, n // 2)).update(positions) if controls else None
            half = _Half(decoder.eval(), GaussianModel(*model_args), torch.ones(n), control)
            decoded = DeformationRun([half, half], None, np.ones(1), np.zeros(1, bool), box, voxel, torch.device("cpu"))
            for t in threads:
                torch.set_num_threads(t)
                z = np.zeros(6, np.float32)
                decoded.volume(z)
                seconds = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    decoded.volume(z)
                    seconds.append(time.perf_counter() - start)
                positions_ms = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    decoded.positions(z)
                    positions_ms.append(time.perf_counter() - start)
                rows.append({"box": box, "voxel_size_angstrom": voxel, "n_gaussians": n,
                             "control_points": control.centres.shape[0] if control else 0, "threads": t,
                             "decode_and_render_ms_median": 1e3 * float(np.median(seconds)),
                             "decode_only_ms_median": 1e3 * float(np.median(positions_ms)), "repeats": repeats})
                echo(f"decode+render box {box}, {n} Gaussians, {rows[-1]['control_points']} control points, "
                     f"{t} threads: {rows[-1]['decode_and_render_ms_median']:.1f} ms")
    torch.set_num_threads(previous)
    return rows


def quality(work: Path, args, echo) -> list[dict]:
    """Short runs at 10,000 Gaussians on the SNR 0.05 box-64 data, default training box, with and
    without control points: throughput and best-PC |Spearman| of each half's latents."""
    folder = _dataset(work / "quality_data", 64, 1.5, 3000)
    model = folder / "fit_10000" / "consensus_gaussians.pt"
    if not model.is_file():
        model = run(fit_consensus(folder / "consensus.mrc", folder / "fit_10000", n_gaussians=10000)).model_path
    rows = []
    for controls in args.quality_control_points:
        config = {"star": str(_subset(folder, args.quality_particles)), "consensus": str(folder / "consensus.mrc"),
                  "model": str(model), "train_box": None, "n_particles": args.quality_particles,
                  "run_directory": str(work / "quality_runs" / f"controls_{controls}"), "epochs": args.quality_epochs,
                  "batch_size": 64, "threads": args.threads, "control_points": controls, "cache": True,
                  "stop_early": False, "labels": str(folder / "ground_truth" / "labels.csv")}
        rows.append({"n_gaussians": 10000, "control_points": controls, "epochs": args.quality_epochs,
                     **_child(config)})
        echo(f"quality, {controls} control points: {rows[-1]}")
    return rows


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    rows = report["throughput"]
    labels = [f"box {r['image_box']}/{r['train_box']}\n{r['n_gaussians']} G" + (f"\n{r['control_points']} cp"
              if r["control_points"] else "") for r in rows]
    left.bar(range(len(rows)), [r["particle_epochs_per_second_both_halves"] for r in rows], color="tab:blue")
    left.set_xticks(range(len(rows)), labels, fontsize=7)
    for value, style, text in ((350, "--", "target 350"), (170, ":", "reference 170")):
        left.axhline(value, color="k", ls=style, lw=1, label=text)
    left.set_ylabel("particle-epochs / s (both halves)")
    left.set_title(f"training throughput, {report['torch_threads']} threads")
    left.legend(fontsize=8)
    decode = report["decode"]
    labels = [f"{r['n_gaussians']} G{' cp' if r['control_points'] else ''}\n{r['threads']} thr" for r in decode]
    right.bar(range(len(decode)), [r["decode_and_render_ms_median"] for r in decode], color="tab:orange")
    right.set_xticks(range(len(decode)), labels, fontsize=7)
    right.axhline(50, color="k", ls="--", lw=1, label="target 50 ms")
    right.set_ylabel("ms")
    right.set_title(f"decode + render one volume, box {decode[0]['box']}")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "training.json")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training (default: 2)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run: one warm-up, the rest timed")
    parser.add_argument("--quick", action="store_true", help="tiny data and sizes: a smoke run in about a minute")
    parser.add_argument("--quality", action="store_true", help="only the control-points quality comparison")
    parser.add_argument("--decoders", action="store_true",
                        help="only the side-by-side throughput of the mlp and factorised decoders")
    parser.add_argument("--quality-particles", type=int, default=1500)
    parser.add_argument("--quality-epochs", type=int, default=6)
    parser.add_argument("--quality-control-points", type=int, nargs="+", default=[0, 1000])
    parser.add_argument("--work-directory", type=Path, help="keep simulated data and runs here")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    temporary = None if args.work_directory else tempfile.TemporaryDirectory(prefix="bench_training_")
    work = args.work_directory or Path(temporary.name)
    work.mkdir(parents=True, exist_ok=True)
    words = ["python", *sys.argv] if argv is None else ["bench_training.py", *argv]
    report = {"benchmark": "deformation training throughput, peak memory, decode-and-render",
              "command": " ".join(_portable(word, work) for word in words),
              "mode": mode, "torch": torch.__version__, "cpu_count": os.cpu_count(), "torch_threads": args.threads,
              "load_average_before": list(os.getloadavg()),
              "counting": "particle-epochs/s = particles / (half-1 epoch + half-2 epoch seconds); each half's "
                          "full epoch covers its training and validation particles; mean of the timed epochs "
                          "after one warm-up epoch; batch 64, latent dimension 6, default networks"}
    started = time.perf_counter()

    def echo(text):
        print(text, flush=True)

    try:
        if args.quality:
            report["quality"] = quality(work, args, echo)
        elif args.decoders:
            data = {"box64": _dataset(work / "box64", *DATA[mode]["box64"])}
            report["decoders"] = decoders(work, data, mode, args.threads, args.epochs, echo)
        else:
            data = {name: _dataset(work / name, *spec) for name, spec in DATA[mode].items()}
            report["throughput"], report["memory"] = _training(work, data, mode, args.threads, args.epochs, echo)
            report["decode"] = decode_times(mode, (1, 2), echo)
    finally:
        if temporary is not None:
            temporary.cleanup()
    report["load_average_after"] = list(os.getloadavg())
    report["wall_seconds"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.output) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not (args.quality or args.decoders):
        plot(report, args.output.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
