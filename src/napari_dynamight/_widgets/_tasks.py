"""Run engine operations in napari thread workers: progress bar, Cancel, one-line errors.

:class:`TaskPanel` runs one engine :class:`~napari_dynamight.engine.progress.Progress` generator at
a time (a progress bar, a status line and a Cancel button). :class:`LatestRequestRunner` runs a
plain function for interactive requests (decoding a clicked latent point): at most one call runs and
at most one waits, so rapid clicks never queue and the last click is always served.

superqt's generator worker turns a ``RuntimeError`` raised inside the generator into a *returned*
value, and torch raises ``RuntimeError``; so the operation is wrapped by :func:`_guarded`, which
catches everything itself and returns an :class:`Outcome`. Cancel sets a flag that the wrapper reads
at the next ``yield`` and then closes the engine generator in the worker thread (its outputs are
written atomically, so nothing partial is left).
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

LOGGER = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How an operation ended: ``value`` on success, else ``error`` (None and not cancelled)."""

    value: Any = None
    error: BaseException | None = None
    cancelled: bool = False
    details: str = ""


def one_line(error: BaseException) -> str:
    """The message a user sees: InputError text as is, other errors prefixed with their type."""
    from ..engine.errors import InputError

    text = " ".join(str(error).split())
    if isinstance(error, InputError):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _guarded(operation, cancel: threading.Event):
    """Yield the operation's events; return an :class:`Outcome` instead of raising."""
    try:
        while True:
            if cancel.is_set():
                operation.close()
                return Outcome(cancelled=True)
            try:
                event = next(operation)
            except StopIteration as finished:
                return Outcome(value=finished.value)
            yield event
    except Exception as error:  # shown to the user as one line; the traceback goes to the log
        return Outcome(error=error, details=traceback.format_exc())


def _call(function, args, kwargs) -> Outcome:
    try:
        return Outcome(value=function(*args, **kwargs))
    except Exception as error:
        return Outcome(error=error, details=traceback.format_exc())


def report(outcome: Outcome, title: str) -> None:
    """Show a failed outcome as one notification line (and log its traceback)."""
    if outcome.error is not None:
        LOGGER.info("%s failed:\n%s", title, outcome.details)
        show_error(f"{title}: {one_line(outcome.error)}")


class TaskPanel(QWidget):
    """Progress bar, status line and Cancel button for one engine operation at a time.

    ``start(operation, title, on_done)`` runs the generator in a worker; ``on_done(value)`` is
    called on the main thread with the operation's result if it finished. ``on_progress(event)``
    (optional) sees every event on the main thread. ``last_outcome`` and the ``worker`` attribute
    serve tests.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status)
        self.worker = None
        self.last_outcome: Outcome | None = None
        self._cancel = threading.Event()

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(
        self,
        operation,
        title: str,
        on_done: Callable[[Any], None] | None = None,
        on_progress: Callable[[Any], None] | None = None,
    ):
        """Run ``operation`` (a Progress generator); refuse if one is already running."""
        if self.running:
            operation.close()
            show_info(f"{title}: wait for the running task to finish or cancel it")
            return None
        self._cancel = threading.Event()
        worker = create_worker(_guarded, operation, self._cancel, _start_thread=False)
        worker.yielded.connect(lambda event: self._progress(event, on_progress))
        worker.returned.connect(lambda outcome: self._done(outcome, title, on_done))
        worker.finished.connect(self._finished)
        self.worker = worker
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.status.setText(f"{title}: starting")
        self.cancel_button.setEnabled(True)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop at the operation's next progress event."""
        self._cancel.set()
        self.status.setText("cancelling at the next step ...")

    def _progress(self, event, on_progress) -> None:
        if event.total:
            self.bar.setRange(0, int(event.total))
            self.bar.setValue(int(min(event.step, event.total)))
        parts = [f"{event.stage}: {event.step}" + (f"/{event.total}" if event.total else "")]
        parts += [
            f"{name} {value:.4g}"
            for name, value in event.metrics.items()
            if isinstance(value, (int, float))
        ]
        if event.message:
            parts.append(event.message)
        self.status.setText(", ".join(parts))
        if on_progress is not None:
            on_progress(event)

    def _done(self, outcome: Outcome, title: str, on_done) -> None:
        self.last_outcome = outcome
        self.bar.setRange(0, 1)
        if outcome.cancelled:
            self.bar.setValue(0)
            self.status.setText(f"{title}: cancelled")
        elif outcome.error is not None:
            self.bar.setValue(0)
            self.status.setText(f"{title} failed: {one_line(outcome.error)}")
            report(outcome, title)
        else:
            self.bar.setValue(1)
            self.status.setText(f"{title}: done")
            if on_done is not None:
                try:
                    on_done(outcome.value)
                except Exception as error:  # a bad result is the user's input, shown in one line
                    failed = Outcome(error=error, details=traceback.format_exc())
                    self.last_outcome = failed
                    self.status.setText(f"{title} failed: {one_line(error)}")
                    report(failed, title)

    def _finished(self) -> None:
        self.worker = None
        self.cancel_button.setEnabled(False)


class LatestRequestRunner:
    """Run ``function(*args)`` in a worker for interactive requests; the latest request wins.

    One call runs at a time. A request made while one runs replaces any request still waiting, so
    requests never queue; when the running call ends its result is delivered (``on_result``) and the
    waiting request, if any, starts. Errors go to ``on_error`` (default: one notification line).
    ``served`` counts delivered results; ``worker`` is the running worker (None when idle).
    """

    def __init__(
        self,
        function: Callable,
        on_result: Callable[[Any], None],
        title: str = "decode",
        on_error: Callable[[Outcome], None] | None = None,
    ):
        self.function = function
        self.on_result = on_result
        self.on_error = on_error or (lambda outcome: report(outcome, title))
        self.worker = None
        self.pending: tuple | None = None
        self.served = 0
        self.requested = 0

    @property
    def busy(self) -> bool:
        return self.worker is not None or self.pending is not None

    def request(self, *args, **kwargs) -> None:
        self.requested += 1
        if self.worker is not None:
            self.pending = (args, kwargs)
            return
        self._start(args, kwargs)

    def _start(self, args, kwargs) -> None:
        worker = create_worker(_call, self.function, args, kwargs, _start_thread=False)
        worker.returned.connect(self._returned)
        worker.finished.connect(self._finished)
        self.worker = worker
        worker.start()

    def _returned(self, outcome: Outcome) -> None:
        if outcome.error is not None:
            self.on_error(outcome)
            return
        self.served += 1
        self.on_result(outcome.value)

    def _finished(self) -> None:
        self.worker = None
        if self.pending is not None:
            args, kwargs = self.pending
            self.pending = None
            self._start(args, kwargs)
