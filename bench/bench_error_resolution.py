"""Per-Gaussian error estimates against the true motion: unresolved and resolved at the pixel.

Usage:
  python bench/bench_error_resolution.py --output bench/results/error_resolution.json \
      WORK/snr001_n4000/seed_0 [WORK/... ...]

Each argument is one finished run of ``bench_robustness.py`` (``data/`` with its ground truth,
``run/`` with the trained halves) whose ``gaussian_errors.csv`` holds the halves' RMS disagreement
per Gaussian *unresolved*, as runs trained before the estimate was resolved wrote it. For each run
the rank correlation with the true motion near each Gaussian (``gaussian_error_vs_motion``, the
robustness benchmark's measure) is reported for those values and for the same values resolved at
the run's training pixel (``validation.resolved_gaussian_errors``, what a run writes now), and for
comparison resolved with kernels of half, 1.5 and 2 training pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from bench_robustness import true_frame_positions

from napari_dynamight.engine.deformation.validation import resolved_gaussian_errors
from napari_dynamight.engine.evaluation import gaussian_error_vs_motion
from napari_dynamight.engine.io.mrc import read_map

KERNELS_IN_PIXELS = (0.5, 1.0, 1.5, 2.0)


def measure(folder: Path) -> dict:
    """The run's unresolved and resolved rank correlations with the true motion."""
    data, run = folder / "data", folder / "run"
    consensus, voxel = read_map(data / "consensus.mrc")
    box = consensus.shape[0]
    settings = json.loads((run / "run.json").read_text())
    pixel = box * voxel / settings["train_box"]
    truth = true_frame_positions(data, box, voxel)
    table = np.loadtxt(run / "gaussian_errors.csv", delimiter=",", skiprows=1)
    points, errors = table[:, :3], table[:, 3]
    row = {
        "run": str(folder),
        "n_gaussians": len(points),
        "training_pixel_angstrom": pixel,
        "unresolved": gaussian_error_vs_motion(points, errors, truth),
    }
    squares = torch.as_tensor(errors**2, dtype=torch.float32)
    for width in KERNELS_IN_PIXELS:
        resolved = resolved_gaussian_errors(
            torch.as_tensor(points, dtype=torch.float32), squares, width * pixel
        )
        row[f"resolved_{width:g}_pixel"] = gaussian_error_vs_motion(points, resolved, truth)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument(
        "runs", type=Path, nargs="+", help="robustness run folders WORK/<v>/seed_<s>"
    )
    args = parser.parse_args(argv)
    rows = []
    for folder in args.runs:
        rows.append(measure(folder))
        print(json.dumps(rows[-1]), flush=True)
    report = {
        "benchmark": "per-Gaussian error estimate against the true motion (Spearman), unresolved "
        "and resolved at kernels of 0.5-2 training pixels (1: the engine's)",
        "command": "python bench/bench_error_resolution.py --output OUTPUT "
        + " ".join(str(r) for r in args.runs),
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
