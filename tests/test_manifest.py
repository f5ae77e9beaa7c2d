"""The napari manifest: valid, found through the entry point, in the wheel (without test data; the
bundled example files are the only data files)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPOSITORY = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_npe2_validate_passes():
    done = subprocess.run(
        [str(BIN / "npe2"), "validate", "napari-dynamight"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid" in done.stdout


def test_package_manifest_is_the_repository_manifest():
    import napari_dynamight

    packaged = Path(napari_dynamight.__file__).with_name("napari.yaml")
    assert packaged.read_text() == (REPOSITORY / "napari.yaml").read_text()


def test_npe2_discovers_readers_through_the_entry_point():
    import npe2

    manager = npe2.PluginManager()
    manager.discover()
    manifest = manager.get_manifest("napari-dynamight")
    assert manifest.display_name == "DynaMight"
    patterns = {p for reader in manifest.contributions.readers for p in reader.filename_patterns}
    assert {"*.mrc", "*.map", "*.mrcs", "*.star"} <= patterns
    for name in ("particles.star", "map.mrc", "stack.mrcs", "map.map"):
        readers = [r.command for r in manager.iter_compatible_readers([name])]
        assert any(command.startswith("napari-dynamight.") for command in readers), name
    for command in manifest.contributions.commands:  # every python_name resolves to a callable
        module, _, attribute = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), command.id


def test_manifest_commands_are_prefixed_and_used():
    manifest = yaml.safe_load((REPOSITORY / "napari.yaml").read_text())
    assert manifest["name"] == "napari-dynamight"
    ids = {command["id"] for command in manifest["contributions"]["commands"]}
    assert all(i.startswith("napari-dynamight.") for i in ids)
    used = {reader["command"] for reader in manifest["contributions"]["readers"]}
    assert used <= ids


@pytest.mark.slow
def test_wheel_contains_manifest_and_no_test_data(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        manifest = archive.read("napari_dynamight/napari.yaml")
        assert manifest == (REPOSITORY / "napari.yaml").read_bytes()
        entry_points_file = next(n for n in names if n.endswith("entry_points.txt"))
        entry_points = archive.read(entry_points_file).decode()
    assert "napari-dynamight = napari_dynamight:napari.yaml" in entry_points
    assert "napari-dynamight = napari_dynamight.cli:main" in entry_points
    assert "napari_dynamight/cli/__init__.py" in names
    assert "napari_dynamight/_reader.py" in names
    data = {
        n
        for n in names
        if n.startswith("tests/")
        or "/tests/" in n
        or n.endswith((".mrcs", ".mrc", ".dcd", ".pdb", ".star"))
    }
    assert data == {
        f"napari_dynamight/sample_data/{name}"
        for name in ("adk_closed.pdb", "adk_open.pdb", "adk_dims.dcd")
    }
