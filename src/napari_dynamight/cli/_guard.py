"""What every writing command does before its work: check the output folder, take its lock, and
remove what a killed earlier process left there.

Under ``torchrun`` only rank 0 (the one that writes) locks and cleans. A folder that did not exist
and is still empty at the end (the command stopped on a bad input) is removed again, so a refused
command leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def writing(folder: str | os.PathLike, option: str, command: str, outputs: str | None = None) -> Iterator[Path]:
    """Check ``folder`` (named ``option`` in messages), hold its lock and clean it for the block.

    ``outputs``: a subfolder the command writes into (e.g. ``inverse`` of a run folder); then
    ``folder`` must already exist and the subfolder is checked too."""
    from ..engine.errors import InputError
    from ..engine.io.leftovers import remove_leftovers
    from ..engine.io.lock import folder_lock
    from ..engine.io.output_paths import check_output_folder

    folder = Path(folder)
    if outputs is not None:
        if not folder.is_dir():
            raise InputError(f"{folder}: not a finished deformation run (folder not found); give the folder "
                             "optimize-deformations wrote")
        check_output_folder(folder / outputs, f"{option}/{outputs}")
    folder = check_output_folder(folder, option)
    if not _is_main_rank():
        yield folder
        return
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        with folder_lock(folder, command):
            remove_leftovers(folder)
            yield folder
    finally:
        for path in created:  # innermost first; stop at the first that holds something
            try:
                path.rmdir()
            except OSError:
                break
