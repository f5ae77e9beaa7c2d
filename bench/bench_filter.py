"""Which regularisation should the reconstruction stage use by default? The standard reconstruction
(``reconstruct RUN --no-deformations``) with each filter, against ``relion_reconstruct --ctf`` of
the same particles and against the ground truth, on simulated adenylate-kinase data sets.

Usage:
  python bench/bench_filter.py --work WORK --output bench/results/filter.json
      (about 5 min, 2 cores)
Per SNR and seed: ``engine.simulate.simulate`` (the bundled example files, box 64, 1.5 Å, all 98
trajectory frames); a run folder (run.json, particles.star with dmHalfSet = the simulator's
rlnRandomSubset; the standard reconstruction needs no trained network);
``reconstruct_run(deformations=False, filter=F)`` for every filter of the stage; extra constants
``c`` (denominator CTF² + c·⟨CTF²⟩_shell) from the same particles' accumulators; the constant
filter's maps weighted by their half-map FSC as PostProcess does (``constant_fsc_weighted``);
``relion_reconstruct --ctf`` of all particles and of each half set.

Truth: each map's own particles' frames averaged, weighted by how many particles came from each
frame (the expected map of a moving molecule). Metrics: correlation with RELION's map of the same
particles in the sphere of radius box/2; FSC against the truth and the resolution where it falls
below 0.5 and 0.143; the same inside a soft mask of the mobile domains (voxels where the frame maps'
standard deviation exceeds a quarter of its maximum, dilated by 3 voxels; a masked FSC is raised by
the mask itself, so compare it between maps only) and the correlation with the truth weighted by
that mask. "mean_halves" is the mean of the two half maps, compared with the truth of all particles.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from napari_dynamight.engine.example_data import STRUCTURE, example_file

ADK = example_file(STRUCTURE).parent
EXTRA_CONSTANTS = (1e-4, 1e-2, 1e-1)
PARTS = ("half1", "half2", "full", "mean_halves")


def simulate_set(folder: Path, snr: float, seed: int, particles: int, reuse: bool) -> Path:
    from napari_dynamight.engine.progress import run
    from napari_dynamight.engine.simulate import simulate

    sim = folder / "sim"
    if not (reuse and (sim / "particles.star").is_file()):
        shutil.rmtree(sim, ignore_errors=True)
        run(
            simulate(
                ADK / "adk_closed.pdb",
                ADK / "adk_dims.dcd",
                output_directory=sim,
                n_particles=particles,
                box=64,
                pixel_size_angstrom=1.5,
                snr=snr,
                seed=seed,
            )
        )
    return sim


def make_run(folder: Path, sim: Path) -> Path:
    """A run folder for the standard reconstruction: run.json and particles.star with dmHalfSet."""
    import starfile

    run_dir = folder / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    blocks = starfile.read(sim / "particles.star", always_dict=True)
    particles = blocks["particles"]
    particles["dmHalfSet"] = particles["rlnRandomSubset"].astype(int)
    starfile.write(blocks, run_dir / "particles.star")
    optics = blocks["optics"]
    info = {
        "particles": str((sim / "particles.star").resolve()),
        "consensus_box": int(optics["rlnImageSize"][0]),
        "voxel_size_angstrom": float(optics["rlnImagePixelSize"][0]),
        "n_particles": len(particles),
    }
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir


def relion_maps(folder: Path, sim: Path, reuse: bool) -> tuple[dict, dict]:
    """relion_reconstruct --ctf of all particles and of each half set; maps and seconds."""
    import starfile

    from napari_dynamight.engine.io.mrc import read_map

    blocks = starfile.read(sim / "particles.star", always_dict=True)
    names = {"full": "particles.star"}
    for half in (1, 2):
        subset = dict(blocks)
        subset["particles"] = blocks["particles"][blocks["particles"]["rlnRandomSubset"] == half]
        starfile.write(subset, sim / f"bench_half{half}.star")
        names[f"half{half}"] = f"bench_half{half}.star"
    out = folder / "relion"
    out.mkdir(exist_ok=True)
    maps, seconds = {}, {}
    for part, star in names.items():
        target = out / f"{part}.mrc"
        if not (reuse and target.is_file()):
            started = time.perf_counter()
            subprocess.run(
                ["relion_reconstruct", "--i", star, "--o", str(target.resolve()), "--ctf"],
                cwd=sim,
                check=True,
                capture_output=True,
            )
            seconds[part] = time.perf_counter() - started
        maps[part] = read_map(target)[0]
    maps["mean_halves"] = (maps["half1"] + maps["half2"]) / 2
    return maps, seconds


def our_maps(run_dir: Path) -> tuple[dict, dict]:
    """{variant: {part: map}}: the stage's filters, and extra constants from the same
    accumulators."""
    from napari_dynamight.engine.data.particle_file import read_particles
    from napari_dynamight.engine.io.mrc import read_map
    from napari_dynamight.engine.progress import run
    from napari_dynamight.engine.reconstruction import accumulate_particles
    from napari_dynamight.engine.reconstruction.stage import FILTERS, reconstruct_run

    variants, seconds = {}, {}
    for name in FILTERS:
        started = time.perf_counter()
        result = run(reconstruct_run(run_dir, deformations=False, filter=name, batch_size=256))
        seconds[name] = time.perf_counter() - started
        maps = {
            part: read_map(path)[0]
            for part, path in zip(("half1", "half2"), result.half_maps, strict=True)
        }
        maps["full"] = read_map(result.full_map)[0]
        variants[name] = maps
    info = json.loads((run_dir / "run.json").read_text())
    table = read_particles(run_dir / "particles.star", data_root=Path(info["particles"]).parent)
    halves = table.particles["dmHalfSet"].to_numpy()
    accumulators = [
        run(accumulate_particles(table, np.nonzero(halves == h)[0], batch_size=256)) for h in (1, 2)
    ]
    full = run(accumulate_particles(table, None, batch_size=256))
    for constant in EXTRA_CONSTANTS:
        variants[f"constant_{constant:g}"] = {
            "half1": accumulators[0].reconstruct(constant).numpy(),
            "half2": accumulators[1].reconstruct(constant).numpy(),
            "full": full.reconstruct(constant).numpy(),
        }
    for maps in variants.values():
        maps["mean_halves"] = (maps["half1"] + maps["half2"]) / 2
    variants["constant_fsc_weighted"] = fsc_weighted(
        variants["constant"], info["voxel_size_angstrom"]
    )
    return variants, seconds


def fsc_weighted(maps: dict, voxel: float) -> dict:
    """What PostProcess does to unfiltered half maps (before masking and sharpening): each shell
    weighted by the FSC-implied correlation with the truth, sqrt(FSC) for a half map and
    sqrt(2·FSC / (1 + FSC)) for the full map and the mean of the halves."""
    from napari_dynamight.engine.fourier import fsc, radial_index

    curve = np.clip(fsc(maps["half1"], maps["half2"], voxel)[1], 0, 1)
    shell = radial_index(maps["half1"].shape).clamp(max=len(curve) - 1).numpy()
    result = {}
    for part, volume in maps.items():
        weight = np.sqrt(curve) if part.startswith("half") else np.sqrt(2 * curve / (1 + curve))
        spectrum = np.fft.rfftn(volume) * weight[shell]
        result[part] = np.fft.irfftn(spectrum, s=volume.shape).astype(np.float32)
    return result


def truths(sim: Path) -> tuple[dict, np.ndarray]:
    """Particle-weighted mean frame map of each part's particles, and the mobile-domain mask."""
    import pandas as pd

    from napari_dynamight.engine.io.mrc import read_map

    labels = pd.read_csv(sim / "ground_truth" / "labels.csv")
    frames = {
        int(f): read_map(sim / "ground_truth" / f"frame_{int(f):03d}.mrc")[0].astype(np.float64)
        for f in np.unique(labels["frame"])
    }

    def mean_of(rows) -> np.ndarray:
        counts = rows["frame"].value_counts()
        return sum(frames[int(f)] * n for f, n in counts.items()) / counts.sum()

    result = {"full": mean_of(labels), "mean_halves": mean_of(labels)}
    for half in (1, 2):
        result[f"half{half}"] = mean_of(labels[labels["random_subset"] == half])
    spread = np.std(np.stack(list(frames.values())), axis=0)
    mobile = spread > 0.25 * spread.max()
    from scipy.ndimage import binary_dilation, gaussian_filter

    mask = gaussian_filter(binary_dilation(mobile, iterations=3).astype(np.float64), 1.5)
    return result, np.clip(mask / mask.max(), 0, 1)


def sphere_correlation(a: np.ndarray, b: np.ndarray) -> float:
    box = a.shape[0]
    offsets = np.arange(box) - box // 2
    radius = np.sqrt(
        offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2
    )
    inside = radius < box / 2
    return float(np.corrcoef(a[inside], b[inside])[0, 1])


def masked_correlation(a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> float:
    """Weighted correlation (the soft mobile-domain mask as weights)."""
    w = weight / weight.sum()
    da, db = a - (w * a).sum(), b - (w * b).sum()
    return float((w * da * db).sum() / np.sqrt((w * da * da).sum() * (w * db * db).sum()))


def metrics(
    volume: np.ndarray, truth: np.ndarray, mask: np.ndarray, relion: np.ndarray | None, voxel: float
) -> dict:
    from napari_dynamight.engine.fourier import fsc, resolution_at

    frequency, curve = fsc(volume, truth, voxel)
    _, masked = fsc(volume * mask, truth * mask, voxel)
    row = {
        "fsc05_truth_angstrom": resolution_at(frequency, curve, 0.5),
        "fsc0143_truth_angstrom": resolution_at(frequency, curve, 0.143),
        "fsc05_truth_mobile_angstrom": resolution_at(frequency, masked, 0.5),
        "correlation_truth": sphere_correlation(volume, truth),
        "correlation_truth_mobile": masked_correlation(volume, truth, mask),
    }
    if relion is not None:
        _, versus = fsc(volume, relion, voxel)
        row["correlation_relion"] = sphere_correlation(volume, relion)
        row["fsc_relion_min_to_3_4_nyquist"] = float(versus[1 : volume.shape[0] * 3 // 8 + 1].min())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", type=Path, required=True, help="folder for the simulated data and maps"
    )
    parser.add_argument("--snrs", type=float, nargs="+", default=[0.01, 0.05])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--particles", type=int, default=4000)
    parser.add_argument(
        "--reuse", action="store_true", help="keep simulated data and RELION maps that exist"
    )
    parser.add_argument("--output", type=Path, default=Path("bench/results/filter.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    results = {
        "particles": args.particles,
        "box": 64,
        "pixel_size_angstrom": 1.5,
        "torch_threads": 1,
        "extra_constants": list(EXTRA_CONSTANTS),
        "sets": [],
    }
    for snr in args.snrs:
        for seed in args.seeds:
            folder = args.work / f"snr{snr:g}_seed{seed}"
            sim = simulate_set(folder, snr, seed, args.particles, args.reuse)
            run_dir = make_run(folder, sim)
            relion, relion_seconds = relion_maps(folder, sim, args.reuse)
            ours, seconds = our_maps(run_dir)
            truth, mask = truths(sim)
            rows = {"relion": {p: metrics(relion[p], truth[p], mask, None, 1.5) for p in PARTS}}
            for variant, maps in ours.items():
                rows[variant] = {p: metrics(maps[p], truth[p], mask, relion[p], 1.5) for p in PARTS}
            entry = {
                "snr": snr,
                "seed": seed,
                "seconds": seconds,
                "relion_seconds": relion_seconds,
                "maps": rows,
            }
            results["sets"].append(entry)
            for variant, parts in rows.items():
                line = "  ".join(
                    f"{p} {v['fsc05_truth_angstrom']:.2f}/{v['fsc05_truth_mobile_angstrom']:.2f} Å"
                    + (f" r {v['correlation_relion']:.3f}" if "correlation_relion" in v else "")
                    for p, v in parts.items()
                )
                print(f"SNR {snr:g} seed {seed} {variant:16s} {line}", flush=True)
    results["summary"] = summarise(results["sets"])
    print(json.dumps(results["summary"], indent=1))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")


def summarise(sets: list[dict]) -> dict:
    """Per SNR and variant: each metric averaged over the seeds."""
    summary = {}
    for snr in sorted({s["snr"] for s in sets}):
        chosen = [s for s in sets if s["snr"] == snr]
        summary[f"snr{snr:g}"] = {
            variant: {
                part: {
                    key: float(np.mean([s["maps"][variant][part][key] for s in chosen]))
                    for key in chosen[0]["maps"][variant][part]
                }
                for part in PARTS
            }
            for variant in chosen[0]["maps"]
        }
    return summary


if __name__ == "__main__":
    main()
