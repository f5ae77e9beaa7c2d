"""Write several files as one set: all or none of them change, and a marker written last says so.

Every file is first written to a hidden temporary next to its target (``.NAME.XXXXXXXX.tmp.EXT``,
the pattern ``leftovers.py`` removes). Only when all are complete is the old marker removed, the
files renamed into place (with SIGINT, SIGTERM and SIGHUP held back for those few renames) and the
new marker written, listing each file and its size. A set whose marker is missing, or disagrees with
the files, was not completed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import InputError
from .atomic import atomic_path

_HELD = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextlib.contextmanager
def file_set(
    targets: Sequence[str | os.PathLike], marker: str | os.PathLike
) -> Iterator[list[Path]]:
    """Yield one temporary path per target; on success publish them all, then write ``marker``."""
    targets = [Path(t) for t in targets]
    temporaries = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent
            )
            os.close(fd)
            temporaries.append(Path(name))
        yield temporaries
        record = {"files": {t.name: os.path.getsize(tmp) for t, tmp in zip(targets, temporaries)}}
        with _signals_held():
            Path(marker).unlink(missing_ok=True)
            for target, tmp in zip(targets, temporaries):
                os.replace(tmp, target)
            with atomic_path(marker) as tmp:
                tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    finally:
        for tmp in temporaries:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def check_file_set(marker: str | os.PathLike) -> None:
    """Raise InputError unless ``marker`` exists and every file it lists has the recorded size."""
    marker = Path(marker)
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(
            f"{marker}: missing or unreadable, so the files beside it were not written "
            "completely; run the command that writes them again"
        ) from None
    for name, size in files.items():
        path = marker.parent / name
        if not path.is_file() or path.stat().st_size != size:
            raise InputError(
                f"{path}: does not match {marker.name} (changed or written incompletely); run the "
                "command that writes it again"
            )
