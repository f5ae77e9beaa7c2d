"""The worker helpers: progress, results, one-line errors, cancel, and latest-request-wins."""

from __future__ import annotations

import threading
import time

import pytest

from napari_dynamight._widgets._tasks import LatestRequestRunner, TaskPanel, one_line
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.progress import Progress


def counting(n: int, fail: BaseException | None = None, closed: list | None = None):
    try:
        for step in range(1, n + 1):
            yield Progress("count", step, n, metrics={"loss": 1.0 / step})
            if fail is not None and step == 2:
                raise fail
        return n * 10
    finally:
        if closed is not None:
            closed.append(True)


def run_panel(qtbot, operation):
    panel = TaskPanel()
    qtbot.addWidget(panel)
    results = []
    assert panel.start(operation, "count", results.append) is not None
    # the panel forgets its worker in the worker's `finished` callback: then no worker is left
    qtbot.waitUntil(lambda: not panel.running, timeout=10_000)
    return panel, results


def test_panel_delivers_the_result_and_shows_progress(qtbot):
    panel, results = run_panel(qtbot, counting(5))
    assert results == [50]
    assert panel.bar.value() == panel.bar.maximum() == 1
    assert panel.status.text() == "count: done"
    assert not panel.running and not panel.cancel_button.isEnabled()


@pytest.mark.parametrize(
    "error", [InputError("x.star: no column rlnDefocusU;\n add it"), RuntimeError("torch failure")]
)
def test_errors_become_one_line_and_never_a_result(qtbot, error):
    panel, results = run_panel(qtbot, counting(5, fail=error))
    assert results == []
    assert panel.last_outcome.error is error
    assert "\n" not in panel.status.text()
    assert panel.status.text().startswith("count failed: ")
    assert one_line(error) in panel.status.text()
    assert one_line(InputError("a\n b")) == "a b"
    assert one_line(RuntimeError("boom")) == "RuntimeError: boom"


def test_cancel_closes_the_engine_generator(qtbot):
    started = threading.Event()
    closed = []

    def endless():
        try:
            step = 0
            while True:
                step += 1
                started.set()
                time.sleep(0.01)
                yield Progress("endless", step)
        finally:
            closed.append(True)

    panel = TaskPanel()
    qtbot.addWidget(panel)
    results = []
    worker = panel.start(endless(), "endless", results.append)
    assert started.wait(5)
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        panel.cancel_button.click()
    assert panel.last_outcome.cancelled and results == [] and closed == [True]
    assert panel.status.text() == "endless: cancelled"


def test_latest_request_wins(qtbot):
    calls = []

    def slow(value):
        calls.append(value)
        time.sleep(0.2)
        return value

    shown = []
    runner = LatestRequestRunner(slow, shown.append)
    for value in range(6):
        runner.request(value)
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert calls == [0, 5]  # the first call ran, 1-4 were replaced while waiting, 5 was served
    assert shown == [0, 5] and runner.served == 2 and runner.requested == 6


def test_latest_request_errors_are_reported(qtbot):
    def bad(_):
        raise InputError("latent point has 3 values; the run has 6 latent dimensions")

    failures = []
    runner = LatestRequestRunner(bad, lambda value: None, on_error=failures.append)
    runner.request(1)
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert len(failures) == 1 and isinstance(failures[0].error, InputError)
