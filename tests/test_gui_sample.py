"""napari's File > Open Sample entry: the simulated AdK data set, opened through the plugin."""

from __future__ import annotations

import mrcfile
import numpy as np

from napari_dynamight import _sample


def test_sample_opens_map_and_particles(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setattr(_sample, "SAMPLE_FOLDER", tmp_path / "adk")
    monkeypatch.setattr(_sample.simulated_adk, "__defaults__", (tmp_path / "adk",))
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-dynamight", "adk")
    image, points = viewer.layers["AdK consensus map"], viewer.layers[-1]
    with mrcfile.open(tmp_path / "adk" / "consensus.mrc") as mrc:
        np.testing.assert_array_equal(image.data, mrc.data)
    np.testing.assert_allclose(image.scale, [1.5] * 3)
    assert points._type_string == "points" and len(points.data) == 200
    viewer.dims.ndisplay = 3
    assert viewer.screenshot(canvas_only=True, flash=False)[..., :3].std() > 5
