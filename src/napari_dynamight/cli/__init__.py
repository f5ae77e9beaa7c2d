"""The ``napari-dynamight`` command line: one subcommand per pipeline stage.

Each command is a module ``cli/<name>.py`` with a module docstring (its ``--help`` text, with
a real example), ``add_arguments(parser)`` and ``run(args) -> int``. Only the module of the
command being run is imported; the one-line summaries for ``napari-dynamight --help`` are read
from the modules' source without importing them, so ``--help`` never loads torch.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import errno
import importlib
import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from .. import __version__

# Command names in pipeline order; ``fit-consensus`` lives in ``cli/fit_consensus.py``.
COMMANDS: tuple[str, ...] = (
    "info",
    "simulate",
    "fit-consensus",
    "optimize-deformations",
    "decode",
    "optimize-inverse-deformations",
    "reconstruct",
    "model-bias",
    "explore",
    "demo",
)


def module_name(command: str) -> str:
    """The module that implements ``command``."""
    return f"{__name__}.{command.replace('-', '_')}"


def _docstring(command: str) -> str | None:
    """The module docstring of ``command`` read from its source, or None if the module is absent."""
    spec = importlib.util.find_spec(module_name(command))
    if spec is None or spec.origin is None:
        return None
    with open(spec.origin, encoding="utf-8") as handle:
        return ast.get_docstring(ast.parse(handle.read())) or ""


def available_commands() -> dict[str, str]:
    """``{command: module docstring}`` for every registered command whose module exists."""
    found = {}
    for command in COMMANDS:
        doc = _docstring(command)
        if doc is not None:
            found[command] = doc
    return found


def _selected(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(
    selected: str | None = None, parser_class=argparse.ArgumentParser
) -> argparse.ArgumentParser:
    """The argument parser; only the ``selected`` command's module is imported and configured.
    ``parser_class``: an ``argparse.ArgumentParser`` subclass (e.g. one whose ``error`` raises)."""
    parser = parser_class(
        prog="napari-dynamight",
        description="DynaMight: continuous molecular motions from cryo-EM particle images.",
        epilog="Run 'napari-dynamight <command> --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for command, doc in available_commands().items():
        summary = doc.strip().splitlines()[0] if doc.strip() else ""
        sub = subparsers.add_parser(
            command,
            help=summary,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if command == selected:
            module = importlib.import_module(module_name(command))
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (e.g. from SLURM) or SIGHUP: cancels like Ctrl-C; the exit status is 128 + the
    signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame) -> None:
    for number in (signal.SIGTERM, signal.SIGHUP):  # a second signal must not break the cleanup
        signal.signal(number, signal.SIG_IGN)
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_cancel() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` for the duration (main thread only). A signal
    the caller ignores stays ignored: ``nohup napari-dynamight ...`` keeps running when the terminal
    closes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {
        number: signal.signal(number, _terminate)
        for number in (signal.SIGTERM, signal.SIGHUP)
        if signal.getsignal(number) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-dynamight`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_selected(argv)).parse_args(argv)
    return execute(lambda: args.run(args))


def execute(command) -> int:
    """Call ``command()`` (returning an exit status or None) the way every command line runs:
    SIGTERM and SIGHUP cancel; bad input, a cancel and a full disk end in one line on stderr and the
    exit status of the table in docs/cli.md; any other exception is a bug and propagates."""
    from ..engine.errors import Cancelled, InputError

    try:
        with _signals_cancel():
            return int(command() or 0)
    except InputError as error:
        message = " ".join(str(error).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    except Terminated as signalled:
        print(f"cancelled ({signal.Signals(signalled.signum).name})", file=sys.stderr)
        return 128 + signalled.signum
    except (KeyboardInterrupt, Cancelled):
        print("cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into a program that stopped reading (e.g. `| head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as error:
        if error.errno not in _DISK_ERRORS:
            raise
        # A full disk or a folder that became read-only during the run: outputs are written
        # atomically, so nothing half-written is left; say which file could not be written.
        print(
            f"error: {error.filename or ''}: {error.strerror}; free space or fix the permissions, "
            "then run the command again (with --resume where it has one)",
            file=sys.stderr,
        )
        return 1
