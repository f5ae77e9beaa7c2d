"""Remove what a killed process left behind: hidden temporary files and staging folders.

Atomic writes (``atomic.py``) go through ``.NAME.XXXXXXXX.tmp[.EXT]`` files and ``simulate`` stages
its outputs in a hidden ``.simulate-XXXXXXXX`` folder; a ``kill -9`` leaves them. The next writer of
the folder, once it holds the folder's lock (``lock.py``), removes them before writing anything.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .lock import LOCK_NAME

# mkstemp/mkdtemp add 8 characters of [a-z0-9_] between the prefix and the suffix.
TEMPORARY_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^./]+)?$")
STAGING_FOLDER = re.compile(r"^\.(simulate|old-ground-truth)-[a-z0-9_]{8}$")


def find_leftovers(folder: str | os.PathLike) -> list[Path]:
    """The temporary files and staging folders anywhere below ``folder`` (none if it is absent),
    except in subfolders locked by another writer."""
    found: list[Path] = []
    root = Path(folder)
    if not root.is_dir():
        return found
    for current, folders, files in os.walk(root):
        here = Path(current)
        found += [here / name for name in files if TEMPORARY_FILE.match(name)]
        staging = [name for name in folders if STAGING_FOLDER.match(name)]
        found += [here / name for name in staging]
        # a subfolder with its own lock file belongs to another writer (e.g. decode's maps inside a
        # run)
        folders[:] = [
            name
            for name in folders
            if name not in staging and not (here / name / LOCK_NAME).exists()
        ]
    return found


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Delete :func:`find_leftovers` of ``folder``; returns what was removed."""
    removed = find_leftovers(folder)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed
