"""Errors that the user caused and can fix: shown as one line, never as a traceback."""


class InputError(ValueError):
    """Bad input: the message names the file, the column or the value, and what to do.

    The CLI prints it as a single ``error: ...`` line and exits with status 2; the GUI
    shows it in a notification.
    """


class Cancelled(RuntimeError):
    """Raised when a long operation is stopped by its caller before it finished."""
