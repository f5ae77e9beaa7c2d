"""Write captured viewer frames as a GIF (Pillow) or MP4 (needs imageio-ffmpeg) with imageio; the
movie's volumes and their ChimeraX script go to a folder beside it (:func:`chimerax_folder`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def check_movie_path(path, on_error) -> bool:
    """True if ``path`` can be written; else report one line through ``on_error``."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".gif", ".mp4"):
        on_error(f"{path}: choose a .gif or .mp4 file name")
        return False
    if suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            on_error(f"{path}: MP4 needs the package imageio-ffmpeg (pip install imageio-ffmpeg); "
                     "or export a .gif")
            return False
    return True


def chimerax_folder(movie) -> Path:
    """``NAME_chimerax/`` beside movie ``NAME.gif``: the movie's volumes and a ChimeraX script that
    plays and records them."""
    movie = Path(movie)
    return movie.with_name(f"{movie.stem}_chimerax")


def write_movie(path, frames: list[np.ndarray], fps: int = 10) -> None:
    """Write RGB(A) frames atomically, cropped to their common size.

    Screenshots can differ by a few pixels when the window relayouts during capture (a progress bar
    appearing, say); cropping to the smallest frame keeps the movie valid. MP4 sizes are cropped to
    multiples of 16 (the H.264 macro block), so every player accepts them and nothing is rescaled.
    """
    import imageio.v3 as iio

    from ..engine.io.atomic import atomic_path

    path = Path(path)
    arrays = [np.asarray(frame)[..., :3] for frame in frames]
    height = min(a.shape[0] for a in arrays)
    width = min(a.shape[1] for a in arrays)
    if path.suffix.lower() == ".mp4":
        height, width = height - height % 16, width - width % 16
    rgb = np.stack([a[:height, :width] for a in arrays]).astype(np.uint8)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".gif":
            iio.imwrite(tmp, rgb, extension=".gif", duration=1000 / fps, loop=0)
        else:
            iio.imwrite(tmp, rgb, extension=".mp4", fps=fps, codec="libx264")
