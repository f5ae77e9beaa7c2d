"""Check an output folder before any work: it must be (or can become) a writable folder.

Every command calls :func:`check_output_folder` first, so a bad path ends in one line naming the
path and the problem instead of a traceback after minutes of work.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import InputError


def _writable(folder: Path) -> bool:
    """True if a file can be created in ``folder`` (tried, since permissions do not bind root and a
    read-only mount passes ``os.access``)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return False
    return True


def check_output_folder(path: str | os.PathLike, option: str = "--output-directory") -> Path:
    """Raise InputError unless ``path`` is a writable folder or can be created as one; returns
    it."""
    path = Path(path)
    existing = path
    while not existing.exists() and not existing.is_symlink():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        raise InputError(f"{existing}: a broken link in {option} {path}; fix or remove it")
    if not existing.is_dir():
        if existing == path:
            raise InputError(
                f"{path}: exists and is a file, not a folder; give a folder for {option}"
            )
        raise InputError(
            f"{path}: cannot be created because {existing} is a file; give a folder for {option}"
        )
    if not _writable(existing):
        where = "" if existing == path else f" (its nearest existing folder {existing} is not)"
        raise InputError(
            f"{path}: not writable{where}; give a folder you can write to for {option}"
        )
    return path
