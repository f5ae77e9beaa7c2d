"""The atomic-model prior against the smoothness prior on the simulated adenylate-kinase set, and
the model-bias control with several wrong models.

Usage (every step is skipped when its result exists and --reuse is given):
  python bench/bench_atomic_prior.py --work WORK --epochs 15 --threads 1 --reuse
  python bench/bench_atomic_prior.py --work WORK --snr 0.02 --controls move:3 register \
      --output bench/results/atomic_prior_held_snr002.json

Steps: simulate the closed->open trajectory (the bundled example files, every frame; 1,000
particles, box 64, 1.5 Å/px, SNR 0.1 or --snr); fit the closed structure into the consensus map
(superposed on the trajectory's first frame, its atomic-number-weighted centre onto the box centre,
as the simulator centres the molecule) and write it as WORK/adk_closed_fitted.pdb; train the
deformations twice with the same schedule, with the smoothness prior (Gaussians fitted to the
consensus map) and with the atomic prior (--atomic-model, the reference held at the model), each
followed by its inverse deformations and deformed reconstruction; run the model-bias control on the
atomic-prior run once per --controls entry (move:S: the automatic region moved S Å outwards;
register: its side chains threaded one residue on; each kept in WORK/control_*.json). Measured per
run: |Spearman| of the best latent principal component with the true frame, per half; decoded
volumes of 20 particles per half against their true frame maps (mean correlation, and the consensus
map's); the deformed full map's FSC against the ground-truth frame map it correlates with best
(resolution at FSC 0.5) and the half-map resolution (FSC 0.143); and per control where each map and
each run's mean decoded volume place the control's region (t = 0 right, 1 wrong), the smoothness
prior's included. Writes --output (default bench/results/atomic_prior.json; no absolute paths).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from napari_dynamight.engine.atomic_model import (
    coarse_grain,
    kabsch,
    write_moved_structure,
)
from napari_dynamight.engine.data.particle_file import read_particles
from napari_dynamight.engine.deformation.decode import load_run
from napari_dynamight.engine.deformation.run import optimize_deformations
from napari_dynamight.engine.deformation.settings import DeformationSettings
from napari_dynamight.engine.evaluation.metrics import latent_frame_ordering, map_correlation
from napari_dynamight.engine.example_data import example_file
from napari_dynamight.engine.fourier import fsc, resolution_at
from napari_dynamight.engine.inverse.run import optimize_inverse_deformations
from napari_dynamight.engine.inverse.settings import InverseSettings
from napari_dynamight.engine.io.dcd import read_dcd, read_dcd_info
from napari_dynamight.engine.io.mrc import read_map
from napari_dynamight.engine.io.structure import read_structure
from napari_dynamight.engine.model_bias import (
    BiasCheckSettings,
    mean_decoded_volume,
    model_bias,
    region_placement,
)
from napari_dynamight.engine.progress import run
from napari_dynamight.engine.reconstruction.stage import reconstruct_run
from napari_dynamight.engine.run_folder import RunFolder
from napari_dynamight.engine.simulate import simulate

RESULTS = Path(__file__).parent / "results"
BOX, PIXEL = 64, 1.5


def _simulate(work: Path, args) -> Path:
    sim = work / "sim"
    if not (args.reuse and (sim / "particles.star").is_file()):
        shutil.rmtree(sim, ignore_errors=True)
        run(
            simulate(
                example_file("adk_closed.pdb"),
                example_file("adk_dims.dcd"),
                output_directory=sim,
                n_particles=args.n_particles,
                box=BOX,
                pixel_size_angstrom=PIXEL,
                snr=args.snr,
                seed=0,
            )
        )
    return sim


def _fitted_model(work: Path) -> Path:
    """The closed structure superposed on the trajectory's first frame (of which it is a rigid copy,
    0.7 Å RMSD) and moved as the simulator moves that frame: its atomic-number-weighted centre to
    the box centre."""
    pdb, dcd = example_file("adk_closed.pdb"), example_file("adk_dims.dcd")
    atoms = read_structure(pdb, drop_hydrogens=True)
    first = read_dcd(dcd, read_dcd_info(dcd).n_atoms, np.array([0]))[0, atoms.atom_indices].astype(
        np.float64
    )
    rotation, translation = kabsch(atoms.positions_angstrom, first)
    centre = np.average(first, axis=0, weights=atoms.atomic_numbers)
    return write_moved_structure(
        pdb,
        work / "adk_closed_fitted.pdb",
        translation - centre + BOX // 2 * PIXEL,
        rotation=rotation,
    )


def _pipeline(sim: Path, out: Path, settings: DeformationSettings, args) -> dict:
    """Deformations, inverse deformations and the deformed reconstruction of one run; their
    seconds."""
    seconds = {}
    folder = RunFolder(out)
    if not (args.reuse and folder.reconstruction(True).full_map.is_file()):
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        run(
            optimize_deformations(
                sim / "particles.star", sim / "consensus.mrc", out, settings=settings
            )
        )
        seconds["deformations"] = time.perf_counter() - started
        started = time.perf_counter()
        run(
            optimize_inverse_deformations(out, settings=InverseSettings(epochs=args.inverse_epochs))
        )
        seconds["inverse"] = time.perf_counter() - started
        started = time.perf_counter()
        run(reconstruct_run(out, deformations=True))
        seconds["reconstruction"] = time.perf_counter() - started
    return seconds


def _measure(sim: Path, out: Path, args) -> dict:
    labels = pd.read_csv(sim / "ground_truth" / "labels.csv")
    frames = labels["frame"].to_numpy()
    latents = np.load(RunFolder(out).latents)
    halves = read_particles(RunFolder(out).particles).particles["dmHalfSet"].to_numpy().astype(int)
    truth = {
        int(f): read_map(sim / "ground_truth" / f"frame_{f:03d}.mrc")[0] for f in np.unique(frames)
    }
    stacked = np.stack(list(truth.values()))
    mask = stacked.max(0) > 0.02 * stacked.max()
    consensus, _ = read_map(sim / "consensus.mrc")
    decoder = load_run(out)
    rng = np.random.default_rng(0)
    result = {"latent_ordering": {}, "decoded": {}}
    for half in (1, 2):
        rows = np.nonzero(halves == half)[0]
        result["latent_ordering"][str(half)] = latent_frame_ordering(
            latents[rows], frames[rows]
        ).best
        chosen = np.sort(rng.choice(rows, size=args.n_decoded, replace=False))
        volumes = decoder.decode_volumes(latents[chosen], half=half)
        result["decoded"][str(half)] = {
            "mean_cc_decoded": float(
                np.mean(
                    [
                        map_correlation(v, truth[int(frames[i])], mask)
                        for v, i in zip(volumes, chosen, strict=True)
                    ]
                )
            ),
            "mean_cc_consensus": float(
                np.mean([map_correlation(consensus, truth[int(frames[i])], mask) for i in chosen])
            ),
        }
    folder = RunFolder(out).reconstruction(True)
    full, voxel = read_map(folder.full_map)
    best = max(truth, key=lambda f: map_correlation(full, truth[f], mask))
    frequency, curve = fsc(full, truth[best], voxel)
    half1, _ = read_map(folder.half_map(1))
    half2, _ = read_map(folder.half_map(2))
    _, half_curve = fsc(half1, half2, voxel)
    result["map"] = {
        "best_frame": best,
        "resolution_fsc05_vs_truth_angstrom": resolution_at(frequency, curve, 0.5),
        "half_map_resolution_fsc0143_angstrom": resolution_at(frequency, half_curve, 0.143),
    }
    return result


def _control(control: str, runs: dict, sim: Path, fitted: Path, work: Path, args) -> dict:
    """The model-bias control with one wrong model (``move:SHIFT`` or ``register``) on the
    atomic-prior run, and where the smoothness prior's map puts the same region; kept in
    WORK/control_<mode>_<shift>.json for --reuse (each control overwrites RUN/model_bias)."""
    mode, _, shift = control.partition(":")
    if mode not in ("move", "register") or (mode == "move") != bool(shift):
        raise SystemExit(f"--controls: {control!r} is not move:SHIFT or register")
    cache = work / f"control_{mode}{'_' + shift if shift else ''}.json"
    if args.reuse and cache.is_file():
        return json.loads(cache.read_text())
    started = time.perf_counter()
    atomic = runs["atomic"][0]
    result = run(
        model_bias(
            atomic,
            BiasCheckSettings(
                residues=args.residues,
                mode=mode,
                shift=float(shift or 5.0),
                inverse_epochs=args.inverse_epochs,
            ),
        )
    )
    seconds = time.perf_counter() - started
    report = result.report
    right, wrong = coarse_grain(fitted), coarse_grain(report["wrong_model"])
    smooth_map, voxel = read_map(RunFolder(runs["smoothness"][0]).reconstruction(True).full_map)
    smooth = region_placement(smooth_map, voxel, right, wrong)
    smooth_decoded = region_placement(
        mean_decoded_volume(runs["smoothness"][0]), voxel, right, wrong
    )
    consensus_t = report["placements"]["consensus"]["t"]
    wrong_run = RunFolder(atomic).model_bias_folder / "run"
    entry = {key: report[key] for key in ("region", "mode", "shift_angstrom")}
    entry |= {
        "n_gaussians_changed": report["n_gaussians_changed"],
        "placements": report["placements"] | {"smoothness_map": smooth.to_dict()},
        "placements_decoded": report["placements_decoded"]
        | {"smoothness_run": smooth_decoded.to_dict()},
        "scores": {
            "wrong_model_map": report["score_wrong_model"],
            "right_model_map": report["score_run"],
            "smoothness_map": smooth.t - consensus_t,
            "wrong_model_decoded": report["score_wrong_model_decoded"],
            "right_model_decoded": report["score_run_decoded"],
            "smoothness_decoded": smooth_decoded.t - consensus_t,
        },
        "reproduced_percent": report["reproduced_percent"],
        "reproduced_percent_decoded": report["reproduced_percent_decoded"],
        "biased_map": report["biased_map"],
        "biased_decoded": report["biased_decoded"],
        "biased": report["biased"],
        "seconds": seconds,
        "wrong_model_run": _measure(sim, wrong_run, args),
    }
    cache.write_text(json.dumps(entry, indent=1) + "\n")
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for data and runs")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--refinement-rounds", type=int, default=1)
    parser.add_argument("--inverse-epochs", type=int, default=10)
    parser.add_argument("--n-particles", type=int, default=1000)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--n-decoded", type=int, default=20)
    parser.add_argument(
        "--controls",
        nargs="+",
        default=["move:5"],
        help="the control's wrong models, each move:SHIFT_Å or register (default: move:5)",
    )
    parser.add_argument(
        "--residues", help="the control's region, CHAIN:FIRST-LAST (default: automatic)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "atomic_prior.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    sim = _simulate(work, args)
    fitted = _fitted_model(work)
    base = DeformationSettings(
        epochs=args.epochs, refinement_rounds=args.refinement_rounds, checkpoint_every=args.epochs
    )
    runs = {
        "smoothness": (work / "run_smoothness", base),
        "atomic": (work / "run_atomic", replace(base, atomic_model=str(fitted.resolve()))),
    }
    given = [("work", "WORK"), ("epochs", args.epochs), ("threads", args.threads)]
    given += [
        (key, value)
        for key, value in vars(args).items()
        if key not in ("work", "epochs", "threads", "reuse", "output")
        and value != parser.get_default(key)
    ]
    if args.output != RESULTS / "atomic_prior.json":
        given.append(("output", f"bench/results/{args.output.name}"))
    out = {
        "command": "python bench/bench_atomic_prior.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}" for k, v in given
        ),
        "data": {
            "n_particles": args.n_particles,
            "box": BOX,
            "pixel_size_angstrom": PIXEL,
            "snr": args.snr,
        },
        "settings": {
            "epochs": args.epochs,
            "refinement_rounds": args.refinement_rounds,
            "inverse_epochs": args.inverse_epochs,
        },
        "machine": (
            f"{platform.processor() or platform.machine()}, {args.threads} torch thread(s), shared"
        ),
        "n_gaussians_atomic": coarse_grain(fitted).n_gaussians,
        "runs": {},
    }
    for name, (folder, settings) in runs.items():
        seconds = _pipeline(sim, folder, settings, args)
        out["runs"][name] = {
            "seconds": seconds,
            "n_gaussians": RunFolder(folder).read_info()["n_gaussians"],
        } | _measure(sim, folder, args)
        args.output.write_text(json.dumps(out, indent=1) + "\n")
    out["controls"] = {}
    for control in args.controls:
        out["controls"][control] = _control(control, runs, sim, fitted, work, args)
        args.output.write_text(json.dumps(out, indent=1) + "\n")
        print(control, json.dumps(out["controls"][control]["scores"]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
