"""Command-line options made from a stage's declared settings (``engine/settings_record.py``).

``add_options(parser, Settings)`` adds one flag per public setting, with the declared type, default,
choices and help (limits and default appended); ``settings_from_args(Settings, args)`` reads them
back into the settings and checks the limits, so a value out of range ends in one line naming the
flag (exit status 2) before anything is read or written.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..engine.settings_record import Declared


def help_text(setting: Declared) -> str:
    """The declared help with the unit, the limits and the default, e.g.
    ``latent dimension (1 to 128; default: 6)``."""
    o = setting.option
    parts = []
    if o.unit:
        parts.append(o.unit)
    limited = o.minimum is not None or o.maximum is not None
    if setting.type in (int, float) and not o.choices and limited:
        parts.append(setting.limits_text())
    if setting.default is None:
        parts.append(f"default: {o.auto or 'none'}")
    elif setting.type is not bool:
        default = f"{setting.default:g}" if isinstance(setting.default, float) else setting.default
        parts.append(f"default: {default}")
    return f"{o.help} ({'; '.join(parts)})".replace("%", "%%")


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, settings_class) -> None:
    """One flag per public declared setting of ``settings_class``."""
    for setting in settings_class.declared():
        o = setting.option
        keywords: dict = {
            "dest": setting.dest,
            "help": help_text(setting),
            "default": setting.default,
        }
        if setting.type is bool:
            keywords["action"] = argparse.BooleanOptionalAction if setting.default else "store_true"
        else:
            keywords["type"] = Path if o.file else setting.type
            if o.choices:
                keywords["choices"] = o.choices
            if o.metavar or o.file:
                keywords["metavar"] = o.metavar or "FILE"
        parser.add_argument(setting.flag, **keywords)


def settings_from_args(settings_class, args: argparse.Namespace, base=None):
    """The settings that ``args`` ask for (over ``base``, default: the defaults), limits checked."""
    values = {}
    for setting in settings_class.declared():
        value = getattr(args, setting.dest)
        values[setting.name] = str(value.resolve()) if isinstance(value, Path) else value
    settings = replace(base if base is not None else settings_class(), **values)
    settings.check_limits()
    return settings


def add_processes_argument(parser: argparse.ArgumentParser) -> None:
    """``--processes``: the half sets side by side in local processes (default automatic)."""
    parser.add_argument(
        "--processes",
        type=int,
        metavar="P",
        help="processes on this machine, the half sets side by side, the threads shared among "
        "them (default: 2 on a CPU given 2 or more threads, else 1); with --device cuda each "
        "process takes its own GPU",
    )
