"""Drive an engine progress generator from the terminal with a tqdm bar.

The bar shows ``step`` of ``total`` for the current stage and, as a postfix, the event's
metrics and message. Ctrl-C closes the generator (the engine's cancel: its outputs are written
atomically, so nothing partial is left) and re-raises; the command line then exits with 130.
Without a terminal (CI, log files) the bar becomes one plain line per stage and every few seconds.
An event with a ``warning`` is printed at once as one line ``warning: ...`` (above the bar).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

from tqdm import tqdm

from ..engine.progress import Progress, ProgressGenerator, stop_when

T = TypeVar("T")


class _LineStream:
    """A stream for logs: each tqdm redraw becomes one line instead of a carriage return."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self._stream.write(line + "\n")

    def flush(self) -> None:
        self._stream.flush()


def _postfix(event: Progress) -> str:
    parts = [
        f"{name}={value:.4g}" if isinstance(value, (int, float)) else f"{name}={value}"
        for name, value in event.metrics.items()
    ]
    if event.message:
        parts.append(event.message)
    return " ".join(parts)


def _is_terminal(stream) -> bool:
    """True for a terminal with a known width (a zero-width pseudo-terminal counts as a log)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False


def _new_bar(description: str, total: int | None, stream) -> tqdm:
    interactive = _is_terminal(stream)
    return tqdm(
        desc=description,
        total=total,
        file=stream if interactive else _LineStream(stream),
        dynamic_ncols=interactive,
        ncols=None if interactive else 100,
        ascii=not interactive,
        mininterval=0.1 if interactive else 5.0,
        leave=True,
    )


_driving = {"file": None, "should_stop": None, "reason": "cancelled"}


@contextlib.contextmanager
def driving(
    file=None, should_stop: Callable[[], bool] | None = None, reason: str = "cancelled"
) -> Iterator[None]:
    """For the block, every :func:`drive` without a ``file`` draws its bar on ``file``, and stops
    its operation (:class:`~napari_dynamight.engine.errors.Cancelled` with ``reason``) at the first
    event after which ``should_stop()`` is true: lets a wrapper run a command unchanged under its
    own rules."""
    before = dict(_driving)
    _driving.update(file=file, should_stop=should_stop, reason=reason)
    try:
        yield
    finally:
        _driving.update(before)


def drive(operation: ProgressGenerator[T], description: str, file=None) -> T:
    """Run ``operation`` to its end under a bar labelled ``description``; return its result."""
    if _driving["should_stop"] is not None:
        operation = stop_when(operation, _driving["should_stop"], _driving["reason"])
    stream = file or _driving["file"] or sys.stderr
    bar = None
    stage = None
    try:
        while True:
            event = next(operation)
            if event.warning:
                print_warnings([event.warning], stream, bar)
                continue
            if event.stage != stage:
                stage = event.stage
                label = f"{description}: {stage}" if stage else description
                if bar is None:
                    bar = _new_bar(label, event.total, stream)
                else:
                    bar.set_description(label, refresh=False)
                    bar.set_postfix_str(_postfix(event), refresh=False)
                    bar.reset(total=event.total)
            elif event.total != bar.total:
                bar.total = event.total
            bar.n = event.step
            bar.set_postfix_str(_postfix(event), refresh=False)
            bar.update(0)
    except StopIteration as finished:
        return finished.value
    except KeyboardInterrupt:
        operation.close()
        raise
    finally:
        if bar is not None:
            bar.close()


def print_warnings(warnings, stream=None, bar=None) -> None:
    """Each warning as one line ``warning: ...`` on ``stream`` (stderr), above a running ``bar``."""
    stream = sys.stderr if stream is None else stream
    for warning in warnings:
        line = "warning: " + " ".join(str(warning).split())
        if bar is not None and _is_terminal(stream):
            bar.write(line, file=stream)
        else:
            stream.write(line + "\n")
            stream.flush()


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (None: torch's default) or stop with a one-line error."""
    if threads is None:
        return
    import torch

    from ..engine.errors import InputError

    if threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def processes_from(args) -> int:
    """``--processes``, or the automatic count for ``--device`` and torch's threads (after
    :func:`set_threads`)."""
    from ..engine.local_processes import automatic_processes

    if args.processes is not None:
        return args.processes
    return automatic_processes(args.device)


def drive_on_main_rank(operation: ProgressGenerator[T], description: str) -> T | None:
    """:func:`drive` on rank 0 of a ``torchrun`` launch (or in one process), silently elsewhere,
    then leave the process group; the result on rank 0, None on the others (which print nothing). On
    a failure the process just exits: torchrun then stops the other ranks."""
    from ..engine import distributed
    from ..engine.progress import run as quietly

    if not distributed.current().is_main:  # one bar and one report per launch, from rank 0
        quietly(operation)
        distributed.shutdown()
        return None
    result = drive(operation, description)
    distributed.shutdown()
    return result
