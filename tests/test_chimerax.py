"""ChimeraX scripts beside every volume series: files named exist, the series flag, a level inside
the maps' range, movie commands only when asked."""

from __future__ import annotations

import re

import numpy as np
import pytest

from helpers.explore_data import ShiftDecoder
from napari_dynamight.cli import main
from napari_dynamight.engine.chimerax import check_movie_name, display_level, map_statistics
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.explore import straight_path
from napari_dynamight.engine.explore.series import decode_path
from napari_dynamight.engine.io.mrc import read_map
from napari_dynamight.engine.progress import run

MOVIE = ("movie record", "vseries play", "wait ", "movie encode")


def opened(script) -> list:
    """The files of the script's ``open`` lines (quoted, relative to the script's folder)."""
    lines = [line for line in script.read_text().splitlines() if line.startswith("open ")]
    return [script.parent / name for line in lines for name in re.findall(r'"([^"]+)"', line)]


def series_level(script) -> float:
    return float(
        re.search(r"^volume #1 style surface level (\S+)", script.read_text(), re.M).group(1)
    )


def check_series_script(script, maps) -> None:
    """Opens ``maps`` in order as one series, at a finite level inside their values, by relative
    names."""
    text = script.read_text()
    assert opened(script) == list(maps) and all(path.is_file() for path in maps)
    assert re.search(r"^open .* vseries true$", text, re.M) and text.count("open ") == 1
    volumes = [read_map(path)[0] for path in maps]
    level = series_level(script)
    assert np.isfinite(level) and min(v.min() for v in volumes) < level < max(
        v.max() for v in volumes
    )
    assert str(script.parent) not in text


def test_path_series_script_with_and_without_a_movie(tmp_path):
    decoder = ShiftDecoder()
    latents = straight_path(np.zeros(4), np.array([6.0, 0, 1, 0]), 5)
    folder = tmp_path / "path volumes"  # a name with a space
    files = run(decode_path(decoder, latents, folder))
    script = folder / "path.cxc"
    check_series_script(script, files)
    assert not any(command in script.read_text() for command in MOVIE)
    run(decode_path(decoder, latents, folder, movie="path movie.mp4"))
    text = script.read_text()
    check_series_script(script, files)
    assert [line.split()[0] for line in text.splitlines()[-4:]] == [
        "movie",
        "vseries",
        "wait",
        "movie",
    ]
    assert "wait 5" in text and 'movie encode "path movie.mp4" framerate 10' in text


def test_the_level_encloses_the_molecule():
    """The level of a decoded map lies above the solvent and below the peak, as the Data
    widget's."""
    volume = ShiftDecoder().decode(np.zeros(4)).volume
    level = display_level([map_statistics(volume)])
    assert 0 < level < 0.5 * volume.max()
    assert display_level([map_statistics(np.zeros((8, 8, 8)))]) == 0.0  # a flat map: its one value


def test_decode_writes_a_script_and_refuses_a_movie_chimerax_cannot_write(
    finished_run, tmp_path, capsys
):
    dim = np.load(finished_run / "latent_means.npy").shape[1]
    np.save(tmp_path / "points.npy", np.zeros((3, dim), np.float32))
    out = tmp_path / "maps"

    def decode(output, movie):
        points = str(tmp_path / "points.npy")
        return main(
            ["decode", str(finished_run), "--latent", points, "--output-directory", str(output)]
            + ["--chimerax-movie", movie]
        )

    assert decode(out, "motion.mp4") == 0
    assert "chimerax " + str(out / "latents.cxc") in capsys.readouterr().out
    check_series_script(out / "latents.cxc", [out / f"latent_{k:04d}.mrc" for k in range(3)])
    assert 'movie encode "motion.mp4" framerate 10' in (out / "latents.cxc").read_text()
    assert decode(tmp_path / "other", "motion.gif") == 2
    error = capsys.readouterr().err.strip()
    assert (
        "\n" not in error
        and "--chimerax-movie motion.gif" in error
        and not (tmp_path / "other").exists()
    )
    with pytest.raises(InputError, match=".mp4"):
        check_movie_name("x.gif", "movie")
