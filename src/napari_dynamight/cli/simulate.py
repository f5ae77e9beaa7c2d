"""Simulate a RELION 3.1 particle data set with known motion from a structure (and trajectory).

Each particle shows one frame of the trajectory (drawn uniformly, or as --frame-distribution /
--frame-weights say), in a random orientation, with a
small random origin shift, a CTF with a random defocus in the given range, and white Gaussian noise
at the given SNR (signal variance of the noise-free CTF-filtered images over the whole box, divided
by the noise variance; 'inf' gives noise-free images). Atoms are Gaussians of width max(1 Å,
pixel/2) with amplitude = atomic number; hydrogens and waters are left out.

Writes DIR/particles.star, DIR/particles.mrcs, DIR/consensus.mrc (the reconstruction of the
simulated particles a user would start from) and DIR/ground_truth/ (labels.csv: frame, pose, origin
and defocus of every particle; frame_NNN.mrc: the map of every frame used, without CTF). Nothing is
written if the run fails or is interrupted.

Variants: --envelope-bfactor B multiplies the signal by exp(-B s^2/4) without writing B to the STAR
file; --independent-domains 30-59 122-159 moves two domains (residue ranges) independently on a
fixed CORE (--core-frame), a two-dimensional motion with both domains' frames in labels.csv.

Example (the adenylate kinase closed-to-open transition bundled in the package's sample_data/
folder):

  napari-dynamight simulate --structure adk_closed.pdb --trajectory adk_dims.dcd \\
      --output-directory sim --n-particles 2000 --box 64 --pixel-size 1.5 --snr 0.05 \\
      --defocus-range 5000 20000 --seed 0 --frames 0:98:4
"""

from __future__ import annotations

import argparse
import math

from ..engine.errors import InputError


def parse_frames(text: str) -> list[int] | None:
    """'all' -> None; 'START:STOP[:STEP]' (0-based, STOP excluded) or 'A,B,C' -> frame numbers."""
    text = text.strip()
    if text.lower() == "all":
        return None
    try:
        if ":" in text:
            parts = [int(p) if p else None for p in text.split(":")]
            if len(parts) > 3 or parts[1] is None:
                raise ValueError
            start, stop = parts[0] or 0, parts[1]
            step = parts[2] if len(parts) == 3 and parts[2] else 1
            frames = list(range(start, stop, step))
        else:
            frames = [int(p) for p in text.split(",")]
    except ValueError:
        raise InputError(
            f"--frames {text!r} is not understood: give 'all', START:STOP[:STEP] or a list "
            "like 0,10,20"
        ) from None
    if not frames or min(frames) < 0:
        raise InputError(f"--frames {text!r} selects no valid frame: frames are numbered from 0")
    return frames


def parse_residue_range(text: str) -> tuple[int, int]:
    """'FIRST-LAST' (inclusive residue numbers) -> (FIRST, LAST)."""
    try:
        first, last = (int(p) for p in text.strip().split("-"))
    except ValueError:
        raise InputError(
            f"--independent-domains {text!r} is not understood: give two ranges like 30-59 122-159"
        ) from None
    if first > last:
        raise InputError(f"--independent-domains {text!r}: the first residue exceeds the last")
    return first, last


def read_frame_weights(path: str):
    """One non-negative number per used frame, whitespace or comma separated; '#' starts a
    comment."""
    import numpy as np

    try:
        with open(path, encoding="utf-8") as handle:
            text = " ".join(line.split("#", 1)[0] for line in handle)
        values = np.array([float(v) for v in text.replace(",", " ").split()], dtype=np.float64)
    except OSError as error:
        raise InputError(f"--frame-weights {path}: cannot be read ({error.strerror})") from None
    except ValueError:
        raise InputError(f"--frame-weights {path}: not a list of numbers") from None
    if values.size == 0:
        raise InputError(f"--frame-weights {path}: holds no weights; give one per frame used")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--structure", required=True, help="atomic structure, PDB or mmCIF")
    parser.add_argument(
        "--trajectory", help="DCD trajectory of the structure (same atoms, same order)"
    )
    parser.add_argument(
        "--output-directory", required=True, help="folder for the simulated data set"
    )
    parser.add_argument(
        "--n-particles", type=int, default=1000, help="number of particles (default 1000)"
    )
    parser.add_argument(
        "--box", type=int, default=64, help="image box in pixels, even (default 64)"
    )
    parser.add_argument(
        "--pixel-size", type=float, default=1.5, help="pixel size in Å (default 1.5)"
    )
    parser.add_argument(
        "--snr",
        type=float,
        default=0.1,
        help="signal-to-noise ratio (variance ratio), 'inf' for none (default 0.1)",
    )
    parser.add_argument(
        "--defocus-range",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=(5000.0, 20000.0),
        help="defocus range in Å (default 5000 20000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--frames",
        default="all",
        help="trajectory frames to draw from: 'all', START:STOP[:STEP] or 0,10,20 (0-based; "
        "default all)",
    )
    parser.add_argument("--voltage", type=float, default=300.0, help="voltage in kV (default 300)")
    parser.add_argument(
        "--cs", type=float, default=2.7, help="spherical aberration in mm (default 2.7)"
    )
    parser.add_argument(
        "--amplitude-contrast", type=float, default=0.1, help="amplitude contrast (default 0.1)"
    )
    parser.add_argument(
        "--frame-distribution",
        choices=("uniform", "bimodal"),
        default="uniform",
        help="how particles draw their frame among those used: uniform, or bimodal (two states "
        "around 20%% and 80%% of the frame range, width 10%%) (default uniform)",
    )
    parser.add_argument(
        "--frame-weights",
        metavar="FILE",
        help="text file of one non-negative weight per frame used (instead of "
        "--frame-distribution)",
    )
    parser.add_argument(
        "--envelope-bfactor",
        type=float,
        default=0.0,
        metavar="B",
        help="envelope B-factor in Å² applied to the signal, NOT written to the STAR "
        "file (default 0)",
    )
    parser.add_argument(
        "--independent-domains",
        nargs=2,
        metavar=("FIRST-LAST", "FIRST-LAST"),
        help="two residue ranges that move independently on a fixed CORE, e.g. 30-59 122-159 "
        "(AdK's NMP and LID); needs --trajectory",
    )
    parser.add_argument(
        "--core-frame",
        type=int,
        help="0-based trajectory frame giving the CORE with --independent-domains (default: the "
        "first frame used)",
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)"
    )


def run(args: argparse.Namespace) -> int:
    from ..engine.io.guard import writing
    from ..engine.simulate import simulate
    from ._progress import drive

    frames = parse_frames(args.frames)
    if args.frame_weights and args.frame_distribution != "uniform":
        raise InputError("--frame-weights and --frame-distribution both given: give one of them")
    weights = read_frame_weights(args.frame_weights) if args.frame_weights else None
    domains = (
        tuple(parse_residue_range(r) for r in args.independent_domains)
        if args.independent_domains
        else None
    )
    if args.core_frame is not None and domains is None:
        raise InputError("--core-frame only applies with --independent-domains")
    operation = simulate(
        args.structure,
        args.trajectory,
        output_directory=args.output_directory,
        n_particles=args.n_particles,
        box=args.box,
        pixel_size_angstrom=args.pixel_size,
        snr=args.snr,
        defocus_range_angstrom=tuple(args.defocus_range),
        seed=args.seed,
        frames=frames,
        voltage_kilovolts=args.voltage,
        spherical_aberration_millimetres=args.cs,
        amplitude_contrast=args.amplitude_contrast,
        device=args.device,
        frame_distribution=args.frame_distribution,
        frame_weights=weights,
        envelope_bfactor_angstrom2=args.envelope_bfactor,
        independent_domains=domains,
        core_frame=args.core_frame,
    )
    with writing(args.output_directory, "--output-directory", "simulate"):
        summary = drive(operation, "simulate")
    noise = "no noise" if math.isinf(args.snr) else f"SNR {args.snr:g}"
    print(
        f"wrote {summary.n_particles} particles ({summary.box} px, "
        f"{summary.pixel_size_angstrom:g} Å/px, {noise}) from {len(summary.frames)} frame(s) of "
        f"{summary.n_atoms} atoms to {summary.output_directory}: particles.star, particles.mrcs, "
        "consensus.mrc, ground_truth/"
        + ("" if summary.state_frames is None else f" ({len(summary.state_frames)} domain states)")
    )
    return 0
