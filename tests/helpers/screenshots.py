"""Saving widget screenshots for the user guide (docs/gui.md).

DYNAMIGHT_SCREENSHOTS=1 writes them into the repository's docs/images/; any other value names the
folder to write into; unset, they go to the test's temporary folder (the assertions run either way).
"""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


def save(image: np.ndarray, name: str, tmp_path: Path) -> Path:
    setting = os.environ.get("DYNAMIGHT_SCREENSHOTS", "")
    folder = DOCS_IMAGES if setting == "1" else Path(setting) if setting else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    iio.imwrite(folder / name, np.asarray(image)[..., :3])
    return folder / name


def distinct_colours(image: np.ndarray) -> int:
    return len(np.unique(image[..., :3].reshape(-1, 3), axis=0))


def widget_rgb(widget) -> np.ndarray:
    """A Qt widget's current look as an RGB array (grabbed, as on screen)."""
    image = widget.grab().toImage()
    pixels = np.array(image.constBits().asarray(image.sizeInBytes()))
    return pixels.reshape(image.height(), image.bytesPerLine() // 4, 4)[..., [2, 1, 0]]


def gaussian_pixels(canvas: np.ndarray) -> np.ndarray:
    """Where a 3D canvas shows the orange Gaussians."""
    rgb = canvas[..., :3].astype(int)
    return (rgb[..., 0] > 180) & (rgb[..., 1] > 80) & (rgb[..., 1] < 200) & (rgb[..., 2] < 80)


def density_pixels(canvas: np.ndarray) -> np.ndarray:
    """Where a 3D canvas shows a grey iso-surface (lit, and neither orange nor coloured)."""
    rgb = canvas[..., :3].astype(int)
    grey = (rgb.max(axis=2) - rgb.min(axis=2)) < 40
    return grey & (rgb.max(axis=2) > 40)


def molecule_coverage(canvas: np.ndarray) -> float:
    """The fraction of the canvas inside the molecule's silhouette (drawn pixels, holes filled)."""
    from scipy import ndimage

    drawn = canvas[..., :3].max(axis=2) > 12  # the shaded surface, its darkest side too
    drawn[-60:, -220:] = False  # the scale bar in the bottom right corner
    return float(ndimage.binary_fill_holes(drawn).mean())
