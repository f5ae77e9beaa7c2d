"""Adapter from the deformation engine's ``DeformationRun`` to the explorer's :class:`Decoder`.

Decoding one latent point is one decoder pass and one rendering at the consensus box (no gradients).
For validation particles, :meth:`RunDecoder.compare_halves` decodes the particle with both halves
(each with its own encoder's latent) and gives, per Gaussian, the distance between the two halves'
predicted displacements: the per-Gaussian picture behind the run's error estimate.
:func:`open_decoder` opens one from a run folder (or the run's particle table).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..run_folder import RunFolder
from .decoding import Decoded, Decoder, check_latent


@dataclass
class HalfComparison:
    """One validation particle decoded by both halves; ``difference_angstrom`` (G,) per Gaussian."""

    particle: int
    half1: Decoded
    half2: Decoded
    difference_angstrom: np.ndarray

    @property
    def rms_angstrom(self) -> float:
        return float(np.sqrt(np.mean(self.difference_angstrom**2)))


class RunDecoder:
    """Decode latent points with one half's decoder (``half``, 1 or 2) of a run folder."""

    def __init__(self, run_directory: Path, half: int = 1, device: str = "cpu"):
        from ..deformation.decode import DeformationRun

        self.run_directory = Path(run_directory)
        self.run = DeformationRun.load(run_directory, device)
        self.latent_dim = self.run.latent_dim
        self.half = 1
        self.set_half(half)

    def set_half(self, half: int) -> None:
        if half not in (1, 2):
            raise InputError(f"half set must be 1 or 2, got {half}")
        self.half = half

    def decode(self, latent, half: int | None = None) -> Decoded:
        import torch

        from ..gaussians import GaussianModel, render_volume

        half = self.half if half is None else half
        latent = check_latent(latent, self.latent_dim)
        reference = self.run.reference(half)
        with torch.no_grad():
            positions = self.run.positions(latent, half)[0]
            model = GaussianModel(positions, reference.amplitudes, reference.sigmas_angstrom)
            volume = render_volume(model, self.run.box, self.run.voxel_size_angstrom)
        return Decoded(
            latent,
            positions.cpu().numpy(),
            reference.positions_angstrom.cpu().numpy(),
            volume.cpu().numpy(),
            float(self.run.voxel_size_angstrom),
        )

    @property
    def validation(self) -> np.ndarray:
        return np.asarray(self.run.validation, dtype=bool)

    def compare_halves(self, particle: int) -> HalfComparison:
        """Decode a validation particle with both halves and compare their displacements."""
        if self.run.latents is None:
            raise InputError(
                f"{RunFolder(self.run_directory).latents}: not found; finish the run first"
            )
        if not 0 <= particle < len(self.validation) or not self.validation[particle]:
            raise InputError(
                f"particle {particle} is not a validation particle; pick one with dmValidation = 1"
            )
        path = RunFolder(self.run_directory).latents_half2
        if not path.is_file():
            raise InputError(
                f"{path}: not found; the half-2 codes of validation particles are needed"
            )
        first = self.decode(self.run.latents[particle], half=1)
        second = self.decode(np.load(path)[particle], half=2)
        difference = np.linalg.norm(
            first.displacements_angstrom - second.displacements_angstrom, axis=1
        )
        return HalfComparison(particle, first, second, difference)


def open_decoder(run_directory: str | os.PathLike, half: int = 1) -> Decoder:
    """The decoder of ``half`` (1 or 2) of a deformation run (its folder, or its particle table)."""
    run = RunFolder.of(run_directory)
    if not run.path.is_dir():
        raise InputError(f"{run.path}: not a run folder; decoding needs the whole deformation run")
    return RunDecoder(run.path, half)
