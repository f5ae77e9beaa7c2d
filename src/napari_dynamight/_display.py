"""Whether napari can draw here: a display for a window, or a virtual one (Xvfb) for pictures.

napari renders only into a shown window on an X display (an offscreen Qt platform gives black
frames), so without a display :func:`virtual_display` starts an Xvfb server for the duration.
Nothing here imports Qt: the command line checks the display before any long work starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys

from .engine.errors import InputError

SCREEN = "1800x1200x24"


def check_display() -> None:
    """Fail before the work starts if napari could not open a window (e.g. over plain SSH)."""
    has_display = any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY"))
    if sys.platform.startswith("linux") and not has_display and "QT_QPA_PLATFORM" not in os.environ:
        raise InputError(
            "no display to open napari on (DISPLAY is not set); run with --headless (make demo "
            "HEADLESS=1) or from a desktop session"
        )


def xvfb_needed() -> str | None:
    """The Xvfb program if there is no X display to render on (None if there is one); raises
    InputError (before any work is done) if neither is available."""
    if os.environ.get("DISPLAY"):
        return None
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise InputError(
            "no display for napari's screenshots and no Xvfb to make one: install xvfb (apt "
            "install xvfb) or run under xvfb-run"
        )
    return xvfb


@contextlib.contextmanager
def virtual_display():
    """Keep the current X display, or start Xvfb and point DISPLAY at it until the block ends."""
    xvfb = xvfb_needed()
    if xvfb is None:
        yield None
        return
    read, write = os.pipe()
    qt_before = _qt_application_exists()
    process = subprocess.Popen(
        [xvfb, "-displayfd", str(write), "-screen", "0", SCREEN, "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_end_with_parent,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()  # Xvfb writes its display number once it is ready
    if not number:
        process.kill()
        raise InputError("Xvfb did not start; run the demo under xvfb-run instead")
    saved = {name: os.environ.pop(name, None) for name in ("DISPLAY", "QT_QPA_PLATFORM")}
    os.environ["DISPLAY"] = f":{number}"
    try:
        yield process
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
        if qt_before or not _qt_application_exists():
            process.terminate()
            process.wait(timeout=10)
        # else a Qt application opened on this display keeps its connection until the process
        # ends (ending Xvfb under it makes Qt abort in its X11 error handler, which can hang
        # instead of exiting): Xvfb then ends with this process (``_end_with_parent``)


def _qt_application_exists() -> bool:
    """Whether a Qt application exists in this process (looked up, never imported)."""
    for binding in ("PyQt5", "PyQt6", "PySide2", "PySide6"):
        widgets = sys.modules.get(f"{binding}.QtWidgets")
        if widgets is not None and widgets.QApplication.instance() is not None:
            return True
    return False


def _end_with_parent() -> None:
    """In the Xvfb child, before it starts: on Linux, ask for SIGTERM when this process ends."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
