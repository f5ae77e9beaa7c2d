"""Write images and movies from numpy frames: the one writer of every GIF, MP4 and PNG the package
makes.

Frames are ``(height, width)`` grey or ``(height, width, 3 or 4)`` colour ``uint8`` arrays (alpha is
dropped). A movie is a GIF (Pillow, looping) or an MP4 (H.264 through imageio-ffmpeg); every file is
written atomically. :func:`crop_to_content` cuts frames rendered on a plain background down to what
they show (the molecule), the same box for every frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .atomic import atomic_path

MOVIE_SUFFIXES = (".gif", ".mp4")
MACRO_BLOCK = 16  # H.264 codes 16×16 blocks: MP4 sizes are multiples of it, so nothing is rescaled


def check_movie_path(path: str | os.PathLike) -> None:
    """Raise InputError (one line) unless a movie can be written to ``path``: a .gif or .mp4 name,
    and for MP4 the package imageio-ffmpeg."""
    suffix = Path(path).suffix.lower()
    if suffix not in MOVIE_SUFFIXES:
        raise InputError(f"{path}: choose a .gif or .mp4 file name")
    if suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise InputError(
                f"{path}: MP4 needs the package imageio-ffmpeg (pip install imageio-ffmpeg); or "
                "export a .gif"
            ) from None


def _rgb(frame) -> np.ndarray:
    array = np.asarray(frame)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"a frame must be (H, W), (H, W, 3) or (H, W, 4), not {array.shape}")
    return np.ascontiguousarray(array[..., :3]).astype(np.uint8, copy=False)


def content_box(frames, margin: int = 8, tolerance: int = 12) -> tuple[slice, slice]:
    """The (rows, columns) slices around every pixel, in any frame, that differs from the background
    (the colour of the first frame's top-left corner) by more than ``tolerance`` in some channel,
    widened by ``margin`` pixels; the whole frame if nothing differs. Frames share one size."""
    frames = [_rgb(frame) for frame in frames]
    height, width = frames[0].shape[:2]
    background = frames[0][0, 0].astype(np.int16)
    drawn = np.zeros((height, width), dtype=bool)
    for frame in frames:
        drawn |= (np.abs(frame.astype(np.int16) - background) > tolerance).any(axis=2)
    rows, columns = np.nonzero(drawn.any(axis=1))[0], np.nonzero(drawn.any(axis=0))[0]
    if len(rows) == 0:
        return slice(0, height), slice(0, width)
    return (
        slice(max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, height)),
        slice(max(int(columns[0]) - margin, 0), min(int(columns[-1]) + 1 + margin, width)),
    )


def crop_to_content(frames, margin: int = 8, tolerance: int = 12) -> list[np.ndarray]:
    """Every frame cut to :func:`content_box` of all of them (RGB)."""
    frames = [_rgb(frame) for frame in frames]
    rows, columns = content_box(frames, margin, tolerance)
    return [frame[rows, columns] for frame in frames]


def _fit_macro_blocks(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Grow each side to a multiple of :data:`MACRO_BLOCK` by repeating the edge pixels (the plain
    background around cropped content), so no content is cut and nothing is rescaled."""
    height, width = frames[0].shape[:2]
    grow = ((0, -height % MACRO_BLOCK), (0, -width % MACRO_BLOCK), (0, 0))
    return [np.pad(frame, grow, mode="edge") for frame in frames]


def write_movie(path: str | os.PathLike, frames, fps: float = 10) -> int:
    """Write ``frames`` as a looping GIF or an H.264 MP4 (by the suffix) at ``fps`` frames per
    second, atomically; returns the number of frames.

    Frames of different sizes (a window that relaid out during a capture) are cut to the smallest.
    """
    path = Path(path)
    check_movie_path(path)
    arrays = [_rgb(frame) for frame in frames]
    if not arrays:
        raise InputError(f"{path}: no frames to write")
    height = min(a.shape[0] for a in arrays)
    width = min(a.shape[1] for a in arrays)
    arrays = [a[:height, :width] for a in arrays]
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".gif":
            iio.imwrite(tmp, np.stack(arrays), extension=".gif", duration=1000 / fps, loop=0)
        else:
            iio.imwrite(
                tmp, np.stack(_fit_macro_blocks(arrays)), extension=".mp4", fps=fps, codec="libx264"
            )
    return len(arrays)


def write_image(path: str | os.PathLike, image) -> None:
    """Write one frame as a PNG file, atomically."""
    import imageio.v3 as iio

    with atomic_path(Path(path)) as tmp:
        iio.imwrite(tmp, _rgb(image), extension=".png")
