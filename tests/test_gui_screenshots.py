"""The explorer's screenshots for the user guide (docs/gui.md), one per half set, asserted on
pixels.

The data widget's screenshot is taken in test_gui_data.py. DYNAMIGHT_SCREENSHOTS=1 (re)writes the
guide's images in docs/images/ from these tests.
"""

from __future__ import annotations

import numpy as np

from helpers.explore_data import ShiftDecoder, make_run
from helpers.screenshots import (
    density_pixels,
    distinct_colours,
    gaussian_pixels,
    molecule_coverage,
    save,
    widget_rgb,
)
from napari_dynamight.engine.explore import load_run


def test_explorer_screenshots_per_half_set(qtbot, make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)  # a laptop screen
    _, widget = viewer.window.add_plugin_dock_widget("napari-dynamight", "Latent-space explorer")
    widget.set_data(load_run(make_run(tmp_path / "run")), ShiftDecoder())
    plots = {}
    for half in (1, 2):
        widget.set_half(half)
        widget.colour_by("dmDisplacementAngstrom")
        coords = widget.embedding.coords
        low, high = coords.min(axis=0), coords.max(axis=0)
        middle = (low + high) / 2
        widget.select_polygon(
            [(middle[0], low[1]), (high[0], low[1]), (high[0], high[1]), (middle[0], high[1])]
        )
        widget.add_selection(f"right of half {half}")
        widget.decode_at(coords[widget.view.rows % 3 == 1].mean(axis=0))
        qtbot.waitUntil(lambda: not widget.runner.busy, timeout=30_000)
        widget.plot.draw()
        plots[half] = widget_rgb(widget.plot)
        window = viewer.screenshot(canvas_only=False, flash=False)
        save(window, f"explorer_half{half}.png", tmp_path)
        assert distinct_colours(plots[half]) > 30  # a coloured scatter, not a blank canvas
        red = (plots[half][..., 0] > 200) & (plots[half][..., 1] < 80) & (plots[half][..., 2] < 80)
        assert red.sum() > 50  # the selection outline and the decode marker
        canvas = viewer.screenshot(canvas_only=True, flash=False)
        assert canvas[..., :3].std() > 5
        # the density, not its Gaussians, fills the view; the camera was fitted to the first volume
        # (the median particle's), this one has moved from there (test_gui_explorer checks ≥ 25%)
        assert density_pixels(canvas).sum() > 10 * gaussian_pixels(canvas).sum()
        assert molecule_coverage(canvas) > 0.2
    shape = np.minimum(plots[1].shape, plots[2].shape)
    crop = tuple(slice(0, n) for n in shape)
    assert (
        np.abs(plots[1][crop].astype(int) - plots[2][crop]).mean() > 2
    )  # two different embeddings


def test_common_space_screenshot(qtbot, make_napari_viewer, finished_run, tmp_path):
    """Both halves' particles of a run of the simulated AdK set in the common motion space: coloured
    by half set, validation particles ringed, a lasso over the right half, a particle decoded."""
    import shutil

    from napari_dynamight._widgets._explorer_common import BOTH

    folder = shutil.copytree(finished_run, tmp_path / "run")
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    _, widget = viewer.window.add_plugin_dock_widget("napari-dynamight", "Latent-space explorer")
    widget.open_run(folder)
    widget.set_half(BOTH)
    qtbot.waitUntil(lambda: widget.view is not None and widget.view.half == BOTH, timeout=60_000)
    coords = widget.embedding.coords
    low, high = coords.min(axis=0) - 0.01, coords.max(axis=0) + 0.01
    middle = float(np.median(coords[:, 0]))
    mask = widget.select_polygon(
        [(middle, low[1]), (high[0], low[1]), (high[0], high[1]), (middle, high[1])]
    )
    widget.decode_at(coords[np.nonzero(mask)[0][0]])
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=30_000)
    widget.plot.draw()
    plot = widget_rgb(widget.plot)
    save(viewer.screenshot(canvas_only=False, flash=False), "explorer_common.png", tmp_path)
    halves = widget.data.table.particles.dmHalfSet.to_numpy()
    assert set(halves[widget.view.rows[mask]]) == {1, 2} and "dmHalfSet 1:" in widget.status.value
    blue = (plot[..., 2] > 150) & (plot[..., 0] < 100)  # matplotlib's C0: half 1
    orange = (
        (plot[..., 0] > 200) & (plot[..., 1] > 100) & (plot[..., 1] < 180) & (plot[..., 2] < 80)
    )  # C1
    red = (plot[..., 0] > 200) & (plot[..., 1] < 80) & (plot[..., 2] < 80)  # the lasso's outline
    assert blue.sum() > 100 and orange.sum() > 100 and red.sum() > 50
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    assert density_pixels(canvas).sum() > 10 * gaussian_pixels(canvas).sum()


STAGE_WIDGETS = {
    "Deformations": "deformations_widget.png",
    "Inverse deformations": "inverse_widget.png",
    "Reconstruction": "reconstruction_widget.png",
}


def expected_texts(name: str) -> tuple[set[str], dict[str, str]]:
    """The labels and buttons a stage widget shows before a run, and the text of some of its fields
    (their defaults, taken from the engine)."""
    from napari_dynamight.engine.deformation.settings import DeformationSettings
    from napari_dynamight.engine.inverse.settings import InverseSettings
    from napari_dynamight.engine.reconstruction.stage import DEFAULT_FILTER

    common = {"run folder", "Open run", "device", "Start"}
    if name == "Deformations":
        defaults = DeformationSettings()
        return common | {
            "particles (STAR or cryoSPARC .cs)",
            "consensus map",
            "epochs",
            "latent dimension",
            "Resume",
        }, {"epochs": str(defaults.epochs), "latent_dim": str(defaults.latent_dim), "device": "cpu"}
    if name == "Inverse deformations":
        return common | {"epochs", "Resume"}, {
            "epochs": str(InverseSettings().epochs),
            "device": "cpu",
        }
    return common | {"filter", "use the deformations"}, {"filter": DEFAULT_FILTER, "device": "cpu"}


def shown_texts(widget) -> set[str]:
    """The texts of the labels and buttons of ``widget`` that are visible (colons stripped)."""
    from qtpy.QtWidgets import QAbstractButton, QLabel

    return {
        child.text().strip().rstrip(":")
        for kind in (QLabel, QAbstractButton)
        for child in widget.findChildren(kind)
        if child.isVisibleTo(widget) and child.text().strip()
    }


def field_text(field) -> str:
    """What a magicgui field shows: a spin box's or line edit's text, a combo box's current item."""
    native = field.native
    return native.currentText() if hasattr(native, "currentText") else native.text()


def test_stage_widget_screenshots(qtbot, make_napari_viewer, tmp_path):
    """Each stage widget docked in a fresh viewer, before a run: its labels, buttons and the
    engine's defaults in its fields, a Start button with rendered text, and the dock in the window
    screenshot."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 900)
    for name, file_name in STAGE_WIDGETS.items():
        dock, widget = viewer.window.add_plugin_dock_widget("napari-dynamight", name)
        qtbot.waitUntil(widget.isVisible, timeout=10_000)
        qtbot.wait(300)  # the window lays the new dock out
        image = widget_rgb(widget)
        window = viewer.screenshot(canvas_only=False, flash=False)
        save(window, file_name, tmp_path)
        labels, fields = expected_texts(name)
        assert labels <= shown_texts(widget), (name, labels - shown_texts(widget))
        for attribute, text in fields.items():
            assert field_text(getattr(widget, attribute)) == text, (name, attribute)
        button = widget_rgb(widget.start_button.native)
        lit = button.max(axis=2) > 180  # the button's light text on napari's dark theme
        assert button.std() > 10 and 0.003 < lit.mean() < 0.5, name
        text = image.max(axis=2) > 180  # light labels and button text
        assert image.shape[0] > 200 and distinct_colours(image) > 20 and image.std() > 10, name
        assert 0.002 < text.mean() < 0.5, name
        right = window[:, window.shape[1] * 2 // 3 :, :3]  # the dock's side of the window
        assert (right.max(axis=2) > 180).mean() > 0.002, f"{name} is not in the window screenshot"
        viewer.window.remove_dock_widget(dock)
