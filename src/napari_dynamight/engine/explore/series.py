"""Decode a series of latent points (a path): one volume per point, optionally saved as MRC files
with a ChimeraX script that opens them as a volume series (``engine/chimerax.py``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..chimerax import DEFAULT_FRAMERATE, SUFFIX, display_level, map_statistics, write_series_script
from ..io.mrc import write_map
from ..progress import Progress, ProgressGenerator
from .decoding import Decoded, Decoder


@dataclass(frozen=True)
class FrameProgress(Progress):
    """A progress event that carries the frame just decoded (for a viewer to show and capture)."""

    decoded: Decoded | None = None


def decode_path(
    decoder: Decoder,
    latents: np.ndarray,
    folder: str | os.PathLike | None = None,
    prefix: str = "path",
    movie: str | os.PathLike | None = None,
    framerate: int = DEFAULT_FRAMERATE,
) -> ProgressGenerator[list[Path]]:
    """Decode every latent point in order, yielding each frame; with ``folder``, write
    ``prefix_NNN.mrc`` files there and, last, ``prefix.cxc`` (ChimeraX), which also records
    ``movie`` (a file name in ``folder``) at ``framerate`` when given."""
    latents = np.asarray(latents, dtype=np.float32)
    written, statistics = [], []
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    for index, latent in enumerate(latents):
        decoded = decoder.decode(latent)
        if folder is not None:
            path = Path(folder) / f"{prefix}_{index:03d}.mrc"
            write_map(path, decoded.volume, decoded.voxel_size_angstrom)
            written.append(path)
            statistics.append(map_statistics(decoded.volume))
        yield FrameProgress("decode path", index + 1, len(latents), decoded=decoded)
    if folder is not None and written:
        write_series_script(
            Path(folder) / f"{prefix}{SUFFIX}", written, display_level(statistics), movie, framerate
        )
    return written
