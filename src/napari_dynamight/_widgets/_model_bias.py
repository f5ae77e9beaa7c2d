"""The Deformations widget's model-bias control: the options of ``napari-dynamight model-bias RUN``
(``engine.model_bias.BiasCheckSettings``, as a form) and the report's summary line.

**Check model bias** runs ``engine.model_bias.model_bias`` on the run folder (a finished run made
with the atomic-model prior) in the widget's task panel, under the run folder's lock as the command
holds it; a run trained with the prior runs it with these options when training ends (unless its
"check model bias" setting is off). The report (``RUN/model_bias.json``) is summarised in the
widget, and a report that found bias becomes a warning.
"""

from __future__ import annotations

from ._options import OptionsForm


class ModelBiasControls:
    """The control's options, as on the command line (same names, defaults and limits)."""

    def __init__(self):
        from ..engine.model_bias import BiasCheckSettings

        self.form = OptionsForm(BiasCheckSettings)
        self.widgets = list(self.form.controls.values())
        self.form.attach(self)  # self.residues, self.mode, self.shift, ...

    def settings(self):
        """The options on the form, checked (InputError naming the control on a bad value)."""
        settings = self.form.settings()
        settings.check()
        return settings

    def operation(self, run, device):
        """The engine generator of the control with these options (InputError on a bad region)."""
        from ..engine.model_bias import model_bias

        return model_bias(run, self.settings(), device=device)


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
