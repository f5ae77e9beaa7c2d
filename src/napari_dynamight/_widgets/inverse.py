"""The "Inverse deformations" dock widget: stage 4 (``optimize-inverse-deformations``).

Choose a finished deformation run; **Start** trains both halves' inverse networks with
``engine.inverse.run.optimize_inverse_deformations`` in a worker, **Resume** continues
``RunFolder.inverse`` from its last checkpoint, **Cancel** stops at the next step. Whenever an epoch
ends the plot re-reads its loss log: the training loss and the held-out error (Å, on the
validation particles) per half. When done, the summary compares the held-out error with the size of
the forward displacements it undoes. The form shows every option of the command line; **Open run**
fills it from the folder's previous inverse run (its summary or its newest checkpoint), which also
gives the engine settings that are not on the form.
"""

from __future__ import annotations

import json
from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton
from qtpy.QtWidgets import QVBoxLayout

from ..engine.run_folder import RunFolder
from ._curves import CurvePlot, plot_history
from ._options import OptionsForm
from ._stage import StageWidget, device_choices, optional_path


def previous_settings(run: Path):
    """The InverseSettings of the run folder's earlier inverse run (None if there is none)."""
    from ..engine.deformation.checkpoint import load_checkpoint
    from ..engine.inverse.settings import InverseSettings

    folder = RunFolder(run).inverse
    summary = folder.read_summary()
    if summary is not None:
        return InverseSettings.from_dict(summary.get("settings", {}))
    latest = folder.checkpoints.latest()
    if latest is not None:
        return InverseSettings.from_dict(json.loads(load_checkpoint(latest)["settings"]))
    return None


def format_summary(summary: dict) -> str:
    lines = []
    for half in (1, 2):
        part = summary[f"half{half}"]
        error, moved = part["held_out_error_angstrom"], part["held_out_displacement_angstrom"]
        held = (
            "no validation particles"
            if error is None
            else f"held-out error {error:.2f} Å for displacements of {moved:.2f} Å"
        )
        lines.append(
            f"half {half}: training error {part['train_error_angstrom']:.2f} Å, {held} "
            f"({part['n_train']} + {part['n_held_out']} particles)"
        )
    return "\n".join(lines)


def held_out_errors(log: list[dict]) -> list[str]:
    """Each half's held-out error (Å) at its last logged epoch, one line per half."""
    lines = []
    for half in (1, 2):
        rows = [
            row
            for row in log
            if row.get("half") == half and row.get("held_out_error_angstrom") is not None
        ]
        if rows:
            lines.append(
                f"half {half}: held-out error {rows[-1]['held_out_error_angstrom']:.2f} Å "
                f"at epoch {rows[-1]['epoch']}"
            )
    return lines


class InverseWidget(StageWidget):
    """Learn the inverse deformations of a finished deformation run; watch loss and error live."""

    def __init__(self, napari_viewer, parent=None):
        from ..engine.inverse.settings import InverseSettings

        super().__init__(napari_viewer, parent)
        self.base_settings = InverseSettings()
        self.run = FileEdit(label="run folder", mode="d")
        self.open_button = PushButton(text="Open run")
        self.device = ComboBox(label="device", choices=device_choices(), value="cpu")
        self.options = OptionsForm(InverseSettings)  # every declared option
        self.options.attach(self)
        self.start_button = PushButton(text="Start")
        self.resume_button = PushButton(text="Resume")
        form = Container(
            widgets=[self.run, self.open_button, self.device, *self.options.controls.values()]
        )
        buttons = Container(widgets=[self.start_button, self.resume_button], layout="horizontal")
        self.plot = CurvePlot(["loss (Å²)", "held-out error (Å)"], "epoch")
        self.summary = Label(value="choose a finished deformation run folder")
        self.summary.native.setWordWrap(True)
        layout = QVBoxLayout(self)
        for widget in (form.native, buttons.native, self.tasks, self.plot, self.summary.native):
            layout.addWidget(widget)
        self.result = None
        self.open_button.changed.connect(lambda: self.open_run())
        self.start_button.changed.connect(lambda: self.start())
        self.resume_button.changed.connect(lambda: self.start(resume=True))

    def open_run(self, folder=None) -> bool:
        """Check the run file; take an earlier inverse run's options and show its curves."""
        from ._tasks import one_line

        chosen = self.read_chosen_run(folder)
        if chosen is None:
            return False
        run, info = chosen
        try:
            previous = previous_settings(run)
        except Exception as error:
            self.summary.value = one_line(error)
            return False
        state = "no inverse run yet"
        if previous is not None:
            self.base_settings = previous
            self.options.show(previous)
            state = "an inverse run is there: Resume continues it (more epochs: raise epochs)"
        inverse = RunFolder(run).inverse
        lines = [f"{run}: {info['n_particles']} particles; {state}"]
        lines += held_out_errors(inverse.read_loss_log())
        finished = inverse.read_summary()
        if finished is not None:
            lines.append(format_summary(finished))
        self.summary.value = "\n".join(lines)
        self.refresh()
        return True

    def start(self, resume: bool = False):
        """Run (or continue) stage 4 on the chosen run folder; returns the worker."""
        from ..engine.errors import InputError
        from ..engine.inverse.run import optimize_inverse_deformations
        from ..engine.io.guard import holding
        from ..engine.local_processes import automatic_processes

        run = optional_path(self.run.value)
        if run is None:
            self.summary.value = "choose a deformation run folder first"
            return None
        try:
            settings = self.options.settings(self.base_settings)
        except InputError as error:
            self.summary.value = str(error)
            return None
        processes = automatic_processes(self.device.value)
        operation = optimize_inverse_deformations(
            run, settings=settings, device=self.device.value, resume=resume, processes=processes
        )
        operation = holding(
            operation, run, "run folder", "optimize-inverse-deformations", outputs="inverse"
        )
        if not resume:
            self.plot.clear()
        return self.run_task(
            operation, "resume inverse" if resume else "inverse deformations", self._finished
        )

    def refresh(self) -> None:
        """(Called whenever an epoch ends.) Re-plot the inverse run's loss log."""
        run = optional_path(self.run.value)
        if run is not None:
            log = RunFolder(run).inverse.read_loss_log()
            plot_history(self.plot, log, ["loss", "held_out_error_angstrom"])

    def _finished(self, result) -> None:
        self.result = result
        self.refresh()
        self.summary.value = (
            f"{result.epochs} epochs, {result.seconds:.0f} s, in "
            f"{result.directory}\n" + format_summary(result.summary)
        )
