"""Saving widget screenshots for the user guide: DYNAMIGHT_SCREENSHOTS=docs/images writes them there."""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np


def save(image: np.ndarray, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DYNAMIGHT_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    iio.imwrite(folder / name, image)
    return folder / name


def distinct_colours(image: np.ndarray) -> int:
    return len(np.unique(image[..., :3].reshape(-1, 3), axis=0))
