"""napari readers: MRC maps and stacks with the right scale and values; STAR viewing directions."""

from __future__ import annotations

import subprocess
import sys

import mrcfile
import numpy as np
import pytest

from conftest import DATA, STAR_FILES, TRPV1_MAP, TRPV1_STACK, edit_star
from napari_dynamight._reader import get_mrc_reader, get_star_reader, read_mrc, read_star
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.geometry import euler_to_matrix_numpy
from napari_dynamight.engine.io.mrc import write_map


@pytest.fixture
def small_map(tmp_path):
    """A 24³ map with a distinct value in every voxel and a 2.5 Å voxel size."""
    volume = np.arange(24**3, dtype=np.float32).reshape(24, 24, 24) / 1000
    path = tmp_path / "small.mrc"
    write_map(path, volume, 2.5)
    return path, volume


def test_reader_selection_by_extension(tmp_path):
    assert get_mrc_reader("a.mrc") is read_mrc
    assert get_mrc_reader("b.MRCS") is read_mrc
    assert get_mrc_reader(["c.map"]) is read_mrc
    assert get_mrc_reader("d.tif") is None
    assert get_mrc_reader(["a.mrc", "b.mrc"]) is None
    assert get_star_reader("p.star") is read_star
    assert get_star_reader("p.mrc") is None


def test_map_layer_has_voxel_size_scale_and_exact_values(small_map):
    path, volume = small_map
    [(data, kwargs, kind)] = get_mrc_reader(str(path))(str(path))
    assert kind == "image"
    np.testing.assert_array_equal(data, volume)
    assert kwargs["scale"] == [2.5, 2.5, 2.5]
    # World coordinates are Å from the box centre (index N // 2), as for the engine's Gaussians.
    assert kwargs["translate"] == [-30.0, -30.0, -30.0]
    assert kwargs["metadata"]["voxel_size_angstrom"] == 2.5


def test_real_map_matches_mrcfile():
    [(data, kwargs, _)] = read_mrc(TRPV1_MAP)
    with mrcfile.open(TRPV1_MAP, permissive=True) as mrc:
        np.testing.assert_array_equal(data, mrc.data)
        assert kwargs["scale"] == pytest.approx([float(mrc.voxel_size.x)] * 3)
    assert kwargs["scale"][0] == pytest.approx(4.88, abs=1e-5)


def test_particle_stack_is_a_lazy_2d_stack():
    [(data, kwargs, _)] = read_mrc(TRPV1_STACK)
    assert isinstance(data, np.memmap)
    with mrcfile.open(TRPV1_STACK, permissive=True) as mrc:
        np.testing.assert_array_equal(data, mrc.data)
    assert data.shape == (10, 48, 48)
    assert kwargs["scale"] == pytest.approx([1.0, 4.88, 4.88], abs=1e-5)
    assert kwargs["translate"][0] == 0.0


def test_stack_with_zero_pixel_size_gets_unit_scale():
    path = DATA / "aspire_relion_proj" / "rln_proj_65.mrcs"  # relion_project wrote voxel size 0
    [(data, kwargs, _)] = read_mrc(path)
    assert data.shape == (5, 65, 65)
    assert kwargs["scale"] == [1.0, 1.0, 1.0]


def test_non_cubic_mrc_opens_as_stack(tmp_path):
    images = np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32)
    path = tmp_path / "images.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(images)
        mrc.voxel_size = 1.7
    [(data, kwargs, _)] = read_mrc(path)
    np.testing.assert_array_equal(data, images)
    assert kwargs["scale"] == pytest.approx([1.0, 1.7, 1.7], rel=1e-6)


def test_truncated_mrc_is_an_input_error(small_map, tmp_path):
    path, _ = small_map
    cut = tmp_path / "cut.mrc"
    cut.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(InputError, match="truncated"):
        read_mrc(cut)


def test_star_reader_places_viewing_directions_on_a_sphere():
    path = STAR_FILES["relion31"]
    [(points, kwargs, kind)] = read_star(path)
    assert kind == "points"
    import starfile

    particles = starfile.read(path, always_dict=True)["particles"]
    euler = particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(dtype=float)
    radius = 256 * 2.806 / 2
    # The viewing direction is the third row of RELION's matrix A; napari coordinates are [z, y, x].
    expected = euler_to_matrix_numpy(euler)[:, 2, ::-1] * radius
    np.testing.assert_allclose(points, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(kwargs["features"]["defocus_u_angstrom"], particles["rlnDefocusU"])
    assert kwargs["metadata"]["summary"]["particles"] == 5


def test_star_reader_keeps_half_sets_and_optics_groups():
    [(points, kwargs, _)] = read_star(STAR_FILES["relion31_6optics"])
    assert points.shape == (139, 3)
    assert sorted(set(kwargs["features"]["optics_group"])) == [1, 2, 3, 4, 5, 6]
    assert sorted(set(kwargs["features"]["half_set"])) == [1, 2]
    radii = np.linalg.norm(points, axis=1)
    assert radii.min() == pytest.approx(196 * 1.24 / 2)
    assert radii.max() == pytest.approx(196 * 1.25 / 2)


def test_star_without_poses_shows_first_images_at_star_pixel_size(tmp_path):
    def drop_angles(blocks):
        blocks["particles"] = blocks["particles"].drop(
            columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
        )

    path = edit_star(STAR_FILES["relion31"], tmp_path / "no_poses.star", drop_angles)
    (tmp_path / "relion31.mrcs").symlink_to(DATA / "cryodrgn" / "relion31.mrcs")
    [(images, kwargs, kind)] = read_star(path)
    assert kind == "image"
    with mrcfile.open(DATA / "cryodrgn" / "relion31.mrcs", permissive=True) as mrc:
        np.testing.assert_array_equal(images, mrc.data)
    assert kwargs["scale"] == pytest.approx([1.0, 2.806, 2.806])  # the header says 1.0


def test_star_without_poses_or_images_is_a_clear_error():
    with pytest.raises(InputError, match="no poses"):
        read_star(STAR_FILES["empiar10076_relion30"])


def test_reader_module_does_not_import_torch_or_qt():
    code = (
        "import sys, napari_dynamight._reader\n"
        "heavy = [m for m in ('torch', 'qtpy', 'PyQt6', 'napari') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_open_mrc_in_napari(make_napari_viewer, small_map):
    """Through napari's own plugin machinery, in a shown viewer (Xvfb via pytest-xvfb)."""
    path, volume = small_map
    viewer = make_napari_viewer(show=True)
    [layer] = viewer.open(str(path), plugin="napari-dynamight")
    np.testing.assert_array_equal(np.asarray(layer.data), volume)
    np.testing.assert_allclose(layer.scale, [2.5, 2.5, 2.5])
    np.testing.assert_allclose(layer.data_to_world([12, 12, 12]), [0.0, 0.0, 0.0])
    viewer.dims.ndisplay = 3
    screenshot = viewer.screenshot(canvas_only=True, flash=False)
    assert screenshot[..., :3].std() > 5, "the map did not render"


def test_open_star_in_napari(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    [layer] = viewer.open(str(STAR_FILES["trpv1"]), plugin="napari-dynamight")
    assert layer._type_string == "points"
    assert len(layer.data) == 10
    np.testing.assert_allclose(np.linalg.norm(layer.data, axis=1), 48 * 4.88 / 2, rtol=1e-6)


def test_run_reader_accepts_only_run_folders(tmp_path):
    from helpers.explore_data import make_run
    from napari_dynamight._reader import get_run_reader, has_latent_columns, read_run

    folder = make_run(tmp_path / "run", n=30)
    assert get_run_reader(str(folder)) is None  # no run.json: not a deformation run folder
    (folder / "run.json").write_text("{}", encoding="utf-8")
    assert get_run_reader(str(folder)) is read_run
    assert get_run_reader([str(folder)]) is read_run
    assert get_run_reader(str(folder / "particles.star")) is None
    assert get_run_reader(str(folder / "run.json")) is read_run  # the run file opens its run
    assert has_latent_columns(folder / "particles.star")
    assert not has_latent_columns(STAR_FILES["relion31"])


def test_run_folder_opens_the_explorer_by_drag_and_drop(make_napari_viewer, tmp_path):
    """viewer.open on a run folder (what drag and drop and File ▸ Open Folder call) docks the
    explorer through napari.current_viewer() and adds no layer."""
    from helpers.explore_data import make_run
    from napari_dynamight._widgets.explorer import ExplorerWidget

    folder = make_run(tmp_path / "run", n=60)
    (folder / "run.json").write_text("{}", encoding="utf-8")
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(folder), plugin="napari-dynamight")
    assert layers == [] and len(viewer.layers) == 0
    docked = viewer.window._wrapped_dock_widgets["Latent-space explorer (napari-dynamight)"]
    widget = docked.inner_widget()
    assert isinstance(widget, ExplorerWidget) and docked.isVisible()
    assert widget.data.source == folder and widget.view.half == 1
    np.testing.assert_array_equal(widget.data.latents, np.load(folder / "latent_means.npy"))
    assert (
        len(widget.plot.coords) == len(widget.view) == 36
    )  # 30 of half 1 + 6 validation of half 2


def test_run_star_opens_its_latent_space(make_napari_viewer, tmp_path):
    from helpers.explore_data import make_run

    folder = make_run(tmp_path / "run", n=60)
    viewer = make_napari_viewer(show=True)
    assert viewer.open(str(folder / "particles.star"), plugin="napari-dynamight") == []
    widget = viewer.window._wrapped_dock_widgets[
        "Latent-space explorer (napari-dynamight)"
    ].inner_widget()
    assert widget.data.source == folder / "particles.star"
    np.testing.assert_allclose(widget.data.latents, np.load(folder / "latent_means.npy"), atol=1e-5)
    np.testing.assert_allclose(
        widget.data.half2_validation,
        np.load(folder / "latent_means_half2_validation.npy"),
        atol=1e-5,
    )
    # a plain particle STAR file still opens as viewing directions
    [layer] = viewer.open(str(STAR_FILES["trpv1"]), plugin="napari-dynamight")
    assert layer._type_string == "points"


def test_unfinished_run_folder_opens_its_half_maps(make_napari_viewer, tmp_path):
    from npe2 import PluginManager

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text("{}", encoding="utf-8")
    viewer = make_napari_viewer(show=True)
    with pytest.raises(ValueError, match="half maps"):  # napari wraps the reader's InputError
        viewer.open(str(folder), plugin="napari-dynamight")
    volume = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    for half in (1, 2):
        write_map(folder / f"consensus_half{half}.mrc", volume * half, 2.0)
    layers = viewer.open(str(folder), plugin="napari-dynamight")
    assert [layer.name for layer in layers] == ["consensus_half1", "consensus_half2"]
    np.testing.assert_allclose(layers[1].data, 2 * volume)
    readers = PluginManager.instance().iter_compatible_readers([str(folder)])
    assert "napari-dynamight.get_run_reader" in {reader.command for reader in readers}
    # napari's own reader takes folders too (it asks which to use); the run file has one reader
    from napari.plugins._npe2 import get_readers

    assert get_readers(str(folder / "run.json")) == {"napari-dynamight": "DynaMight"}
    viewer.layers.clear()
    layers = viewer.open(
        str(folder / "run.json"), plugin=None
    )  # as a drop: no reader named, no dialog
    assert [layer.name for layer in layers] == ["consensus_half1", "consensus_half2"]


def test_run_folders_open_without_the_reader_choice_dialog(
    qtbot, make_napari_viewer, tmp_path, monkeypatch
):
    """napari's builtin reader accepts every folder, so a run folder alone makes napari ask which
    reader to use. A folder the plugin opened once is napari's preference for it; a run folder
    dropped on a window with the explorer opens there. The dialog is never shown."""
    from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog
    from napari.settings import get_settings
    from qtpy.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
    from qtpy.QtGui import QDragEnterEvent, QDropEvent
    from qtpy.QtWidgets import QApplication

    from helpers.explore_data import make_run

    assert not get_settings().config_path  # conftest: napari saves no settings file in the tests
    asked = []
    monkeypatch.setattr(
        QtReaderDialog, "get_user_choices", lambda dialog: (asked.append(1), ("", False))[1]
    )
    first, second = (make_run(tmp_path / name, n=60) for name in ("first", "second"))
    for folder in (first, second):
        (folder / "run.json").write_text("{}", encoding="utf-8")
    viewer = make_napari_viewer(show=True)
    qt_viewer = viewer.window._qt_viewer
    qt_viewer._qt_open([str(first)], stack=False)  # what a drop does: napari asks (the problem)
    assert len(asked) == 1 and len(viewer.window._wrapped_dock_widgets) == 0

    viewer.open(
        str(first / "run.json"), plugin=None
    )  # one reader for the run file: the explorer docks
    widget = viewer.window._wrapped_dock_widgets[
        "Latent-space explorer (napari-dynamight)"
    ].inner_widget()
    assert widget.data.source == first
    widget.open_run(second)
    widget.open_run(first)
    qt_viewer._qt_open([str(second)], stack=False)  # remembered: opened by the plugin, no question
    assert len(asked) == 1 and widget.data.source == second and len(viewer.layers) == 0
    assert viewer.open(str(first), plugin=None) == [] and widget.data.source == first  # none named

    third = make_run(tmp_path / "third", n=60)
    (third / "run.json").write_text("{}", encoding="utf-8")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(third))])
    press = (
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    # never opened before, dragged onto the explorer's window and dropped (Qt delivers a drop after
    # an accepted drag entry only)
    assert QApplication.sendEvent(qt_viewer, QDragEnterEvent(QPoint(20, 20), *press))
    assert QApplication.sendEvent(qt_viewer, QDropEvent(QPointF(20, 20), *press))
    assert len(asked) == 1 and widget.data.source == third and len(viewer.layers) == 0


def test_world_placement_and_positions_put_the_box_centre_at_zero():
    from napari_dynamight._widgets._layers import world_placement, world_positions

    assert world_placement((5, 64, 63), 2.0, leading=1) == {
        "scale": [1.0, 2.0, 2.0],
        "translate": [0.0, -64.0, -62.0],
    }
    placement = world_placement((9, 10, 11), 1.5)
    index = np.array([[0, 9, 5], [4, 5, 5]])
    expected = index * np.array(placement["scale"]) + np.array(placement["translate"])
    np.testing.assert_allclose(world_positions(index, (9, 10, 11), 1.5), expected)
    np.testing.assert_allclose(world_positions([[4, 5, 5]], (9, 10, 11), 1.5), [[0.0, 0.0, 0.0]])
