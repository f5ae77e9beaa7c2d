"""Each stage's settings are declared once; the command line and the napari forms are made from
them.

For every stage: the parser's flags are exactly the declared settings plus the listed command-line
inputs, with the declared defaults and choices; a value just outside a declared limit ends in one
line naming the flag (exit status 2); the napari form shows exactly the declared settings with the
same defaults, limits and choices.
"""

from __future__ import annotations

import argparse
import inspect

import pytest
from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, LineEdit, SpinBox

from napari_dynamight.cli import build_parser, main
from napari_dynamight.engine.consensus_stage import ConsensusSettings, fit_consensus
from napari_dynamight.engine.deformation.settings import DeformationSettings
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.inverse.settings import InverseSettings
from napari_dynamight.engine.reconstruction.settings import ReconstructionSettings
from napari_dynamight.engine.reconstruction.stage import reconstruct_run

# command -> (settings, the command's inputs that are not stage settings, arguments that parse)
STAGES = {
    "fit-consensus": (
        ConsensusSettings,
        {"--consensus", "--output-directory", "--mask", "--device"},
        ["--consensus", "c.mrc", "--output-directory", "out"],
    ),
    "optimize-deformations": (
        DeformationSettings,
        {
            "--particles",
            "--passthrough",
            "--consensus",
            "--output-directory",
            "--mask",
            "--consensus-model",
            "--n-gaussians",
            "--threshold",
            "--device",
            "--resume",
            "--data-root",
            "--threads",
            "--processes",
            "--box",
        },
        ["--particles", "p.star", "--consensus", "c.mrc", "--output-directory", "run"],
    ),
    "optimize-inverse-deformations": (
        InverseSettings,
        {"run_directory", "--device", "--resume", "--threads", "--processes"},
        ["run"],
    ),
    "reconstruct": (
        ReconstructionSettings,
        {
            "run_directory",
            "--no-deformations",
            "--deformed",
            "--subset",
            "--output",
            "--device",
            "--threads",
        },
        ["run"],
    ),
}


def subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser(command)
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


def flag_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        found[action.option_strings[0] if action.option_strings else action.dest] = action
    return found


@pytest.mark.parametrize("command", sorted(STAGES))
def test_the_parser_offers_exactly_the_declared_settings(command):
    settings_class, inputs, _ = STAGES[command]
    actions = flag_actions(subparser(command))
    declared = {setting.flag: setting for setting in settings_class.declared()}
    assert set(actions) == set(declared) | inputs
    for flag, setting in declared.items():
        action = actions[flag]
        assert action.default == setting.default, flag
        assert action.dest == setting.dest
        assert tuple(action.choices or ()) == tuple(setting.option.choices or ()), flag
        if setting.type in (int, float) and not setting.option.choices:
            assert action.type is setting.type, flag


def out_of_range(setting) -> list:
    """Values just outside each declared limit (or a choice that does not exist)."""
    o = setting.option
    if o.choices:
        return []  # argparse refuses an unknown choice itself
    step = 1 if setting.type is int else (o.step or 0.01)
    values = []
    if o.minimum is not None:
        values.append(o.minimum if o.exclusive_minimum else o.minimum - step)
    if o.maximum is not None:
        values.append(o.maximum if o.exclusive_maximum else o.maximum + step)
    return values


@pytest.mark.parametrize("command", sorted(STAGES))
def test_an_out_of_range_value_names_its_flag(command, tmp_path, monkeypatch, capsys):
    settings_class, _, arguments = STAGES[command]
    monkeypatch.chdir(tmp_path)  # no input exists: the options must be refused before any is read
    checked = 0
    for setting in settings_class.declared():
        for value in out_of_range(setting):
            value = f"{value:g}" if isinstance(value, float) else str(value)
            assert main([command, *arguments, setting.flag, value]) == 2
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1, lines
            assert lines[0].startswith(f"error: {setting.flag} {value}: must "), lines
            checked += 1
    assert checked >= len([s for s in settings_class.declared() if not s.option.choices])
    assert list(tmp_path.iterdir()) == []


def test_messages_name_the_real_flag_and_the_form_label():
    with pytest.raises(InputError, match=r"^--positional-frequencies -1: must not be negative$"):
        DeformationSettings(n_frequencies=-1).check()
    with pytest.raises(InputError, match=r"^--steps 0: must be at least 1$"):
        ConsensusSettings(n_steps=0).check_limits()
    with pytest.raises(InputError, match=r"^--validation-fraction 0.5: must be in \[0, 0.5\)$"):
        DeformationSettings(validation_fraction=0.5).check()
    # an engine setting, on no command line: its words, not a flag
    with pytest.raises(InputError, match=r"^learning rate encoder 0: must be positive$"):
        DeformationSettings(learning_rate_encoder=0.0).check()
    from napari_dynamight._widgets._options import form_label

    with pytest.raises(InputError, match=r"^positional frequencies -1: must not be negative$"):
        DeformationSettings(n_frequencies=-1).check_limits(name=form_label)


def test_every_default_is_allowed_and_the_engine_signatures_agree():
    for settings_class, _, _ in STAGES.values():
        settings_class().check_limits()
    # reconstruct_run takes the settings record (the one source of its defaults) and overrides
    signature = inspect.signature(reconstruct_run).parameters
    assert signature["settings"].default is None
    assert not set(ReconstructionSettings().to_dict()) & set(signature)
    signature = inspect.signature(fit_consensus).parameters
    for name, value in ConsensusSettings().to_dict().items():
        assert signature[name].default == value, name


def stage_widgets():
    from napari_dynamight._widgets.data import DataWidget
    from napari_dynamight._widgets.deformations import DeformationsWidget
    from napari_dynamight._widgets.inverse import InverseWidget
    from napari_dynamight._widgets.reconstruction import ReconstructionWidget

    return {
        "fit-consensus": DataWidget,
        "optimize-deformations": DeformationsWidget,
        "optimize-inverse-deformations": InverseWidget,
        "reconstruct": ReconstructionWidget,
    }


@pytest.mark.parametrize("command", sorted(STAGES))
def test_the_form_offers_exactly_the_declared_settings(command, qtbot):
    settings_class, _, _ = STAGES[command]
    widget = stage_widgets()[command](None)
    qtbot.addWidget(widget)
    controls = widget.options.controls
    on_form = [s for s in settings_class.declared() if s.option.form]
    assert list(controls) == [s.dest for s in on_form]
    off_form = {s.name for s in settings_class.declared() if not s.option.form}
    assert off_form <= {"threshold"}  # the data widget's slider
    for setting in on_form:
        control, o = controls[setting.dest], setting.option
        assert widget.isAncestorOf(control.native), setting.name
        label = o.label or setting.flag[2:].replace("-", " ")
        shown = control.text if setting.type is bool else control.label  # a box's text
        assert shown.startswith(label), shown
        assert control.tooltip == o.help
        if setting.type is bool:
            assert isinstance(control, CheckBox) and control.value == setting.default
        elif o.choices:
            assert isinstance(control, ComboBox) and tuple(control.choices) == o.choices
            assert control.value == setting.default
        elif o.file:
            assert isinstance(control, FileEdit) and setting.default is None
        elif setting.type is int:
            assert isinstance(control, SpinBox)
            assert control.min == (0 if o.auto else o.minimum), setting.name
            assert control.max == o.maximum, setting.name
            assert control.value == (setting.default or 0)
        elif o.auto:
            assert isinstance(control, LineEdit) and control.value == ""
        else:
            assert isinstance(control, FloatSpinBox)
            step = o.step or 0.01
            assert control.min == pytest.approx(o.minimum + (step if o.exclusive_minimum else 0))
            assert control.max == pytest.approx(o.maximum - (step if o.exclusive_maximum else 0))
            assert control.value == pytest.approx(setting.default)
    assert widget.options.settings() == settings_class()  # the form shows the declared defaults


def test_the_form_reads_back_what_it_shows(qtbot):
    from dataclasses import replace

    from napari_dynamight._widgets.inverse import InverseWidget

    widget = InverseWidget(None)
    qtbot.addWidget(widget)
    chosen = replace(
        InverseSettings(),
        epochs=7,
        learning_rate=0.0035,
        width=16,
        depth=2,
        seed=5,
        smoothness_points=3,
    )
    widget.options.show(chosen)
    assert widget.options["width"].value == 16  # Qt's own width() is not shadowed
    assert widget.options.settings(chosen) == chosen
    assert widget.options.settings().smoothness_points == InverseSettings().smoothness_points


def test_a_new_option_is_one_declaration(qtbot, tmp_path):
    """A file option and a switch added to a stage's settings appear on both front ends."""
    from dataclasses import dataclass

    from magicgui.widgets import CheckBox, FileEdit

    from napari_dynamight._widgets._options import OptionsForm
    from napari_dynamight.cli._options import add_options, settings_from_args
    from napari_dynamight.engine.settings_record import option

    @dataclass(frozen=True)
    class Extended(InverseSettings):
        atomic_model: str | None = option(None, "atomic model of the consensus", file=True)
        symmetric: bool = option(False, "use the symmetry")

    parser = argparse.ArgumentParser()
    add_options(parser, Extended)
    model = tmp_path / "model.pdb"
    args = parser.parse_args(["--atomic-model", str(model), "--symmetric", "--width", "16"])
    assert settings_from_args(Extended, args) == Extended(
        atomic_model=str(model), symmetric=True, width=16
    )
    assert settings_from_args(Extended, parser.parse_args([])) == Extended()
    form = OptionsForm(Extended)
    assert isinstance(form["atomic_model"], FileEdit) and isinstance(form["symmetric"], CheckBox)
    assert form.settings() == Extended()
    form["atomic_model"].value = model
    form["symmetric"].value = True
    assert form.settings() == Extended(atomic_model=str(model), symmetric=True)
