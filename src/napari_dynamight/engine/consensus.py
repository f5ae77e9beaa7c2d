"""Consensus Gaussian model: threshold a map, fill it with Gaussians, fit them to the map.

This is stage 2's initialisation (method.md, "Consensus Gaussian model"): Gaussians are placed at
random inside the thresholded region, share one amplitude and one width (so motion cannot be faked
by Gaussians fading in and out), and their positions, amplitude and width are then fitted to the
map.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .errors import InputError
from .gaussians import GaussianModel, normalised_cross_correlation, render_volume
from .io.atomic import atomic_path
from .progress import Progress, ProgressGenerator


def background_statistics(volume: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the voxels outside a sphere of 0.45·box (the solvent
    corner)."""
    box = volume.shape[0]
    axis = np.arange(box) - box // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    outside = np.sqrt(x**2 + y**2 + z**2) > 0.45 * box
    values = volume[outside]
    return float(values.mean()), float(values.std())


def automatic_threshold(volume: np.ndarray) -> float:
    """A level at which the molecule shows and solvent noise does not.

    Four standard deviations above the solvent (voxels outside 0.45·box), kept between 5% of the
    map's 99.9th percentile (noise-free maps have a flat solvent) and half of it (very noisy maps,
    whose solvent noise would otherwise push the level above all of the molecule).
    """
    mean, std = background_statistics(volume)
    peak = float(np.percentile(volume, 99.9))
    return float(np.clip(mean + 4.0 * std, 0.05 * peak, 0.5 * peak))


def without_specks(region: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """The region without connected pieces smaller than ``fraction`` of its largest piece.

    Solvent noise that crosses the threshold forms isolated specks; Gaussians placed there would
    model noise, not molecule.
    """
    labels, count = ndimage.label(region)
    if count <= 1:
        return region
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.concatenate([[False], sizes >= fraction * sizes.max()])
    return keep[labels]


def fill_with_gaussians(
    volume: np.ndarray,
    voxel_size_angstrom: float,
    n_gaussians: int,
    threshold: float | None = None,
    mask: np.ndarray | None = None,
    seed: int = 0,
) -> GaussianModel:
    """Place ``n_gaussians`` at random inside the thresholded map (and inside ``mask`` if given).

    All share one width, from the volume per Gaussian (σ = half the mean spacing), and one
    amplitude, set by least squares so the rendered model matches the map.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputError(f"consensus map must be a cube, got shape {volume.shape}")
    if n_gaussians < 1:
        raise InputError(f"number of Gaussians must be at least 1, got {n_gaussians}")
    if n_gaussians > volume.size:
        raise InputError(
            f"--n-gaussians {n_gaussians} is more than one per voxel of the map "
            f"({volume.shape[0]}³ = {volume.size} voxels); give fewer Gaussians"
        )
    level = automatic_threshold(volume) if threshold is None else float(threshold)
    inside = volume >= level
    if mask is not None:
        inside &= np.asarray(mask) > 0.5
    voxels = np.argwhere(without_specks(inside))
    if len(voxels) == 0:
        raise InputError(
            f"no voxel of the consensus map is above the threshold {level:.4g} "
            f"(map range {volume.min():.4g} to {volume.max():.4g}); choose a lower --threshold"
        )
    rng = np.random.default_rng(seed)
    chosen = voxels[rng.integers(0, len(voxels), n_gaussians)]
    jitter = rng.uniform(-0.5, 0.5, (n_gaussians, 3))
    box = volume.shape[0]
    positions_zyx = (chosen + jitter - box // 2) * voxel_size_angstrom
    positions = torch.as_tensor(positions_zyx[:, ::-1].copy(), dtype=torch.float32)
    spacing = (len(voxels) * voxel_size_angstrom**3 / n_gaussians) ** (1 / 3)
    sigma = max(0.5 * spacing, 0.5 * voxel_size_angstrom)
    unit = GaussianModel(positions, torch.ones(n_gaussians), torch.full((n_gaussians,), sigma))
    rendered = render_volume(unit, box, voxel_size_angstrom).numpy()
    amplitude = float((rendered * volume).sum() / max((rendered**2).sum(), 1e-30))
    return GaussianModel(positions, torch.full((n_gaussians,), amplitude), unit.sigmas_angstrom)


@dataclass
class FitResult:
    model: GaussianModel
    correlation: float
    threshold: float


def fit_to_map(
    model: GaussianModel,
    volume: np.ndarray,
    voxel_size_angstrom: float,
    n_steps: int = 200,
    learning_rate_angstrom: float = 0.1,
    device: str | torch.device = "cpu",
    threshold: float | None = None,
) -> ProgressGenerator[FitResult]:
    """Fit positions, the shared amplitude and the shared width to the map by gradient descent
    (MSE).

    Yields a Progress event every few steps with the current real-space correlation.
    """
    target = torch.as_tensor(np.asarray(volume, dtype=np.float32), device=device)
    box = target.shape[0]
    positions = model.positions_angstrom.detach().to(device).clone().requires_grad_(True)
    log_amplitude = torch.log(
        model.amplitudes[:1].detach().to(device).clamp(min=1e-12)
    ).requires_grad_(True)
    log_sigma = torch.log(model.sigmas_angstrom[:1].detach().to(device)).requires_grad_(True)
    optimiser = torch.optim.Adam(
        [
            {"params": [positions], "lr": learning_rate_angstrom},
            {"params": [log_amplitude, log_sigma], "lr": 0.01},
        ]
    )
    scale = target.pow(2).mean().clamp(min=1e-30)
    n = model.n_gaussians

    def current() -> GaussianModel:
        return GaussianModel(
            positions, torch.exp(log_amplitude).expand(n), torch.exp(log_sigma).expand(n)
        )

    correlation = float("nan")
    for step in range(1, n_steps + 1):
        optimiser.zero_grad()
        rendered = render_volume(current(), box, voxel_size_angstrom)
        loss = (rendered - target).pow(2).mean() / scale
        loss.backward()
        optimiser.step()
        if step % 10 == 0 or step == n_steps:
            correlation = _correlation(rendered.detach(), target)
            yield Progress(
                "fit consensus",
                step,
                n_steps,
                metrics={"loss": loss.item(), "correlation": correlation},
            )
    fitted = current().detach().to("cpu")
    correlation = _correlation(render_volume(fitted.to(device), box, voxel_size_angstrom), target)
    level = automatic_threshold(np.asarray(volume)) if threshold is None else threshold
    return FitResult(fitted, correlation, level)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(normalised_cross_correlation(a[None], b[None])[0])


def save_model(path: str | Path, model: GaussianModel, **metadata: float) -> None:
    """Write a Gaussian model as plain tensors (loadable with ``weights_only=True``), atomically."""
    state = model.state_dict()
    state.update({key: torch.tensor(float(value)) for key, value in metadata.items()})
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_model(path: str | Path) -> GaussianModel:
    """Read a Gaussian model written by :func:`save_model`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: Gaussian model file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return GaussianModel.from_state_dict(state)
    except (KeyError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise InputError(
            f"{path}: not a Gaussian model file ({error.__class__.__name__})"
        ) from None
