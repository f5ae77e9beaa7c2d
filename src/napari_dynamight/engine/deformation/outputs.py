"""The files a deformation run leaves in its run directory, each written atomically (the paths:
``engine.run_folder.RunFolder``).

The files, by their name in ``RunFolder``:

- ``latents``: (N, D) float32, input STAR row order; each particle by its own half's encoder,
  validation particles by half 1's
- ``latents_half2``: (N, D) float32: half 2's codes of the validation particles, NaN elsewhere
- ``particles``: the input STAR with every column kept, plus ``dmLatent1..D``, ``dmHalfSet``,
  ``dmValidation``, ``dmErrorAngstrom``, ``dmDisplacementAngstrom`` (a cryoSPARC input: its RELION
  columns)
- ``input_records``: a cryoSPARC input only: its original records, every field and ``uid``
  (exports back to cryoSPARC)
- ``half_model(h)`` / ``half_map(h)``: each half's final reference Gaussian model
  (``engine.consensus.load_model``), and rendered at the consensus box
- ``gaussian_errors``: per Gaussian of half 1's reference: position (Å) and error estimate (Å)
- ``loss_log`` / ``loss_plot``: one JSON line per epoch and half: mode, data, regularisation, KL,
  λ and the watchdog's fields (``watchdog.py``); and their plot
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..consensus import save_model
from ..data.particle_file import write_particles
from ..data.particles import ParticleTable
from ..gaussians import GaussianModel, render_volume
from ..io.atomic import atomic_path, save_npy
from ..io.figure import save_figure
from ..io.mrc import write_map
from ..run_folder import RunFolder
from .validation import ErrorEstimates


def own_half_latents(
    estimates: ErrorEstimates, halves: np.ndarray, validation: np.ndarray
) -> np.ndarray:
    """Each particle's code from its own half's encoder; validation particles from half 1's."""
    first, second = estimates.latents
    use_second = (halves == 2) & ~validation
    return np.where(use_second[:, None], second, first).astype(np.float32)


def write_latents(
    run: Path, estimates: ErrorEstimates, halves: np.ndarray, validation: np.ndarray
) -> np.ndarray:
    latents = own_half_latents(estimates, halves, validation)
    save_npy(RunFolder(run).latents, latents)
    second = np.full_like(latents, np.nan)
    second[validation] = estimates.latents[1][validation]
    save_npy(RunFolder(run).latents_half2, second.astype(np.float32))
    return latents


def write_particle_table(
    run: Path,
    table: ParticleTable,
    latents: np.ndarray,
    halves: np.ndarray,
    validation: np.ndarray,
    estimates: ErrorEstimates,
) -> None:
    """The input table with every column kept and the per-particle results added (and a cryoSPARC
    input's original records, so that selections can go back to cryoSPARC with every field)."""
    frame = table.particles.copy()
    for k in range(latents.shape[1]):
        frame[f"dmLatent{k + 1}"] = latents[:, k].astype(np.float64)
    frame["dmHalfSet"] = halves.astype(np.int64)
    frame["dmValidation"] = validation.astype(np.int64)
    frame["dmErrorAngstrom"] = estimates.particle_error_angstrom.astype(np.float64)
    own = np.where(
        halves == 2, estimates.displacement_rms_angstrom[1], estimates.displacement_rms_angstrom[0]
    )
    frame["dmDisplacementAngstrom"] = own.astype(np.float64)
    write_particles(RunFolder(run).particles, replace(table, particles=frame))
    if table.records is not None:
        save_npy(RunFolder(run).input_records, table.records)


def write_half_models(
    run: Path, models: list[GaussianModel], box: int, voxel_size_angstrom: float
) -> None:
    folder = RunFolder(run)
    for half, model in enumerate(models, 1):
        save_model(folder.half_model(half), model, box=box, voxel_size_angstrom=voxel_size_angstrom)
        write_map(
            folder.half_map(half),
            render_volume(model, box, voxel_size_angstrom).numpy(),
            voxel_size_angstrom,
        )


def write_gaussian_errors(run: Path, positions: np.ndarray, errors: np.ndarray) -> None:
    table = np.column_stack([positions, errors])
    with atomic_path(RunFolder(run).gaussian_errors) as tmp:
        np.savetxt(
            tmp,
            table,
            delimiter=",",
            fmt="%.5f",
            comments="",
            header="x_angstrom,y_angstrom,z_angstrom,error_angstrom",
        )


def write_loss_log(path: Path, history: list[dict]) -> None:
    """Rewrite the whole JSON-lines log ``path`` (it is short) so a resumed run never duplicates
    lines."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(entry) + "\n" for entry in history), encoding="utf-8")


PLOTTED = {
    "data": "data",
    "regularisation": "regularisation",
    "lambda": "lambda",
    "rms_displacement_angstrom": "RMS displacement (Å)",
    "latent_gain_z": "latent gain z (watchdog)",
}


def plot_losses(run: Path, history: list[dict]) -> None:
    """The losses, λ, and the watchdog's RMS displacement and gain per epoch and half (NaN where a
    row has no value, e.g. runs made before the watchdog)."""
    figure = Figure(figsize=(4 * len(PLOTTED), 3.5))
    axes = figure.subplots(1, len(PLOTTED))
    for half in (1, 2):
        rows = [h for h in history if h["half"] == half]
        epochs = [h["epoch"] for h in rows]
        for axis, (key, title) in zip(axes, PLOTTED.items(), strict=True):
            axis.plot(
                epochs,
                [np.nan if h.get(key) is None else h[key] for h in rows],
                label=f"half {half}",
            )
            axis.set_title(title)
            axis.set_xlabel("epoch")
    axes[0].legend()
    figure.tight_layout()
    save_figure(figure, RunFolder(run).loss_plot, dpi=80)
