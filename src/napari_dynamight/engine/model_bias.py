"""The model-bias control of the atomic-model prior.

With the prior, the deformations have enough freedom to move a particle's density onto the model,
so a deformed reconstruction can reproduce the model's features, wrong ones included. The control
measures whether that happens on the run's own data: it makes the model deliberately wrong in one
region (the region's residues moved by a few Å, or its side chains threaded one residue on: a
register error), trains the deformations again with that model and the run's settings, trains the
inverse deformations and reconstructs, and measures how much of the wrong feature the new map
reproduces.

The measure, for a map: the region's Gaussians are slid from their right positions (t = 0) to the
wrong ones (t = 1), t from -0.5 to 1.5; the rendered model (every other Gaussian in place) is
correlated with the map inside the region (voxels within ``MASK_ANGSTROM`` of the region's
Gaussians, right or wrong), and the best t is the map's placement of the region. The score is that t
minus the consensus map's (a map no model touched): 0 when the map shows the region where the data
put it, 1 when it shows the wrong model's region. The report gives the score of the map made with
the wrong model and of the run's own map (the right model, or the model the user trusts), and flags
bias when the wrong model's map reproduces more than ``BIAS_THRESHOLD`` of the wrong feature: then
features that only the model supports cannot be trusted in maps made with the prior on these data.
The threshold, 0.3, is three times the largest score a run with the right model reached on the AdK
benchmark (0.10, in its deformed map or its decoded volumes) and twice the measure's tolerance on
maps of known placement (0.15); the wrong models there scored 0.35–0.75 in their decoded volumes.

The same measure is taken on the decoded volumes (the mean of ``DECODED_PARTICLES`` particles'
volumes, each decoded by its own half at its latent): with the prior the reference stays the model,
so a wrong feature the decoders do not correct is in every decoded volume, even where the deformed
map (made from the images) shows the data's; the report flags either above the threshold.

The control's options are :class:`BiasCheckSettings` (the ``model-bias`` command's flags and the
Deformations widget's "bias check" controls). A run trained with the prior ends with the control
(:func:`optimize_deformations_checked`, used by ``optimize-deformations`` and the widget) unless its
``bias_check`` setting is off, so every map made with the prior has its report.

The run's own deformed map is made first if it is missing (its inverse deformations and deformed
reconstruction, in their usual places); the wrong model and its run live in ``RUN/model_bias/``, the
report in ``RUN/model_bias.json`` (``run_folder.RunFolder``).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from . import distributed
from .atomic_model import (
    CoarseModel,
    Region,
    coarse_grain,
    gaussian_model,
    write_moved_structure,
    write_register_shifted_structure,
)
from .deformation.run import DeformationResult, optimize_deformations
from .deformation.settings import DeformationSettings
from .errors import InputError
from .gaussians import render_volume
from .inverse.run import optimize_inverse_deformations
from .inverse.settings import InverseSettings
from .io.atomic import atomic_path
from .io.mrc import read_map, read_map_origin
from .progress import Progress, ProgressGenerator
from .reconstruction.stage import reconstruct_run
from .run_folder import RunFolder
from .run_identity import check_finished_run
from .settings_record import SettingsRecord, option
from .statistics import map_correlation

MODES = ("move", "register")
BIAS_THRESHOLD = 0.3
MASK_ANGSTROM = 5.0
PLACEMENTS = np.round(np.arange(-0.5, 1.5001, 0.05), 2)
AUTOMATIC_RESIDUES = 12
DECODED_PARTICLES = 64


@dataclass(frozen=True)
class Placement:
    """Where a map puts the region: the best t (0 right, 1 wrong), the correlations at 0 and 1."""

    t: float
    correlation_right: float
    correlation_wrong: float

    def to_dict(self) -> dict:
        return {
            "t": self.t,
            "correlation_right": self.correlation_right,
            "correlation_wrong": self.correlation_wrong,
        }


def region_placement(
    volume: np.ndarray,
    voxel_size_angstrom: float,
    right: CoarseModel,
    wrong: CoarseModel,
    origin_angstrom=(0.0, 0.0, 0.0),
) -> Placement:
    """The map's placement of the Gaussians that differ between ``right`` and ``wrong`` (module
    docstring)."""
    box = volume.shape[0]
    model = gaussian_model(right, box, voxel_size_angstrom, origin_angstrom).to(dtype=torch.float64)
    start = model.positions_angstrom.clone()
    end = torch.as_tensor(
        gaussian_model(wrong, box, voxel_size_angstrom, origin_angstrom).positions_angstrom,
        dtype=torch.float64,
    )
    moved = (end - start).norm(dim=1) > 1e-3
    if not moved.any():
        raise InputError(
            "the wrong model equals the right one; choose a region and a shift that move something"
        )
    points = torch.cat([start[moved], end[moved]]).numpy()
    grid = (
        np.indices((box,) * 3).reshape(3, -1).T[:, ::-1] - box // 2
    ) * voxel_size_angstrom  # x y z
    near, _ = cKDTree(points).query(grid, distance_upper_bound=MASK_ANGSTROM)
    mask = np.isfinite(near).reshape((box,) * 3)
    scores = []
    for t in PLACEMENTS:
        model.positions_angstrom = torch.where(
            moved.view(-1, 1), start + float(t) * (end - start), start
        )
        scores.append(
            map_correlation(render_volume(model, box, voxel_size_angstrom).numpy(), volume, mask)
        )
    scores = np.array(scores)
    at = {float(t): s for t, s in zip(PLACEMENTS, scores, strict=True)}
    return Placement(
        float(PLACEMENTS[int(np.argmax(scores))]) + 0.0, float(at[0.0]), float(at[1.0])
    )


def automatic_region(model: CoarseModel, length: int = AUTOMATIC_RESIDUES) -> Region:
    """``length`` consecutive residues of one chain, the most central ones (closest on average to
    the model's centre): the core, where a map is usually best and moves least."""
    centre = np.average(model.positions_angstrom, axis=0, weights=model.amplitudes)
    cost = np.linalg.norm(model.positions_angstrom - centre, axis=1)
    per_residue = np.bincount(model.residue, weights=cost) / np.bincount(model.residue)
    best, best_cost = None, np.inf
    for start in range(len(model.residues) - length + 1):
        window = model.residues[start : start + length]
        chain = window[0][0]
        if any(r[0] != chain for r in window) or window[-1][1] - window[0][1] != length - 1:
            continue
        value = per_residue[start : start + length].mean()
        if value < best_cost:
            best, best_cost = Region(chain, window[0][1], window[-1][1]), value
    if best is None:
        raise InputError(
            f"{model.path}: no {length} consecutive residues in one chain; choose --residues"
        )
    return best


def outward_direction(model: CoarseModel, region: Region) -> np.ndarray:
    """The unit vector from the model's centre to the region's centre (x if they coincide)."""
    inside = np.array(
        [region.contains(model.residues[r][0], model.residues[r][1]) for r in model.residue]
    )
    if not inside.any():
        raise InputError(
            f"{model.path}: no residue in {region}; give residues of the model (CHAIN:FIRST-LAST)"
        )
    centre = np.average(model.positions_angstrom, axis=0, weights=model.amplitudes)
    vector = model.positions_angstrom[inside].mean(axis=0) - centre
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 1.0 else np.array([1.0, 0.0, 0.0])


@dataclass(frozen=True)
class BiasCheckSettings(SettingsRecord):
    """The control's options, declared once: the ``model-bias`` command's flags and the
    Deformations widget's "bias check" controls are made from them."""

    residues: str | None = option(
        None,
        "the region made wrong, e.g. A:100-111",
        auto=f"the {AUTOMATIC_RESIDUES} consecutive residues closest to the model's centre",
        metavar="CHAIN:FIRST-LAST",
        label="bias check: residues",
    )
    mode: str = option(
        "move",
        "move the region's residues, or shift its side chains by one residue register",
        choices=MODES,
        label="bias check: wrong model",
    )
    shift: float = option(
        5.0,
        "how far --mode move moves the region, away from the model's centre",
        minimum=0.0,
        exclusive_minimum=True,
        maximum=50.0,
        unit="Å",
        step=0.5,
        label="bias check: shift (move)",
    )
    epochs: int | None = option(
        None,
        "epochs of the rerun with the wrong model",
        auto="the run's",
        minimum=1,
        maximum=100_000,
        metavar="E",
        label="bias check: epochs",
    )
    inverse_epochs: int = option(
        10,
        "inverse-deformation epochs of each deformed map the control makes",
        minimum=1,
        maximum=100_000,
        metavar="E",
        label="bias check: inverse epochs",
    )

    def region(self) -> Region | None:
        """The region asked for (None: automatic); InputError naming ``--residues`` if malformed."""
        text = (self.residues or "").strip()
        return Region.parse(text) if text else None

    def check(self) -> None:
        """One-line InputError for a value outside its limits or a malformed region."""
        self.check_limits()
        self.region()


@dataclass
class BiasReport:
    path: Path
    report: dict

    @property
    def biased(self) -> bool:
        return bool(self.report["biased"])


def _deformed_map(run: Path, inverse_epochs: int, device) -> ProgressGenerator[Path]:
    """The run's deformed full map, made (inverse deformations, then reconstruction) if missing."""
    folder = RunFolder(run)
    full = folder.reconstruction(True).full_map
    if full.is_file():
        return full
    if not folder.inverse.final.is_file():
        yield from optimize_inverse_deformations(
            run, settings=InverseSettings(epochs=inverse_epochs), device=device
        )
    yield from reconstruct_run(run, deformations=True, device=device)
    return full


def mean_decoded_volume(
    run: Path, n_particles: int = DECODED_PARTICLES, device="cpu"
) -> np.ndarray:
    """The mean of ``n_particles`` decoded volumes (an even spread over the particles), each decoded
    at the particle's latent by the half set that gave it."""
    from .deformation.decode import load_run

    decoder = load_run(run, device)
    latents = np.load(RunFolder(run).latents)
    rows = np.unique(np.linspace(0, len(latents) - 1, min(n_particles, len(latents))).astype(int))
    halves = np.array([decoder.half_of(row) for row in rows])
    total = 0.0
    for half in (1, 2):
        chosen = rows[halves == half]
        if len(chosen):
            total = total + decoder.decode_volumes(latents[chosen], half=half).sum(axis=0)
    return total / len(rows)


def model_bias(
    run_directory, control: BiasCheckSettings | None = None, *, device="cpu"
) -> ProgressGenerator[BiasReport]:
    """Run the control on a finished run made with ``--atomic-model`` (module docstring) with the
    options ``control`` (default: :class:`BiasCheckSettings`' defaults); write and return the
    report."""
    started = time.perf_counter()
    control = control or BiasCheckSettings()
    control.check()
    region, mode, epochs = control.region(), control.mode, control.epochs
    shift_angstrom, inverse_epochs = control.shift, control.inverse_epochs
    folder = RunFolder(run_directory)
    info = check_finished_run(folder.path)
    settings = DeformationSettings.from_dict(info.get("settings") or {})
    if not settings.atomic_model:
        raise InputError(
            f"{folder.path}: was made without --atomic-model; the model-bias control checks runs "
            "made with the atomic-model prior"
        )
    right = coarse_grain(settings.atomic_model)
    if region is None:
        region = automatic_region(right)
    work = folder.model_bias_folder
    work.mkdir(parents=True, exist_ok=True)
    wrong_path = work / "wrong_model.pdb"
    if mode == "move":
        shift = outward_direction(right, region) * float(shift_angstrom)
        write_moved_structure(settings.atomic_model, wrong_path, shift, region)
    else:
        shift = None
        write_register_shifted_structure(settings.atomic_model, wrong_path, region)
    wrong = coarse_grain(wrong_path)
    if wrong.n_gaussians != right.n_gaussians:
        raise InputError(
            f"{wrong_path}: the wrong model has another number of Gaussians; choose another region"
        )
    yield Progress(
        "model bias",
        0,
        None,
        message=f"wrong model: residues {region} {mode}"
        + (f" by {shift_angstrom:g} Å" if shift is not None else ""),
    )

    own_map = yield from _deformed_map(folder.path, inverse_epochs, device)
    wrong_run = work / "run"
    if wrong_run.exists():
        shutil.rmtree(wrong_run)
    rerun = replace(
        settings,
        atomic_model=str(wrong_path.resolve()),
        epochs=epochs or settings.epochs,
        bias_check=False,
    )
    yield from optimize_deformations(
        info["particles"],
        info["consensus"],
        wrong_run,
        settings=rerun,
        mask=info.get("mask"),
        box=info.get("train_box"),
        data_root=info.get("data_root"),
        device=device,
    )
    wrong_map = yield from _deformed_map(wrong_run, inverse_epochs, device)

    origin = read_map_origin(info["consensus"])
    placements = {}
    for name, path in (
        ("consensus", Path(info["consensus"])),
        ("run", own_map),
        ("wrong_model_run", wrong_map),
    ):
        volume, voxel = read_map(path)
        placements[name] = region_placement(volume, voxel, right, wrong, origin)
        yield Progress(
            "model bias", len(placements), 3, message=f"{name}: t = {placements[name].t:.2f}"
        )
    decoded = {}
    for name, path in (("run", folder.path), ("wrong_model_run", wrong_run)):
        volume = mean_decoded_volume(path, device=device)
        decoded[name] = region_placement(volume, voxel, right, wrong, origin)
        yield Progress("model bias", 3, 3, message=f"{name} decoded: t = {decoded[name].t:.2f}")
    reference = placements["consensus"].t
    score_wrong = placements["wrong_model_run"].t - reference
    score_right = placements["run"].t - reference
    decoded_wrong = decoded["wrong_model_run"].t - reference
    biased_map = bool(score_wrong > BIAS_THRESHOLD)
    biased_decoded = bool(decoded_wrong > BIAS_THRESHOLD)
    report = {
        "run": str(folder.path.resolve()),
        "atomic_model": settings.atomic_model,
        "wrong_model": str(wrong_path.resolve()),
        "mode": mode,
        "region": str(region),
        "shift_angstrom": None if shift is None else [float(v) for v in shift],
        "n_gaussians_changed": int(
            (
                np.linalg.norm(wrong.positions_angstrom - right.positions_angstrom, axis=1) > 1e-3
            ).sum()
        ),
        "epochs": rerun.epochs,
        "inverse_epochs": inverse_epochs,
        "maps": {
            "consensus": str(Path(info["consensus"]).resolve()),
            "run": str(own_map.resolve()),
            "wrong_model_run": str(wrong_map.resolve()),
        },
        "placements": {name: p.to_dict() for name, p in placements.items()},
        "score_wrong_model": score_wrong,
        "score_run": score_right,
        "reproduced_percent": int(round(100 * score_wrong)),
        "decoded_particles": DECODED_PARTICLES,
        "placements_decoded": {name: p.to_dict() for name, p in decoded.items()},
        "score_wrong_model_decoded": decoded_wrong,
        "score_run_decoded": decoded["run"].t - reference,
        "reproduced_percent_decoded": int(round(100 * decoded_wrong)),
        "threshold": BIAS_THRESHOLD,
        "biased_map": biased_map,
        "biased_decoded": biased_decoded,
        "biased": biased_map or biased_decoded,
        "seconds": time.perf_counter() - started,
    }
    with atomic_path(folder.model_bias_report) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return BiasReport(folder.model_bias_report, report)


def optimize_deformations_checked(
    particles,
    consensus,
    output_directory,
    *,
    settings: DeformationSettings | None = None,
    control: BiasCheckSettings | None = None,
    device="cpu",
    **options,
) -> ProgressGenerator[DeformationResult | None]:
    """``optimize_deformations`` (same arguments), then, for a run made with the atomic-model prior
    and ``settings.bias_check`` on, the model-bias control with ``control``: the run's report is
    written as the run ends. The result's ``bias_report`` holds it (None without the control).
    Under ``torchrun`` the control is left to ``napari-dynamight model-bias`` (one process), with a
    warning."""
    settings = settings or DeformationSettings()
    if control is not None:
        control.check()  # before the training, not after it
    result = yield from optimize_deformations(
        particles, consensus, output_directory, settings=settings, device=device, **options
    )
    if result is None or not (settings.atomic_model and settings.bias_check):
        return result
    if distributed.current().is_distributed:
        result.warnings.append(
            f"the model-bias control does not run under torchrun: run napari-dynamight "
            f"model-bias {result.run_directory} in one process"
        )
        return result
    result.bias_report = yield from model_bias(result.run_directory, control, device=device)
    return result
