"""Acceptance on the simulated adenylate-kinase set: are the deformed half maps closer to the
ground truth than RELION's consensus reconstruction of the same particles (each half map against
relion_reconstruct of that half's particles; the full map against relion_reconstruct of all)?

Usage (the whole chain; every step is skipped when its result exists and --reuse is given):
  python bench/bench_improved_map.py --source-run DEFORMATION_RUN --work WORK --epochs 30 --reuse
Steps: copy the finished deformation run into WORK/run (the source is never modified);
optimize_inverse_deformations; our deformed and standard reconstructions with both filters
(constant, the default, and Wiener; the headline numbers use the default); relion_reconstruct --ctf
of the run's input STAR file. Each map is compared with the ground-truth frame map
(DATA/ground_truth/frame_NNN.mrc) it correlates with best: FSC against it and the resolution at FSC
0.5. For the deformed halves the half-map FSC is checked against what the FSC against the truth
supports: a half map with FSC_half to its twin has FSC_truth ≈ sqrt(FSC_half) against a perfect
reference (the full map: sqrt(2·FSC_half / (1 + FSC_half))). Writes bench/results/improved_map.json
(the run recorded as WORK/run) and .png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from napari_dynamight.engine.reconstruction.stage import DEFAULT_FILTER, FILTERS


def prepare(args) -> Path:
    """WORK/run: a copy of the deformation run with its inverse deformations."""
    from napari_dynamight.engine.inverse.run import optimize_inverse_deformations
    from napari_dynamight.engine.inverse.settings import InverseSettings
    from napari_dynamight.engine.progress import run

    target = args.work / "run"
    if not (args.reuse and target.is_dir()):
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(
            args.source_run, target, ignore=shutil.ignore_patterns("inverse", "reconstruction*")
        )
    if not (args.reuse and (target / "inverse" / "final.pt").is_file()):
        shutil.rmtree(target / "inverse", ignore_errors=True)
        started = time.perf_counter()
        run(optimize_inverse_deformations(target, settings=InverseSettings(epochs=args.epochs)))
        print(f"inverse deformations: {time.perf_counter() - started:.0f} s", flush=True)
    return target


def reconstruct(args, run_dir: Path) -> dict:
    """Our maps, copied to WORK/maps/<deformed|standard>_<filter>/; seconds per reconstruction."""
    from napari_dynamight.engine.progress import run
    from napari_dynamight.engine.reconstruction.stage import reconstruct_run

    seconds = {}
    for deformed in (True, False):
        for name in FILTERS:
            folder = args.work / "maps" / f"{'deformed' if deformed else 'standard'}_{name}"
            if args.reuse and (folder / "half2.mrc").is_file():
                continue
            started = time.perf_counter()
            result = run(
                reconstruct_run(run_dir, deformations=deformed, filter=name, clusters=args.clusters)
            )
            seconds[folder.name] = time.perf_counter() - started
            print(f"{folder.name}: {seconds[folder.name]:.0f} s", flush=True)
            shutil.copytree(result.directory, folder, dirs_exist_ok=True)
    star = Path(json.loads((run_dir / "run.json").read_text())["particles"])
    for part, star_name in relion_inputs(run_dir, star).items():
        relion = args.work / "maps" / "relion" / f"{part}.mrc"
        if args.reuse and relion.is_file():
            continue
        relion.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        subprocess.run(
            ["relion_reconstruct", "--i", star_name, "--o", str(relion), "--ctf"],
            cwd=star.parent,
            check=True,
            capture_output=True,
        )
        seconds[f"relion_{part}"] = time.perf_counter() - started
    return seconds


def relion_inputs(run_dir: Path, star: Path) -> dict:
    """STAR files for relion_reconstruct beside the input (so image paths resolve): all particles,
    and each half set's particles as the run split them (the like-for-like reference of each half
    map)."""
    from napari_dynamight.engine.data.particle_file import read_particles, write_particles

    halves = read_particles(run_dir / "particles.star").particles["dmHalfSet"].to_numpy()
    table = read_particles(star)
    names = {"relion": star.name}
    for half in (1, 2):
        subset = star.parent / f"bench_half{half}.star"
        write_particles(subset, table, index=np.nonzero(halves == half)[0])
        names[f"relion_half{half}"] = subset.name
    return names


def compare(args, run_dir: Path) -> dict:
    """FSC of every map against its best-matching ground-truth frame, and the inflation check."""
    from napari_dynamight.engine.fourier import fsc, resolution_at
    from napari_dynamight.engine.io.mrc import read_map

    star = Path(json.loads((run_dir / "run.json").read_text())["particles"])
    frames = sorted((star.parent / "ground_truth").glob("frame_*.mrc"))
    truth = np.stack([read_map(path)[0] for path in frames]).reshape(len(frames), -1)
    truth = (truth - truth.mean(1, keepdims=True)) / truth.std(1, keepdims=True)
    maps = {
        "relion_consensus": args.work / "maps" / "relion" / "relion.mrc",
        **{
            f"relion_consensus_half{h}": args.work / "maps" / "relion" / f"relion_half{h}.mrc"
            for h in (1, 2)
        },
    }
    for name in FILTERS:
        for kind in ("deformed", "standard"):
            for part in ("half1", "half2", "full"):
                maps[f"{kind}_{name}_{part}"] = (
                    args.work / "maps" / f"{kind}_{name}" / f"{part}.mrc"
                )
    results = {}
    for key, path in maps.items():
        volume, voxel = read_map(path)
        flat = (volume.ravel() - volume.mean()) / volume.std()
        correlations = truth @ flat / flat.size
        best = int(np.argmax(correlations))
        frequency, curve = fsc(volume, read_map(frames[best])[0], voxel)
        results[key] = {
            "best_frame": frames[best].stem,
            "correlation": float(correlations[best]),
            "resolution_fsc05_angstrom": resolution_at(frequency, curve, 0.5),
            "fsc_truth": curve.tolist(),
        }
    checks = {}
    for name in FILTERS:
        for kind in ("deformed", "standard"):
            half1, half2 = (
                read_map(args.work / "maps" / f"{kind}_{name}" / f"{p}.mrc")[0]
                for p in ("half1", "half2")
            )
            _, half_curve = fsc(half1, half2, voxel)
            supported = np.sqrt(np.clip(half_curve, 0, 1))  # expected half-vs-truth FSC
            measured = np.mean(
                [results[f"{kind}_{name}_half{h}"]["fsc_truth"] for h in (1, 2)], axis=0
            )
            shells = slice(1, int(np.argmax(measured < 0.143)) or len(measured))
            checks[f"{kind}_{name}"] = {
                "fsc_half": half_curve.tolist(),
                "fsc_truth_from_half": supported.tolist(),
                "fsc_truth_measured_mean_halves": measured.tolist(),
                "fsc_full_truth_from_half": np.sqrt(
                    2 * np.clip(half_curve, 0, 1) / (1 + np.clip(half_curve, 0, 1))
                ).tolist(),
                "mean_excess_to_fsc_truth_0143": float(
                    np.mean(supported[shells] - measured[shells])
                ),
            }
    return {
        "frequency_per_angstrom": frequency.tolist(),
        "voxel_size_angstrom": voxel,
        "maps": results,
        "half_map_checks": checks,
    }


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frequency = np.array(summary["frequency_per_angstrom"])
    maps = summary["maps"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    default = DEFAULT_FILTER
    for key in (
        "relion_consensus",
        f"deformed_{default}_full",
        "relion_consensus_half1",
        f"standard_{default}_half1",
        f"deformed_{default}_half1",
        "relion_consensus_half2",
        f"deformed_{default}_half2",
    ):
        axes[0].plot(
            frequency,
            maps[key]["fsc_truth"],
            label=f"{key} ({maps[key]['resolution_fsc05_angstrom']:.2f} Å)",
        )
    axes[0].axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[0].set_title("FSC against the best-matching ground-truth frame")
    check = summary["half_map_checks"][f"deformed_{default}"]
    axes[1].plot(frequency, check["fsc_half"], label="half-map FSC")
    axes[1].plot(
        frequency, check["fsc_truth_from_half"], label="sqrt(FSC_half): supported half-vs-truth"
    )
    axes[1].plot(frequency, check["fsc_truth_measured_mean_halves"], label="measured half-vs-truth")
    axes[1].set_title(f"deformed ({default} filter) halves: inflation check")
    for axis in axes:
        axis.set_xlabel("spatial frequency (1/Å)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source-run",
        type=Path,
        required=True,
        help="a finished optimize-deformations run of the simulated set (not modified)",
    )
    parser.add_argument(
        "--work", type=Path, required=True, help="folder for the copy, the maps and RELION's maps"
    )
    parser.add_argument(
        "--epochs", type=int, default=30, help="inverse-deformation epochs (default: 30)"
    )
    parser.add_argument(
        "--clusters", type=int, default=32, help="latent clusters per half (default: 32)"
    )
    parser.add_argument("--reuse", action="store_true", help="keep existing intermediate results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("bench/results/improved_map.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    run_dir = prepare(args)
    seconds = reconstruct(args, run_dir)
    summary = {
        "run": (Path("WORK") / run_dir.relative_to(args.work)).as_posix(),
        "epochs": args.epochs,
        "clusters": args.clusters,
        "seconds": seconds,
    }
    summary |= compare(args, run_dir)
    summary["inverse_summary"] = json.loads((run_dir / "inverse" / "summary.json").read_text())
    resolution = {k: v["resolution_fsc05_angstrom"] for k, v in summary["maps"].items()}
    summary["default_filter"] = DEFAULT_FILTER
    ours = {
        part: resolution[f"deformed_{DEFAULT_FILTER}_{part}"] for part in ("half1", "half2", "full")
    }
    summary["improvement_angstrom"] = {
        "half1_vs_relion_of_half1": resolution["relion_consensus_half1"] - ours["half1"],
        "half2_vs_relion_of_half2": resolution["relion_consensus_half2"] - ours["half2"],
        "full_vs_relion_of_all": resolution["relion_consensus"] - ours["full"],
        "worse_half_vs_relion_of_all": resolution["relion_consensus"]
        - max(ours["half1"], ours["half2"]),
    }
    for key, value in resolution.items():
        print(
            f"{key:28s} best {summary['maps'][key]['best_frame']}  FSC 0.5 vs truth {value:.2f} Å  "
            f"corr {summary['maps'][key]['correlation']:.4f}"
        )
    for key, value in summary["improvement_angstrom"].items():
        print(f"improvement {key}: {value:+.2f} Å")
    for key, check in summary["half_map_checks"].items():
        print(
            f"{key}: mean sqrt(FSC_half) − FSC_truth up to FSC_truth 0.143: "
            f"{check['mean_excess_to_fsc_truth_0143']:+.3f}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, args.output.with_suffix(".png"))


if __name__ == "__main__":
    main()
