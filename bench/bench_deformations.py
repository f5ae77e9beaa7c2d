"""Deformation quality on simulated adenylate kinase data, measured against the Bayes-optimal
ceiling.

Usage:
  python bench/bench_deformations.py --output bench/results/deformations.json \
      [--snr 0.05 0.01] [--n-particles 3000] [--box 64] [--epochs 60] [--ceiling-only] \
      [--latent-inference posterior|encoder] [--refinement-rounds R] [--reuse-runs]

For each SNR: simulate the AdK closed→open trajectory (the bundled example files, all 98 frames)
with ``engine.simulate``; compute the Bayes-optimal ceiling (``engine.evaluation.ceiling``); train
the two half-set VAEs (``engine.deformation.run.optimize_deformations``) and measure, per half set,
the learning criteria: |Spearman| of the best latent principal component with the true frame (and
its gap to the ceiling), decoded volumes against the consensus, error estimates against the true
motion; then the noise control (same STAR file, images of pure noise at the same noise level): the
engine refuses such images (they do not show the consensus map) and the refusal is recorded; a run
that trains on them records its RMS displacement next to the one on real signal. Writes the JSON
after every stage and a PNG beside it; paths in it are relative: WORK/... inside the work directory,
else relative to the repository.

Exit status: 0 when everything was measured; 2 when the deformation engine (or its decode API) is
missing, after writing what could be measured; nothing is ever silently skipped.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import torch

from napari_dynamight.engine.data.particle_file import read_particles
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.evaluation import (
    bayes_ceiling,
    decoded_vs_consensus,
    error_motion_spearman,
    frame_motion,
    gaussian_error_vs_motion,
    latent_frame_ordering,
)
from napari_dynamight.engine.example_data import STRUCTURE, example_file
from napari_dynamight.engine.io.atomic import atomic_path
from napari_dynamight.engine.io.mrc import read_map
from napari_dynamight.engine.progress import run
from napari_dynamight.engine.scene import build_scene
from napari_dynamight.engine.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
ADK = example_file(STRUCTURE).parent
STRUCTURE, TRAJECTORY = ADK / "adk_closed.pdb", ADK / "adk_dims.dcd"
MISSING = 2


def _portable(path, work: Path) -> str:
    """``path`` as the JSON records it: WORK/... inside the work directory, relative to the
    repository inside it, else its name (no machine-specific absolute paths)."""
    resolved = Path(path).resolve()
    for base, prefix in ((Path(work).resolve(), "WORK"), (ROOT, ".")):
        if resolved == base or base in resolved.parents:
            return (Path(prefix) / resolved.relative_to(base)).as_posix()
    return Path(path).name


def _command(work: Path) -> str:
    """The command line, absolute paths in it shown by ``_portable``."""
    words = [Path(sys.argv[0]).name]
    for word in sys.argv[1:]:
        option, equals, value = word.rpartition("=") if word.startswith("--") else ("", "", word)
        words.append(option + equals + (_portable(value, work) if os.path.isabs(value) else value))
    return " ".join(words)


class Report:
    """The JSON result, rewritten atomically after every stage."""

    def __init__(self, path: Path, settings: dict, work: Path):
        self.path = path
        self.data = {
            "benchmark": "deformation quality on simulated AdK vs the Bayes-optimal ceiling",
            "command": _command(work),
            "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "settings": settings,
            "runs": [],
            "missing": [],
        }

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")


def _echo(text: str) -> None:
    print(text, flush=True)


def _simulate(folder: Path, args, snr: float) -> dict:
    start = time.perf_counter()
    summary = run(
        simulate(
            STRUCTURE,
            TRAJECTORY,
            output_directory=folder,
            n_particles=args.n_particles,
            box=args.box,
            pixel_size_angstrom=args.pixel_size,
            snr=snr,
            defocus_range_angstrom=tuple(args.defocus_range),
            seed=args.seed,
        )
    )
    return {
        "folder": _portable(folder, args.work_directory),
        "seconds": round(time.perf_counter() - start, 1),
        "n_particles": summary.n_particles,
        "n_frames": len(summary.frames),
        "atom_sigma_angstrom": summary.atom_sigma_angstrom,
        "signal_variance": summary.signal_variance,
        "noise_variance": summary.noise_variance,
    }


def _ceiling(folder: Path, args, noise_variance: float, frame_step: int) -> tuple[dict, object]:
    start = time.perf_counter()
    result = run(
        bayes_ceiling(
            folder,
            STRUCTURE,
            TRAJECTORY,
            frame_step=frame_step,
            noise_variance=noise_variance,
            device=args.device,
        )
    )
    summary = result.summary()
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["frame_step"] = frame_step
    summary.pop("frames_evaluated")
    np.save(folder / "ceiling_posterior_mean.npy", result.posterior_mean_frame)
    return summary, result


def _noise_variant(source: Path, target: Path, noise_variance: float, seed: int) -> None:
    """``target``: the same STAR file and ground truth, a stack of pure white noise (σ² given)."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy(source / "particles.star", target / "particles.star")
    for name in ("consensus.mrc", "ground_truth"):
        (target / name).symlink_to((source / name).resolve())
    with mrcfile.open(source / "particles.mrcs", header_only=True) as mrc:
        n, ny, nx = int(mrc.header.nz), int(mrc.header.ny), int(mrc.header.nx)
        voxel = float(mrc.voxel_size.x)
    rng = np.random.default_rng([seed, 12345])
    with mrcfile.new_mmap(target / "particles.mrcs", shape=(n, ny, nx), mrc_mode=2) as stack:
        stack.set_image_stack()
        stack.voxel_size = voxel
        for start in range(0, n, 512):
            count = min(512, n - start)
            stack.data[start : start + count] = math.sqrt(noise_variance) * rng.standard_normal(
                (count, ny, nx), dtype=np.float32
            )


def _deformation_engine():
    """The training entry point and its settings class, or None when not (yet) available."""
    if importlib.util.find_spec("napari_dynamight.engine.deformation") is None:
        return None
    try:
        run_module = importlib.import_module("napari_dynamight.engine.deformation.run")
        settings_module = importlib.import_module("napari_dynamight.engine.deformation.settings")
    except ImportError as error:
        _echo(f"deformation engine not importable: {error}")
        return None
    return run_module.optimize_deformations, settings_module.DeformationSettings


def _train(folder: Path, run_dir: Path, args, engine) -> dict:
    optimize, settings_class = engine
    reuse = args.reuse_runs and (run_dir / "checkpoints" / "final.pt").is_file()
    if run_dir.exists() and not reuse:
        shutil.rmtree(run_dir)
    settings = settings_class(
        epochs=args.epochs,
        seed=args.seed,
        latent_dim=args.latent_dim,
        latent_inference=args.latent_inference,
        refinement_rounds=args.refinement_rounds,
    )
    start = time.perf_counter()
    result = run(
        optimize(
            folder / "particles.star",
            folder / "consensus.mrc",
            run_dir,
            settings=settings,
            n_gaussians=args.n_gaussians,
            device=args.device,
            resume=reuse,
        )
    )
    seconds = time.perf_counter() - start
    return {
        "run_directory": _portable(run_dir, args.work_directory),
        "reused_trained_networks": bool(reuse),
        "seconds": round(seconds, 1),
        "epochs": int(result.epochs),
        "stopped_early": bool(result.stopped_early),
        "n_gaussians": int(result.n_gaussians),
        "train_box": int(result.train_box),
        "particle_epochs_per_second_both_halves": round(
            args.n_particles * result.epochs / seconds, 1
        ),
        "settings": settings.to_dict(),
    }


def _own_half_latents(run_dir: Path, halves: np.ndarray, validation: np.ndarray) -> np.ndarray:
    """Every particle encoded by its own half's encoder (half 2's validation codes from their
    file)."""
    latents = np.load(run_dir / "latent_means.npy").astype(np.float64)
    second = run_dir / "latent_means_half2_validation.npy"
    replace = (halves == 2) & validation
    if replace.any():
        latents[replace] = np.load(second)[replace]
    return latents


def _truth(folder: Path, args) -> dict:
    """True frame per particle, per-frame motion sizes and every frame's atom positions."""
    labels = (
        pd.read_csv(folder / "ground_truth" / "labels.csv")["frame"].to_numpy().astype(np.int64)
    )
    frames = np.array(
        sorted(int(p.stem.split("_")[1]) for p in (folder / "ground_truth").glob("frame_*.mrc"))
    )
    scene = build_scene(
        STRUCTURE, TRAJECTORY, frames, args.box, args.pixel_size, None, False, "cpu"
    )
    positions = scene.frame_positions.numpy()
    per_frame = frame_motion(positions)
    return {
        "frame": labels,
        "frames": frames,
        "particle_motion": per_frame[np.searchsorted(frames, labels)],
        "frame_positions": positions,
    }


def _vae_metrics(folder: Path, run_dir: Path, truth: dict, ceiling, args) -> dict:
    table = read_particles(run_dir / "particles.star")
    columns = table.particles
    halves = columns["dmHalfSet"].to_numpy()
    validation = columns["dmValidation"].to_numpy().astype(bool)
    latents = _own_half_latents(run_dir, halves, validation)
    ceiling_by_half = ceiling.spearman_by_half()
    out = {"per_half": {}}
    for half in (1, 2):
        rows = halves == half
        ordering = latent_frame_ordering(latents[rows], truth["frame"][rows])
        errors = columns["dmErrorAngstrom"].to_numpy()
        displacement = columns["dmDisplacementAngstrom"].to_numpy()
        check = rows & validation
        out["per_half"][str(half)] = {
            "latent_ordering": ordering.to_dict(),
            "ceiling_abs_spearman": ceiling_by_half[half],
            "gap_to_ceiling": ceiling_by_half[half] - ordering.best,
            "error_vs_motion_spearman_validation": error_motion_spearman(
                errors[check], truth["particle_motion"][check]
            ),
            "error_vs_motion_spearman_all": error_motion_spearman(
                errors[rows], truth["particle_motion"][rows]
            ),
            "rms_displacement_angstrom": float(np.sqrt(np.mean(displacement[rows] ** 2))),
        }
    gaussians = np.loadtxt(run_dir / "gaussian_errors.csv", delimiter=",", skiprows=1)
    out["gaussian_error_vs_motion_spearman"] = gaussian_error_vs_motion(
        gaussians[:, :3], gaussians[:, 3], truth["frame_positions"]
    )
    out["true_rms_motion_angstrom"] = float(np.sqrt(np.mean(truth["particle_motion"] ** 2)))
    out["latents"] = latents
    out["halves"] = halves
    return out


def _decode_api():
    """A callable (run_dir, latents (B, D), half) -> volumes (B, L, L, L), or None if not
    available."""
    for name in (
        "napari_dynamight.engine.deformation.decode",
        "napari_dynamight.engine.deformation.api",
    ):
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        if hasattr(module, "load_run"):
            return module
    return None


def _decoded_volume_metrics(folder: Path, run_dir: Path, vae: dict, truth: dict, api, args) -> dict:
    """Correlation of decoded volumes with the true frame maps vs the consensus, per half."""
    loaded = api.load_run(run_dir)
    consensus, _ = read_map(folder / "consensus.mrc")
    maps = {
        int(f): read_map(folder / "ground_truth" / f"frame_{f:03d}.mrc")[0] for f in truth["frames"]
    }
    stacked = np.stack(list(maps.values()))
    mask = stacked.max(0) > 0.02 * stacked.max()
    rng = np.random.default_rng(args.seed)
    out = {"mask": "voxels where any frame map exceeds 2% of the maximum", "per_half": {}}
    for half in (1, 2):
        rows = np.nonzero(vae["halves"] == half)[0]
        chosen = np.sort(rng.choice(rows, size=min(args.n_decoded, len(rows)), replace=False))
        volumes = loaded.decode_volumes(vae["latents"][chosen], half=half)
        truths = [maps[int(truth["frame"][i])] for i in chosen]
        reference, _ = read_map(run_dir / f"consensus_half{half}.mrc")
        versus_map = decoded_vs_consensus(volumes, truths, consensus, mask)
        versus_reference = decoded_vs_consensus(volumes, truths, reference, mask)
        out["per_half"][str(half)] = {
            "n_particles": len(chosen),
            "mean_cc_decoded": versus_map["mean_decoded"],
            "mean_cc_consensus_map": versus_map["mean_consensus"],
            "fraction_better_than_consensus_map": versus_map["fraction_decoded_better"],
            "mean_cc_gaussian_reference": versus_reference["mean_consensus"],
            "fraction_better_than_gaussian_reference": versus_reference["fraction_decoded_better"],
        }
    return out


def _plot(path: Path, panels: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(panels), 3, figsize=(12, 3.6 * len(panels)), squeeze=False)
    for row, panel in zip(axes, panels, strict=True):
        ceiling = panel["ceiling"]
        for half, colour in ((1, "tab:blue"), (2, "tab:orange")):
            keep = ceiling.half_set == half
            row[0].scatter(
                ceiling.true_frame[keep],
                ceiling.posterior_mean_frame[keep],
                s=2,
                alpha=0.4,
                color=colour,
                label=f"half {half}",
            )
        row[0].set_title(f"SNR {panel['snr']}: Bayes ceiling |ρ| = {ceiling.spearman:.3f}")
        row[0].set_xlabel("true frame")
        row[0].set_ylabel("posterior mean frame")
        row[0].legend(markerscale=4)
        vae = panel.get("vae")
        for half, axis in ((1, row[1]), (2, row[2])):
            axis.set_xlabel("true frame")
            if vae is None:
                axis.set_title(f"half {half}: no deformation run")
                continue
            keep = vae["halves"] == half
            info = vae["per_half"][str(half)]["latent_ordering"]
            pc = info["best_component"]
            from napari_dynamight.engine.evaluation import principal_components

            scores, _ = principal_components(vae["latents"][keep])
            axis.scatter(panel["truth_frame"][keep], scores[:, pc], s=2, alpha=0.4)
            axis.set_title(f"half {half}: latent PC{pc + 1}, |ρ| = {info['best_abs_spearman']:.3f}")
            axis.set_ylabel(f"PC{pc + 1}")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results" / "deformations.json"
    )
    parser.add_argument(
        "--work-directory",
        type=Path,
        default=None,
        help="where simulations and runs go (default: a folder in the system temp dir)",
    )
    parser.add_argument("--snr", type=float, nargs="+", default=[0.05, 0.01])
    parser.add_argument("--n-particles", type=int, default=3000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--pixel-size", type=float, default=1.5)
    parser.add_argument("--defocus-range", type=float, nargs=2, default=[5000.0, 25000.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--frame-step", type=int, default=1, help="ceiling: every k-th simulated frame"
    )
    parser.add_argument("--noise-ceiling-frame-step", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--latent-dim", type=int, default=6)
    parser.add_argument("--n-gaussians", type=int, default=None)
    parser.add_argument("--n-decoded", type=int, default=50, help="decoded volumes per half set")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--ceiling-only", action="store_true", help="simulate and compute the ceiling only"
    )
    parser.add_argument("--no-noise-control", action="store_true")
    parser.add_argument(
        "--latent-inference",
        choices=("posterior", "encoder"),
        default="posterior",
        help="how the final latents are inferred (engine/deformation/inference.py)",
    )
    parser.add_argument(
        "--refinement-rounds",
        type=int,
        default=8,
        help="EM rounds after the VAE epochs (engine default 8; 0: none)",
    )
    parser.add_argument(
        "--reuse-runs",
        action="store_true",
        help="keep finished runs in the work directory: resume them (which re-infers the "
        "latents and rewrites the outputs) instead of training again; 'seconds' is "
        "then the time of that step only",
    )
    return parser.parse_args()


def main() -> int:
    args = _arguments()
    work = (
        args.work_directory or Path(tempfile.gettempdir()) / "napari_dynamight_bench_deformations"
    )
    args.work_directory = work
    settings = {
        k: (_portable(v, work) if isinstance(v, Path) else v) for k, v in vars(args).items()
    }
    report = Report(args.output, settings, work)
    engine = None if args.ceiling_only else _deformation_engine()
    if not args.ceiling_only and engine is None:
        report.data["missing"].append("engine.deformation.run.optimize_deformations not available")
    panels = []
    for snr in args.snr:
        folder = work / f"snr_{snr:g}"
        entry = {"snr": snr}
        report.data["runs"].append(entry)
        _echo(f"SNR {snr}: simulating {args.n_particles} particles at box {args.box} into {folder}")
        entry["simulation"] = _simulate(folder / "data", args, snr)
        report.save()
        data = folder / "data"
        noise_variance = entry["simulation"]["noise_variance"]
        entry["ceiling"], ceiling = _ceiling(data, args, noise_variance, args.frame_step)
        _echo(
            f"SNR {snr}: ceiling |Spearman| {entry['ceiling']['abs_spearman_posterior_mean']:.4f} "
            f"(halves {entry['ceiling']['abs_spearman_by_half']}) in "
            f"{entry['ceiling']['seconds']} s"
        )
        report.save()
        panel = {"snr": snr, "ceiling": ceiling}
        panels.append(panel)
        noise = folder / "noise_control"
        if not args.no_noise_control:
            _noise_variant(data, noise, noise_variance, args.seed)
            entry["noise_control_ceiling"], _ = _ceiling(
                noise, args, noise_variance, args.noise_ceiling_frame_step
            )
            _echo(
                f"SNR {snr}: ceiling on pure noise |Spearman| "
                f"{entry['noise_control_ceiling']['abs_spearman_posterior_mean']:.4f}"
            )
            report.save()
        if engine is None:
            continue
        truth = _truth(data, args)
        panel["truth_frame"] = truth["frame"]
        entry["vae_training"] = _train(data, folder / "run", args, engine)
        report.save()
        vae = _vae_metrics(data, folder / "run", truth, ceiling, args)
        panel["vae"] = vae
        entry["vae"] = {k: v for k, v in vae.items() if k not in ("latents", "halves")}
        report.save()
        api = _decode_api()
        if api is None:
            entry["decoded_volumes"] = (
                "not measured: no decode API (load_run) in engine.deformation"
            )
            if entry["decoded_volumes"] not in report.data["missing"]:
                report.data["missing"].append(entry["decoded_volumes"])
        else:
            entry["decoded_volumes"] = _decoded_volume_metrics(
                data, folder / "run", vae, truth, api, args
            )
        report.save()
        if not args.no_noise_control:
            try:
                entry["noise_control_training"] = _train(noise, folder / "noise_run", args, engine)
            except InputError as refusal:  # the expected outcome: the images do not show the map
                entry["noise_control"] = {"refused": str(refusal)}
                report.save()
                continue
            noise_vae = _vae_metrics(noise, folder / "noise_run", truth, ceiling, args)
            entry["noise_control"] = {
                "rms_displacement_angstrom_by_half": {
                    h: noise_vae["per_half"][h]["rms_displacement_angstrom"] for h in ("1", "2")
                },
                "signal_rms_displacement_angstrom_by_half": {
                    h: vae["per_half"][h]["rms_displacement_angstrom"] for h in ("1", "2")
                },
                "true_rms_motion_angstrom": vae["true_rms_motion_angstrom"],
                "latent_best_abs_spearman_by_half": {
                    h: noise_vae["per_half"][h]["latent_ordering"]["best_abs_spearman"]
                    for h in ("1", "2")
                },
            }
            report.save()
    _plot(args.output.with_suffix(".png"), panels)
    report.save()
    for item in report.data["missing"]:
        _echo(f"NOT MEASURED: {item}")
    return MISSING if report.data["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
