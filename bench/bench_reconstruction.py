"""Reconstruction time and peak memory: our deformed and standard reconstructions and
``relion_reconstruct --ctf`` on the same particles, at box 64 and 128.

Usage: python bench/bench_reconstruction.py --output bench/results/reconstruction.json
Each measurement runs in its own process (peak memory = that process's maximum resident size).
The deformed reconstruction uses a smooth analytic inverse field with CODES distinct latent codes
(consecutive particles share one, like the stage's 64 latent clusters per half: one warp of the
padded grid per code); the cost of a learned field's network is not included (see
bench_improved_map.py for the whole stage with the real network). Writes the JSON and a PNG plot
beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {64: 1000, 128: 200}  # box: particles
PIXEL = 2.0
CODES = 64  # distinct latent codes (clusters) in the deformed case


def make_data(folder: Path, box: int, count: int) -> Path:
    """relion_project --ctf images of a map of 3D Gaussians, as a STAR data set."""
    import mrcfile
    import starfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_reconstruction_standard import particle_blocks

    rng = np.random.default_rng(0)
    grid = np.arange(box) - box // 2
    z, y, x = np.meshgrid(grid, grid, grid, indexing="ij")
    volume = np.zeros((box,) * 3, np.float32)
    for centre in rng.uniform(-box / 5, box / 5, (30, 3)):
        volume += np.exp(
            -((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / 4.5
        )
    with mrcfile.new(folder / "truth.mrc") as handle:
        handle.set_data(volume)
        handle.voxel_size = PIXEL
    blocks = particle_blocks(count, seed=1, ctf=True)
    blocks["optics"]["rlnImageSize"] = box
    starfile.write(blocks, folder / "angles.star")
    subprocess.run(
        ["relion_project", "--i", "truth.mrc", "--o", "proj", "--ang", "angles.star", "--ctf"],
        cwd=folder,
        check=True,
        capture_output=True,
    )
    blocks["particles"]["rlnImageName"] = [f"{i + 1:06d}@proj.mrcs" for i in range(count)]
    starfile.write(blocks, folder / "particles.star")
    return folder / "particles.star"


def smooth_field(latents, points):
    """A smooth inverse field: a latent-scaled sinusoidal displacement of up to 3 Å."""
    import torch

    wave = torch.sin(points[:, 0] / 15.0)[None, :, None] * torch.tensor([0.0, 3.0, 0.0])
    return points + latents[:, :1, None] * wave


def measure(case: str, star: str, batch_size: int) -> dict:
    """One measurement in this process: seconds and peak resident memory (MB)."""
    if case == "relion":
        started = time.perf_counter()
        subprocess.run(
            ["relion_reconstruct", "--i", Path(star).name, "--o", "relion.mrc", "--ctf"],
            check=True,
            capture_output=True,
            cwd=Path(star).parent,
        )
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    else:
        import torch

        from napari_dynamight.engine.ctf import compute_ctf
        from napari_dynamight.engine.data.dataset import ParticleDataset
        from napari_dynamight.engine.data.particle_file import read_particles
        from napari_dynamight.engine.reconstruction.deformed import DeformedAccumulator

        torch.set_num_threads(1)
        started = time.perf_counter()  # after the imports, like RELION's start-up
        table = read_particles(star)
        with ParticleDataset(table, normalise=False) as dataset:
            field = smooth_field if case == "deformed" else None
            accumulator = DeformedAccumulator(dataset.box, dataset.pixel_size_angstrom, field)
            for batch in dataset.batches(batch_size):
                ctf = compute_ctf(batch.ctf, dataset.box, dataset.pixel_size_angstrom)
                code = (torch.as_tensor(batch.rows) * CODES // len(table)).float() / CODES
                latents = torch.stack([code, torch.zeros_like(code)], 1)
                accumulator.add(batch.images, batch.rotations, batch.origin_angstrom, ctf, latents)
            accumulator.reconstruct()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": time.perf_counter() - started, "peak_memory_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("bench/results/reconstruction.json"))
    parser.add_argument("--measure", nargs=2, metavar=("CASE", "STAR"), help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--boxes", type=int, nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument(
        "--particles",
        type=int,
        help="particles per box (default: 1,000 at box 64, 200 at 128); "
        "the deformed cost per particle falls as more particles share each of the 64 codes",
    )
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.batch_size)))
        return
    results = {
        "machine": platform.processor() or platform.machine(),
        "torch_threads": 1,
        "relion_threads": 1,
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for box in args.boxes:
            count = args.particles or SIZES[box]
            folder = Path(tmp) / f"box{box}"
            folder.mkdir()
            star = make_data(folder, box, count)
            for case in ("standard", "deformed", "relion"):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--measure",
                        case,
                        str(star),
                        "--batch-size",
                        str(args.batch_size),
                    ],
                    capture_output=True,
                    text=True,
                )
                if out.returncode:
                    raise RuntimeError(out.stderr)
                row = {"box": box, "particles": count, "case": case} | json.loads(out.stdout)
                row["ms_per_particle"] = 1e3 * row["seconds"] / count
                print(row, flush=True)
                results["runs"].append(row)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.output.with_suffix(".png"))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    cases = ("standard", "deformed", "relion")
    for k, box in enumerate(sorted({r["box"] for r in results["runs"]})):
        rows = {r["case"]: r for r in results["runs"] if r["box"] == box}
        axes[0].bar(
            np.arange(3) + 0.4 * k,
            [rows[c]["ms_per_particle"] for c in cases],
            0.4,
            label=f"box {box}",
        )
        axes[1].bar(
            np.arange(3) + 0.4 * k,
            [rows[c]["peak_memory_mb"] for c in cases],
            0.4,
            label=f"box {box}",
        )
    for axis, label in zip(axes, ("ms per particle", "peak memory (MB)"), strict=True):
        axis.set_xticks(np.arange(3) + 0.2, cases)
        axis.set_ylabel(label)
        axis.set_yscale("log")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


if __name__ == "__main__":
    main()
