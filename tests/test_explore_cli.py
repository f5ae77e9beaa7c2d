"""`napari-dynamight explore RUN`: inputs checked before napari starts; the run opens in the
explorer."""

from __future__ import annotations

import shlex

import numpy as np

from helpers.explore_data import make_run
from napari_dynamight._widgets.explorer import open_explorer
from napari_dynamight.cli import build_parser, main


def test_help_examples_parse(capsys):
    parser = build_parser("explore")
    for line in parser._subparsers._group_actions[0].choices["explore"].description.splitlines():
        if line.strip().startswith("napari-dynamight explore"):
            args = parser.parse_args(shlex.split(line.strip())[1:])
            assert args.command == "explore"


def test_folder_without_latents_is_one_error_line(tmp_path, capsys):
    assert main(["explore", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "latent_means.npy" in err and "\n" not in err


def test_umap_missing_is_reported_before_napari(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "umap", None)
    folder = make_run(tmp_path / "run", n=30)
    assert main(["explore", str(folder), "--embedding", "umap"]) == 2
    assert "umap-learn" in capsys.readouterr().err


def test_half_both_needs_the_run_folder(tmp_path, capsys):
    folder = make_run(tmp_path / "run", n=30)
    assert main(["explore", str(folder / "particles.star"), "--half", "both"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--half both" in err and "\n" not in err


def test_open_explorer_loads_the_run(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    folder = make_run(tmp_path / "run", n=60)
    widget = open_explorer(viewer, folder)
    np.testing.assert_array_equal(widget.data.latents, np.load(folder / "latent_means.npy"))
    assert widget.view.half == 1 and len(widget.plot.coords) == 36  # 30 of half 1 + 6 validation
