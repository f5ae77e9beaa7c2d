"""A synthetic deformation run for the explorer tests: real STAR columns, known latent clusters.

The two half sets' codes live in deliberately different coordinate systems (half 2's are rotated,
scaled and shifted), as independently trained encoders give.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import starfile

from conftest import STAR_FILES

CENTRES = np.array([[0, 0, 0, 0], [6, 0, 1, 0], [0, 6, 0, 1]], dtype=np.float32)
HALF2_ROTATION = np.linalg.qr(np.random.default_rng(7).normal(size=(4, 4)))[0].astype(np.float32)
HALF2_SCALE, HALF2_OFFSET = 3.0, np.array([20, -20, 5, 5], dtype=np.float32)


def to_half2(codes: np.ndarray) -> np.ndarray:
    """Half 2's coordinate system: rotated, scaled and shifted from half 1's."""
    return (codes @ HALF2_ROTATION.T) * HALF2_SCALE + HALF2_OFFSET


def clusters(n: int) -> np.ndarray:
    """The cluster (0, 1, 2) of each of ``n`` particles: row % 3."""
    return np.arange(n) % 3


def make_run(folder: Path, n: int = 300, seed: int = 0) -> Path:
    """``folder`` with latent_means.npy (three clusters in 4D), latent_means_half2_validation.npy
    and a run-style particles.star.

    Half set = 1 + row % 2; validation particles are the rows ≡ 0 or 5 (mod 10), so both halves have
    some. Each particle has a half-1 code (CENTRES + noise) and a half-2 code (:func:`to_half2` of
    another noisy draw); latent_means.npy holds the own half's code, validation particles half 1's.
    The STAR file repeats relion31.star's particles (all its columns, its optics table), gives each
    row a unique rlnImageName and defocus, and adds the dm* result columns the deformation run
    writes.
    """
    rng = np.random.default_rng(seed)
    cluster = clusters(n)
    half = 1 + np.arange(n) % 2
    validation = np.isin(np.arange(n) % 10, (0, 5))
    codes1 = (CENTRES[cluster] + rng.normal(0, 0.5, (n, 4))).astype(np.float32)
    codes2 = to_half2(CENTRES[cluster] + rng.normal(0, 0.5, (n, 4))).astype(np.float32)
    latents = np.where(((half == 2) & ~validation)[:, None], codes2, codes1)
    half2_validation = np.where(validation[:, None], codes2, np.nan).astype(np.float32)
    blocks = starfile.read(STAR_FILES["relion31"], always_dict=True)
    base = blocks["particles"]
    particles = base.iloc[np.arange(n) % len(base)].reset_index(drop=True)
    particles["rlnImageName"] = [f"{i + 1:06d}@stack.mrcs" for i in range(n)]
    particles["rlnDefocusU"] = rng.uniform(10_000, 20_000, n).round(2)
    for k in range(4):
        particles[f"dmLatent{k + 1}"] = latents[:, k].astype(np.float64)
    particles["dmHalfSet"] = half
    particles["dmValidation"] = validation.astype(int)
    particles["dmErrorAngstrom"] = rng.uniform(0, 2, n).round(3)
    particles["dmDisplacementAngstrom"] = (2.0 * cluster + rng.uniform(0, 0.5, n)).round(3)
    folder.mkdir(parents=True, exist_ok=True)
    starfile.write({"optics": blocks["optics"], "particles": particles}, folder / "particles.star")
    np.save(folder / "latent_means.npy", latents)
    np.save(folder / "latent_means_half2_validation.npy", half2_validation)
    return folder


class ShiftDecoder:
    """A stand-in for a run's decoder: Gaussians on a ring, shifted by (latent 1, latent 2) Å in x,
    y by half 1's decoder. Half 2's decoder takes its code back to half 1's frame (the inverse of
    :func:`to_half2`) and shifts by (latent 2, latent 1) of that in x, z: another motion.

    Built from the engine's Gaussian model and renderer, so the explorer sees real volumes.
    """

    latent_dim = 4

    def __init__(self, box: int = 32, voxel_size_angstrom: float = 2.0, n: int = 12):
        angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
        self.consensus = np.column_stack([10 * np.cos(angle), 10 * np.sin(angle), np.zeros(n)])
        self.box, self.voxel = box, voxel_size_angstrom
        self.calls = 0
        self.half = 1

    def set_half(self, half: int) -> None:
        self.half = half

    def shift(self, latent) -> np.ndarray:
        latent = np.asarray(latent, dtype=np.float64)
        if self.half == 1:
            return np.array([latent[0], latent[1], 0.0])
        own = ((latent - HALF2_OFFSET) / HALF2_SCALE) @ HALF2_ROTATION
        return np.array([own[1], 0.0, own[0]])

    def decode(self, latent):
        import torch

        from napari_dynamight.engine.explore.decoding import Decoded
        from napari_dynamight.engine.gaussians import GaussianModel, render_volume

        self.calls += 1
        latent = np.asarray(latent, dtype=np.float64)
        positions = self.consensus + self.shift(latent)
        model = GaussianModel(
            torch.tensor(positions, dtype=torch.float32),
            torch.ones(len(positions)),
            torch.full((len(positions),), 2.0),
        )
        volume = render_volume(model, self.box, self.voxel).numpy()
        return Decoded(latent.astype(np.float32), positions, self.consensus, volume, self.voxel)
