"""Where the example data are: adenylate kinase's closed structure and its closed-to-open trajectory.

The demo and napari's sample data simulate particles from them. They ship with the source checkout
(tests/data/adk), not with the installed package.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InputError

REPOSITORY = Path(__file__).resolve().parents[3]
EXAMPLE_STRUCTURE = REPOSITORY / "tests" / "data" / "adk" / "adk_closed.pdb"
EXAMPLE_TRAJECTORY = REPOSITORY / "tests" / "data" / "adk" / "adk_dims.dcd"


def check_example_file(path: Path, option: str) -> None:
    """Refuse a missing example file, saying where the data live and which ``option`` replaces it."""
    if not path.is_file():
        raise InputError(
            f"{path}: example file not found; the demo data live in a source checkout "
            f"(tests/data/adk/), so run the demo from one or give {option} FILE"
        )
