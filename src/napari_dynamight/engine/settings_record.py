"""The stages' settings: each option declared once, on its dataclass field.

A stage's settings are a frozen dataclass whose fields are made with :func:`option`: name (the
field), type (the annotation), default, limits, help, unit, and how the option is spelled on the
command line (``flag``) and on the napari form (``label``). The command line (``cli/_options.py``)
and the napari forms (``_widgets/_options.py``) are generated from these declarations, and
:meth:`SettingsRecord.check_limits` checks the limits with messages that name the flag (or, on the
form, the label). Options with ``public=False`` are engine settings: checked and stored with the
run, on neither the command line nor the forms. This module imports no Qt, napari, magicgui or
argparse.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TypeVar

from .errors import InputError

T = TypeVar("T", bound="SettingsRecord")
OPTION_KEY = "napari_dynamight.option"


@dataclass(frozen=True)
class Option:
    """How one setting is offered and checked (see :func:`option`)."""

    help: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False  # the value must be above ``minimum``
    exclusive_maximum: bool = False  # the value must be below ``maximum``
    choices: tuple[str, ...] | None = None
    unit: str = ""  # of the value, e.g. "Å"; shown in the help and on the form
    flag: str | None = None  # command-line flag without "--" (default: the field name, dashes)
    label: str | None = None  # form label (default: the flag, spaces)
    metavar: str | None = None  # command-line placeholder of the value
    step: float | None = None  # form step of a float (also sets its decimals)
    auto: str | None = None  # the option may be None, meaning this (the form shows 0 or empty)
    file: bool = False  # a file path (str); None: no file
    form: bool = True  # False: the napari form has a control of its own for it (say which in help)
    public: bool = True  # False: an engine setting, on neither the command line nor the forms


def option(default, help: str, **declaration) -> typing.Any:
    """A settings dataclass field with its declaration, e.g.
    ``epochs: int = option(60, "maximum epochs", minimum=1, maximum=100_000)``."""
    return dataclasses.field(default=default, metadata={OPTION_KEY: Option(help, **declaration)})


@dataclass(frozen=True)
class Declared:
    """One declared setting: field name, value type (int, float, str or bool), default and
    declaration."""

    name: str
    type: type
    default: typing.Any
    option: Option

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--positional-frequencies``."""
        return "--" + (self.option.flag or self.name.replace("_", "-"))

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments and of the form widget (the flag, underscores)."""
        return self.flag[2:].replace("-", "_")

    @property
    def label(self) -> str:
        """The form label, with the unit."""
        label = self.option.label or self.flag[2:].replace("-", " ")
        return f"{label} ({self.option.unit})" if self.option.unit else label

    @property
    def display_name(self) -> str:
        """What messages call it: the flag if it is on the command line, else its words."""
        return self.flag if self.option.public else self.name.replace("_", " ")

    def limits_text(self) -> str:
        """The allowed values in words, e.g. ``1-128`` or ``[0, 0.5)``."""
        o = self.option
        if o.choices:
            return ", ".join(o.choices)
        low, high = "(-inf", "inf)"
        if o.minimum is not None:
            low = ("(" if o.exclusive_minimum else "[") + _shown(o.minimum)
        if o.maximum is not None:
            high = _shown(o.maximum) + (")" if o.exclusive_maximum else "]")
        return f"{low}, {high}"

    def problem(self, value) -> str | None:
        """Why ``value`` is not allowed ("must be at least 1"), or None if it is."""
        o = self.option
        if value is None:
            return None if (o.auto is not None or o.file) else "must be given"
        if o.choices is not None:
            return None if value in o.choices else f"must be one of {', '.join(o.choices)}"
        if self.type not in (int, float):
            return None
        low, high = o.minimum, o.maximum
        below = low is not None and not (value > low if o.exclusive_minimum else value >= low)
        above = high is not None and not (value < high if o.exclusive_maximum else value <= high)
        if not (below or above):
            return None
        if low is not None and high is not None and (o.exclusive_minimum or o.exclusive_maximum):
            return f"must be in {self.limits_text()}"
        if below and o.exclusive_minimum:
            return "must be positive" if low == 0 else f"must be above {_shown(low)}"
        if below:
            return "must not be negative" if low == 0 else f"must be at least {_shown(low)}"
        return f"must be at most {_shown(high)}"


def _shown(value) -> str:
    """A value as the user typed it: numbers plainly, text quoted."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value or value != value else repr(value)
    return str(value)


def _value_type(annotation) -> type:
    """int, float, str or bool from a field annotation (``X | None`` gives X)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is Path:
        return str
    if annotation not in (int, float, str, bool):
        raise TypeError(f"a declared setting must be int, float, str or bool, not {annotation}")
    return annotation


def declared(settings_class, public: bool | None = True) -> list[Declared]:
    """The declared settings of a settings dataclass, in field order: the public ones (the command
    line and the forms), with ``public=False`` the engine's own, with None all."""
    hints = typing.get_type_hints(settings_class)
    found = []
    for f in fields(settings_class):
        declaration = f.metadata.get(OPTION_KEY)
        if declaration is None:
            raise TypeError(f"{settings_class.__name__}.{f.name} is not declared with option()")
        if public is None or declaration.public == public:
            found.append(Declared(f.name, _value_type(hints[f.name]), f.default, declaration))
    return found


class SettingsRecord:
    """Mixin for frozen settings dataclasses declared with :func:`option`, stored in checkpoints and
    run files as plain dictionaries."""

    @classmethod
    def declared(cls, public: bool | None = True) -> list[Declared]:
        return declared(cls, public)

    @classmethod
    def option(cls, name: str) -> str:
        """What messages call field ``name``: its command-line flag (``--`` and dashes), or its
        words for an engine setting."""
        return next(d for d in declared(cls, None) if d.name == name).display_name

    def to_dict(self) -> dict:
        return asdict(self)

    def check_limits(self, name: Callable[[Declared], str] | None = None) -> None:
        """One-line InputError for the first value outside its declared limits, naming the option by
        ``name(declared)`` (default: its flag; the forms pass their labels)."""
        for setting in declared(type(self), None):
            value = getattr(self, setting.name)
            problem = setting.problem(value)
            if problem is not None:
                public = name is not None and setting.option.public
                called = name(setting) if public else setting.display_name
                raise InputError(f"{called} {_shown(value)}: {problem}")

    @classmethod
    def from_dict(cls: type[T], values: dict) -> T:
        """Settings from a dictionary; keys this version does not know (newer runs) are ignored and
        missing keys (older runs) take their defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def refuse_changed_settings(
    checkpoint: Path,
    saved: SettingsRecord,
    requested: SettingsRecord,
    changeable: tuple[str, ...] = ("epochs",),
) -> None:
    """One-line InputError if a resumed run asks for other settings than its checkpoint was made
    with (except the ``changeable`` ones)."""
    old, new = saved.to_dict(), requested.to_dict()
    changed = [k for k, v in old.items() if k not in changeable and new[k] != v]
    if changed:
        name = changed[0]
        raise InputError(
            f"{checkpoint}: was made with {name}={old[name]!r}, not {new[name]!r}; "
            "resume with the run's original options"
        )
