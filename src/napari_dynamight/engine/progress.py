"""The one way long engine operations report progress and honour cancellation.

A long operation is a generator: it yields :class:`Progress` events and finally
``return``s its result. The GUI runs the generator in a napari thread worker (whose
``quit()`` takes effect at the next ``yield``); the CLI drives it with a progress bar.
A consumer cancels by simply not asking for the next event (``generator.close()``):
operations write their outputs atomically, so a cancelled run leaves no partial file.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import Cancelled

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One progress event: ``step`` of ``total`` units of work in ``stage``; ``warning``, when not
    empty, is a one-line warning the user must see (the CLI prints it, the GUI shows it)."""

    stage: str
    step: int
    total: int | None = None
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    warning: str = ""

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.step / self.total)


ProgressGenerator = Generator[Progress, None, T]


def run(
    operation: ProgressGenerator[T],
    on_progress: Callable[[Progress], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> T:
    """Drive ``operation`` to its end and return its result.

    ``on_progress`` sees every event; if ``should_stop`` returns true the generator is
    closed and :class:`Cancelled` is raised.
    """
    try:
        while True:
            event = next(operation)
            if on_progress is not None:
                on_progress(event)
            if should_stop is not None and should_stop():
                operation.close()
                raise Cancelled(f"{event.stage} cancelled at step {event.step}")
    except StopIteration as finished:
        return finished.value


def stop_when(
    operation: ProgressGenerator[T], should_stop: Callable[[], bool], reason: str = "cancelled"
) -> ProgressGenerator[T]:
    """``operation``'s events and result, but after an event for which ``should_stop()`` is true the
    operation is closed (its outputs are written atomically, so nothing partial stays) and
    :class:`Cancelled` is raised with ``reason``. Closing this generator closes ``operation``."""
    try:
        while True:
            try:
                event = next(operation)
            except StopIteration as finished:
                return finished.value
            yield event
            if should_stop():
                raise Cancelled(f"{reason} ({event.stage}, step {event.step})")
    finally:
        operation.close()
