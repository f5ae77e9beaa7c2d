"""Fill a consensus map with Gaussian pseudo-atoms and fit them to it (stage 2).

The map is thresholded (automatically, or at --threshold), filled with N Gaussians at random inside
the thresholded region (and inside --mask if given), and their positions, shared amplitude and
shared width are fitted to the map. Default N: two per residue, estimated from the enclosed volume.

Writes DIR/consensus_gaussians.pt (the model), DIR/consensus_gaussians.mrc (the model rendered, to
compare with the map in a viewer) and DIR/consensus_gaussians.csv (one row per Gaussian, Å).

Example:
  napari-dynamight fit-consensus --consensus sim/consensus.mrc --output-directory run \\
      --n-gaussians 4000 --threshold 0.02 --steps 300
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..engine.consensus_stage import ConsensusSettings
    from ._options import add_options

    add = parser.add_argument
    add("--consensus", type=Path, required=True, metavar="MAP", help="consensus map (MRC)")
    add(
        "--output-directory",
        type=Path,
        required=True,
        metavar="DIR",
        help="where to write the model",
    )
    add("--mask", type=Path, metavar="MAP", help="optional mask (MRC, same box and voxel size)")
    add_options(parser, ConsensusSettings)
    add("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")


def run(args: argparse.Namespace) -> int:
    from ..engine.consensus_stage import ConsensusSettings, fit_consensus
    from ..engine.io.guard import writing
    from ._options import settings_from_args
    from ._progress import drive

    settings = settings_from_args(ConsensusSettings, args)
    with writing(args.output_directory, "--output-directory", "fit-consensus"):
        result = drive(
            fit_consensus(
                args.consensus,
                args.output_directory,
                mask_path=args.mask,
                device=args.device,
                **settings.to_dict(),
            ),
            "fit consensus",
        )
    print(
        f"{result.n_gaussians} Gaussians (σ {result.sigma_angstrom:.2f} Å) fitted at threshold "
        f"{result.threshold:.4g}: correlation with the map {result.correlation:.4f}"
    )
    print(f"model: {result.model_path}")
    return 0
