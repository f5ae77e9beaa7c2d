"""The "Data and consensus" dock widget: particles, consensus map, mask; fill and fit Gaussians.

Load reads the particle file (STAR or cryoSPARC .cs; a summary: particles, box, pixel size, optics
groups) and the map (shown in 3D as an iso-surface, in Å from the box centre) in a worker. The
threshold slider moves the iso-surface and is the level "Fill and fit" uses:
``engine.consensus_stage.fit_consensus`` runs in a worker and its Gaussians appear as a points layer
drawn over the map, whose surface then turns faint. Bad input shows as one line, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import Container, FileEdit, FloatSlider, Label, PushButton
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..engine.consensus_stage import ConsensusSettings
from ..engine.progress import Progress
from ._layers import show_in_3d, show_map, show_points
from ._options import OptionsForm
from ._sections import join_plugin_docks_when_shown
from ._tasks import TaskPanel

MAP_LAYER = "consensus map"
GAUSSIANS_LAYER = "consensus Gaussians"
FITTED_MAP_OPACITY = 0.25  # the map's surface once Gaussians are fitted: they show through it


def _optional(path) -> Path | None:
    """magicgui's FileEdit gives Path('.') when empty."""
    if path is None or str(path) in ("", "."):
        return None
    return Path(path)


def load_inputs(star: Path | None, map_path: Path | None, mask: Path | None):
    """Read what the widget shows (no computation): particle summary, map, automatic threshold."""
    from ..engine.consensus import automatic_threshold
    from ..engine.errors import InputError
    from ..engine.io.mrc import read_map

    yield Progress("load", 0, 2, message="reading inputs")
    loaded = {"star": None, "map": None}
    if star is not None:
        from ..engine.data.particle_file import read_particle_file
        from ..engine.data.summary import summarise

        table = read_particle_file(star)
        loaded["star"] = summarise(table, star)
    yield Progress("load", 1, 2, message="reading the map")
    if map_path is not None:
        volume, voxel_size = read_map(map_path)
        if len(set(volume.shape)) != 1:
            raise InputError(
                f"{map_path}: the consensus map must be a cube, got {volume.shape[::-1]} (x, y, z)"
            )
        if not voxel_size > 0:
            raise InputError(
                f"{map_path}: the header gives voxel size {voxel_size}; set it (e.g. "
                "relion_image_handler --angpix)"
            )
        if mask is not None:
            mask_volume, mask_voxel = read_map(mask)
            if mask_volume.shape != volume.shape:
                raise InputError(
                    f"{mask}: mask box {mask_volume.shape[0]} differs from the map's "
                    f"{volume.shape[0]}; give a mask made for this map"
                )
        loaded["map"] = (volume, voxel_size, automatic_threshold(volume))
    return loaded


def format_summary(star_summary: dict | None, map_info: tuple | None) -> str:
    lines = []
    if star_summary is not None:
        groups = star_summary["optics_groups"]
        plural = "s" if len(groups) != 1 else ""
        poses = "yes" if star_summary["poses"] else "no"
        lines.append(
            f"{star_summary['particles']} particles, {len(groups)} optics group{plural}, "
            f"poses: {poses}"
        )
        for group in groups:
            pixel = group["pixel_size_angstrom"]
            lines.append(
                f"  group {group['optics_group']}: {group['particles']} particles, box "
                f"{group['box'] or '?'} px, "
                f"pixel size {'?' if pixel is None else f'{pixel:.4g}'} Å"
            )
    if map_info is not None:
        volume, voxel_size, threshold = map_info
        lines.append(
            f"map: box {volume.shape[0]} px, voxel size {voxel_size:.4g} Å, automatic threshold "
            f"{threshold:.4g}"
        )
    if star_summary is not None and map_info is not None:
        width = map_info[0].shape[0] * map_info[1]
        for group in star_summary["optics_groups"]:
            if group["box"] and group["pixel_size_angstrom"]:
                image_width = group["box"] * group["pixel_size_angstrom"]
                if abs(image_width - width) > 0.01 * width:
                    lines.append(
                        f"note: group {group['optics_group']}'s images are {image_width:.1f} Å "
                        f"wide, the map {width:.1f} Å"
                    )
    return "\n".join(lines)


class DataWidget(QWidget):
    """Choose STAR, map and mask; see the map; fill and fit the consensus Gaussian model."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.star = FileEdit(
            label="particles (STAR or cryoSPARC .cs)", mode="r", filter="*.star *.cs"
        )
        self.map = FileEdit(label="consensus map", mode="r", filter="*.mrc *.map")
        self.mask = FileEdit(label="mask (optional)", mode="r", filter="*.mrc *.map")
        self.output = FileEdit(label="output folder", mode="d")
        self.load_button = PushButton(text="Load")
        self.threshold = FloatSlider(
            label="threshold", min=0.0, max=1.0, value=0.5, step=None, enabled=False
        )
        self.options = OptionsForm(ConsensusSettings)  # the threshold is the slider above
        self.options.attach(self)
        self.fit_button = PushButton(text="Fill and fit", enabled=False)
        self.summary = Label(
            value="choose a particle file (STAR or .cs) and a consensus map, then Load"
        )
        self.form = Container(
            widgets=[
                self.star,
                self.map,
                self.mask,
                self.load_button,
                self.threshold,
                self.output,
                *self.options.controls.values(),
                self.fit_button,
            ]
        )
        self.tasks = TaskPanel()
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        self.summary.native.setWordWrap(True)
        layout.addWidget(self.summary.native)
        layout.addWidget(self.tasks)
        layout.addStretch(1)
        self.loaded: dict = {"star": None, "map": None}
        self.fit = None
        self.load_button.changed.connect(self.load)
        self.fit_button.changed.connect(self.fill_and_fit)
        self.threshold.changed.connect(self._threshold_changed)

    def showEvent(self, event):
        super().showEvent(event)
        join_plugin_docks_when_shown(self)  # this plugin's docks share one column of tabs

    def load(self, *_):
        """Read the chosen files in a worker; returns the worker (None if nothing to do)."""
        star, map_path = _optional(self.star.value), _optional(self.map.value)
        if star is None and map_path is None:
            self.summary.value = "choose a particle file (STAR or .cs) and/or a consensus map first"
            return None
        operation = load_inputs(star, map_path, _optional(self.mask.value))
        return self.tasks.start(operation, "load", self._loaded)

    def _loaded(self, loaded: dict) -> None:
        self.loaded = loaded
        if loaded["map"] is not None:
            volume, voxel_size, threshold = loaded["map"]
            low, high = float(volume.min()), float(volume.max())
            self.threshold.min, self.threshold.max = low, high
            self.threshold.value = threshold
            self.threshold.enabled = True
            layer = show_map(
                self.viewer, MAP_LAYER, volume, voxel_size, threshold=threshold, opacity=0.6
            )
            show_in_3d(self.viewer, layer)
            if _optional(self.output.value) is None:
                self.output.value = Path(self.map.value).parent / "consensus"
        self.fit_button.enabled = loaded["map"] is not None
        self.summary.value = format_summary(loaded["star"], loaded["map"])

    def _threshold_changed(self, value: float) -> None:
        if MAP_LAYER in self.viewer.layers:
            self.viewer.layers[MAP_LAYER].iso_threshold = float(value)

    def fill_and_fit(self, *_):
        """Run stage 2 on the loaded map in a worker; returns the worker."""
        from ..engine.consensus_stage import fit_consensus
        from ..engine.errors import InputError
        from ..engine.io.guard import holding

        output = _optional(self.output.value)
        if self.loaded["map"] is None or output is None:
            self.summary.value = "load a consensus map and choose an output folder first"
            return None
        try:
            threshold = ConsensusSettings(threshold=float(self.threshold.value))
            settings = self.options.settings(threshold)
        except InputError as error:
            self.summary.value = str(error)
            return None
        operation = fit_consensus(
            Path(self.map.value), output, mask_path=_optional(self.mask.value), **settings.to_dict()
        )
        operation = holding(operation, output, "output folder", "fit-consensus")
        return self.tasks.start(operation, "fill and fit", self._fitted)

    def _fitted(self, fit) -> None:
        from ..engine.consensus import load_model

        self.fit = fit
        model = load_model(fit.model_path)
        # the fit is what to look at now: a faint surface, every Gaussian drawn over it (one σ wide)
        if MAP_LAYER in self.viewer.layers:
            self.viewer.layers[MAP_LAYER].opacity = FITTED_MAP_OPACITY
        show_points(
            self.viewer,
            GAUSSIANS_LAYER,
            model.positions_angstrom.numpy(),
            size_angstrom=float(model.sigmas_angstrom[0]),
            opacity=0.9,
            blending="translucent_no_depth",
        )
        self.summary.value = (
            format_summary(self.loaded["star"], self.loaded["map"])
            + f"\nconsensus: {fit.n_gaussians} Gaussians, σ {fit.sigma_angstrom:.2f} Å, "
            f"correlation with the map {fit.correlation:.3f}\nmodel: {fit.model_path}"
        )
