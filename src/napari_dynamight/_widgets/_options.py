"""napari form controls made from a stage's declared settings (``engine/settings_record.py``).

:class:`OptionsForm` makes one magicgui control per public declared setting (a ``SpinBox`` or
``FloatSpinBox`` with the declared limits, a ``ComboBox`` of the choices, a ``CheckBox``, a
``FileEdit``), labelled and with the help as tooltip, in declaration order; it reads them back into
the settings and fills them from settings. A setting that may be None (``auto``) shows as 0 in a
spin box, or as an empty text field for a float or a text. Settings declared with ``form=False``
have a control of the widget's own (e.g. the consensus threshold slider, whose range follows the
map).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, LineEdit, SpinBox

from ..engine.errors import InputError
from ..engine.settings_record import Declared

FLOAT_STEP = 0.01  # of a float without a declared step


def form_label(setting: Declared) -> str:
    """The control's label: the declared label (with unit), and what 0 / empty means for
    ``auto``."""
    auto = setting.option.auto
    if auto is None:
        return setting.label
    return f"{setting.label} ({'0' if setting.type is int else 'empty'}: {auto})"


def form_limits(setting: Declared) -> tuple[float, float]:
    """The control's (minimum, maximum): the declared limits, one step inside an exclusive one; 0
    for the ``auto`` of an integer (0 stands for None)."""
    o = setting.option
    step = (o.step or FLOAT_STEP) if setting.type is float else 1
    low = o.minimum + (step if o.exclusive_minimum else 0)
    high = o.maximum - (step if o.exclusive_maximum else 0)
    if o.auto is not None and setting.type is int:
        low = 0
    return low, high


def make_control(setting: Declared):
    """The magicgui control of one declared setting, showing its default."""
    o = setting.option
    common = {"label": form_label(setting), "tooltip": o.help}
    if setting.type is bool:
        return CheckBox(text=form_label(setting), value=setting.default, tooltip=o.help)
    if o.choices is not None:
        return ComboBox(choices=list(o.choices), value=setting.default, **common)
    if o.file:
        return FileEdit(mode="r", value=setting.default or "", **common)
    if setting.type is float and o.auto is not None:
        return LineEdit(value="" if setting.default is None else f"{setting.default:g}", **common)
    if setting.type is str:
        return LineEdit(value=setting.default or "", **common)
    if o.minimum is None or o.maximum is None:
        raise TypeError(f"{setting.name}: a setting on the form needs a minimum and a maximum")
    low, high = form_limits(setting)
    if setting.type is int:
        return SpinBox(min=int(low), max=int(high), value=setting.default or 0, **common)
    return FloatSpinBox(
        min=low, max=high, step=o.step or FLOAT_STEP, value=setting.default, **common
    )


class OptionsForm:
    """The form controls of ``settings_class``'s public settings (``form=True``), by their
    command-line names with underscores (``controls["positional_frequencies"]``)."""

    def __init__(self, settings_class):
        self.settings_class = settings_class
        self.declared = [s for s in settings_class.declared() if s.option.form]
        self.controls = {s.dest: make_control(s) for s in self.declared}

    def __getitem__(self, dest: str):
        return self.controls[dest]

    def attach(self, widget) -> None:
        """Make each control an attribute of ``widget`` (``widget.epochs``) where the name is free
        (Qt's own ``width``, ``depth``... stay reachable as ``form["width"]``)."""
        for dest, control in self.controls.items():
            if not hasattr(widget, dest):
                setattr(widget, dest, control)

    def value(self, setting: Declared):
        """The control's value as the setting's value (None for an empty ``auto``)."""
        value = self.controls[setting.dest].value
        o = setting.option
        if o.file:
            return None if value is None or str(value) in ("", ".") else str(Path(value).resolve())
        if setting.type is float and o.auto is not None:
            text = str(value).strip()
            if not text:
                return None
            try:
                return float(text)
            except ValueError:
                raise InputError(
                    f"{form_label(setting)}: {text!r} is not a number; leave it empty for {o.auto}"
                ) from None
        if setting.type is str:
            text = str(value).strip()
            return None if not text and o.auto is not None else text
        if o.auto is not None and value == 0:
            return None
        return setting.type(value)

    def settings(self, base=None):
        """The settings on the form over ``base`` (the settings not on the form; default: the
        defaults); a value outside its limits raises a one-line InputError naming the control's
        label."""
        values = {s.name: self.value(s) for s in self.declared}
        settings = replace(base if base is not None else self.settings_class(), **values)
        settings.check_limits(name=form_label)
        return settings

    def show(self, settings) -> None:
        """Show ``settings`` in the controls."""
        for s in self.declared:
            value = getattr(settings, s.name)
            control = self.controls[s.dest]
            if s.option.file:  # an empty FileEdit (its setter would turn "" into the cwd)
                if value:
                    control.value = value
                else:
                    control.line_edit.value = ""
            elif s.type is float and s.option.auto is not None:
                control.value = "" if value is None else f"{value:g}"
            elif s.type is str:
                control.value = value or ""
            else:
                control.value = 0 if value is None else value
