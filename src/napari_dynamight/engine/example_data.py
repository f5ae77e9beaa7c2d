"""Where the bundled example files are: the adenylate kinase closed state, open state and the
closed-to-open trajectory, shipped as package data in ``napari_dynamight/sample_data/`` so the demo
and napari's sample data work from an installed package as well as from a source checkout."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .errors import InputError

PACKAGE = "napari_dynamight.sample_data"
STRUCTURE, OPEN_STRUCTURE, TRAJECTORY = "adk_closed.pdb", "adk_open.pdb", "adk_dims.dcd"


def example_file(name: str) -> Path:
    """The path of a bundled example file (one of the names above).

    A path on disk, not a zip member: the trajectory reader memory-maps the file, and pip installs
    packages as plain folders. Callers check that it exists (:func:`check_example_file`)."""
    return Path(str(files(PACKAGE).joinpath(name)))


EXAMPLE_STRUCTURE = example_file(STRUCTURE)
EXAMPLE_TRAJECTORY = example_file(TRAJECTORY)


def check_example_file(path: Path, option: str) -> None:
    """Refuse a missing example file, naming the ``option`` that replaces it."""
    if not Path(path).is_file():
        raise InputError(
            f"{path}: example file not found; reinstall napari-dynamight or give {option} FILE"
        )
