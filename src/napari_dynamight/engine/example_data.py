"""Where the bundled example files are: the adenylate kinase closed state, open state and the
closed-to-open trajectory, shipped as package data in ``napari_dynamight/sample_data/`` so the demo
and napari's sample data work from an installed package as well as from a source checkout."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PACKAGE = "napari_dynamight.sample_data"
STRUCTURE, OPEN_STRUCTURE, TRAJECTORY = "adk_closed.pdb", "adk_open.pdb", "adk_dims.dcd"


def example_file(name: str) -> Path:
    """The path of a bundled example file (one of the names above).

    A path on disk, not a zip member: the trajectory reader memory-maps the file, and pip installs
    packages as plain folders. Callers check that it exists (``InputError`` with their own hint)."""
    return Path(str(files(PACKAGE).joinpath(name)))
