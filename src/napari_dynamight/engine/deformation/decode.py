"""Load a finished deformation run and decode any latent point or particle, fast enough for a GUI.

>>> run = DeformationRun.load("run")
>>> positions = run.positions(run.latents[17], half=run.half_of(17))  # (1, N, 3) Å
>>> volume = run.particle_volume(17)  # [z, y, x] at the consensus box

Decoding is one decoder pass over the Gaussians (or the run's control points, then interpolation;
``engine/deformation/control_points.py``), no gradients, and rendering one splat and FFT of
the consensus box; see docs/deformations.md for timings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..gaussians import GaussianModel, render_volume
from ..run_folder import RunFolder
from . import checkpoint as ckpt
from .control_points import ControlPoints, displacement
from .networks import build_decoder
from .settings import DeformationSettings


@dataclass
class _Half:
    decoder: torch.nn.Module
    model: GaussianModel
    moving: torch.Tensor
    controls: ControlPoints | None = (
        None  # the decoder runs on these and is interpolated (settings)
    )


class DeformationRun:
    """The two halves' decoders and reference models of a run, plus the particles' latent means."""

    def __init__(
        self,
        halves: list[_Half],
        latents: np.ndarray | None,
        half_sets: np.ndarray,
        validation: np.ndarray,
        box: int,
        voxel_size_angstrom: float,
        device: torch.device,
    ):
        self._halves, self.latents, self.half_sets, self.validation = (
            halves,
            latents,
            half_sets,
            validation,
        )
        self.box, self.voxel_size_angstrom, self.device = box, voxel_size_angstrom, device

    @classmethod
    def load(cls, run_directory: str | Path, device: str | torch.device = "cpu") -> DeformationRun:
        run = RunFolder(run_directory)
        if not run.is_run():
            raise InputError(
                f"{run.path}: not a deformation run ({run.info.name} missing); "
                "give the run directory"
            )
        info = json.loads(run.info.read_text(encoding="utf-8"))
        path = run.newest_checkpoint()
        if path is None:
            raise InputError(
                f"{run.path}: no checkpoint yet; wait for the first one or finish the run"
            )
        state = ckpt.load_checkpoint(path)
        settings = DeformationSettings.from_dict(json.loads(state["settings"]))
        device = torch.device(device)
        extent = 0.5 * info["consensus_box"] * info["voxel_size_angstrom"]
        halves, half_sets = [], np.zeros(info["n_particles"], np.int64)
        validation = np.zeros(info["n_particles"], bool)
        for number, half in enumerate(state["halves"], 1):
            decoder = build_decoder(settings, extent)
            decoder.load_state_dict(half["decoder"])
            decoder.to(device).eval()
            model = GaussianModel(
                half["positions"],
                half["base_amplitudes"] * half["log_amplitude_scale"].exp(),
                half["base_sigmas"] * half["log_sigma_scale"].exp(),
            ).to(device)
            controls = (
                ControlPoints(settings.control_points).update(model.positions_angstrom)
                if settings.control_points
                else None
            )
            halves.append(_Half(decoder, model, half["moving"].to(device), controls))
            half_sets[half["train_rows"].numpy()] = number
            half_sets[half["validation_rows"].numpy()] = number
            validation[half["validation_rows"].numpy()] = True
        latents = np.load(run.latents) if run.latents.is_file() else None
        return cls(
            halves,
            latents,
            half_sets,
            validation,
            info["consensus_box"],
            info["voxel_size_angstrom"],
            device,
        )

    @property
    def latent_dim(self) -> int:
        return self._halves[0].decoder.latent_dim

    def reference(self, half: int = 1) -> GaussianModel:
        return self._half(half).model

    def _half(self, half: int) -> _Half:
        if half not in (1, 2):
            raise InputError(f"half set must be 1 or 2, got {half}")
        return self._halves[half - 1]

    def _latents(self, latent) -> torch.Tensor:
        z = (
            torch.as_tensor(np.asarray(latent, dtype=np.float32), device=self.device).reshape(
                -1, self.latent_dim
            )
            if not isinstance(latent, torch.Tensor)
            else latent.to(self.device, torch.float32).reshape(-1, self.latent_dim)
        )
        if not torch.isfinite(z).all():
            raise InputError("latent point has non-finite coordinates (NaN or Inf)")
        return z

    @torch.no_grad()
    def positions(self, latent, half: int = 1) -> torch.Tensor:
        """Deformed Gaussian centres (M, N, 3) Å for M latent points (array (D,) or (M, D))."""
        chosen = self._half(half)
        reference = chosen.model.positions_angstrom
        moved = displacement(chosen.decoder, self._latents(latent), reference, chosen.controls)
        return reference + moved * chosen.moving.view(-1, 1)

    @torch.no_grad()
    def displacements_at_half1(self, latent, half: int, index) -> torch.Tensor:
        """Half ``half``'s displacements (M, K, 3) Å for M latent points at half 1's reference
        Gaussians ``index`` (K,): the points where the error estimates compare the two halves'
        fields."""
        chosen = self._half(half)
        index = torch.as_tensor(np.asarray(index), device=self.device)
        points = self._halves[0].model.positions_angstrom[index]
        moved = displacement(
            chosen.decoder,
            self._latents(latent),
            chosen.model.positions_angstrom,
            chosen.controls,
            points,
        )
        return moved * chosen.moving[index].view(-1, 1)

    @torch.no_grad()
    def volume(self, latent, half: int = 1) -> torch.Tensor:
        """The deformed model of one latent point rendered at the consensus box and voxel size [z,
        y, x]."""
        chosen = self._half(half)
        centres = self.positions(latent, half)[0]
        model = GaussianModel(centres, chosen.model.amplitudes, chosen.model.sigmas_angstrom)
        return render_volume(model, self.box, self.voxel_size_angstrom)

    def half_of(self, particle: int) -> int:
        """The half whose encoder gave this particle's latent (validation particles: half 1)."""
        index = self._check_particle(particle)
        return 1 if self.validation[index] else int(self.half_sets[index])

    def _check_particle(self, particle: int) -> int:
        if self.latents is None:
            raise InputError("this run has no latent means yet; finish the run first")
        if not 0 <= int(particle) < len(self.latents):
            raise InputError(
                f"particle index {particle} is out of range (0..{len(self.latents) - 1})"
            )
        return int(particle)

    def particle_positions(self, particle: int) -> torch.Tensor:
        index = self._check_particle(particle)
        return self.positions(self.latents[index], self.half_of(index))[0]

    def particle_volume(self, particle: int) -> torch.Tensor:
        index = self._check_particle(particle)
        return self.volume(self.latents[index], self.half_of(index))

    def decode_volumes(self, latents, half: int = 1) -> np.ndarray:
        """Volumes (M, L, L, L) [z, y, x] of M latent points decoded by one half set."""
        points = np.atleast_2d(np.asarray(latents, dtype=np.float32))
        return np.stack([self.volume(point, half).cpu().numpy() for point in points])


def load_run(run_directory: str | Path, device: str | torch.device = "cpu") -> DeformationRun:
    """:meth:`DeformationRun.load` as a function."""
    return DeformationRun.load(run_directory, device)
