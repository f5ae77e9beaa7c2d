"""The two deformation networks side by side on a small noisy set, over seeds: the worse half's
latent ordering, the motion each half learns and the wall time.

Usage:
  python bench/bench_decoders.py --output bench/results/decoders_tiny.json [--seeds 0 1 2] \
      [--decoders factorised mlp] [--work-directory DIR]

Data and training are those of tests/test_deformation_halves.py (500 simulated AdK particles at box
32, 2.5 Å, SNR 0.1, a fitted 300-Gaussian model; 16 epochs and one refinement round, small
networks), one torch thread. Per decoder and seed: |Spearman| of the best latent principal component
with the true frame in each half (each half's particles in its own latent space) and the mean
displacement (``dmDisplacementAngstrom``). The numbers are meant for comparing the networks, not for
absolute quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.deformation_data import HALVES_SETTINGS, simulate_tiny, train  # noqa: E402
from napari_dynamight.engine.evaluation.metrics import latent_frame_ordering  # noqa: E402
from napari_dynamight.engine.explore import load_run  # noqa: E402
from napari_dynamight.engine.io.atomic import atomic_path  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results" / "decoders_tiny.json"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--decoders", nargs="+", default=["factorised", "mlp"])
    parser.add_argument("--work-directory", type=Path, help="keep the data and runs here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    temporary = (
        None if args.work_directory else tempfile.TemporaryDirectory(prefix="bench_decoders_")
    )
    work = args.work_directory or Path(temporary.name)
    work.mkdir(parents=True, exist_ok=True)
    data = simulate_tiny(work / "data", n_particles=500, snr=0.1, seed=1)
    frames = data.labels.frame.to_numpy()
    rows = []
    for decoder in args.decoders:
        for seed in args.seeds:
            started = time.perf_counter()
            out = train(
                data,
                work / f"run_{decoder}_{seed}",
                replace(HALVES_SETTINGS, seed=seed, decoder=decoder),
            )
            loaded = load_run(out)
            table = loaded.table.particles
            halves = table.dmHalfSet.to_numpy()
            ordering = [
                float(latent_frame_ordering(view.latents, frames[view.rows]).best)
                for view in (loaded.own_half(h) for h in (1, 2))
            ]
            moved = [float(table.dmDisplacementAngstrom[halves == h].mean()) for h in (1, 2)]
            rows.append(
                {
                    "decoder": decoder,
                    "seed": seed,
                    "abs_spearman_half1": ordering[0],
                    "abs_spearman_half2": ordering[1],
                    "worse_half": min(ordering),
                    "mean_displacement_angstrom": moved,
                    "seconds": time.perf_counter() - started,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "benchmark": "deformation networks on the tiny noisy AdK set",
        "command": "python bench/bench_decoders.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": torch.__version__,
        "threads": 1,
        "runs": rows,
        "worse_half": {
            d: [r["worse_half"] for r in rows if r["decoder"] == d] for d in args.decoders
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.output) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if temporary is not None:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
