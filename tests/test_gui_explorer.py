"""The latent-space explorer widget in a shown napari viewer (Xvfb): plot, colour, lasso, decode.

The synthetic run (explore_data.make_run) gives the two half sets' codes in different coordinate
systems, so every test says which half set it looks at.
"""

from __future__ import annotations

import imageio.v3 as iio
import mrcfile
import numpy as np
import pytest
import starfile
from matplotlib.backend_bases import MouseEvent

from helpers.explore_data import ShiftDecoder, make_run
from helpers.screenshots import density_pixels, gaussian_pixels, molecule_coverage
from napari_dynamight._widgets import _movie
from napari_dynamight._widgets.explorer import (
    POINTS_LAYER,
    VECTORS_LAYER,
    VOLUME_LAYER,
    ExplorerWidget,
)
from napari_dynamight.engine.data.particle_file import read_particles
from napari_dynamight.engine.explore import embed, load_run
from napari_dynamight.engine.io.lock import LOCK_NAME
from napari_dynamight.engine.io.mrc import read_map


@pytest.fixture
def explorer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-dynamight", "Latent-space explorer")
    assert isinstance(widget, ExplorerWidget)
    folder = make_run(tmp_path / "run")
    return viewer, widget, folder


def mouse(plot, kind: str, xy) -> None:
    """Send a matplotlib mouse event at data coordinates ``xy``, as a real click would."""
    x, y = plot.axes.transData.transform(xy)
    MouseEvent(kind, plot, x, y, button=1)._process()


def drag(plot, points) -> None:
    """Press at the first of ``points`` (data coordinates), move through the others, release at the
    last: a lasso in lasso mode."""
    mouse(plot, "button_press_event", points[0])
    for point in points[1:]:
        mouse(plot, "motion_notify_event", point)
    mouse(plot, "button_release_event", points[-1])


def cluster_centre(widget, k: int) -> np.ndarray:
    """Plot position of cluster ``k`` (STAR row % 3) in the current half set's view."""
    return widget.embedding.coords[widget.view.rows % 3 == k].mean(axis=0)


def wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: widget.runner is None or not widget.runner.busy, timeout=30_000)
    qtbot.waitUntil(lambda: not widget.tasks.running, timeout=60_000)


def test_open_run_plots_every_particle_and_recolours(explorer):
    viewer, widget, folder = explorer
    widget.open_run(folder)  # the decoder is missing: the plot and selections still work
    # half 1: its 150 particles and the 30 validation particles of half 2 (with half-1 codes)
    assert widget.half.value == 1 and len(widget.plot.coords) == 180
    np.testing.assert_allclose(widget.plot.artist.get_offsets(), widget.embedding.coords)
    assert {"latent 1", "rlnDefocusU", "dmDisplacementAngstrom"} <= set(widget.colour.choices)
    widget.colour_by("dmDisplacementAngstrom")
    column = starfile.read(folder / "particles.star")["particles"]["dmDisplacementAngstrom"]
    expected = column.to_numpy()[widget.view.rows]
    np.testing.assert_allclose(widget.plot.artist.get_array(), expected)
    assert widget.plot.artist.get_clim() == pytest.approx((expected.min(), expected.max()))
    assert widget.plot.colorbar.ax.get_ylabel() == "dmDisplacementAngstrom"


def test_lasso_in_half_2_exports_exactly_the_enclosed_half_2_rows(qtbot, explorer, tmp_path):
    viewer, widget, folder = explorer
    widget.open_run(folder)
    widget.set_half(2)
    view = widget.view
    half2 = np.load(folder / "latent_means_half2_validation.npy")
    validation = np.isfinite(half2[view.rows]).all(axis=1)
    assert len(view) == 180 and validation.sum() == 60
    np.testing.assert_array_equal(view.latents[validation], half2[view.rows[validation]])
    np.testing.assert_array_equal(widget.embedding.coords, embed(view.latents).coords)
    widget.mode.value = "lasso"
    coords = widget.embedding.coords
    # a rectangle around the right half of half 2's plot, drawn with the mouse
    x_mid = float(np.median(coords[:, 0]))
    reach = float(np.abs(coords).max()) + 5
    corners = [(x_mid, -reach), (reach, -reach), (reach, reach), (x_mid, reach)]
    widget.plot.axes.set_xlim(-reach - 5, reach + 5)
    widget.plot.axes.set_ylim(-reach - 5, reach + 5)
    drag(widget.plot, corners)
    expected = coords[:, 0] > x_mid
    np.testing.assert_array_equal(widget.current_mask, expected)
    assert widget.selected_label.value == f"selected: {expected.sum()}"

    widget.add_selection("right")
    widget.set_half(1)
    assert widget.selections_box.value == "right"
    path = tmp_path / "right.star"
    assert widget.export_selection(path, "right") == expected.sum()
    exported = starfile.read(path, always_dict=True)
    source = starfile.read(folder / "particles.star", always_dict=True)
    enclosed_rows = view.rows[expected]
    assert (source["particles"]["dmHalfSet"].to_numpy()[enclosed_rows] == 1).sum() > 0  # validation
    # saved outside the run folder, the names still lead to the original images
    assert list(exported["particles"]["rlnImageName"]) == [
        name.replace("@", "@run/")
        for name in source["particles"]["rlnImageName"].to_numpy()[enclosed_rows]
    ]
    np.testing.assert_array_equal(
        read_particles(path).image_files, widget.data.table.image_files[enclosed_rows]
    )
    assert exported["optics"].equals(source["optics"])
    assert not any(c.startswith("dm") for c in exported["particles"].columns)
    widget._selection_chosen("right")  # choosing a half-2 selection shows half 2 again
    assert widget.view.half == 2
    np.testing.assert_array_equal(widget.current_mask, expected)


def test_density_image_above_the_threshold(explorer):
    viewer, widget, folder = explorer
    widget.plot.density_threshold = 100  # 300 particles now count as "many"
    widget.open_run(folder)
    assert widget.plot.artist.get_array().shape == (200, 200)
    widget.colour_by("rlnDefocusU")
    image = np.asarray(widget.plot.artist.get_array())
    values = widget.columns["rlnDefocusU"]
    # the bin of particle 0 shows the mean defocus of the particles in that bin
    (x0, x1), (y0, y1) = widget.plot.extent
    bins = ((widget.embedding.coords - [x0, y0]) / [x1 - x0, y1 - y0] * 200).astype(int)
    same = (bins == bins[0]).all(axis=1)
    assert image[bins[0, 1], bins[0, 0]] == pytest.approx(values[same].mean())
    mask = widget.select_polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    assert mask.all()


def test_dock_fits_a_laptop_screen(explorer):
    """The dock fits 800 px of height; the status line, progress bar and Cancel stay outside the
    tabs."""
    viewer, widget, folder = explorer
    widget.set_data(load_run(folder))
    assert widget.sizeHint().height() <= 800 and widget.minimumSizeHint().height() <= 800
    for always in (widget.status.native, widget.tasks.bar, widget.tasks.cancel_button):
        assert always.isVisibleTo(widget) and not widget.sections.isAncestorOf(always)
    assert [widget.sections.tabText(k) for k in range(widget.sections.count())] == [
        "Selection",
        "Paths",
        "Validation",
    ]


def test_the_plugins_docks_together_fit_a_laptop_screen(qtbot, make_napari_viewer):
    """Docked one after another, this plugin's five docks share one column of tabs: the window's
    least height stays under 800 px (stacked, it was over 2,900)."""
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    names = [
        "Latent-space explorer",
        "Deformations",
        "Inverse deformations",
        "Reconstruction",
        "Data and consensus",
    ]
    docks = [viewer.window.add_plugin_dock_widget("napari-dynamight", name)[0] for name in names]
    qtbot.wait(200)
    assert window.minimumSizeHint().height() <= 800
    assert {dock.windowTitle() for dock in window.tabifiedDockWidgets(docks[0])} == {
        dock.windowTitle() for dock in docks[1:]
    }


def test_a_run_opens_with_a_decoded_volume_fitted_to_the_canvas(qtbot, explorer):
    """No click needed: the median particle's volume, an iso-surface at the automatic level, in Å,
    the molecule filling the canvas and the density outnumbering its Gaussians on screen."""
    from napari_dynamight._widgets._explorer_view import median_point
    from napari_dynamight.engine.consensus import automatic_threshold

    viewer, widget, folder = explorer
    viewer.window._qt_window.resize(1280, 800)
    widget.set_data(load_run(folder), ShiftDecoder())
    wait_idle(qtbot, widget)
    layer = viewer.layers[VOLUME_LAYER]
    assert viewer.dims.ndisplay == 3 and layer.rendering == "iso"
    assert layer.iso_threshold == pytest.approx(automatic_threshold(np.asarray(layer.data)))
    np.testing.assert_allclose(
        widget.plot.marker.get_xydata()[0], median_point(widget.embedding.coords)
    )
    for each in viewer.layers:  # the scale bar reads Å
        assert all(str(unit) == "angstrom" for unit in each.units), each.name
    assert not viewer.layers[VECTORS_LAYER].visible  # arrows on demand
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    coverage = molecule_coverage(canvas)
    density, gaussians = density_pixels(canvas).sum(), gaussian_pixels(canvas).sum()
    print(
        f"canvas {canvas.shape[:2]}: molecule coverage {coverage:.2f}, density pixels {density}, "
        f"Gaussian pixels {gaussians}"
    )
    assert coverage >= 0.25 and density > 10 * gaussians


def test_switching_halves_replaces_the_volume(qtbot, explorer):
    viewer, widget, folder = explorer
    widget.set_data(load_run(folder), ShiftDecoder())
    wait_idle(qtbot, widget)
    before = np.array(viewer.layers[VOLUME_LAYER].data)
    widget.set_half(2)
    wait_idle(qtbot, widget)
    images = [layer for layer in viewer.layers if layer._type_string == "image"]
    assert [layer.name for layer in images] == [VOLUME_LAYER]
    assert np.abs(images[0].data - before).max() > 0.1 * before.max()
    marker = widget.plot.marker.get_xydata()[0]  # the plot's marker is where the volume came from
    np.testing.assert_allclose(widget.last_decoded.latent, widget.embedding.to_latent(marker))


def test_plot_axes_show_the_explained_variance_and_categories_a_legend(explorer):
    viewer, widget, folder = explorer
    widget.set_data(load_run(folder))
    share = widget.embedding.explained_variance
    assert widget.plot.axes.get_xlabel() == f"PC 1 ({100 * share[0]:.0f}%)"
    assert widget.plot.axes.get_ylabel() == f"PC 2 ({100 * share[1]:.0f}%)"
    assert widget.plot.axes.get_aspect() == 1.0
    widget.colour_by("dmValidation")
    assert widget.plot.colorbar is None
    assert [t.get_text() for t in widget.plot.legend.get_texts()] == ["training", "validation"]
    widget.colour_by("latent 1")
    assert widget.plot.legend is None and widget.plot.colorbar is not None


def test_click_decodes_and_updates_the_volume(qtbot, explorer):
    viewer, widget, folder = explorer
    decoder = ShiftDecoder()
    widget.set_data(load_run(folder), decoder)
    clusters = [cluster_centre(widget, k) for k in range(3)]
    mouse(widget.plot, "button_press_event", clusters[0])
    mouse(widget.plot, "button_release_event", clusters[0])
    wait_idle(qtbot, widget)
    volume_0 = np.array(viewer.layers[VOLUME_LAYER].data)
    shot_0 = viewer.screenshot(canvas_only=True, flash=False)
    mouse(widget.plot, "button_press_event", clusters[1])  # cluster 1 sits at latent x = 6 Å
    mouse(widget.plot, "button_release_event", clusters[1])
    wait_idle(qtbot, widget)
    layer = viewer.layers[VOLUME_LAYER]
    assert sum(layer.name == VOLUME_LAYER for layer in viewer.layers) == 1
    assert np.abs(layer.data - volume_0).max() > 0.1 * volume_0.max()
    np.testing.assert_allclose(layer.scale, [2.0] * 3)
    shift = widget.last_decoded.latent[:2]
    assert shift[0] == pytest.approx(6, abs=0.5) and abs(shift[1]) < 0.5
    vectors = viewer.layers[VECTORS_LAYER].data
    np.testing.assert_allclose(vectors[:, 1], np.tile([0, shift[1], shift[0]], (12, 1)), atol=1e-5)
    np.testing.assert_allclose(
        viewer.layers[POINTS_LAYER].data,
        (decoder.consensus + [shift[0], shift[1], 0])[:, ::-1],
        atol=1e-5,
    )
    shot_1 = viewer.screenshot(canvas_only=True, flash=False)
    assert shot_1[..., :3].std() > 5 and np.abs(shot_1.astype(int) - shot_0).mean() > 0.5


def test_click_decodes_with_the_chosen_halfs_decoder(qtbot, explorer):
    viewer, widget, folder = explorer
    decoder = ShiftDecoder()
    widget.set_data(load_run(folder), decoder)
    widget.set_half(2)
    assert decoder.half == 2
    point = cluster_centre(widget, 1)
    mouse(widget.plot, "button_press_event", point)
    mouse(widget.plot, "button_release_event", point)
    wait_idle(qtbot, widget)
    latent = widget.embedding.to_latent(point)
    np.testing.assert_allclose(widget.last_decoded.latent, latent)
    # half 2's code of cluster 1 is its own frame's (6, 0, 1, 0): half 2's decoder moves by 6 Å in z
    vectors = viewer.layers[VECTORS_LAYER].data[:, 1]
    np.testing.assert_allclose(vectors, np.tile([6, 0, 0], (12, 1)), atol=0.6)
    half1_volume = ShiftDecoder().decode(latent).volume  # the same latent point, half 1's decoder
    shown = np.asarray(viewer.layers[VOLUME_LAYER].data)
    np.testing.assert_allclose(shown, decoder.decode(latent).volume, atol=1e-6)
    assert np.abs(shown - half1_volume).max() > 0.5 * shown.max()


def test_dragging_decodes_without_queueing(qtbot, explorer, monkeypatch):
    """A fast drag (here: every move inside one coalescing interval, with the event loop running
    between moves as for real mouse events) redraws the plot and requests a volume at the press and
    at the release only, and the volume shown is the release point's."""
    from qtpy.QtWidgets import QApplication

    from napari_dynamight._widgets import _plot

    viewer, widget, folder = explorer
    decoder = ShiftDecoder()
    widget.set_data(load_run(folder), decoder)
    wait_idle(qtbot, widget)  # the volume a run opens with
    widget.plot.draw()
    monkeypatch.setattr(_plot, "DRAG_INTERVAL_MS", 60_000)  # every move below counts as rapid
    requested, calls, draws = widget.runner.requested, decoder.calls, []
    widget.plot.mpl_connect("draw_event", lambda _: draws.append(1))
    points = widget.embedding.coords[:20]
    mouse(widget.plot, "button_press_event", points[0])
    for point in points[1:]:
        QApplication.processEvents()
        mouse(widget.plot, "motion_notify_event", point)
    QApplication.processEvents()
    mouse(widget.plot, "button_release_event", points[-1])
    wait_idle(qtbot, widget)
    QApplication.processEvents()
    assert len(draws) <= 2, len(draws)
    assert widget.runner.requested - requested == 2 and decoder.calls - calls <= 2
    np.testing.assert_allclose(widget.last_point, points[-1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        widget.last_decoded.latent, widget.embedding.to_latent(widget.last_point)
    )


def test_path_volumes_and_movie(qtbot, explorer, tmp_path, monkeypatch):
    viewer, widget, folder = explorer
    widget.set_data(load_run(folder), ShiftDecoder())
    clusters = [cluster_centre(widget, k) for k in range(3)]
    widget.frames.value = 4
    widget.decode_at(clusters[0])
    widget.set_path_end(0)
    widget.decode_at(clusters[1])
    widget.set_path_end(1)
    wait_idle(qtbot, widget)
    assert widget.path_latents.shape == (4, 4)
    widget.save_volumes(tmp_path / "volumes")
    wait_idle(qtbot, widget)
    files = sorted((tmp_path / "volumes").glob("path_*.mrc"))
    assert len(files) == 4 and not (tmp_path / "volumes" / LOCK_NAME).exists()
    script = (tmp_path / "volumes" / "path.cxc").read_text()
    assert (
        " ".join(f'"{f.name}"' for f in files) + " vseries true" in script and "movie" not in script
    )
    with mrcfile.open(files[0]) as first, mrcfile.open(files[-1]) as last:
        assert np.abs(first.data - last.data).max() > 0.1 * first.data.max()
        assert float(first.voxel_size.x) == pytest.approx(2.0)

    widget.path_kind.value = "along the data"
    widget.make_path()
    movie = tmp_path / "path.gif"
    renders, while_capturing = [], []  # the canvas's renders, and their count when capture ended
    viewer.window._qt_viewer.canvas._scene_canvas.events.draw.connect(lambda _: renders.append(1))
    close = _movie.FrameCapture.close
    monkeypatch.setattr(
        _movie.FrameCapture,
        "close",
        lambda capture: (while_capturing.append(len(renders)), close(capture)),
    )
    widget.export_movie(movie, also=[tmp_path / "path.mp4"])
    wait_idle(qtbot, widget)
    assert widget.tasks.last_outcome.error is None
    assert while_capturing[0] == 4  # each frame rendered once, not again on screen
    frames = iio.imread(movie)
    canvas_height, canvas_width = viewer.window._qt_viewer.canvas.size
    # cropped to the molecule (the canvas is tall and narrow here), background rows around it
    assert frames.shape[0] == 4 and frames.shape[1] < 0.6 * canvas_height, (
        frames.shape,
        canvas_height,
    )
    assert max(frames[:, :2].max(), frames[:, -2:].max()) < 30
    mp4 = iio.imread(tmp_path / "path.mp4", plugin="FFMPEG")
    assert mp4.shape[0] == 4 and mp4.shape[1] % 16 == 0 and mp4.shape[2] % 16 == 0
    assert mp4.shape[1] >= frames.shape[1] and mp4.shape[2] >= frames.shape[2]  # padded, not cut
    chimerax = tmp_path / "path_chimerax"  # the same series for ChimeraX, recording path.mp4
    assert len(list(chimerax.glob("path_*.mrc"))) == 4 and not (chimerax / LOCK_NAME).exists()
    script = (chimerax / "path.cxc").read_text()
    assert (
        "vseries true" in script
        and "wait 4" in script
        and 'movie encode "path.mp4" framerate 10' in script
    )
    change, contrast = np.abs(frames[0].astype(int) - frames[-1]).mean(), frames[0].std()
    assert change > 0.5 and contrast > 5, (change, contrast)


def test_gaussian_error_estimates_view(explorer):
    viewer, widget, folder = explorer
    rng = np.random.default_rng(2)
    table = np.column_stack([rng.normal(0, 10, (40, 3)), rng.uniform(0, 3, 40)])
    np.savetxt(
        folder / "gaussian_errors.csv",
        table,
        delimiter=",",
        fmt="%.5f",
        comments="",
        header="x_angstrom,y_angstrom,z_angstrom,error_angstrom",
    )
    widget.open_run(folder)
    layer = widget.show_gaussian_errors()
    np.testing.assert_allclose(layer.data, table[:, 2::-1], atol=1e-5)
    np.testing.assert_allclose(layer.features["error_angstrom"], table[:, 3], atol=1e-5)
    colours = layer.face_color[np.argsort(table[:, 3])[[0, -1]]]
    assert np.abs(colours[0] - colours[1]).sum() > 0.5  # lowest and highest error differ in colour
    assert (
        layer.face_colorbar.visible and str(layer.units[0]) == "angstrom"
    )  # a colour legend, in Å


def test_reconstruct_selection_shows_the_half_maps_and_the_fsc(
    qtbot, make_napari_viewer, finished_run
):
    """A lasso selection in a real run, one click on Reconstruct selection: the half maps and the
    full map of exactly those particles as layers in Å, their FSC plotted, the files in
    RUN/subsets/."""
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-dynamight", "Latent-space explorer")
    widget.open_run(finished_run)
    assert not widget.reconstruct_button.enabled
    coords = widget.embedding.coords
    low, high = coords.min(axis=0) - 1, coords.max(axis=0) + 1
    mask = widget.select_polygon(
        [(low[0], low[1]), (high[0], low[1]), (high[0], high[1]), (low[0], high[1])]
    )
    assert mask.all() and widget.reconstruct_button.enabled
    widget.reconstruct_button.native.click()
    qtbot.waitUntil(lambda: not widget.tasks.running, timeout=120_000)
    assert widget.tasks.last_outcome.error is None, widget.tasks.last_outcome.details
    folder = finished_run / "subsets" / "selection" / "reconstruction_standard"
    box, voxel = read_map(folder / "full.mrc")[0].shape[0], read_map(folder / "full.mrc")[1]
    for role in ("half 1", "half 2", "full"):
        layer = viewer.layers[f"selection: {role}"]
        assert layer.data.shape == (box,) * 3 and tuple(layer.scale) == pytest.approx((voxel,) * 3)
    assert (
        not viewer.layers["selection: half 1"].visible and viewer.layers["selection: full"].visible
    )
    frequency, values = widget.fsc_plot.curve(0, "standard")
    assert len(values) == box // 2 + 1 and np.isfinite(values).all() and values[1] > 0.5
    assert len(read_particles(folder / "particles.star")) == len(widget.view.rows)
    assert (folder / "maps.cxc").is_file() and not (finished_run / LOCK_NAME).exists()


def test_one_lasso_in_the_common_space_exports_both_halves(
    qtbot, make_napari_viewer, finished_run, tmp_path
):
    """Half sets "both": every particle in the common motion space; one lasso selects particles of
    both halves, exported as one STAR file of exactly the enclosed rows; a click decodes the nearest
    particle with its own half."""
    import shutil

    from napari_dynamight._widgets._explorer_common import BOTH
    from napari_dynamight.engine.explore import points_in_polygon

    folder = shutil.copytree(finished_run, tmp_path / "run")
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-dynamight", "Latent-space explorer")
    widget.open_run(folder)
    assert BOTH in widget.half.choices
    widget.set_half(BOTH)
    qtbot.waitUntil(lambda: widget.view is not None and widget.view.half == BOTH, timeout=60_000)
    table = widget.data.table.particles
    halves, validation = table.dmHalfSet.to_numpy(), table.dmValidation.to_numpy() != 0
    assert len(widget.plot.coords) == len(table) and (folder / "common_motion_space.npz").is_file()
    assert widget.colour.value == "dmHalfSet"
    assert not any(name.startswith("latent") for name in widget.colour.choices)
    np.testing.assert_allclose(
        widget._validation_marks.get_offsets(), widget.embedding.coords[validation]
    )

    widget.mode.value = "lasso"
    coords = widget.embedding.coords
    x_mid, reach = float(np.median(coords[:, 0])), float(np.abs(coords).max()) + 1
    corners = [(x_mid, -reach), (reach, -reach), (reach, reach), (x_mid, reach)]
    widget.plot.axes.set_xlim(-reach - 1, reach + 1)
    widget.plot.axes.set_ylim(-reach - 1, reach + 1)
    drag(widget.plot, corners)
    expected = np.nonzero(points_in_polygon(coords, corners))[0]  # view rows are the STAR rows
    np.testing.assert_array_equal(np.nonzero(widget.current_mask)[0], expected)
    assert {1, 2} <= set(halves[expected]) and validation[expected].any()
    for half in (1, 2):
        assert f"{half}: {(halves[expected] == half).sum()}" in widget.status.value
    assert f"{validation[expected].sum()} validation" in widget.status.value

    path = tmp_path / "both.star"
    assert widget.export_selection(path) == len(expected)
    np.testing.assert_array_equal(
        read_particles(path).image_files, widget.data.table.image_files[expected]
    )
    assert "dmHalfSet 1:" in widget.status.value

    target = coords[expected[0]] + 1e-3
    widget.mode.value = "decode"
    mouse(widget.plot, "button_press_event", target)
    mouse(widget.plot, "button_release_event", target)
    wait_idle(qtbot, widget)
    row = widget.embedding.nearest(target)
    np.testing.assert_allclose(widget.last_decoded.latent, widget.common.codes[row])
    own = widget.decoder.decode(widget.common.codes[row], half=int(halves[row]))
    np.testing.assert_allclose(viewer.layers[VOLUME_LAYER].data, own.volume, atol=1e-6)

    second = np.nonzero(validation & (halves == 2))[0][0]  # compared, and shown by its own half 2
    assert widget.compare_halves(coords[second]) == second
    qtbot.waitUntil(lambda: getattr(widget, "last_comparison", None) is not None, timeout=30_000)
    wait_idle(qtbot, widget)
    np.testing.assert_allclose(
        widget.last_decoded.latent, np.load(folder / "latent_means_half2_validation.npy")[second]
    )


def test_validation_particles_are_marked_on_the_common_density_image(
    qtbot, make_napari_viewer, finished_run, tmp_path, monkeypatch
):
    """Above the density threshold (lowered here) the common space is a density image; the
    validation particles are still marked, as dots, every one of them or a stated subset."""
    import shutil

    from napari_dynamight._widgets import _explorer_common
    from napari_dynamight._widgets._explorer_common import BOTH

    folder = shutil.copytree(finished_run, tmp_path / "run")
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-dynamight", "Latent-space explorer")
    widget.plot.density_threshold = 10
    widget.open_run(folder)
    widget.set_half(BOTH)
    qtbot.waitUntil(lambda: widget.view is not None and widget.view.half == BOTH, timeout=60_000)
    validation = widget.data.table.particles.dmValidation.to_numpy() != 0
    assert widget.plot.density and widget.plot.artist.get_array().shape == (200, 200)
    np.testing.assert_allclose(
        widget._validation_marks.get_offsets(), widget.embedding.coords[validation]
    )
    assert widget._validation_legend.get_texts()[0].get_text() == f"validation ({validation.sum()})"

    monkeypatch.setattr(_explorer_common, "MAX_VALIDATION_DOTS", 5)
    widget.mark_validation()
    shown = widget._validation_marks.get_offsets()
    assert len(shown) == 5 and len(widget.plot.axes.collections) == 1  # replaced, not added
    assert all(
        (np.abs(widget.embedding.coords[validation] - point).sum(axis=1) < 1e-5).any()
        for point in shown
    )
    assert (
        widget._validation_legend.get_texts()[0].get_text()
        == f"validation (5 of {validation.sum()} shown)"
    )


def test_the_common_space_needs_the_runs_decoders(explorer):
    from napari_dynamight._widgets._explorer_common import BOTH

    viewer, widget, folder = explorer
    widget.open_run(folder)  # latent means and a table, no checkpoints: nothing to decode
    assert BOTH not in widget.half.choices
    widget.set_half(BOTH)
    assert "needs a run folder with its decoders" in widget.status.value and widget.view.half == 1
