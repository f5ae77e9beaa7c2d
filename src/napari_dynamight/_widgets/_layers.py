"""Put arrays into napari layers in the engine's frame: Å from the box centre, napari order [z, y,
x].

One layer per role: a layer with the given name is updated in place (data replaced) rather than a
new one added, so repeated loads and decodes never pile up layers. Every layer is in Å (layer
``units``, so the scale bar reads Å). Maps are iso-surfaces at the map's automatic level
(``engine.consensus.automatic_threshold``) and :func:`fit_camera` zooms the 3D view onto the
molecule (the voxels above that level), not onto the whole box.
"""

from __future__ import annotations

import numpy as np

UNITS = "angstrom"
FILL = 0.9  # the fraction of the canvas's shorter side the molecule's extent fills
GAUSSIAN_STYLE = {
    "face_color": "orange",
    "border_width": 0,
    "opacity": 0.6,
    "blending": "translucent",
}  # drawn small, hidden inside the density's surface


def world_placement(shape, spacing_angstrom: float, leading: int = 0) -> dict:
    """The layer keywords ``scale`` and ``translate`` that put index N // 2 of each axis at world 0,
    in Å (the engine's frame); the first ``leading`` axes (e.g. the image index of a stack) keep
    scale 1 and translate 0. Every map, image and stack layer is placed with it."""
    spatial = list(shape)[leading:]
    return {
        "scale": [1.0] * leading + [float(spacing_angstrom)] * len(spatial),
        "translate": [0.0] * leading + [-(n // 2) * float(spacing_angstrom) for n in spatial],
    }


def world_positions(indices, shape, spacing_angstrom: float) -> np.ndarray:
    """World positions (Å, napari order) of array ``indices`` (N, ndim) of an array of ``shape``
    placed by :func:`world_placement`."""
    origin = np.array([n // 2 for n in shape])
    return (np.asarray(indices) - origin) * float(spacing_angstrom)


def xyz_to_napari(positions_xyz) -> np.ndarray:
    """(N, 3) x, y, z → (N, 3) z, y, x."""
    return np.ascontiguousarray(np.asarray(positions_xyz, dtype=np.float32)[:, ::-1])


def map_level(volume) -> float:
    """The iso-surface level of a map: the automatic threshold from its statistics."""
    from ..engine.consensus import automatic_threshold

    return automatic_threshold(np.asarray(volume, dtype=np.float32))


def show_map(
    viewer, name: str, volume, voxel_size_angstrom: float, threshold: float | None = None, **kwargs
):
    """Add or update a 3D image layer shown as an iso-surface: at ``threshold`` if given, else (a
    new layer) at :func:`map_level`; an updated layer keeps its level unless ``threshold`` is
    given."""
    placement = world_placement(volume.shape, voxel_size_angstrom)
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = volume
        layer.scale, layer.translate = placement["scale"], placement["translate"]
        layer.contrast_limits = [float(volume.min()), float(max(volume.max(), volume.min() + 1e-6))]
    else:
        options = {"colormap": "gray", "blending": "translucent", "rendering": "iso"} | kwargs
        layer = viewer.add_image(volume, name=name, units=UNITS, **placement, **options)
        if threshold is None and layer.rendering == "iso":
            threshold = map_level(volume)
    if threshold is not None:
        layer.rendering = "iso"
        layer.iso_threshold = float(threshold)
    return layer


def molecule_points(volume, voxel_size_angstrom: float, level: float) -> np.ndarray:
    """(N, 3) world positions (Å, napari order z, y, x) of the voxels above ``level`` (every voxel's
    corner of the box if none is)."""
    volume = np.asarray(volume)
    inside = np.argwhere(volume > level)
    if len(inside) == 0:
        inside = np.array([[0, 0, 0], np.array(volume.shape) - 1])
    return world_positions(inside, volume.shape, voxel_size_angstrom)


def fit_camera(viewer, layer, fill: float = FILL) -> None:
    """Centre the camera on an iso-surface layer's molecule and zoom so that the molecule, as seen
    from the camera's direction, fills ``fill`` of the canvas (3D view; the scale bar shows Å)."""
    voxel = float(layer.scale[-1])
    points = molecule_points(layer.data, voxel, float(layer.iso_threshold))
    scene = getattr(viewer, "scene", viewer)  # napari ≥ 0.9: viewer.scene.camera
    camera = scene.camera
    view, up = np.asarray(camera.view_direction, float), np.asarray(camera.up_direction, float)
    right = np.cross(view, up)
    on_screen = points @ np.stack([up, right]).T  # (N, 2): height and width on the canvas, Å
    extent = np.ptp(on_screen, axis=0) + voxel
    canvas = np.asarray(getattr(viewer.canvas, "size", (600, 800)), dtype=float)  # (height, width)
    camera.center = tuple((points.min(axis=0) + points.max(axis=0)) / 2)
    camera.zoom = fill * float(np.min(canvas / np.maximum(extent, 1e-6)))
    overlays = getattr(viewer.canvas, "overlays", None)
    (overlays.scale_bar if overlays is not None else viewer.scale_bar).visible = True


def show_in_3d(viewer, layer) -> None:
    """Switch to the 3D view (if needed) and fit the camera to ``layer``'s molecule."""
    if viewer.dims.ndisplay != 3:
        viewer.dims.ndisplay = 3
    fit_camera(viewer, layer)


def show_points(viewer, name: str, positions_xyz, size_angstrom: float, **kwargs):
    """Add or update a points layer of Gaussian centres (small, translucent, orange by default)."""
    data = xyz_to_napari(positions_xyz)
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = data
        layer.size = size_angstrom
        return layer
    options = GAUSSIAN_STYLE | kwargs
    return viewer.add_points(data, name=name, size=size_angstrom, units=UNITS, **options)


def show_vectors(viewer, name: str, start_xyz, displacement_xyz, **kwargs):
    """Add or update a vectors layer: arrows from ``start_xyz`` along ``displacement_xyz`` (Å)."""
    data = np.stack([xyz_to_napari(start_xyz), xyz_to_napari(displacement_xyz)], axis=1)
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = data
        return layer
    options = {"edge_color": "cyan", "edge_width": 0.5, "length": 1.0} | kwargs
    return viewer.add_vectors(data, name=name, units=UNITS, **options)
