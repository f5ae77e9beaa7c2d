"""What every writer does before its work: check the output folder, take its lock, and remove
what a killed earlier process left there. A command holds :func:`writing` around its work; a napari
widget wraps its engine generator in :func:`holding`, so the lock lasts as long as its worker.

Under ``torchrun`` only rank 0 (the one that writes) locks and cleans. A folder that did not exist
and is still empty at the end (the command stopped on a bad input) is removed again, so a refused
command leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError
from ..progress import ProgressGenerator
from .leftovers import remove_leftovers
from .lock import folder_lock
from .output_paths import check_output_folder


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def writing(
    folder: str | os.PathLike, option: str, command: str, outputs: str | None = None
) -> Iterator[Path]:
    """Check ``folder`` (named ``option`` in messages), hold its lock and clean it for the block.

    ``outputs``: a subfolder the command writes into (e.g. ``inverse`` of a run folder); then
    ``folder`` must already exist and the subfolder is checked too."""
    folder = Path(folder)
    if outputs is not None:
        if not folder.is_dir():
            raise InputError(
                f"{folder}: not a finished deformation run (folder not found); give the folder "
                "optimize-deformations wrote"
            )
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


def holding(
    operation: ProgressGenerator,
    folder: str | os.PathLike,
    option: str,
    command: str,
    outputs: str | None = None,
) -> ProgressGenerator:
    """``operation``'s events under :func:`writing`: the lock is taken at the first step (in the
    thread that drives it) and released when the operation returns, raises or is closed."""
    with writing(folder, option, command, outputs):
        return (yield from operation)
