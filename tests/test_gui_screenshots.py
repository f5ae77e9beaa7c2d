"""The explorer's screenshot for the user guide (docs/gui.md), asserted on pixel content.

The data widget's screenshot is taken in test_gui_data.py. Set DYNAMIGHT_SCREENSHOTS=docs/images to
(re)write the guide's images from these tests.
"""

from __future__ import annotations

import numpy as np

from explore_data import ShiftDecoder, make_run
from napari_dynamight.engine.explore import load_run
from screenshots import distinct_colours, save


def test_explorer_screenshot(qtbot, make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 900)
    _, widget = viewer.window.add_plugin_dock_widget("napari-dynamight", "Latent-space explorer")
    widget.set_data(load_run(make_run(tmp_path / "run")), ShiftDecoder())
    widget.colour_by("dmDisplacementAngstrom")
    coords = widget.embedding.coords
    low, high = coords.min(axis=0), coords.max(axis=0)
    middle = (low + high) / 2
    widget.select_polygon([(middle[0], low[1]), (high[0], low[1]), (high[0], high[1]),
                           (middle[0], high[1])])
    widget.add_selection("right half")
    widget.decode_at(coords[1::3].mean(axis=0))
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=30_000)
    widget.plot.draw()
    plot = widget.plot.grab().toImage()
    plot_rgb = np.array(plot.constBits().asarray(plot.sizeInBytes())).reshape(
        plot.height(), plot.bytesPerLine() // 4, 4)[..., [2, 1, 0]]
    window = viewer.screenshot(canvas_only=False, flash=False)
    save(window, "explorer.png", tmp_path)
    assert distinct_colours(plot_rgb) > 30  # a coloured scatter, not a blank canvas
    red = (plot_rgb[..., 0] > 200) & (plot_rgb[..., 1] < 80) & (plot_rgb[..., 2] < 80)
    assert red.sum() > 50  # the selection outline and the decode marker
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    assert canvas[..., :3].std() > 5
