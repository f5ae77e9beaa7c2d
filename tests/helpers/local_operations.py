"""Tiny engine-style operations for the local-process runner's tests (module level, so a spawned
process can import them)."""

from __future__ import annotations

import atexit
import time

from napari_dynamight.engine.progress import Progress


def slow_to_exit(seconds: float):
    """One progress event and the result ``"done"``; the process then needs ``seconds`` to exit."""
    atexit.register(time.sleep, seconds)
    yield Progress("working", 1, 1)
    return "done"
