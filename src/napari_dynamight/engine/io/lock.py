"""One writer per folder: a lock file holding the writer's host and process id.

The lock file (``.dynamight.lock``) is also held with ``flock`` while the writer runs, so a writer
that died (even by ``kill -9``) leaves a stale file that the next writer takes over: one naming a
process of this host that no longer exists, or (where the file system has ``flock``) of another
host. A lock held by a live writer refuses the second one with one line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError

LOCK_NAME = ".dynamight.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(text: str) -> dict:
    try:
        owner = json.loads(text)
        return owner if isinstance(owner, dict) else {}
    except ValueError:
        return {}


def _refuse(folder: Path, owner: dict) -> InputError:
    who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')}"
    return InputError(
        f"{folder}: in use by {who} ({owner.get('command', 'another command')}); wait for it to "
        f"finish, or delete {folder / LOCK_NAME} if that process is no longer running"
    )


def _try_flock(handle) -> bool | None:
    """True: locked; False: another open file holds it; None: this file system has no flock."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return None
        raise
    return True


def acquire(folder: str | os.PathLike, command: str = "") -> object:
    """Take the lock of ``folder`` (created if needed) or raise InputError naming the holder.

    Returns a handle for :func:`release`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    host, pid = socket.gethostname(), os.getpid()
    for _ in range(5):
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held while the lock is)
        locked = _try_flock(handle)
        if locked is False:
            handle.seek(0)
            owner = _holder(handle.read())
            handle.close()
            raise _refuse(folder, owner)
        try:
            same_file = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if not same_file:  # the previous holder removed it between our open and flock: start again
            handle.close()
            continue
        handle.seek(0)
        owner = _holder(handle.read())
        other = owner.get("pid") not in (None, pid)
        # A live process of this host named in the file still holds it; one of another host does too
        # unless the file system has flock (then holding the flock proves that writer is gone).
        same_host = owner.get("host") == host
        if other and (
            (same_host and _alive(int(owner["pid"]))) or (not same_host and locked is None)
        ):
            handle.close()
            raise _refuse(folder, owner)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"host": host, "pid": pid, "command": command}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        return handle
    raise InputError(
        f"{folder}: the lock {path} keeps changing; another writer is starting, try again"
    )


def release(handle) -> None:
    """Remove the lock file and let it go (the file first, so no one waits on a removed file)."""
    path = Path(handle.name)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    handle.close()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, command: str = "") -> Iterator[None]:
    """Hold the lock of ``folder`` for the ``with`` block."""
    handle = acquire(folder, command)
    try:
        yield
    finally:
        release(handle)
