"""The "Reconstruction" dock widget: stage 5 (``reconstruct``), half maps and the FSC plot.

Choose a run folder (with its inverse deformations for a deformed reconstruction); **Start** runs
``engine.reconstruction.stage.reconstruct_run`` in a worker, which also reads the maps it wrote, so
the main thread only hands them to napari: the two half maps and the full map appear as image
layers (iso-surfaces at their automatic level, the camera fitted to the full map) in Å from the box
centre (scale = voxel size), one layer per role (``reconstruction: half 1``
...; ``reconstruction_standard: ...`` without deformations), and the FSC curves of its FSC
table are plotted. **Open run** shows the maps and FSC of a reconstruction already in the run
folder (e.g. made on a cluster with the command line).
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton
from qtpy.QtWidgets import QVBoxLayout

from ..engine.progress import Progress
from ..engine.run_folder import ReconstructionFolder, RunFolder
from ._curves import CurvePlot
from ._layers import show_in_3d, show_map
from ._options import OptionsForm
from ._stage import StageWidget, device_choices, optional_path

ROLES = ("half 1", "half 2", "full")


def read_outputs(folder: Path):
    """The maps (volume, voxel size) of a reconstruction folder and its FSC table."""
    from ..engine.errors import InputError
    from ..engine.io.mrc import read_map

    folder = ReconstructionFolder(folder)
    missing = folder.missing()
    if missing:
        raise InputError(f"{missing[0]}: not found; run the reconstruction (Start) first")
    return [read_map(path) for path in folder.maps.values()], folder.read_fsc()


def fsc_plot() -> CurvePlot:
    """An empty half-map FSC plot with the 0.143 line."""
    plot = CurvePlot(["half-map FSC"], "spatial frequency (1/Å)")
    plot.axes[0].axhline(0.143, color="grey", linestyle=":", linewidth=1)
    return plot


def show_outputs(viewer, plot: CurvePlot, prefix: str, maps, fsc) -> None:
    """The half maps (hidden) and the full map as layers ``PREFIX: half 1`` ... in Å, and the FSC
    curves in ``plot``."""
    frequency, curves = fsc
    for role, (volume, voxel_size) in zip(ROLES, maps, strict=True):
        layer = show_map(viewer, f"{prefix}: {role}", volume, voxel_size, visible=role == "full")
    show_in_3d(viewer, layer)  # the full map's iso-surface, at its automatic level, fills the view
    plot.clear()
    for name, values in curves.items():
        plot.set_curve(0, name, frequency, values)


def reconstruct_and_read(run: Path, settings=None, **options):
    """``reconstruct_run`` followed (still in the worker) by reading what it wrote."""
    from ..engine.reconstruction.stage import reconstruct_run

    result = yield from reconstruct_run(run, settings, **options)
    yield Progress("reading the maps", 0, None)
    maps, fsc = read_outputs(Path(result.directory))
    return result, maps, fsc


def read_existing(folder: Path):
    yield Progress("reading the maps", 0, None)
    maps, fsc = read_outputs(folder)
    return None, maps, fsc


class ReconstructionWidget(StageWidget):
    """Reconstruct a run's half maps (deformed or standard) and show them with their FSC."""

    def __init__(self, napari_viewer, parent=None):
        from ..engine.reconstruction.settings import ReconstructionSettings

        super().__init__(napari_viewer, parent)
        self.run = FileEdit(label="run folder", mode="d")
        self.open_button = PushButton(text="Open run")
        self.deformations = CheckBox(text="use the deformations", value=True)
        self.device = ComboBox(label="device", choices=device_choices(), value="cpu")
        self.options = OptionsForm(ReconstructionSettings)  # every declared option
        self.options.attach(self)
        self.start_button = PushButton(text="Start")
        form = Container(
            widgets=[
                self.run,
                self.open_button,
                self.deformations,
                self.device,
                *self.options.controls.values(),
                self.start_button,
            ]
        )
        self.plot = fsc_plot()
        self.summary = Label(value="choose a run folder, then Start")
        self.summary.native.setWordWrap(True)
        layout = QVBoxLayout(self)
        for widget in (form.native, self.tasks, self.plot, self.summary.native):
            layout.addWidget(widget)
        self.result = None
        self.open_button.changed.connect(lambda: self.open_run())
        self.start_button.changed.connect(lambda: self.start())

    def start(self):
        """Reconstruct in a worker; the maps and the FSC are shown when it is done."""
        from ..engine.errors import InputError
        from ..engine.io.guard import holding

        run = optional_path(self.run.value)
        if run is None:
            self.summary.value = "choose a run folder first"
            return None
        try:
            settings = self.options.settings()
        except InputError as error:
            self.summary.value = str(error)
            return None
        deformations = bool(self.deformations.value)
        operation = reconstruct_and_read(
            run, settings, deformations=deformations, device=self.device.value
        )
        operation = holding(
            operation,
            run,
            "run folder",
            "reconstruct",
            outputs=ReconstructionFolder.NAMES[deformations],
        )
        return self.run_task(operation, "reconstruction", self._show)

    def open_run(self, folder=None):
        """Show the reconstruction already in the run folder (deformed if there, else standard)."""
        chosen = self.read_chosen_run(folder)
        if chosen is None:
            return None
        run, info = chosen
        for deformed in (True, False):
            folder = RunFolder(run).reconstruction(deformed)
            if folder.fsc_table.is_file():
                self.deformations.value = deformed
                return self.run_task(read_existing(folder.path), "open reconstruction", self._show)
        self.summary.value = f"{run}: {info['n_particles']} particles; no reconstruction yet"
        return None

    def _show(self, outputs) -> None:
        result, maps, fsc = outputs
        self.result = result
        prefix = ReconstructionFolder.NAMES[bool(self.deformations.value)]
        show_outputs(self.viewer, self.plot, prefix, maps, fsc)
        self.summary.value = summary_text(prefix, maps, fsc, result)
        run = optional_path(self.run.value)
        warning = None if run is None else RunFolder(run).model_bias_warning()
        if warning:  # maps of a run made with the atomic-model prior
            from napari.utils.notifications import show_warning

            show_warning(warning)
            self.summary.value += f"\nwarning: {warning}"


def summary_text(prefix: str, maps, fsc, result=None) -> str:
    """The key numbers of a reconstruction: FSC 0.143 resolution of each curve, voxel size, box."""
    from ..engine.fourier import resolution_at

    frequency, curves = fsc
    volume, voxel_size = maps[-1]
    lines = [f"{prefix}: voxel size {voxel_size:.4g} Å, box {volume.shape[0]} px"]
    if result is not None:
        lines.append(
            f"half-map FSC 0.143 at {result.resolution_angstrom:.2f} Å (standard reconstruction: "
            f"{result.resolution_standard_angstrom:.2f} Å)"
        )
    else:
        lines += [
            f"half-map FSC 0.143 at {resolution_at(frequency, values, 0.143):.2f} Å ({name})"
            for name, values in curves.items()
        ]
    return "\n".join(lines)
