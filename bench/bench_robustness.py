"""Robustness of deformation learning: the *worst* half set over many seeds and data variants.

Usage:
  python bench/bench_robustness.py --output bench/results/robustness.json \
      [--variants NAME ...] [--seeds 0 1 2 3 4] [--epochs E] [--refinement-rounds R] \
      [--exact-posteriors | --screened-posteriors] \
      [--decoder mlp|factorised] [--latent-dim D] [--kl-weight W] \
      [--positional-frequencies F] [--reference-update-every E] [--n-gaussians N] [--train-box PX] \
      [--maps NAME ...] [--jobs N] [--threads T] [--work-directory DIR] [--reuse] [--quick]

Every (variant, seed) is one run in its own folder ``WORK/<variant>/seed_<s>``: simulate the AdK
closed→open trajectory we ship (the bundled example files) with ``engine.simulate.simulate`` (the
code behind ``napari-dynamight simulate``), compute the Bayes-optimal ceiling of that data set,
train the two half-set VAEs (``optimize_deformations``, ``DeformationSettings`` defaults except
``--epochs`` and ``--refinement-rounds``), and measure per half set:

- |Spearman| of the best latent principal component with the true frame (``latent_frame_ordering``;
  every particle encoded by its own half), the half's ceiling and the gap;
- decoded volumes against the consensus map (``decoded_vs_consensus``): mean correlation of
  decoded and consensus maps with each particle's true map, their difference (the gain) and the
  fraction of particles where the decoded volume wins, over all frequencies and again with every
  map low-passed to the training images' Nyquist (the finest detail the motion was learnt from),
  and the gain of the half's trained reference rendered undeformed (``reference_gain``: what the
  changes of its positions alone did); ``--reuse`` adds both to runs measured before they existed;
- RMS displacement of the particles' Gaussians (``dmDisplacementAngstrom``);
- per run, the rank correlation of the per-Gaussian error estimates (``gaussian_errors.csv``) with
  the true motion near each Gaussian, as ``bench_deformations.py`` measures it (frame variants;
  ``--reuse`` adds it to runs measured before it existed);
- the watchdog (from the run's ``run.json``): its warnings, the two halves' agreement on the
  validation particles' motion with each half's mean deformation removed (and that per-particle
  motion's RMS in each half), and the amplitude fit's z-score per half;
- with ``--maps`` for that variant: inverse deformations, the deformed half maps
  (``reconstruct_run``, its default filter) and ``relion_reconstruct --ctf`` of the same half's
  particles, each against its best-matching ground-truth map: resolution at FSC 0.5 and FSC area
  (mean FSC from the lowest shell to Nyquist).

Variants (``--variants``, default all; see VARIANTS): SNR 0.01 with 4,000 particles (the acceptance
variant: worst half within 0.1 of its ceiling), SNR 0.01 with 1,000, SNR 0.05 (acceptance: worst
half ≥ 0.9), a two-state (bimodal) frame distribution (ceiling with the simulation's prior), an
envelope B-factor the STAR file does not record (the oracle is given it), a two-dimensional motion
(LID, residues 122–159, and NMP, 30–59, of E. coli AdK moving independently on the CORE of frame 0;
ordering and ceiling per domain), and two controls: pure noise (the SNR 0.01 / 1,000 STAR file with
images of white noise at the same noise level; the run must refuse it, as its images do not show the
consensus map, and the refusal is recorded) and one conformation (SNR 0.01, 1,000 particles all in
frame 48: every per-particle motion is invented, and the halves should not agree on it).

Aggregates per variant (``"aggregate"``): the worst half per seed (min over halves of |Spearman|,
max of the gap), then the min / mean / max over seeds; decoded-volume gain of the worse half; the
larger half's RMS displacement and per-particle motion, the halves' agreement, the seeds with
warnings and the refused seeds; acceptance checks where a variant has one.

Runtime and trade-off. The defaults (box 64 at 1.5 Å, every 2nd trajectory frame, 20 VAE epochs and
2 refinement rounds instead of the engine's 60 and 8; ``--jobs 2 --threads 1`` on a 2-core CPU)
trade training length for coverage: the numbers are a lower bound of what the engine's defaults
reach.
Measured: one 1,000-particle run took 666 s at load ~7 on the shared 2-core CPU, so 5 seeds × 7
variants take several hours there (about 1.5–2 h on a quiet machine; docs/evaluation.md); for an
hour, run fewer seeds or variants. For the acceptance judgement with the engine's training run e.g.
``--variants snr001_n4000 --epochs 60 --refinement-rounds 8`` (hours). ``--quick``: box 32 at 3 Å,
200 particles, 7 frames, 3 epochs, 1 short refinement round, maps on for the first variant that
is not pure noise: every code path once in 10–20 s per run; the numbers mean nothing.

Exit status 0 when every run finished; 1 when a run failed (its error is in the JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.example_data import STRUCTURE, example_file

ROOT = Path(__file__).resolve().parents[1]
ADK = example_file(STRUCTURE).parent
STRUCTURE, TRAJECTORY = ADK / "adk_closed.pdb", ADK / "adk_dims.dcd"
NMP, LID = (30, 59), (122, 159)  # E. coli AdK residue numbering, as in adk_closed.pdb (1-214)


@dataclass(frozen=True)
class Variant:
    """One kind of simulated data set."""

    snr: float
    n_particles: int
    distribution: str = "uniform"
    envelope_bfactor: float = 0.0
    two_domains: bool = False
    pure_noise: bool = False
    one_conformation: bool = False  # every particle in the middle frame: there is no motion
    frame_step: int = 2  # simulate every k-th trajectory frame
    note: str = ""
    acceptance: str = ""  # "gap": worst half within 0.1 of its ceiling; "floor": worst half >= 0.9


VARIANTS = {
    "snr001_n4000": Variant(
        0.01, 4000, note="acceptance: worst half within 0.1 of the ceiling", acceptance="gap"
    ),
    "snr001_n1000": Variant(0.01, 1000),
    "snr005_n1000": Variant(0.05, 1000, note="acceptance: worst half >= 0.9", acceptance="floor"),
    "bimodal_snr001_n1000": Variant(0.01, 1000, distribution="bimodal"),
    "bfactor100_snr001_n1000": Variant(
        0.01,
        1000,
        envelope_bfactor=100.0,
        note="envelope B = 100 Å² on the signal, not in the STAR file",
    ),
    "two_domain_snr005_n1000": Variant(
        0.05,
        1000,
        two_domains=True,
        frame_step=10,
        note="LID and NMP move independently; ordering per domain",
    ),
    "pure_noise_n1000": Variant(
        0.01,
        1000,
        pure_noise=True,
        note="the snr001_n1000 STAR file with white-noise images: the run must refuse them",
    ),
    "one_conformation_snr001_n1000": Variant(
        0.01,
        1000,
        one_conformation=True,
        note="every particle in frame 48: any per-particle motion is invented",
    ),
}
MIDDLE_FRAME = 48
QUICK_SIZES = {"n_particles": 200, "frame_step": 14}


def _echo(text: str) -> None:
    print(text, flush=True)


def _atomic_json(path: Path, data) -> None:
    from napari_dynamight.engine.io.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------ one run


def _simulate(folder: Path, variant: Variant, seed: int, sizes: dict) -> dict:
    from napari_dynamight.engine.progress import run
    from napari_dynamight.engine.simulate import simulate

    started = time.perf_counter()
    summary = run(
        simulate(
            STRUCTURE,
            TRAJECTORY,
            output_directory=folder,
            n_particles=variant.n_particles,
            box=sizes["box"],
            pixel_size_angstrom=sizes["pixel_size"],
            snr=variant.snr,
            defocus_range_angstrom=(5000.0, 25000.0),
            seed=seed,
            frames=[MIDDLE_FRAME]
            if variant.one_conformation
            else list(range(0, 98, variant.frame_step)),
            frame_distribution=variant.distribution,
            envelope_bfactor_angstrom2=variant.envelope_bfactor,
            independent_domains=(NMP, LID) if variant.two_domains else None,
        )
    )
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "n_particles": summary.n_particles,
        "n_frames": len(summary.frames),
        "box": summary.box,
        "pixel_size_angstrom": summary.pixel_size_angstrom,
        "signal_variance": summary.signal_variance,
        "noise_variance": summary.noise_variance,
        "n_truth_maps": len(summary.frame_maps),
    }


def _pure_noise(folder: Path, noise_variance: float, seed: int) -> None:
    """Replace the stack by white noise of the given variance (same STAR file and ground truth)."""
    import mrcfile

    stack = folder / "particles.mrcs"
    with mrcfile.open(stack, header_only=True) as mrc:
        n, ny, nx = int(mrc.header.nz), int(mrc.header.ny), int(mrc.header.nx)
        voxel = float(mrc.voxel_size.x)
    rng = np.random.default_rng([seed, 12345])
    tmp = folder / ".noise.mrcs"
    with mrcfile.new_mmap(tmp, shape=(n, ny, nx), mrc_mode=2, overwrite=True) as out:
        out.set_image_stack()
        out.voxel_size = voxel
        for start in range(0, n, 512):
            count = min(512, n - start)
            out.data[start : start + count] = math.sqrt(noise_variance) * rng.standard_normal(
                (count, ny, nx), dtype=np.float32
            )
    os.replace(tmp, stack)


def _oracle_input(data: Path, bfactor: float) -> Path:
    """The data as the oracle sees it: with an envelope, a STAR file that records it as
    rlnCtfBfactor."""
    if not bfactor:
        return data
    from napari_dynamight.engine.data.particle_file import read_particles, write_particles

    folder = data.parent / "oracle_input"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for name in ("particles.mrcs", "ground_truth"):
        (folder / name).symlink_to((data / name).resolve())
    table = read_particles(data / "particles.star")
    table.particles["rlnCtfBfactor"] = float(bfactor)
    write_particles(folder / "particles.star", table)
    return folder


def _ceiling(
    data: Path, variant: Variant, noise_variance: float, settings: dict
) -> tuple[dict, dict]:
    """Ceiling summary and the per-half ceiling per motion coordinate ({'frame': {'1':, '2':}})."""
    from napari_dynamight.engine.evaluation import bayes_ceiling
    from napari_dynamight.engine.evaluation.robustness import domain_ceiling, prior_ceiling
    from napari_dynamight.engine.progress import run

    started = time.perf_counter()
    if variant.one_conformation:
        return {"skipped": "one conformation: there is no order to recover"}, {}
    if variant.two_domains:
        result = run(domain_ceiling(data, noise_variance=noise_variance))
        summary = result.summary()
        by_coordinate = {
            f"domain{d}": summary[f"domain{d}"]["abs_spearman_by_half"] for d in (1, 2)
        }
    else:
        step = 4 if variant.pure_noise else 1
        result = run(
            bayes_ceiling(
                _oracle_input(data, variant.envelope_bfactor),
                STRUCTURE,
                TRAJECTORY,
                frame_step=step,
                noise_variance=noise_variance,
            )
        )
        summary = result.summary()
        summary.pop("frames_evaluated")
        summary["frame_step"] = step
        by_coordinate = {"frame": summary["abs_spearman_by_half"]}
        if variant.distribution != "uniform":
            probabilities = json.loads((data / "ground_truth" / "simulation.json").read_text())[
                "frame_probabilities"
            ]
            summary["uniform_prior"] = {
                k: summary[k] for k in ("abs_spearman_posterior_mean", "abs_spearman_by_half")
            }
            with_prior = prior_ceiling(result, probabilities)
            summary |= with_prior
            by_coordinate = {"frame": with_prior["abs_spearman_by_half"]}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary, by_coordinate


def _train(data: Path, run_dir: Path, seed: int, settings: dict) -> dict:
    from napari_dynamight.engine.deformation.run import optimize_deformations
    from napari_dynamight.engine.deformation.settings import DeformationSettings
    from napari_dynamight.engine.progress import run

    if run_dir.exists():
        shutil.rmtree(run_dir)
    deformation = DeformationSettings(seed=seed, **settings["deformation_overrides"])
    started = time.perf_counter()
    result = run(
        optimize_deformations(
            data / "particles.star",
            data / "consensus.mrc",
            run_dir,
            settings=deformation,
            n_gaussians=settings.get("n_gaussians"),
            box=settings.get("train_box"),
            processes=settings.get("processes", 1),
        )
    )
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "epochs": int(result.epochs),
        "stopped_early": bool(result.stopped_early),
        "n_gaussians": int(result.n_gaussians),
        "train_box": int(result.train_box),
    }


def _coordinates(data: Path, variant: Variant) -> dict[str, np.ndarray]:
    """True motion coordinate(s) per particle."""
    import pandas as pd

    labels = pd.read_csv(data / "ground_truth" / "labels.csv")
    if variant.one_conformation:
        return {}
    if variant.two_domains:
        return {
            "domain1": labels["domain1_frame"].to_numpy(),
            "domain2": labels["domain2_frame"].to_numpy(),
        }
    return {"frame": labels["frame"].to_numpy()}


def _truth_map_names(data: Path, variant: Variant) -> np.ndarray:
    import pandas as pd

    labels = pd.read_csv(data / "ground_truth" / "labels.csv")
    if variant.two_domains:
        return np.array([f"state_{s:04d}.mrc" for s in labels["state"]])
    return np.array([f"frame_{f:03d}.mrc" for f in labels["frame"]])


def _metrics(
    data: Path, run_dir: Path, variant: Variant, ceiling: dict, seed: int, settings: dict
) -> dict:
    from napari_dynamight.engine.data.particle_file import read_particles
    from napari_dynamight.engine.deformation.decode import load_run
    from napari_dynamight.engine.evaluation import (
        decoded_vs_consensus,
        latent_frame_ordering,
        map_correlation,
    )
    from napari_dynamight.engine.gaussians import render_volume
    from napari_dynamight.engine.io.mrc import read_map

    columns = read_particles(run_dir / "particles.star").particles
    halves = columns["dmHalfSet"].to_numpy()
    validation = columns["dmValidation"].to_numpy().astype(bool)
    latents = np.load(run_dir / "latent_means.npy").astype(np.float64)
    second = run_dir / "latent_means_half2_validation.npy"
    replace_rows = (halves == 2) & validation
    if replace_rows.any():
        latents[replace_rows] = np.load(second)[replace_rows]
    coordinates = _coordinates(data, variant)
    displacement = columns["dmDisplacementAngstrom"].to_numpy()
    loaded = None if variant.pure_noise else load_run(run_dir)
    names = _truth_map_names(data, variant)
    consensus, voxel = read_map(data / "consensus.mrc")
    info = json.loads((run_dir / "run.json").read_text())
    train_nyquist = 2.0 * voxel * consensus.shape[0] / info["train_box"]
    cache: dict[str, np.ndarray] = {}

    def truth_map(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = read_map(data / "ground_truth" / name)[0]
        return cache[name]

    mask = None
    rng = np.random.default_rng([seed, 7])
    per_half = {}
    for half in (1, 2):
        rows = halves == half
        entry = {
            "n_particles": int(rows.sum()),
            "rms_displacement_angstrom": float(np.sqrt(np.mean(displacement[rows] ** 2))),
        }
        for name, truth in coordinates.items():
            ordering = latent_frame_ordering(latents[rows], truth[rows])
            ceil = ceiling[name][str(half)]
            entry[name] = {
                "best_abs_spearman": ordering.best,
                "best_component": ordering.best_component,
                "ceiling_abs_spearman": ceil,
                "gap_to_ceiling": ceil - ordering.best,
            }
        if loaded is not None:
            chosen = np.sort(
                rng.choice(
                    np.nonzero(rows)[0],
                    size=min(settings["n_decoded"], int(rows.sum())),
                    replace=False,
                )
            )
            volumes = loaded.decode_volumes(latents[chosen], half=half)
            truths = [truth_map(n) for n in names[chosen]]
            if mask is None:
                stacked = np.stack([truth_map(n) for n in np.unique(names)])
                mask = stacked.max(0) > 0.02 * stacked.max()
            versus = decoded_vs_consensus(volumes, truths, consensus, mask)
            banded = decoded_vs_consensus(volumes, truths, consensus, mask, (voxel, train_nyquist))
            # the half's trained reference, undeformed: what its position changes alone did
            reference = render_volume(loaded.reference(half), consensus.shape[0], voxel).numpy()
            undeformed = np.mean([map_correlation(reference, truth, mask) for truth in truths])
            entry["decoded_volumes"] = {
                "n_particles": len(chosen),
                "mean_cc_decoded": versus["mean_decoded"],
                "mean_cc_consensus": versus["mean_consensus"],
                "gain": versus["mean_decoded"] - versus["mean_consensus"],
                "fraction_decoded_better": versus["fraction_decoded_better"],
                # the same up to the training images' Nyquist, the finest detail the Gaussians'
                # motion was learnt from
                "train_nyquist_angstrom": train_nyquist,
                "gain_to_train_nyquist": banded["mean_decoded"] - banded["mean_consensus"],
                "fraction_decoded_better_to_train_nyquist": banded["fraction_decoded_better"],
                "reference_gain": float(undeformed) - versus["mean_consensus"],
            }
        per_half[str(half)] = entry
    return per_half


def _fsc_to_truth(path: Path, truths: list[Path]) -> dict:
    from napari_dynamight.engine.fourier import fsc, resolution_at
    from napari_dynamight.engine.io.mrc import read_map

    volume, voxel = read_map(path)
    flat = (volume.ravel() - volume.mean()) / volume.std()
    best, best_cc = None, -np.inf
    for truth in truths:
        t = read_map(truth)[0].ravel()
        cc = float(flat @ ((t - t.mean()) / t.std()) / flat.size)
        if cc > best_cc:
            best, best_cc = truth, cc
    frequency, curve = fsc(volume, read_map(best)[0], voxel)
    return {
        "best_truth_map": best.name,
        "correlation": best_cc,
        "resolution_fsc05_angstrom": float(resolution_at(frequency, curve, 0.5)),
        "fsc_area": float(np.mean(curve[1:])),
        "fsc": [round(float(v), 4) for v in curve],
    }


def _maps(data: Path, run_dir: Path, settings: dict) -> dict:
    """Deformed half maps and relion_reconstruct of each half's particles against the ground
    truth."""
    from napari_dynamight.engine.data.particle_file import read_particles, write_particles
    from napari_dynamight.engine.inverse.run import optimize_inverse_deformations
    from napari_dynamight.engine.inverse.settings import InverseSettings
    from napari_dynamight.engine.progress import run
    from napari_dynamight.engine.reconstruction.stage import reconstruct_run

    started = time.perf_counter()
    run(
        optimize_inverse_deformations(
            run_dir, settings=InverseSettings(epochs=settings["inverse_epochs"])
        )
    )
    inverse_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = run(reconstruct_run(run_dir, deformations=True, clusters=settings["clusters"]))
    deformed_seconds = time.perf_counter() - started
    truths = sorted((data / "ground_truth").glob("frame_*.mrc")) + sorted(
        (data / "ground_truth").glob("state_*.mrc")
    )
    halves = read_particles(run_dir / "particles.star").particles["dmHalfSet"].to_numpy()
    table = read_particles(data / "particles.star")
    out = {
        "inverse_epochs": settings["inverse_epochs"],
        "clusters": settings["clusters"],
        "seconds": {
            "inverse": round(inverse_seconds, 1),
            "deformed_reconstruction": round(deformed_seconds, 1),
        },
        "per_half": {},
    }
    relion = shutil.which("relion_reconstruct")
    for half in (1, 2):
        entry = {"deformed": _fsc_to_truth(result.half_maps[half - 1], truths)}
        if relion is None:
            entry["relion"] = "not measured: relion_reconstruct not found"
        else:
            star = data / f"bench_half{half}.star"
            write_particles(star, table, index=np.nonzero(halves == half)[0])
            target = data / f"relion_half{half}.mrc"
            started = time.perf_counter()
            subprocess.run(
                [relion, "--i", star.name, "--o", target.name, "--ctf"],
                cwd=data,
                check=True,
                capture_output=True,
            )
            out["seconds"][f"relion_half{half}"] = round(time.perf_counter() - started, 1)
            entry["relion"] = _fsc_to_truth(target, truths)
            entry["resolution_gain_angstrom"] = (
                entry["relion"]["resolution_fsc05_angstrom"]
                - entry["deformed"]["resolution_fsc05_angstrom"]
            )
            entry["fsc_area_gain"] = entry["deformed"]["fsc_area"] - entry["relion"]["fsc_area"]
        out["per_half"][str(half)] = entry
    return out


def run_one(name: str, seed: int, settings: dict) -> dict:
    """One (variant, seed): every stage, in WORK/name/seed_<seed>; the result is also saved
    there."""
    import torch

    torch.set_num_threads(settings["threads"])
    variant = Variant(**settings["variants"][name])
    folder = Path(settings["work_directory"]) / name / f"seed_{seed}"
    result_path = folder / "result.json"
    do_maps = name in settings["maps"]
    if settings["reuse"] and result_path.is_file():
        old = json.loads(result_path.read_text())
        wanted = _run_settings(settings, name)
        previous = None if "error" in old else old.get("run_settings")
        # a run with maps serves a call that does not ask for them
        if previous == wanted or (not do_maps and previous == wanted | {"maps": True}):
            old["reused"] = True
            measured = False  # finished before a metric was added: measure it now
            if _lacks_current_metrics(old):
                old["per_half"] = _metrics(
                    folder / "data", folder / "run", variant, _ceiling_of(old), seed, settings
                )
                measured = True
            if "per_half" in old and "gaussian_error_vs_motion_spearman" not in old:
                old["gaussian_error_vs_motion_spearman"] = _gaussian_error_vs_motion(
                    folder / "data", folder / "run", variant, settings["sizes"]
                )
                measured = True
            if measured:
                _atomic_json(result_path, old)
            return old
        if do_maps and "per_half" in old and previous == wanted | {"maps": False}:
            # the same training without maps: add them
            started = time.perf_counter()
            old["maps"] = _maps(folder / "data", folder / "run", settings)
            old |= {"run_settings": wanted, "maps_measured": True, "reused": True}
            old["maps_seconds"] = round(time.perf_counter() - started, 1)
            _atomic_json(result_path, old)
            return old
    started = time.perf_counter()
    out = {
        "variant": name,
        "seed": seed,
        "run_settings": _run_settings(settings, name),
        "maps_measured": do_maps,
    }
    try:
        data = folder / "data"
        shutil.rmtree(folder, ignore_errors=True)
        out["simulation"] = _simulate(data, variant, seed, settings["sizes"])
        noise_variance = out["simulation"]["noise_variance"]
        if variant.pure_noise:
            _pure_noise(data, noise_variance, seed)
        out["ceiling"], ceiling = _ceiling(data, variant, noise_variance, settings)
        try:
            out["training"] = _train(data, folder / "run", seed, settings)
        except InputError as refusal:
            if not variant.pure_noise:
                raise
            out["refused"] = str(refusal)  # the expected outcome: the images do not show the map
        else:
            out["watchdog"] = _watchdog(folder / "run")
            started_metrics = time.perf_counter()
            out["per_half"] = _metrics(data, folder / "run", variant, ceiling, seed, settings)
            out["gaussian_error_vs_motion_spearman"] = _gaussian_error_vs_motion(
                data, folder / "run", variant, settings["sizes"]
            )
            out["metrics_seconds"] = round(time.perf_counter() - started_metrics, 1)
            if do_maps:
                out["maps"] = _maps(data, folder / "run", settings)
    except Exception as error:  # recorded, never skipped silently
        out["error"] = f"{type(error).__name__}: {error}"
        out["traceback"] = traceback.format_exc()
    out["wall_seconds"] = round(time.perf_counter() - started, 1)
    _atomic_json(result_path, out)
    return out


def _gaussian_error_vs_motion(data: Path, run_dir: Path, variant: Variant, sizes: dict):
    """Spearman of the run's per-Gaussian error estimates (``gaussian_errors.csv``) with the true
    motion near each Gaussian (the RMS motion over the simulated frames of its 8 nearest atoms), as
    ``bench_deformations.py`` measures it; None where the motion is not one trajectory's frames
    (two domains) or there is none (one conformation)."""
    if (
        variant.two_domains
        or variant.one_conformation
        or not (run_dir / "gaussian_errors.csv").is_file()
    ):
        return None
    from napari_dynamight.engine.evaluation import gaussian_error_vs_motion

    positions = true_frame_positions(data, sizes["box"], sizes["pixel_size"])
    gaussians = np.loadtxt(run_dir / "gaussian_errors.csv", delimiter=",", skiprows=1)
    return gaussian_error_vs_motion(gaussians[:, :3], gaussians[:, 3], positions)


def true_frame_positions(data: Path, box: int, pixel_size: float) -> np.ndarray:
    """Atom positions (F, n, 3) Å of the simulated frames whose true maps ``data/ground_truth``
    holds (``frame_NNN.mrc``), from the bundled AdK trajectory."""
    from napari_dynamight.engine.example_data import STRUCTURE, example_file
    from napari_dynamight.engine.scene import build_scene

    adk = example_file(STRUCTURE).parent
    frames = sorted(int(p.stem.split("_")[1]) for p in (data / "ground_truth").glob("frame_*.mrc"))
    return build_scene(
        adk / "adk_closed.pdb", adk / "adk_dims.dcd", np.array(frames), box, pixel_size, None,
        False, "cpu",
    ).frame_positions.numpy()  # fmt: skip


def _lacks_current_metrics(result: dict) -> bool:
    """Whether a finished run's decoded-volume metrics predate the gain to the training Nyquist
    or the undeformed reference's gain."""
    halves = result.get("per_half", {}).values()
    return any(
        "decoded_volumes" in half
        and not {"gain_to_train_nyquist", "reference_gain"} <= set(half["decoded_volumes"])
        for half in halves
    )


def _ceiling_of(result: dict) -> dict:
    """The per-half ceilings by coordinate that a finished run was measured against."""
    ceiling: dict[str, dict[str, float]] = {}
    for half, entry in result["per_half"].items():
        for name, value in entry.items():
            if isinstance(value, dict) and "ceiling_abs_spearman" in value:
                ceiling.setdefault(name, {})[half] = value["ceiling_abs_spearman"]
    return ceiling


def _watchdog(run_dir: Path) -> dict:
    """The run's warnings, the two halves' agreement on the validation particles' motion (each
    half's mean deformation removed) and the amplitude fit's z-score per half, from its run.json."""
    record = json.loads((run_dir / "run.json").read_text())
    result = record["result"]
    return {
        "warnings": record["warnings"],
        "halves_agreement": result.get("halves_agreement"),
        "amplitude_z": result.get("amplitude_z"),
    }


def _run_settings(settings: dict, name: str) -> dict:
    return {
        "variant": settings["variants"][name],
        "sizes": settings["sizes"],
        "deformation_overrides": settings["deformation_overrides"],
        "train_box": settings["train_box"],
        # only when set, so that runs finished before the option existed are still reused
        **({} if settings.get("n_gaussians") is None else {"n_gaussians": settings["n_gaussians"]}),
        "n_decoded": settings["n_decoded"],
        "maps": name in settings["maps"],
        "inverse_epochs": settings["inverse_epochs"],
        "clusters": settings["clusters"],
    }


# ------------------------------------------------------------------------------------- aggregation


def _stats(values: list[float]) -> dict:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": float(np.min(values)),
        "mean": float(np.mean(values)),
        "max": float(np.max(values)),
    }


def aggregate(runs: list[dict], variants: dict) -> dict:
    out = {}
    for name in variants:
        mine = [r for r in runs if r["variant"] == name and "per_half" in r]
        refused = [r for r in runs if r["variant"] == name and "refused" in r]
        if not mine:
            out[name] = {
                "n_runs": 0,
                "refused_seeds": [r["seed"] for r in refused],
                "failed_seeds": [r["seed"] for r in runs if r["variant"] == name and "error" in r],
            }
            if refused:
                out[name]["refusal"] = refused[0]["refused"]
            continue
        coordinates = [
            k
            for k in mine[0]["per_half"]["1"]
            if isinstance(mine[0]["per_half"]["1"][k], dict)
            and "best_abs_spearman" in mine[0]["per_half"]["1"][k]
        ]
        entry = {
            "n_runs": len(mine),
            "seeds": [r["seed"] for r in mine],
            "failed_seeds": [r["seed"] for r in runs if r["variant"] == name and "error" in r],
            "refused_seeds": [r["seed"] for r in refused],
            "seeds_with_warnings": [
                r["seed"] for r in mine if r.get("watchdog", {}).get("warnings")
            ],
        }
        for c in coordinates:
            worst = [min(r["per_half"][h][c]["best_abs_spearman"] for h in "12") for r in mine]
            gap = [max(r["per_half"][h][c]["gap_to_ceiling"] for h in "12") for r in mine]
            ceiling = [min(r["per_half"][h][c]["ceiling_abs_spearman"] for h in "12") for r in mine]
            entry[c] = {
                "worst_half_abs_spearman_per_seed": worst,
                "worst_half_abs_spearman": _stats(worst),
                "worst_half_gap_to_ceiling_per_seed": gap,
                "worst_half_gap_to_ceiling": _stats(gap),
                "lower_half_ceiling": _stats(ceiling),
            }
        for key, field in (
            ("gain", "decoded_gain_worse_half"),
            ("gain_to_train_nyquist", "decoded_gain_to_train_nyquist_worse_half"),
        ):
            worse = [
                min(r["per_half"][h]["decoded_volumes"][key] for h in "12")
                for r in mine
                if key in r["per_half"]["1"].get("decoded_volumes", {})
            ]
            if worse:
                entry[field] = _stats(worse)
        rms = [max(r["per_half"][h]["rms_displacement_angstrom"] for h in "12") for r in mine]
        entry["rms_displacement_larger_half_angstrom"] = _stats(rms)
        errors = [r.get("gaussian_error_vs_motion_spearman") for r in mine]
        if any(e is not None for e in errors):
            entry["gaussian_error_vs_motion_spearman"] = _stats(errors)
        agreements = [r["watchdog"]["halves_agreement"] for r in mine if "watchdog" in r]
        agreements = [a for a in agreements if a is not None]
        if agreements:
            entry["halves_agreement"] = _stats([a["agreement"] for a in agreements])
            entry["per_particle_motion_larger_half_angstrom"] = _stats(
                [max(a["motion_half1_angstrom"], a["motion_half2_angstrom"]) for a in agreements]
            )
        maps = [r["maps"] for r in mine if "maps" in r]
        if maps:

            def worst_map(key, field, pick):
                return [
                    pick(m["per_half"][h][key][field] for h in "12")
                    for m in maps  # noqa: B023 (called in this iteration)
                    if isinstance(m["per_half"]["1"].get(key), dict)
                ]

            entry["maps"] = {
                "deformed_worse_half_fsc05_angstrom": _stats(
                    worst_map("deformed", "resolution_fsc05_angstrom", max)
                ),
                "relion_worse_half_fsc05_angstrom": _stats(
                    worst_map("relion", "resolution_fsc05_angstrom", max)
                ),
                "deformed_worse_half_fsc_area": _stats(worst_map("deformed", "fsc_area", min)),
                "relion_worse_half_fsc_area": _stats(worst_map("relion", "fsc_area", min)),
            }
        variant = variants[name]
        if "frame" in entry and variant["acceptance"] == "gap":
            gap_max = entry["frame"]["worst_half_gap_to_ceiling"]["max"]
            entry["acceptance"] = {
                "criterion": "every seed: worst half within 0.1 of its ceiling",
                "largest_gap": gap_max,
                "met": bool(gap_max <= 0.1),
            }
        if "frame" in entry and variant["acceptance"] == "floor":
            low = entry["frame"]["worst_half_abs_spearman"]["min"]
            entry["acceptance"] = {
                "criterion": "every seed: worst half |Spearman| >= 0.9",
                "lowest_worst_half": low,
                "met": bool(low >= 0.9),
            }
        out[name] = entry
    return out


def plot(path: Path, runs: list[dict], variants: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(variants)
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False)
    for axis, name in zip(axes.ravel(), names):
        mine = sorted(
            (r for r in runs if r["variant"] == name and "per_half" in r), key=lambda r: r["seed"]
        )
        axis.set_title(name, fontsize=8)
        axis.set_ylim(0, 1.02)
        axis.set_xlabel("seed")
        if not mine:
            continue
        coordinates = [
            k
            for k in mine[0]["per_half"]["1"]
            if isinstance(mine[0]["per_half"]["1"][k], dict)
            and "best_abs_spearman" in mine[0]["per_half"]["1"][k]
        ]
        seeds = [r["seed"] for r in mine]
        for c, (colour, marker) in zip(coordinates, (("tab:blue", "o"), ("tab:orange", "s"))):
            worst = [min(r["per_half"][h][c]["best_abs_spearman"] for h in "12") for r in mine]
            ceiling = [min(r["per_half"][h][c]["ceiling_abs_spearman"] for h in "12") for r in mine]
            axis.plot(seeds, worst, marker=marker, color=colour, ls="", label=f"{c}: worst half")
            axis.plot(seeds, ceiling, marker="_", ms=14, color=colour, ls="", label=f"{c}: ceiling")
        axis.legend(fontsize=6)
    for axis in axes.ravel()[len(names) :]:
        axis.axis("off")
    axes[0, 0].set_ylabel("|Spearman| best latent PC vs true")
    figure.tight_layout()
    from napari_dynamight.engine.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)


# ------------------------------------------------------------------------------------------ main


def _arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results" / "robustness.json"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        metavar="NAME",
        help=f"variants to run (default all): {', '.join(VARIANTS)}",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=None, help="VAE epochs (default 20; quick 3)")
    parser.add_argument(
        "--refinement-rounds", type=int, default=None, help="EM rounds (default 2; quick 1)"
    )
    parser.add_argument(
        "--decoder", default=None, help="deformation network (default: the engine's)"
    )
    parser.add_argument(
        "--latent-dim",
        type=int,
        default=None,
        metavar="D",
        help="latent dimension (default: the engine's)",
    )
    parser.add_argument(
        "--kl-weight",
        type=float,
        default=None,
        metavar="W",
        help="weight of the encoder's KL term (default: the engine's)",
    )
    parser.add_argument(
        "--positional-frequencies",
        type=int,
        default=None,
        metavar="F",
        help="positional-encoding frequencies of the decoder (default: the engine's)",
    )
    parser.add_argument(
        "--regularisation-ratio",
        type=float,
        default=None,
        metavar="R",
        help="stiffness of the distance regulariser relative to the images' "
        "(default: the engine's)",
    )
    parser.add_argument(
        "--position-learning-rate",
        type=float,
        default=None,
        metavar="Å",
        help="learning rate of the reference Gaussians' positions (default: the engine's)",
    )
    parser.add_argument(
        "--reference-smoothing",
        type=float,
        default=None,
        metavar="S",
        help="width of the kernel that smooths the reference positions' changes, in training "
        "pixels; 0: not smoothed (default: the engine's)",
    )
    parser.add_argument(
        "--reference-update-every",
        type=int,
        default=None,
        metavar="E",
        help="network-training epochs between reference replacements; more than the run has: "
        "none (default: the engine's)",
    )
    parser.add_argument(
        "--n-gaussians",
        type=int,
        default=None,
        metavar="N",
        help="Gaussians of the consensus model (default: the engine's, 2 per residue from the map)",
    )
    parser.add_argument(
        "--train-box",
        type=int,
        default=None,
        metavar="PX",
        help="training box (default: the engine's, about 3 Å/px)",
    )
    parser.add_argument(
        "--exact-posteriors",
        action="store_true",
        help="evaluate every candidate exactly in the E-steps and the final posterior "
        "(the engine's default)",
    )
    parser.add_argument(
        "--screened-posteriors",
        action="store_true",
        help="screen the candidates in the E-steps and the final posterior "
        "(exact_posteriors=False)",
    )
    parser.add_argument(
        "--maps",
        nargs="*",
        default=None,
        metavar="NAME",
        help="variants whose half maps are reconstructed and compared with relion_reconstruct "
        "(expensive; default none, quick: the first variant)",
    )
    parser.add_argument(
        "--inverse-epochs", type=int, default=None, help="inverse-deformation epochs (default 30)"
    )
    parser.add_argument(
        "--clusters", type=int, default=32, help="latent clusters for the deformed backprojection"
    )
    parser.add_argument(
        "--n-decoded", type=int, default=None, help="decoded volumes per half (default 30)"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs in parallel processes (default 1)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="processes per training run, the half sets side by side, sharing the run's threads "
        "(default 1; --threads 2 --processes 2 computes what --threads 1 does, in about half the "
        "time)",
    )
    parser.add_argument(
        "--work-directory",
        type=Path,
        default=None,
        help="where simulations and runs go (default: a folder in the system temp dir)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse finished runs with the same settings (a run trained without --maps for its "
        "variant gets its maps added)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny data, few epochs: every code path once"
    )
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants + (args.maps or []) if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")
    return args


def settings_from(args) -> dict:
    import tempfile

    quick = args.quick
    variants = {}
    for name in args.variants:
        variant = VARIANTS[name]
        if quick:
            variant = replace(
                variant,
                n_particles=QUICK_SIZES["n_particles"],
                frame_step=33 if variant.two_domains else QUICK_SIZES["frame_step"],
            )
        variants[name] = asdict(variant)
    overrides = {
        "epochs": args.epochs or (3 if quick else 20),
        "refinement_rounds": args.refinement_rounds
        if args.refinement_rounds is not None
        else (1 if quick else 2),
    }
    if args.decoder is not None:
        overrides["decoder"] = args.decoder
    if args.latent_dim is not None:
        overrides["latent_dim"] = args.latent_dim
    if args.kl_weight is not None:
        overrides["kl_weight"] = args.kl_weight
    if args.positional_frequencies is not None:
        overrides["n_frequencies"] = args.positional_frequencies
    if args.regularisation_ratio is not None:
        overrides["regularisation_ratio"] = args.regularisation_ratio
    if args.position_learning_rate is not None:
        overrides["learning_rate_positions_angstrom"] = args.position_learning_rate
    if args.reference_smoothing is not None:
        overrides["reference_smoothing"] = args.reference_smoothing
    if args.reference_update_every is not None:
        overrides["reference_update_every"] = args.reference_update_every
    if args.exact_posteriors:
        overrides["exact_posteriors"] = True
    if args.screened_posteriors:
        overrides["exact_posteriors"] = False
    if quick:
        overrides |= {"refinement_epochs": 1, "posterior_candidates": 16, "batch_size": 32}
    work = args.work_directory or Path(tempfile.gettempdir()) / "napari_dynamight_bench_robustness"
    return {
        "quick": quick,
        "variants": variants,
        "seeds": args.seeds,
        "sizes": {"box": 32, "pixel_size": 3.0} if quick else {"box": 64, "pixel_size": 1.5},
        "deformation_overrides": overrides,
        "train_box": args.train_box,
        "n_gaussians": args.n_gaussians,
        "maps": list(args.maps)
        if args.maps is not None
        else ([v for v in args.variants if not VARIANTS[v].pure_noise][:1] if quick else []),
        "inverse_epochs": args.inverse_epochs or (2 if quick else 30),
        "clusters": 4 if quick and args.clusters == 32 else args.clusters,
        "n_decoded": args.n_decoded or (4 if quick else 30),
        "jobs": args.jobs,
        "threads": args.threads,
        "processes": args.processes,
        "work_directory": str(work),
        "reuse": args.reuse,
    }


def main(argv=None) -> int:
    args = _arguments(argv)
    settings = settings_from(args)
    import torch

    from napari_dynamight.engine.deformation.settings import DeformationSettings

    torch.set_num_threads(settings["threads"])
    deformation = DeformationSettings(**settings["deformation_overrides"]).to_dict()
    deformation.pop("seed", None)
    report = {
        "benchmark": "robustness: worst half set over seeds and data variants (simulated AdK)",
        "command": _command(argv if argv is not None else sys.argv[1:], args),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.system(),
        },
        "torch": torch.__version__,
        "threads_per_run": settings["threads"],
        "processes_per_run": settings["processes"],
        "jobs": settings["jobs"],
        "quick": settings["quick"],
        "sizes": settings["sizes"],
        "deformation_settings": deformation,
        "deformation_overrides": settings["deformation_overrides"],
        "train_box": settings["train_box"] or "the engine's",
        "variants": settings["variants"],
        "variant_notes": {k: VARIANTS[k].note for k in settings["variants"]},
        "seeds": settings["seeds"],
        "maps_measured_for": settings["maps"],
        "maps_note": (
            "deformed half maps vs relion_reconstruct of the same half's particles, only for "
            "the variants in maps_measured_for (expensive)"
        ),
        "work_directory": "set by --work-directory" if args.work_directory else "system temp dir",
        "runs": [],
    }
    tasks = [(name, seed) for name in settings["variants"] for seed in settings["seeds"]]
    started = time.perf_counter()

    def record(result: dict) -> None:
        report["runs"].append(result)
        report["runs"].sort(
            key=lambda r: (list(settings["variants"]).index(r["variant"]), r["seed"])
        )
        report["aggregate"] = aggregate(report["runs"], settings["variants"])
        report["total_wall_seconds"] = round(time.perf_counter() - started, 1)
        _atomic_json(args.output, _public(report, Path(settings["work_directory"])))
        status = result.get("error", "ok")
        _echo(f"{result['variant']} seed {result['seed']}: {status} in {result['wall_seconds']} s")

    if settings["jobs"] == 1:
        for name, seed in tasks:
            record(run_one(name, seed, settings))
    else:
        import multiprocessing

        with ProcessPoolExecutor(
            settings["jobs"], mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            futures = [pool.submit(run_one, name, seed, settings) for name, seed in tasks]
            for future in futures:
                record(future.result())
    plot(args.output.with_suffix(".png"), report["runs"], settings["variants"])
    _atomic_json(args.output, _public(report, Path(settings["work_directory"])))
    for name, entry in report["aggregate"].items():
        parts = [f"{name}:"]
        for c in ("frame", "domain1", "domain2"):
            if c in entry:
                parts.append(
                    f"{c} worst-half |rho| min {entry[c]['worst_half_abs_spearman']['min']:.3f}, "
                    f"largest gap {entry[c]['worst_half_gap_to_ceiling']['max']:.3f}"
                )
        if "rms_displacement_larger_half_angstrom" in entry and entry["n_runs"]:
            parts.append(
                "RMS displacement max "
                f"{entry['rms_displacement_larger_half_angstrom']['max']:.2f} Å"
            )
        _echo(" ".join(parts))
    return 1 if any("error" in r for r in report["runs"]) else 0


def _command(argv: list[str], args) -> str:
    """The command line with machine-specific folders replaced by OUTPUT_DIR and WORK."""
    words = []
    for word in argv:
        if args.work_directory is not None and word == str(args.work_directory):
            word = "WORK"
        elif word == str(args.output):
            word = f"OUTPUT_DIR/{args.output.name}"
        words.append(word)
    return " ".join(["bench/bench_robustness.py", *words])


def _public(report: dict, work: Path) -> dict:
    """The report without machine-specific paths: the repository's prefix dropped, the work
    directory written WORK (tracebacks and messages such as a refusal name files)."""
    text = json.dumps(report)
    for prefix, name in ((str(work), "WORK"), (str(ROOT) + os.sep, "")):
        text = text.replace(json.dumps(prefix)[1:-1], name)
    return json.loads(text)


if __name__ == "__main__":
    sys.exit(main())
