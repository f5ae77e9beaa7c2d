"""ChimeraX command scripts (``.cxc``) written beside the maps they open.

ChimeraX runs a script with its working directory set to the script's folder, so every path in a
script is relative to it and a copied folder still opens. A volume series opens as one model
(``open FILES vseries true``, model #1) at a level from the maps' statistics
(:func:`display_level`); with ``movie`` the script also records it (``movie record``, ``vseries
play``, ``wait N``, ``movie encode FILE framerate R``). A reconstruction's script opens the half
maps (hidden, coloured apart) and the full map. Scripts expect a new ChimeraX session
(``chimerax SCRIPT.cxc``, or File ▸ Open in a new session): models are numbered from #1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .consensus import automatic_threshold
from .errors import InputError
from .io.atomic import atomic_path

SUFFIX = ".cxc"
DEFAULT_FRAMERATE = 10
HALF_COLOURS = ("#e66100", "#5d3a9b")  # orange and purple: the two half maps
FULL_COLOUR = "#b4b4b4"
MOVIE_SUFFIXES = (".mp4", ".mov", ".avi", ".webm")  # formats ChimeraX's movie encode writes


def check_movie_name(path: str | os.PathLike | None, option: str) -> None:
    """Refuse, before any work, a movie name ChimeraX cannot encode (it goes by the suffix)."""
    if path is not None and Path(path).suffix.lower() not in MOVIE_SUFFIXES:
        raise InputError(
            f"{option} {path}: ChimeraX cannot write this kind of movie; give a file name ending "
            f"in {', '.join(MOVIE_SUFFIXES)}"
        )


def map_statistics(volume: np.ndarray) -> tuple[float, float, float]:
    """(automatic threshold, minimum, maximum) of one map: what :func:`display_level` needs, so a
    long series need not stay in memory."""
    volume = np.asarray(volume, dtype=np.float32)
    return automatic_threshold(volume), float(volume.min()), float(volume.max())


def display_level(statistics: Sequence[tuple[float, float, float]]) -> float:
    """One iso level for a series: the median of the maps' automatic thresholds (the level the Data
    widget shows a map at, enclosing the molecule), kept inside the series' value range."""
    thresholds, lows, highs = np.asarray(statistics, dtype=np.float64).reshape(-1, 3).T
    level, low, high = float(np.median(thresholds)), float(lows.min()), float(highs.max())
    if not np.isfinite(level) or not low <= level <= high:
        level = low + 0.5 * (high - low)
    return level


def level_of(volume: np.ndarray) -> float:
    """:func:`display_level` of one map."""
    return display_level([map_statistics(volume)])


def quoted(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """``path`` relative to ``folder`` with forward slashes, in double quotes (names may hold
    spaces)."""
    relative = Path(os.path.relpath(Path(path).absolute(), Path(folder).absolute())).as_posix()
    return '"' + relative.replace('"', '\\"') + '"'


def _write(script: Path, lines: list[str]) -> Path:
    with atomic_path(script) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return script


def write_series_script(
    script: str | os.PathLike,
    maps: Sequence[str | os.PathLike],
    level: float,
    movie: str | os.PathLike | None = None,
    framerate: int = DEFAULT_FRAMERATE,
) -> Path:
    """A script that opens ``maps`` in order as one volume series at ``level``; with ``movie`` (a
    file name, relative to the script's folder unless absolute) it plays the series once and
    records it there at ``framerate`` frames per second."""
    script = Path(script)
    folder = script.parent
    names = " ".join(quoted(path, folder) for path in maps)
    lines = [
        "# ChimeraX: chimerax " + quoted(script, folder) + " (in a new session)",
        f"open {names} vseries true",
        f"volume #1 style surface level {level:.6g} color {FULL_COLOUR}",
        "view",
    ]
    if movie is not None:
        target = Path(movie) if Path(movie).is_absolute() else folder / movie
        lines += [
            "movie record",
            "vseries play #1 loop false direction forward",
            f"wait {len(maps)}",
            f"movie encode {quoted(target, folder)} framerate {int(framerate)}",
        ]
    return _write(script, lines)


def write_maps_script(
    script: str | os.PathLike,
    half_maps: Sequence[str | os.PathLike],
    full_map: str | os.PathLike,
    levels: Sequence[float],
) -> Path:
    """A script that opens the two half maps (hidden, orange and purple) and the full map (grey,
    shown), each at its level in ``levels`` (half 1, half 2, full)."""
    script = Path(script)
    folder = script.parent
    lines = ["# ChimeraX: chimerax " + quoted(script, folder) + " (in a new session)"]
    lines += [f"open {quoted(path, folder)}" for path in (*half_maps, full_map)]
    for model, (colour, level) in enumerate(
        zip((*HALF_COLOURS, FULL_COLOUR), levels, strict=True), 1
    ):
        lines.append(f"volume #{model} style surface level {level:.6g} color {colour}")
    lines += ["hide #1,2 models", "view"]
    return _write(script, lines)
