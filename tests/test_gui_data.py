"""The "Data and consensus" widget, driven through napari in a shown viewer (Xvfb)."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from conftest import STAR_FILES, TRPV1_MAP
from helpers.screenshots import distinct_colours, save
from napari_dynamight._widgets.data import GAUSSIANS_LAYER, MAP_LAYER, DataWidget
from napari_dynamight.engine.consensus import load_model
from napari_dynamight.engine.io.lock import LOCK_NAME


def wait_for(qtbot, widget, worker):
    """Wait until the widget's task ended (its ``finished`` callback ran, so no worker is left)."""
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.tasks.running, timeout=60_000)


@pytest.fixture
def data_widget(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 800)
    _, widget = viewer.window.add_plugin_dock_widget("napari-dynamight", "Data and consensus")
    assert isinstance(widget, DataWidget)
    return viewer, widget


def test_load_and_fill_and_fit(qtbot, data_widget, tmp_path):
    viewer, widget = data_widget
    widget.star.value = STAR_FILES["trpv1"]
    widget.map.value = TRPV1_MAP
    wait_for(qtbot, widget, widget.load())
    layer = viewer.layers[MAP_LAYER]
    with mrcfile.open(TRPV1_MAP) as mrc:
        voxel, volume = float(mrc.voxel_size.x), np.asarray(mrc.data)
    np.testing.assert_allclose(layer.scale, [voxel] * 3)
    np.testing.assert_allclose(layer.data_to_world([24, 24, 24]), [0, 0, 0], atol=1e-9)
    np.testing.assert_array_equal(layer.data, volume)
    assert layer.rendering == "iso" and viewer.dims.ndisplay == 3
    assert "10 particles, 1 optics group" in widget.summary.value
    assert "box 48 px, pixel size 4.88 Å" in widget.summary.value

    widget.threshold.value = 0.2
    assert layer.iso_threshold == pytest.approx(0.2)
    screenshot = viewer.screenshot(canvas_only=True, flash=False)
    assert screenshot[..., :3].std() > 5, "the map did not render"

    widget.output.value = tmp_path / "consensus"
    widget.n_gaussians.value = 150
    widget.steps.value = 5
    wait_for(qtbot, widget, widget.fill_and_fit())
    assert widget.tasks.last_outcome.error is None
    points = viewer.layers[GAUSSIANS_LAYER]
    assert len(points.data) == widget.fit.n_gaussians == 150
    model = load_model(tmp_path / "consensus" / "consensus_gaussians.pt")
    np.testing.assert_allclose(points.data, model.positions_angstrom.numpy()[:, ::-1])
    # the Gaussians sit on the molecule: the map at their voxels is well above its mean
    index = np.round(points.data / voxel + 24).astype(int)
    assert volume[tuple(index.T)].mean() > volume.mean() + 2 * volume.std()
    assert widget.fit.correlation > 0.3
    assert "150 Gaussians" in widget.summary.value
    assert not (tmp_path / "consensus" / LOCK_NAME).exists()

    # the Gaussians are drawn in orange over the grey map (the user guide's screenshot)
    viewer.camera.angles = (0, -30, 60)
    canvas = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    red, green, blue = canvas[..., 0], canvas[..., 1], canvas[..., 2]
    orange = (red > 180) & (green > 80) & (green < 200) & (blue < 80)
    assert orange.sum() > 100
    window = viewer.screenshot(canvas_only=False, flash=False)
    assert window.shape[1] > canvas.shape[1] and distinct_colours(window) > 50
    save(window, "data_widget.png", tmp_path)


def test_bad_map_is_one_line_and_adds_nothing(qtbot, data_widget, tmp_path):
    viewer, widget = data_widget
    stack = STAR_FILES["relion31"].with_suffix(".mrcs")
    widget.map.value = stack  # a stack of 2D images, not a cubic map
    wait_for(qtbot, widget, widget.load())
    error = widget.tasks.last_outcome.error
    assert error is not None and "\n" not in widget.tasks.status.text()
    assert str(stack) in widget.tasks.status.text()
    assert MAP_LAYER not in viewer.layers and not widget.fit_button.enabled


def test_mask_with_another_box_is_refused(qtbot, data_widget, tmp_path):
    viewer, widget = data_widget
    mask = tmp_path / "mask.mrc"
    with mrcfile.new(mask) as mrc:
        mrc.set_data(np.ones((32, 32, 32), np.float32))
        mrc.voxel_size = 4.88
    widget.map.value = TRPV1_MAP
    widget.mask.value = mask
    wait_for(qtbot, widget, widget.load())
    assert "mask box 32 differs from the map's 48" in widget.tasks.status.text()
    assert MAP_LAYER not in viewer.layers


def test_summary_notes_images_and_map_of_different_widths():
    from napari_dynamight._widgets.data import format_summary

    star = {
        "particles": 5,
        "poses": True,
        "optics_groups": [
            {"optics_group": 1, "particles": 5, "box": 64, "pixel_size_angstrom": 1.5}
        ],
    }
    same = format_summary(star, (np.zeros((64, 64, 64)), 1.5, 0.1))
    assert "note" not in same and "5 particles, 1 optics group, poses: yes" in same
    other = format_summary(star, (np.zeros((48, 48, 48)), 1.5, 0.1))
    assert "note: group 1's images are 96.0 Å wide, the map 72.0 Å" in other
