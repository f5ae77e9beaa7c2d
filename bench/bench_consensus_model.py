"""How well the undeformed consensus model alone renders the true frames, against the consensus map
it was fitted to, for several numbers of Gaussians.

Usage:
  python bench/bench_consensus_model.py --data WORK/snr005_n1000/seed_0/data \
      [--gaussians 1000 10000] [--work WORK/consensus_models]
      [--output bench/results/consensus_model_gain.json]

``--data`` is a simulated data set of ``bench_robustness.py`` (``consensus.mrc`` and
``ground_truth/frame_*.mrc``). For each count, ``fit_consensus`` (the stage's defaults) fits that
many Gaussians to the consensus map; their rendering is compared with every true frame inside the
frames' mask (``decoded_vs_consensus``, as the robustness benchmark compares decoded volumes): the
mean correlation with the frames, its gain over the consensus map's, over all frequencies and up
to ``--train-nyquist`` Å. A model whose rendering already loses to the map would explain decoded
volumes that lose without any deformation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def measure(data: Path, work: Path, count: int, train_nyquist: float) -> dict:
    import torch

    from napari_dynamight.engine.consensus import load_model
    from napari_dynamight.engine.consensus_stage import fit_consensus
    from napari_dynamight.engine.evaluation import decoded_vs_consensus
    from napari_dynamight.engine.gaussians import render_volume
    from napari_dynamight.engine.io.mrc import read_map
    from napari_dynamight.engine.progress import run
    from napari_dynamight.engine.run_folder import ConsensusFolder

    consensus, voxel = read_map(data / "consensus.mrc")
    truths = [read_map(path)[0] for path in sorted((data / "ground_truth").glob("frame_*.mrc"))]
    stacked = np.stack(truths)
    mask = stacked.max(0) > 0.02 * stacked.max()  # as bench_robustness.py
    folder = ConsensusFolder(work / f"gaussians{count}")
    if not folder.model.is_file():
        run(fit_consensus(data / "consensus.mrc", folder.path, n_gaussians=count))
    model = load_model(folder.model)
    with torch.no_grad():
        rendered = render_volume(model, consensus.shape[0], voxel).cpu().numpy()
    full = decoded_vs_consensus([rendered] * len(truths), truths, consensus, mask)
    band = decoded_vs_consensus(
        [rendered] * len(truths), truths, consensus, mask, (voxel, train_nyquist)
    )
    return {
        "gaussians": count,
        "median_width_angstrom": float(model.sigmas_angstrom.median()),
        "mean_cc_model": full["mean_decoded"],
        "mean_cc_consensus": full["mean_consensus"],
        "gain": full["mean_decoded"] - full["mean_consensus"],
        "gain_to_train_nyquist": band["mean_decoded"] - band["mean_consensus"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="a bench_robustness data set")
    parser.add_argument("--gaussians", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--work", type=Path, default=None, help="where the models go")
    parser.add_argument("--train-nyquist", type=float, default=6.0, metavar="ANGSTROM")
    parser.add_argument(
        "--output", type=Path, default=Path("bench/results/consensus_model_gain.json")
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = args.work or args.data.parent / "consensus_models"
    rows = [measure(args.data, work, count, args.train_nyquist) for count in args.gaussians]
    for row in rows:
        print(json.dumps(row))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "benchmark": "undeformed consensus model against the consensus map",
                "command": "python bench/bench_consensus_model.py --data WORK/"
                + "/".join(args.data.parts[-3:])
                + " --gaussians "
                + " ".join(str(g) for g in args.gaussians),
                "train_nyquist_angstrom": args.train_nyquist,
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
