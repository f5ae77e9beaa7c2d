"""A synthetic deformation run for the explorer tests: real STAR columns, known latent clusters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import starfile

from conftest import STAR_FILES

CENTRES = np.array([[0, 0, 0, 0], [6, 0, 1, 0], [0, 6, 0, 1]], dtype=np.float32)


def make_run(folder: Path, n: int = 300, seed: int = 0) -> Path:
    """``folder`` with latent_means.npy (three clusters in 4D) and a run-style particles.star.

    The STAR file repeats relion31.star's particles (all its columns, its optics table), gives each
    row a unique rlnImageName and defocus, and adds the dm* result columns the deformation run writes.
    """
    rng = np.random.default_rng(seed)
    cluster = np.arange(n) % 3
    latents = (CENTRES[cluster] + rng.normal(0, 0.5, (n, 4))).astype(np.float32)
    blocks = starfile.read(STAR_FILES["relion31"], always_dict=True)
    base = blocks["particles"]
    particles = base.iloc[np.arange(n) % len(base)].reset_index(drop=True)
    particles["rlnImageName"] = [f"{i + 1:06d}@stack.mrcs" for i in range(n)]
    particles["rlnDefocusU"] = rng.uniform(10_000, 20_000, n).round(2)
    for k in range(4):
        particles[f"dmLatent{k + 1}"] = latents[:, k].astype(np.float64)
    particles["dmHalfSet"] = 1 + (np.arange(n) % 2)
    particles["dmValidation"] = (np.arange(n) % 10 == 0).astype(int)
    particles["dmErrorAngstrom"] = rng.uniform(0, 2, n).round(3)
    particles["dmDisplacementAngstrom"] = (2.0 * cluster + rng.uniform(0, 0.5, n)).round(3)
    folder.mkdir(parents=True, exist_ok=True)
    starfile.write({"optics": blocks["optics"], "particles": particles}, folder / "particles.star")
    np.save(folder / "latent_means.npy", latents)
    return folder


class ShiftDecoder:
    """A stand-in for a run's decoder: Gaussians on a ring, shifted by (latent 1, latent 2) Å in x, y.

    Built from the engine's Gaussian model and renderer, so the explorer sees real volumes.
    """

    latent_dim = 4

    def __init__(self, box: int = 32, voxel_size_angstrom: float = 2.0, n: int = 12):
        angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
        self.consensus = np.column_stack([10 * np.cos(angle), 10 * np.sin(angle), np.zeros(n)])
        self.box, self.voxel = box, voxel_size_angstrom
        self.calls = 0

    def decode(self, latent):
        import torch

        from napari_dynamight.engine.explore.decoding import Decoded
        from napari_dynamight.engine.gaussians import GaussianModel, render_volume

        self.calls += 1
        latent = np.asarray(latent, dtype=np.float64)
        positions = self.consensus + np.array([latent[0], latent[1], 0.0])
        model = GaussianModel(torch.tensor(positions, dtype=torch.float32), torch.ones(len(positions)),
                              torch.full((len(positions),), 2.0))
        volume = render_volume(model, self.box, self.voxel).numpy()
        return Decoded(latent.astype(np.float32), positions, self.consensus, volume, self.voxel)
