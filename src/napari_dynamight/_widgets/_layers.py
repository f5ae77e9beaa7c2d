"""Put arrays into napari layers in the engine's frame: Å from the box centre, napari order [z, y, x].

One layer per role: a layer with the given name is updated in place (data replaced) rather than a new
one added, so repeated loads and decodes never pile up layers.
"""

from __future__ import annotations

import numpy as np


def map_placement(shape, voxel_size_angstrom: float) -> dict:
    """``scale`` and ``translate`` that put voxel N // 2 at world 0 (as the readers do)."""
    return {"scale": [voxel_size_angstrom] * 3,
            "translate": [-(n // 2) * voxel_size_angstrom for n in shape]}


def xyz_to_napari(positions_xyz) -> np.ndarray:
    """(N, 3) x, y, z → (N, 3) z, y, x."""
    return np.ascontiguousarray(np.asarray(positions_xyz, dtype=np.float32)[:, ::-1])


def show_map(viewer, name: str, volume, voxel_size_angstrom: float, threshold: float | None = None,
             **kwargs):
    """Add or update a 3D image layer (iso-surface at ``threshold`` if given)."""
    placement = map_placement(volume.shape, voxel_size_angstrom)
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = volume
        layer.scale, layer.translate = placement["scale"], placement["translate"]
        layer.contrast_limits = [float(volume.min()), float(max(volume.max(), volume.min() + 1e-6))]
    else:
        options = {"colormap": "gray", "blending": "translucent"} | kwargs
        layer = viewer.add_image(volume, name=name, **placement, **options)
    if threshold is not None:
        layer.rendering = "iso"
        layer.iso_threshold = float(threshold)
    return layer


def show_points(viewer, name: str, positions_xyz, size_angstrom: float, **kwargs):
    """Add or update a points layer of Gaussian centres."""
    data = xyz_to_napari(positions_xyz)
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = data
        layer.size = size_angstrom
        return layer
    options = {"face_color": "orange", "border_width": 0} | kwargs
    return viewer.add_points(data, name=name, size=size_angstrom, **options)


def show_vectors(viewer, name: str, start_xyz, displacement_xyz, **kwargs):
    """Add or update a vectors layer: arrows from ``start_xyz`` along ``displacement_xyz`` (Å)."""
    data = np.stack([xyz_to_napari(start_xyz), xyz_to_napari(displacement_xyz)], axis=1)
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = data
        return layer
    options = {"edge_color": "cyan", "edge_width": 0.5, "length": 1.0} | kwargs
    return viewer.add_vectors(data, name=name, **options)
