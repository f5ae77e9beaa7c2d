"""A known volume and RELION particle tables for the reconstruction tests (relion_project input)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from napari_dynamight.engine.geometry import random_euler_angles

BOX = 48
PIXEL = 2.0
N_PARTICLES = 800
THREE_QUARTER_NYQUIST = BOX * 3 // 8  # shell index


def blob_volume(seed: int = 0) -> np.ndarray:
    """A smooth map: eight 3D Gaussians (σ 1–2.5 px) within 8 px of the box centre, [z, y, x]."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(BOX) - BOX // 2,) * 3, indexing="ij")
    volume = np.zeros((BOX,) * 3)
    for _ in range(8):
        cx, cy, cz = rng.uniform(-8, 8, 3)
        sigma = rng.uniform(1.0, 2.5)
        volume += rng.uniform(0.5, 1.0) * np.exp(
            -((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2)
        )
    return volume.astype(np.float32)


def particle_blocks(n: int, seed: int, ctf: bool) -> dict[str, pd.DataFrame]:
    """RELION 3.1 optics + particles blocks: random poses, origins within ±6 Å, optional CTF."""
    rng = np.random.default_rng(seed)
    euler = random_euler_angles(n, rng)
    particles = pd.DataFrame(
        {
            "rlnAngleRot": euler[:, 0],
            "rlnAngleTilt": euler[:, 1],
            "rlnAnglePsi": euler[:, 2],
            "rlnOriginXAngst": rng.uniform(-6, 6, n),
            "rlnOriginYAngst": rng.uniform(-6, 6, n),
            "rlnOpticsGroup": 1,
        }
    )
    if ctf:
        particles["rlnDefocusU"] = rng.uniform(8000, 15000, n)
        particles["rlnDefocusV"] = particles["rlnDefocusU"] - rng.uniform(0, 500, n)
        particles["rlnDefocusAngle"] = rng.uniform(0, 180, n)
    return {"optics": optics_block(), "particles": particles}


def optics_block(box: int = BOX, pixel: float = PIXEL) -> pd.DataFrame:
    """A RELION 3.1 optics block of one group: 300 kV, Cs 2.7 mm, amplitude contrast 0.1."""
    return pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [pixel],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
        }
    )


def relion(folder: Path, *command: str) -> None:
    subprocess.run(command, cwd=folder, check=True, capture_output=True)


def masked_correlation(a: np.ndarray, b: np.ndarray, radius: float = BOX / 2 - 4) -> float:
    offsets = np.arange(BOX) - BOX // 2
    squared = offsets**2
    r = np.sqrt(squared[:, None, None] + squared[None, :, None] + squared[None, None, :])
    inside = r < radius
    return float(np.corrcoef(a[inside], b[inside])[0, 1])
