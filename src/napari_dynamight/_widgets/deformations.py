"""The "Deformations" dock widget: stage 3 (``optimize-deformations``) with a live view of training.

Every option of the command is a field (same defaults). **Start** runs
``engine.deformation.run.optimize_deformations`` in a worker; **Resume** continues the run folder
from its last checkpoint; **Cancel** stops at the next training step. Whenever an epoch ends the
widget re-reads the run's own records (``engine.run_folder.RunFolder``): the loss log (the data
loss and λ per epoch and half, plotted) and the newest checkpoint (half 1's reference Gaussians,
shown as a points layer, loaded in a latest-request-wins worker). **Open run** fills the form from
the run file of a run started here or on the command line, and shows its losses and Gaussians.
Options that are not on the form (encoder width, schedule, learning rates) come from the opened
run, else from the defaults.
"atomic-model prior" picks a PDB/mmCIF model fitted in the consensus map (``--atomic-model``); a run
made with it shows the model-bias warning (``RunFolder.model_bias_warning``) until its control ran;
**Check model bias** runs that control (``napari-dynamight model-bias RUN``, its options under
"bias check") on the run folder in a worker, with progress and Cancel, and shows its report.
The engine's watchdog warnings (a half set stalled, the halves disagree) appear in a red line under
the plot and as napari notifications when they occur, and again from the run file when a run is
opened.
"""

from __future__ import annotations

import os
from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton, SpinBox
from qtpy.QtWidgets import QScrollArea, QVBoxLayout

from ..engine.deformation.settings import DeformationSettings
from ..engine.run_folder import RunFolder
from ._curves import CurvePlot, plot_history
from ._layers import show_points
from ._model_bias import ModelBiasControls, report_summary
from ._options import OptionsForm
from ._stage import StageWidget, device_choices, optional_path
from ._tasks import LatestRequestRunner
from ._warnings import WarningsLabel

POINTS_LAYER = "training Gaussians (half 1)"
_DEFAULTS = DeformationSettings()
# form control -> DeformationSettings field (the controls are made from the declared settings)
SETTING_FIELDS = {
    setting.dest: setting.name for setting in DeformationSettings.declared() if setting.option.form
}


def training_reference(run: Path):
    """Half 1's reference Gaussians of the newest checkpoint (before one: the initial model)."""
    from ..engine.consensus import load_model
    from ..engine.deformation.decode import DeformationRun

    if RunFolder(run).newest_checkpoint() is not None:
        return DeformationRun.load(run, "cpu").reference(1).to("cpu")
    return load_model(RunFolder(run).initial_model)


def _threshold(text: str) -> float | None:
    from ..engine.errors import InputError

    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise InputError(
            f"threshold: {text!r} is not a number; leave it empty for automatic"
        ) from None


def run_summary(run, info: dict, settings: DeformationSettings) -> str:
    """A run file's key numbers: particles, Gaussians, box, epochs (training and refinement, each
    labelled) and the count of watchdog warnings (shown in full above the plot)."""
    lines = [
        f"{run}: {info['n_particles']} particles, {info['n_gaussians']} Gaussians, "
        f"training box {info['train_box']} px"
    ]
    result = info.get("result") or {}
    if result:
        epochs, rounds = int(result["epochs"]), int(result.get("refinement_rounds") or 0)
        refinement = rounds * settings.refinement_epochs
        lines.append(
            f"finished: {epochs} training epochs + {refinement} refinement epochs "
            f"({rounds} rounds of {settings.refinement_epochs}) = {epochs + refinement} epochs"
            + ("; stopped early" if result.get("stopped_early") else "")
        )
    else:
        lines.append("not finished: Resume continues it")
    warnings = info.get("warnings") or []
    if warnings:
        lines.append(
            f"{len(warnings)} watchdog warning{'s' if len(warnings) != 1 else ''} (in red above)"
        )
    return "\n".join(lines)


class DeformationsWidget(StageWidget):
    """Train the two half-set VAEs of a deformation run; watch losses and Gaussians live."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.run = FileEdit(label="run folder", mode="d")
        self.open_button = PushButton(text="Open run")
        self.particles = FileEdit(
            label="particles (STAR or cryoSPARC .cs)", mode="r", filter="*.star *.cs"
        )
        self.consensus = FileEdit(label="consensus map", mode="r", filter="*.mrc *.map")
        self.mask = FileEdit(label="mask (optional)", mode="r", filter="*.mrc *.map")
        self.consensus_model = FileEdit(label="consensus model (optional)", mode="r", filter="*.pt")
        self.n_gaussians = SpinBox(label="Gaussians (0: auto)", min=0, max=10_000_000, value=0)
        self.threshold = LineEdit(label="threshold (empty: auto)", value="")
        self.data_root = FileEdit(label="image folder (optional)", mode="d")
        self.box = SpinBox(label="training box (0: auto)", min=0, max=1024, value=0)
        self.device = ComboBox(label="device", choices=device_choices(), value="cpu")
        self.threads = SpinBox(
            label="CPU threads",
            min=1,
            max=os.cpu_count() or 1,
            value=max(1, (os.cpu_count() or 2) - 1),
        )
        self.options = OptionsForm(DeformationSettings)  # every declared option
        self.options.attach(self)
        self.start_button = PushButton(text="Start")
        self.resume_button = PushButton(text="Resume")
        self.bias = ModelBiasControls()
        self.bias_button = PushButton(text="Check model bias")
        self.form = Container(
            widgets=[
                self.run,
                self.open_button,
                self.particles,
                self.consensus,
                self.mask,
                self.consensus_model,
                self.n_gaussians,
                self.threshold,
                self.data_root,
                self.box,
                self.device,
                self.threads,
                *self._option_controls(),
            ]
        )
        buttons = Container(
            widgets=[self.start_button, self.resume_button, self.bias_button], layout="horizontal"
        )
        self.plot = CurvePlot(["data loss", "λ"], "epoch")
        self.summary = Label(value="choose particles, consensus map and a run folder, then Start")
        self.summary.native.setWordWrap(True)
        self.warnings_label = WarningsLabel()
        layout = QVBoxLayout(self)
        scroll = (
            QScrollArea()
        )  # every option: scroll them on small screens, keep buttons and plot in view
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.form.native)
        for widget in (
            scroll,
            buttons.native,
            self.tasks,
            self.warnings_label.native,
            self.plot,
            self.summary.native,
        ):
            layout.addWidget(widget)
        self.base_settings = _DEFAULTS
        self.result = None
        self.bias_result = None
        self._shown_checkpoint = None
        self.reference_loader = LatestRequestRunner(
            training_reference, self._show_reference, title="load Gaussians"
        )
        self.open_button.changed.connect(lambda: self.open_run())
        self.start_button.changed.connect(lambda: self.start())
        self.resume_button.changed.connect(lambda: self.start(resume=True))
        self.bias_button.changed.connect(lambda: self.check_model_bias())

    def _option_controls(self) -> list:
        """Every option's control, the model-bias control's options right after the atomic model."""
        names = list(self.options.controls)
        at = names.index("atomic_model") + 1 if "atomic_model" in names else len(names)
        controls = list(self.options.controls.values())
        return controls[:at] + self.bias.widgets + controls[at:]

    def busy(self) -> bool:
        return super().busy() or self.reference_loader.busy

    def settings(self) -> DeformationSettings:
        """The form's options over :attr:`base_settings` (the opened run's, else the defaults)."""
        return self.options.settings(self.base_settings)

    def open_run(self, folder=None) -> bool:
        """Fill the form from the run file and show the run's losses and Gaussians."""
        chosen = self.read_chosen_run(folder)
        if chosen is None:
            return False
        run, info = chosen
        for field, key in (
            ("particles", "particles"),
            ("consensus", "consensus"),
            ("mask", "mask"),
            ("consensus_model", "consensus_model"),
        ):
            if info.get(key):
                getattr(self, field).value = info[key]
        self.base_settings = DeformationSettings.from_dict(info.get("settings", {}))
        self.options.show(self.base_settings)
        self.box.value = int(info.get("train_box", 0))
        self.summary.value = run_summary(run, info, self.base_settings)
        bias = RunFolder(run).model_bias_warning()
        self.show_warnings((info.get("warnings") or []) + ([bias] if bias else []))
        self._shown_checkpoint = None
        self.refresh()
        return True

    def start(self, resume: bool = False):
        """Run (or, with ``resume``, continue) the deformation stage; returns the worker."""
        import torch

        from ..engine.io.guard import holding
        from ..engine.local_processes import automatic_processes
        from ..engine.model_bias import optimize_deformations_checked
        from ._tasks import one_line

        run, particles = optional_path(self.run.value), optional_path(self.particles.value)
        consensus = optional_path(self.consensus.value)
        if run is None or particles is None or consensus is None:
            self.summary.value = "choose the particles, the consensus map and a run folder first"
            return None
        try:
            threshold = _threshold(self.threshold.value)
            settings = self.settings()
            control = self.bias.settings() if settings.atomic_model else None
        except Exception as error:
            self.summary.value = one_line(error)
            return None
        torch.set_num_threads(int(self.threads.value))
        processes = automatic_processes(self.device.value, int(self.threads.value))
        operation = optimize_deformations_checked(
            particles,
            consensus,
            run,
            settings=settings,
            control=control,
            mask=optional_path(self.mask.value),
            consensus_model=optional_path(self.consensus_model.value),
            n_gaussians=self.n_gaussians.value or None,
            threshold=threshold,
            box=self.box.value or None,
            data_root=optional_path(self.data_root.value),
            device=self.device.value,
            resume=resume,
            processes=processes,
        )
        operation = holding(operation, run, "run folder", "optimize-deformations")
        self._shown_checkpoint = None
        if not resume:
            self.plot.clear()
        self.show_warnings([], notify=False)
        return self.run_task(
            operation,
            "resume deformations" if resume else "deformations",
            self._finished,
            self._progress,
        )

    def check_model_bias(self):
        """Run the model-bias control on the run folder (a finished run made with the atomic-model
        prior); returns the worker."""
        import torch

        from ..engine.io.guard import holding
        from ._tasks import one_line

        run = optional_path(self.run.value)
        if run is None:
            self.summary.value = "choose a finished run made with the atomic-model prior first"
            return None
        try:
            operation = self.bias.operation(run, self.device.value)
        except Exception as error:
            self.summary.value = one_line(error)
            return None
        torch.set_num_threads(int(self.threads.value))
        operation = holding(operation, run, "run folder", "model-bias", outputs="model_bias")
        return self.run_task(operation, "model bias", self._bias_finished)

    def _bias_finished(self, result) -> None:
        summary, warnings = self._bias_outcome(result)
        self.summary.value = summary + f"\nreport: {result.path}"
        self.show_warnings(warnings)

    def _bias_outcome(self, result) -> tuple[str, list[str]]:
        """Keep the control's result (``model_bias.BiasReport``); its summary and the run folder's
        model-bias warning (none where the report found no bias)."""
        self.bias_result = result
        warning = RunFolder(result.path.parent).model_bias_warning()  # RUN/model_bias.json
        return report_summary(result.report), [warning] if warning else []

    def _progress(self, event) -> None:
        """A watchdog warning from the engine: show it at once."""
        if getattr(event, "warning", ""):
            self.show_warnings(self.warnings_label.shown + [event.warning])

    def show_warnings(self, warnings, notify: bool = True) -> None:
        """Show ``warnings`` under the plot (and notify the new ones)."""
        self.warnings_label.show(warnings, notify, source="deformations")

    def _finished(self, result) -> None:
        self.result = result
        self.refresh()
        ending = "stopped by the data-loss rule" if result.stopped_early else "done"
        self.summary.value = (
            f"{result.epochs} epochs ({ending}), {result.n_gaussians} Gaussians, "
            f"training box {result.train_box}, {result.seconds:.0f} s; latent "
            f"means {result.latents.shape[0]} × {result.latents.shape[1]} in "
            f"{result.run_directory}"
        )
        final = list(getattr(result, "warnings", []))
        if final:
            self.summary.value += f"; {len(final)} warning{'s' if len(final) > 1 else ''} (above)"
        if result.bias_report is not None:
            summary, warnings = self._bias_outcome(result.bias_report)
            self.summary.value += "\n" + summary
            final += warnings
        self.show_warnings(final)

    def refresh(self) -> None:
        """(Called whenever an epoch ends.) Re-plot the run's loss log; load the Gaussians of a
        checkpoint not shown yet."""
        run = optional_path(self.run.value)
        if run is None:
            return
        folder = RunFolder(run)
        plot_history(self.plot, folder.read_loss_log(), ["data", "lambda"])
        newest = folder.newest_checkpoint()
        if newest is not None:
            key = (newest, newest.stat().st_mtime_ns)
        elif folder.initial_model.is_file():
            key = folder.initial_model
        else:
            return
        if key != self._shown_checkpoint:
            self._shown_checkpoint = key
            self.reference_loader.request(run)

    def _show_reference(self, model) -> None:
        show_points(
            self.viewer,
            POINTS_LAYER,
            model.positions_angstrom.numpy(),
            size_angstrom=2 * float(model.sigmas_angstrom.mean()),
        )
