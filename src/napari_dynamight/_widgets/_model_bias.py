"""The Deformations widget's model-bias control: the options of ``napari-dynamight model-bias RUN``
and the report's summary line.

**Check model bias** runs ``engine.model_bias.model_bias`` on the run folder (a finished run made
with the atomic-model prior) in the widget's task panel, under the run folder's lock as the command
holds it; the report (``RUN/model_bias.json``) is summarised in the widget, and a report that found
bias becomes a warning.
"""

from __future__ import annotations

from magicgui.widgets import ComboBox, FloatSpinBox, LineEdit, SpinBox


class ModelBiasControls:
    """The control's options, as on the command line (same defaults)."""

    def __init__(self):
        from ..engine.model_bias import MODES

        self.residues = LineEdit(label="bias check: residues (empty: automatic)", value="")
        self.mode = ComboBox(label="bias check: wrong model", choices=list(MODES), value="move")
        self.shift = FloatSpinBox(
            label="bias check: shift (Å, move)", min=0.1, max=50.0, step=0.5, value=5.0
        )
        self.epochs = SpinBox(label="bias check: epochs (0: the run's)", min=0, max=100_000)
        self.inverse_epochs = SpinBox(
            label="bias check: inverse epochs", min=1, max=100_000, value=10
        )
        self.widgets = [self.residues, self.mode, self.shift, self.epochs, self.inverse_epochs]

    def operation(self, run, device):
        """The engine generator of the control with these options (InputError on a bad region)."""
        from ..engine.atomic_model import Region
        from ..engine.model_bias import model_bias

        text = self.residues.value.strip()
        return model_bias(
            run,
            region=Region.parse(text) if text else None,
            mode=self.mode.value,
            shift_angstrom=float(self.shift.value),
            epochs=int(self.epochs.value) or None,
            inverse_epochs=int(self.inverse_epochs.value),
            device=device,
        )


def report_summary(report: dict) -> str:
    """The report in two lines: what the wrong model was, how much of it each map reproduces."""
    what = f"{report['mode']} of residues {report['region']}"
    verdict = (
        "model bias: trust only features the smoothness prior's maps show too"
        if report["biased"]
        else "no model bias found: the data override a wrong model in this region"
    )
    return (
        f"model-bias control (wrong model: {what}): the deformed map made with it reproduces "
        f"{report['reproduced_percent']}% of the wrong feature, its decoded volumes "
        f"{report['reproduced_percent_decoded']}%; the run's own map "
        f"{100 * report['score_run']:.0f}%, its decoded volumes "
        f"{100 * report['score_run_decoded']:.0f}% (threshold {100 * report['threshold']:.0f}%)"
        f"\n{verdict}"
    )
