"""Simulate a RELION 3.1 particle data set with known motion from a structure (and trajectory).

Each particle shows one frame of the trajectory (drawn uniformly), in a random orientation, with a
small random origin shift, a CTF with a random defocus in the given range, and white Gaussian noise
at the given SNR (signal variance of the noise-free CTF-filtered images over the whole box, divided
by the noise variance; 'inf' gives noise-free images). Atoms are Gaussians of width max(1 Å,
pixel/2) with amplitude = atomic number; hydrogens and waters are left out.

Writes DIR/particles.star, DIR/particles.mrcs, DIR/consensus.mrc (the reconstruction of the
simulated particles a user would start from) and DIR/ground_truth/ (labels.csv: frame, pose, origin
and defocus of every particle; frame_NNN.mrc: the map of every frame used, without CTF). Nothing is
written if the run fails or is interrupted.

Example (the adenylate kinase closed-to-open transition shipped in tests/data/adk/):

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
        help="trajectory frames to draw from: 'all', START:STOP[:STEP] or 0,10,20 "
        "(0-based; default all)",
    )
    parser.add_argument("--voltage", type=float, default=300.0, help="voltage in kV (default 300)")
    parser.add_argument(
        "--cs", type=float, default=2.7, help="spherical aberration in mm (default 2.7)"
    )
    parser.add_argument(
        "--amplitude-contrast", type=float, default=0.1, help="amplitude contrast (default 0.1)"
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)"
    )


def run(args: argparse.Namespace) -> int:
    from ..engine.simulate import simulate
    from ._progress import drive

    frames = parse_frames(args.frames)
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
    )
    summary = drive(operation, "simulate")
    noise = "no noise" if math.isinf(args.snr) else f"SNR {args.snr:g}"
    print(
        f"wrote {summary.n_particles} particles ({summary.box} px, "
        f"{summary.pixel_size_angstrom:g} Å/px, {noise}) from {len(summary.frames)} frame(s) of "
        f"{summary.n_atoms} atoms to "
        f"{summary.output_directory}: particles.star, particles.mrcs, consensus.mrc, ground_truth/"
    )
    return 0
