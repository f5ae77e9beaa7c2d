"""Training throughput, refinement cost, peak memory and decode-and-render time of the deformation
engine.

Usage:
  python bench/bench_training.py --output bench/results/training.json [--threads 1] [--device cpu]
      [--quick]
  python bench/bench_training.py --decoders --output bench/results/training_decoders.json
  python bench/bench_training.py --e-step --output bench/results/training_e_step.json
  python bench/bench_training.py --quality --output bench/results/training_quality.json

Data: simulated adenylate kinase (the bundled example files, ``engine.simulate``, SNR 0.05, defocus
0.5-2.5 µm) at image box 64 (1.5 Å); box 128 (0.75 Å) and 256 (0.375 Å) are the same images and
consensus map Fourier-padded: the same 96 Å field of view and content, sampled ever finer (the
default training crop of all three is 32 px at 3 Å).
Gaussians: 1,000, 10,000 and 30,000 spread inside the consensus map (no fit: timing does not depend
on it). Every configuration runs in a fresh process (bench/training_child.py) at the default
training box (the Fourier crop ``optimize_deformations`` picks): a warm-up epoch, timed full epochs
(batch 64, latent dimension 6, the default networks), then one refinement round with one M-step
epoch, timed as its E-step (posteriors of every training particle over the 128 candidates) and its
M-step epoch. A default round is the E-step plus ``refinement_epochs`` (6) M-step epochs; the final
posterior-mean latents cost one E-step over all particles. Reference line: the projector alone,
forward and backward (64 images at the training box, per-image positions, CTF and data loss), in
images per second, in the same child.
Counting: one full epoch of a half goes through that half's training and validation particles, so
both halves together see every particle once; particle-epochs per second = particles / (seconds of
half 1's epoch + half 2's epoch), the way the reference's 4,000 particles / 23.5 s = 170 is counted.
Memory: the child's peak RSS (VmHWM; it includes the file pages of the memory-mapped stack it has
read, which the kernel may drop; getrusage's ru_maxrss is kept too, but Linux carries the parent's
RSS at fork into it) and its peak anonymous RSS sampled at every progress event; ``memory`` rows:
two particle counts with the image cache on (default) and off (every batch read from the stack).
Decode: ``DeformationRun.volume`` at box 128, median of repeats, 1 and 2 threads.
``--device cuda``: the same on a GPU (the JSON records the device's name and the precision).
``--decoders``: the two deformation networks ("mlp", "factorised") side by side at 1,000, 10,000 and
30,000 Gaussians, image box 64 at the default training crop (``DECODERS`` lists the particle
counts).
``--e-step``: the E-step's posteriors with every candidate evaluated exactly and with the screen
(``inference.Screen``), side by side in one process, at 1,000, 10,000 and 30,000 Gaussians.
``--quality``: best-PC |Spearman| with the true frame and throughput, 10,000 Gaussians, with and
without decoder control points (a short run on the SNR 0.05 data).
The recorded command shows absolute paths as WORK/... inside the work directory, else relative to
the repository, else by name.
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

import mrcfile
import numpy as np
import torch

from napari_dynamight.engine.consensus import fill_with_gaussians, save_model
from napari_dynamight.engine.consensus_stage import fit_consensus
from napari_dynamight.engine.data.particle_file import read_particles, write_particles
from napari_dynamight.engine.deformation.batches import ParticleBatches
from napari_dynamight.engine.deformation.control_points import ControlPoints
from napari_dynamight.engine.deformation.decode import DeformationRun, _Half
from napari_dynamight.engine.deformation.inference import (
    Candidates,
    posteriors,
    screen_for,
    screened_choice,
)
from napari_dynamight.engine.deformation.inputs import read_inputs
from napari_dynamight.engine.deformation.networks import DeformationDecoder
from napari_dynamight.engine.deformation.settings import DeformationSettings
from napari_dynamight.engine.deformation.trainer import HalfSet
from napari_dynamight.engine.device import check_device
from napari_dynamight.engine.example_data import STRUCTURE, example_file
from napari_dynamight.engine.fourier import centred_resize, fourier_resample
from napari_dynamight.engine.gaussians import GaussianModel
from napari_dynamight.engine.io.atomic import atomic_path
from napari_dynamight.engine.io.mrc import open_stack, read_map, write_map
from napari_dynamight.engine.progress import run
from napari_dynamight.engine.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
ADK = example_file(STRUCTURE).parent
CHILD = Path(__file__).with_name("training_child.py")
# name: (image box, pixel Å, particles simulated); the larger boxes are the first one's images
# Fourier-padded
DATA = {
    "full": {"box64": (64, 1.5, 2048), "box128": (128, 0.75, 1024), "box256": (256, 0.375, 1024)},
    "quick": {"box64": (32, 3.0, 96), "box128": (64, 1.5, 64)},
}
# (data, Gaussians, particles timed): every image box with every Gaussian count, at the default crop
THROUGHPUT = {
    "full": [
        (name, n_gauss, n)
        for name in ("box64", "box128", "box256")
        for n_gauss, n in ((1000, 1024), (10000, 256), (30000, 128))
    ],
    "quick": [("box64", 100, 96), ("box128", 200, 64)],
}
# (data, Gaussians, particle counts): peak memory with the image cache on and off
MEMORY = {"full": ("box64", 1000, (512, 2048)), "quick": ("box64", 100, (64, 96))}
# Gaussians -> particles timed, for --decoders (fewer where the MLP decoder is slow)
DECODERS = {"full": {1000: 1500, 10000: 384, 30000: 192}, "quick": {100: 96, 300: 64}}
# --e-step: (repeats, {Gaussians: particles})
E_STEP = {"full": (2, {1000: 256, 10000: 64, 30000: 40}), "quick": (1, {100: 64, 300: 40})}
DECODE = {"full": (128, 0.75, (1000, 2000, 10000), 20), "quick": (32, 3.0, (100, 300), 2)}


def _dataset(folder: Path, box: int, pixel: float, n: int) -> Path:
    if not (folder / "particles.star").is_file():
        run(
            simulate(
                ADK / "adk_closed.pdb",
                ADK / "adk_dims.dcd",
                output_directory=folder,
                n_particles=n,
                box=box,
                pixel_size_angstrom=pixel,
                snr=0.05,
                defocus_range_angstrom=(5000.0, 25000.0),
                seed=0,
            )
        )
    return folder


def _finer(source: Path, folder: Path, box: int, pixel: float, n: int) -> Path:
    """The first ``n`` particles and the consensus map of ``source`` Fourier-padded to ``box`` (the
    same content sampled at ``pixel``): simulating at box 256 would render every frame's map at
    256³."""
    if (folder / "particles.star").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    table = read_particles(source / "particles.star")
    old_pixel = float(table.pixel_size_angstrom[0])
    volume, _ = read_map(source / "consensus.mrc")
    spectrum = torch.fft.fftshift(torch.fft.fftn(torch.as_tensor(volume, dtype=torch.float64)))
    spectrum = centred_resize(spectrum, box, (-3, -2, -1))
    finer = torch.fft.ifftn(torch.fft.ifftshift(spectrum)).real * (box / volume.shape[0]) ** 3
    write_map(folder / "consensus.mrc", finer.float().numpy(), pixel)
    stack = open_stack(source / "particles.mrcs")
    with mrcfile.new_mmap(
        folder / "particles.mrcs", shape=(n, box, box), mrc_mode=2, overwrite=True
    ) as out:
        for start in range(0, n, 64):
            images = torch.as_tensor(
                np.asarray(stack[start : min(start + 64, n)]), dtype=torch.float32
            )
            out.data[start : start + len(images)] = fourier_resample(
                images, old_pixel, pixel, box
            ).numpy()
        out.voxel_size = pixel
    table.optics = table.optics.assign(rlnImagePixelSize=pixel, rlnImageSize=box)
    table.star_path = folder / "particles.star"
    write_particles(folder / "particles.star", table, index=np.arange(n))
    return folder


def _subset(folder: Path, n: int) -> Path:
    """A STAR file of the first ``n`` particles, beside the stack (same image names)."""
    path = folder / f"particles_{n}.star"
    if not path.is_file():
        write_particles(path, read_particles(folder / "particles.star"), index=np.arange(n))
    return path


def _portable(word: str, work: Path) -> str:
    """A command-line word with an absolute path in it (``/p`` or ``--option=/p``) shown as WORK/...
    inside the work directory, relative to the repository inside it, else by name."""
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
        save_model(
            path,
            fill_with_gaussians(volume, voxel, n_gaussians),
            box=volume.shape[0],
            voxel_size_angstrom=voxel,
        )
    return path


def _child(config: dict) -> dict:
    done = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(config)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"configuration {config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _config(
    folder: Path,
    work: Path,
    n_gauss: int,
    train_box,
    n: int,
    epochs: int,
    threads: int,
    controls: int = 0,
    cache: bool = True,
    decoder: str | None = None,
    device: str = "cpu",
    refinement: bool = False,
    projection: bool = False,
) -> dict:
    config = {
        "star": str(_subset(folder, n)),
        "consensus": str(folder / "consensus.mrc"),
        "model": str(_model(folder, n_gauss)),
        "train_box": train_box,
        "n_particles": n,
        "run_directory": str(
            work / "runs" / f"{folder.name}_{n_gauss}_{train_box}_{n}_{controls}_{cache}_"
            f"{decoder}_{refinement}"
        ),
        "epochs": epochs,
        "batch_size": 64,
        "threads": threads,
        "control_points": controls,
        "cache": cache,
        "stop_early": True,
        "device": device,
        "refinement": refinement,
        "projection": projection,
    }
    if decoder is not None:
        config["decoder"] = decoder
    return config


def decoders(work: Path, data: dict, mode: str, threads: int, epochs: int, echo) -> list[dict]:
    """Throughput of each deformation network at each number of Gaussians (box 64, default crop)."""
    rows = []
    for n_gauss, n in DECODERS[mode].items():
        for decoder in ("mlp", "factorised"):
            out = {
                "data": "box64",
                "image_box": DATA[mode]["box64"][0],
                "n_gaussians": n_gauss,
                "decoder": decoder,
                **_child(
                    _config(data["box64"], work, n_gauss, None, n, epochs, threads, decoder=decoder)
                ),
            }
            echo(
                f"{decoder} decoder, {n_gauss} Gaussians, train box {out['train_box']}, {n} "
                f"particles: {out['particle_epochs_per_second_both_halves']:.0f} "
                f"particle-epochs/s, peak RSS {out['peak_rss_mib']:.0f} MiB"
            )
            rows.append(out)
    return rows


def _training(work: Path, data: dict, mode: str, args, echo) -> tuple[list, list]:
    def row(name, n_gauss, n, cache=True, refinement=True):
        config = _config(
            data[name],
            work,
            n_gauss,
            None,
            n,
            args.epochs,
            args.threads,
            cache=cache,
            device=args.device,
            refinement=refinement,
            projection=refinement,
        )
        out = {
            "data": name,
            "image_box": DATA[mode][name][0],
            "pixel_size_angstrom": DATA[mode][name][1],
            "n_gaussians": n_gauss,
            "image_cache": cache,
            **_child(config),
        }
        text = (
            f"{name} {n_gauss} Gaussians, train box {out['train_box']}, {n} particles, cache "
            f"{cache}: {out['particle_epochs_per_second_both_halves']:.0f} particle-epochs/s, peak "
            f"RSS {out['peak_rss_mib']:.0f} MiB (anon {out['peak_rss_anon_mib_sampled']:.0f})"
        )
        if refinement:
            refine = out["refinement"]
            refine["default_round_seconds_per_particle"] = (
                refine["e_step_seconds_both_halves"]
                + DeformationSettings.refinement_epochs * refine["m_step_epoch_seconds_both_halves"]
            ) / n
            text += (
                f"; E-step {1e3 * refine['e_step_seconds_per_particle']:.1f} ms/particle, M-step "
                f"epoch {refine['m_step_epoch_seconds_both_halves']:.1f} s; projection alone "
                f"{out['projection_images_per_second']:.0f} images/s"
            )
        echo(text)
        return out

    throughput = [row(*spec) for spec in THROUGHPUT[mode]]
    name, n_gauss, counts = MEMORY[mode]
    memory = [
        row(name, n_gauss, n, cache, refinement=False) for cache in (True, False) for n in counts
    ]
    return throughput, memory


def decode_times(mode: str, threads: tuple[int, ...], echo) -> list[dict]:
    """``DeformationRun.volume`` of one latent point: a box-128 run with decoders whose last layer
    is random (so the decoder really computes), for each Gaussian count, thread count, with and
    without 1,000 control points (for 10,000 Gaussians)."""
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
            decoded = DeformationRun(
                [half, half], None, np.ones(1), np.zeros(1, bool), box, voxel, torch.device("cpu")
            )
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
                rows.append(
                    {
                        "box": box,
                        "voxel_size_angstrom": voxel,
                        "n_gaussians": n,
                        "control_points": control.centres.shape[0] if control else 0,
                        "threads": t,
                        "decode_and_render_ms_median": 1e3 * float(np.median(seconds)),
                        "decode_only_ms_median": 1e3 * float(np.median(positions_ms)),
                        "repeats": repeats,
                    }
                )
                echo(
                    f"decode+render box {box}, {n} Gaussians, {rows[-1]['control_points']} control "
                    f"points, {t} threads: {rows[-1]['decode_and_render_ms_median']:.1f} ms"
                )
    torch.set_num_threads(previous)
    return rows


def e_step_times(work: Path, data: dict, mode: str, threads: int, echo) -> list[dict]:
    """E-step posteriors exact and screened, side by side in one process (interleaved, the faster
    of ``E_STEP[mode]`` repeats each), on the box-64 data at the default training box, for each
    Gaussian count: the particles' posteriors over 128 candidates, each the reference moved by its
    own smooth random field (an affine map of RMS ~2 Å; a trained decoder's candidates differ the
    same way), with the noise spectrum of the undeformed reference. Also the screen's agreement
    with the exact posteriors (L1 distance, mean over particles) and how many candidates it kept."""
    repeats, sizes = E_STEP[mode]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    for n_gauss, n in sizes.items():
        inputs = read_inputs(
            _subset(data["box64"], n), data["box64"] / "consensus.mrc", None,
            _model(data["box64"], n_gauss), None, None, None, "cpu", 0.0, 0,
        )  # fmt: skip
        batches = ParticleBatches(inputs.table, inputs.train_box, "cpu")
        settings = DeformationSettings()
        model = inputs.consensus_model
        half = HalfSet(
            1, model, np.arange(n), np.zeros(0, np.int64), batches.box, 48.0, settings,
            torch.ones(model.n_gaussians), torch.device("cpu"),
        )  # fmt: skip
        half.fit_amplitude(batches, np.arange(n))
        half.estimate_noise(batches, np.arange(n), deform=False)
        reference = half.model(detach=True)
        generator = torch.Generator().manual_seed(n_gauss)
        count = settings.posterior_candidates
        centred = reference.positions_angstrom - reference.positions_angstrom.mean(0)
        matrix = torch.randn(count, 3, 3, generator=generator) * 0.1
        shift = torch.randn(count, 1, 3, generator=generator)
        candidates = Candidates(
            torch.randn(count, settings.latent_dim, generator=generator),
            reference.positions_angstrom + centred @ matrix.transpose(1, 2) + shift,
        )
        batch = batches.get(np.arange(n))
        box, pixel = batches.box, batches.pixel_size_angstrom
        screen = screen_for(False, reference, candidates, box, pixel)
        seconds = {"exact": [], "screened": []}
        result = {}
        for _ in range(repeats):
            for name, chosen in (("exact", None), ("screened", screen)):
                start = time.perf_counter()
                result[name] = posteriors(
                    batch, candidates, reference, half.noise, box, pixel, chosen
                )
                seconds[name].append(time.perf_counter() - start)
        kept = screened_choice(screen.negative_log_likelihoods(batch, half.noise))[1].sum(1)
        exact = result["exact"]
        rows.append(
            {
                "data": "box64",
                "n_gaussians": n_gauss,
                "train_box": box,
                "particles": n,
                "candidates": count,
                "screen_box": screen.box,
                "screen_groups": int(screen.positions.shape[1]),
                "exact_ms_per_particle": 1e3 * min(seconds["exact"]) / n,
                "screened_ms_per_particle": 1e3 * min(seconds["screened"]) / n,
                "exact_candidates_kept_mean": float(kept.float().mean()),
                "posterior_l1_mean": float((result["screened"] - exact).abs().sum(1).mean()),
                "posterior_entropy_mean": float(
                    -(exact * exact.clamp_min(1e-30).log()).sum(1).mean()
                ),
            }
        )
        batches.close()
        row = rows[-1]
        echo(
            f"E-step, {n_gauss} Gaussians, {n} particles: exact "
            f"{row['exact_ms_per_particle']:.1f} ms/particle, screened "
            f"{row['screened_ms_per_particle']:.1f} ({row['screen_groups']} groups, "
            f"{row['exact_candidates_kept_mean']:.1f} kept, L1 {row['posterior_l1_mean']:.3f})"
        )
    torch.set_num_threads(previous)
    return rows


def quality(work: Path, args, echo) -> list[dict]:
    """Short runs at 10,000 Gaussians on the SNR 0.05 box-64 data, default training box, with and
    without control points: throughput and best-PC |Spearman| of each half's latents."""
    folder = _dataset(work / "quality_data", 64, 1.5, 3000)
    model = folder / "fit_10000" / "consensus_gaussians.pt"
    if not model.is_file():
        model = run(
            fit_consensus(folder / "consensus.mrc", folder / "fit_10000", n_gaussians=10000)
        ).model_path
    rows = []
    for controls in args.quality_control_points:
        config = {
            "star": str(_subset(folder, args.quality_particles)),
            "consensus": str(folder / "consensus.mrc"),
            "model": str(model),
            "train_box": None,
            "n_particles": args.quality_particles,
            "run_directory": str(work / "quality_runs" / f"controls_{controls}"),
            "epochs": args.quality_epochs,
            "batch_size": 64,
            "threads": args.threads,
            "control_points": controls,
            "cache": True,
            "stop_early": False,
            "labels": str(folder / "ground_truth" / "labels.csv"),
        }
        rows.append(
            {
                "n_gaussians": 10000,
                "control_points": controls,
                "epochs": args.quality_epochs,
                **_child(config),
            }
        )
        echo(f"quality, {controls} control points: {rows[-1]}")
    return rows


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(
        1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [3, 3, 2]}
    )
    rows = report["throughput"]
    labels = [f"box {r['image_box']}/{r['train_box']}\n{r['n_gaussians']} G" for r in rows]
    x = np.arange(len(rows))
    left.bar(
        x - 0.2,
        [r["particle_epochs_per_second_both_halves"] for r in rows],
        0.4,
        color="tab:blue",
        label="training, particle-epochs/s",
    )
    if all("projection_images_per_second" in r for r in rows):
        left.bar(
            x + 0.2,
            [r["projection_images_per_second"] for r in rows],
            0.4,
            color="tab:gray",
            label="projection alone, images/s (fwd+bwd)",
        )
    left.set_yscale("log")
    left.set_xticks(x, labels, fontsize=7)
    left.set_title(
        f"training throughput ({report['device_name']}, {report['torch_threads']} threads)"
    )
    left.legend(fontsize=8)
    if all("refinement" in r for r in rows):
        epoch = [1.0 / r["particle_epochs_per_second_both_halves"] for r in rows]
        middle.bar(x - 0.27, [1e3 * v for v in epoch], 0.27, color="tab:blue", label="VAE epoch")
        middle.bar(
            x,
            [1e3 * r["refinement"]["default_round_seconds_per_particle"] for r in rows],
            0.27,
            color="tab:red",
            label="refinement round (E-step + 6 M-step epochs)",
        )
        middle.bar(
            x + 0.27,
            [1e3 * r["refinement"]["e_step_seconds_per_particle"] for r in rows],
            0.27,
            color="tab:orange",
            label="E-step = final posterior",
        )
        middle.set_yscale("log")
        middle.set_xticks(x, labels, fontsize=7)
        middle.set_ylabel("ms per particle")
        middle.set_title("cost per particle")
        middle.legend(fontsize=8)
    decode = report.get("decode", [])
    if decode:
        labels = [
            f"{r['n_gaussians']} G{' cp' if r['control_points'] else ''}\n{r['threads']} thr"
            for r in decode
        ]
        right.bar(
            range(len(decode)),
            [r["decode_and_render_ms_median"] for r in decode],
            color="tab:orange",
        )
        right.set_xticks(range(len(decode)), labels, fontsize=7)
        right.axhline(50, color="k", ls="--", lw=1, label="target 50 ms")
        right.set_ylabel("ms")
        right.set_title(f"decode + render one volume, box {decode[0]['box']}")
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "cpu"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "training.json")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for training (default: 1)"
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device of the training runs (default: cpu)"
    )
    parser.add_argument(
        "--decode",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time decode-and-render of one volume (CPU; default: on)",
    )
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per run: one warm-up, the rest timed"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny data and sizes: a smoke run in about a minute"
    )
    parser.add_argument(
        "--quality", action="store_true", help="only the control-points quality comparison"
    )
    parser.add_argument(
        "--decoders",
        action="store_true",
        help="only the side-by-side throughput of the mlp and factorised decoders",
    )
    parser.add_argument(
        "--e-step",
        action="store_true",
        help="only the E-step, exact and screened side by side (box 64, 1,000-30,000 Gaussians)",
    )
    parser.add_argument("--quality-particles", type=int, default=1500)
    parser.add_argument("--quality-epochs", type=int, default=6)
    parser.add_argument("--quality-control-points", type=int, nargs="+", default=[0, 1000])
    parser.add_argument("--work-directory", type=Path, help="keep simulated data and runs here")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    temporary = (
        None if args.work_directory else tempfile.TemporaryDirectory(prefix="bench_training_")
    )
    work = args.work_directory or Path(temporary.name)
    work.mkdir(parents=True, exist_ok=True)
    words = ["python", *sys.argv] if argv is None else ["bench_training.py", *argv]
    check_device(args.device)
    report = {
        "benchmark": (
            "deformation training throughput, refinement cost, peak memory, decode-and-render"
        ),
        "command": " ".join(_portable(word, work) for word in words),
        "mode": mode,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": args.threads,
        "device": args.device,
        "device_name": _device_name(args.device),
        "precision": "float32 (the engine trains in single precision)",
        "load_average_before": list(os.getloadavg()),
        "counting": (
            "particle-epochs/s = particles / (half-1 epoch + half-2 epoch seconds); each half's "
            "full epoch covers its training and validation particles; mean of the timed epochs "
            "after one warm-up epoch; batch 64, latent dimension 6, default networks; refinement: "
            "E-step seconds per training particle (posterior over the candidates), M-step epoch "
            "seconds; a default round per particle = "
            "(E-step + refinement_epochs x M-step epoch) / particles"
        ),
    }
    started = time.perf_counter()

    def echo(text):
        print(text, flush=True)

    try:
        if args.quality:
            report["quality"] = quality(work, args, echo)
        elif args.e_step:
            data = {"box64": _dataset(work / "box64", *DATA[mode]["box64"])}
            report["e_step"] = e_step_times(work, data, mode, args.threads, echo)
        elif args.decoders:
            data = {"box64": _dataset(work / "box64", *DATA[mode]["box64"])}
            report["decoders"] = decoders(work, data, mode, args.threads, args.epochs, echo)
        else:
            (first, spec), *others = DATA[mode].items()
            data = {first: _dataset(work / first, *spec)}
            data |= {name: _finer(data[first], work / name, *spec) for name, spec in others}
            report["throughput"], report["memory"] = _training(work, data, mode, args, echo)
            if args.decode:
                report["decode"] = decode_times(mode, (1, 2), echo)
    finally:
        if temporary is not None:
            temporary.cleanup()
    report["load_average_after"] = list(os.getloadavg())
    report["wall_seconds"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.output) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not (args.quality or args.decoders or args.e_step):
        plot(report, args.output.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
