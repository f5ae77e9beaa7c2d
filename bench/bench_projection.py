"""Batch projection throughput of the Gaussian model (images/s), with and without gradients.

Usage: python bench/bench_projection.py --output bench/results/projection.json [--device cpu]
Writes the JSON and a PNG plot beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_dynamight.engine.ctf import CtfParams, compute_ctf
from napari_dynamight.engine.gaussians import GaussianModel
from napari_dynamight.engine.geometry import euler_to_matrix, random_euler_angles
from napari_dynamight.engine.image_formation import Pose, form_images


def _measure(
    n_gaussians: int, box: int, batch: int, device: str, backward: bool, repeats: int
) -> float:
    rng = np.random.default_rng(0)
    pixel = 1.5
    positions = torch.tensor(
        rng.normal(scale=box * pixel / 8, size=(n_gaussians, 3)),
        dtype=torch.float32,
        device=device,
        requires_grad=backward,
    )
    model = GaussianModel(
        positions,
        torch.ones(n_gaussians, device=device),
        torch.full((n_gaussians,), 2.0, device=device),
    )
    rotations = euler_to_matrix(
        torch.tensor(random_euler_angles(batch, rng), dtype=torch.float32)
    ).to(device)
    shifts = torch.zeros(batch, 2, device=device)
    ctf = compute_ctf(
        CtfParams.broadcast(
            batch,
            defocus_u_angstrom=15000.0,
            defocus_v_angstrom=14000.0,
            defocus_angle_degrees=30.0,
            voltage_kilovolts=300.0,
            spherical_aberration_millimetres=2.7,
            amplitude_contrast=0.1,
        ).torch(device),
        box,
        pixel,
    )

    def step():
        images = form_images(model, Pose(rotations, shifts), box, pixel, ctf)
        if backward:
            images.pow(2).sum().backward()

    step()  # warm-up
    rates = []
    for _ in range(3):  # the median of three rounds is robust to other load on the machine
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rates.append(repeats * batch / (time.perf_counter() - start))
    return float(np.median(rates))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=Path("bench/results/projection.json"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for box in (64, 128):
        for n_gaussians in (2000, 10000):
            for backward in (False, True):
                rate = _measure(n_gaussians, box, args.batch, args.device, backward, args.repeats)
                rows.append(
                    {
                        "box": box,
                        "n_gaussians": n_gaussians,
                        "with_backward": backward,
                        "images_per_second": round(rate, 1),
                    }
                )
                print(rows[-1], flush=True)
    result = {
        "benchmark": "Gaussian model batch projection with CTF",
        "device": args.device,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    _plot(rows, args.output.with_suffix(".png"))


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    labels = [
        f"box {r['box']}\n{r['n_gaussians']} G" + ("\n+grad" if r["with_backward"] else "")
        for r in rows
    ]
    axis.bar(range(len(rows)), [r["images_per_second"] for r in rows])
    axis.set_xticks(range(len(rows)), labels, fontsize=7)
    axis.set_ylabel("images / s")
    axis.set_title("Gaussian projection throughput (CPU)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
