"""What the explorer shows in 3D: a decoded volume as an iso-surface at its automatic level, with
the camera fitted to the molecule, the deformed Gaussians drawn small and depth-tested (the
density's surface hides those inside it) and the displacement arrows hidden until their layer is
ticked.

Each role is one layer, replaced in place (``_layers``), so decoding, switching half sets or opening
another run never stacks layers. A run opens with the volume of its median particle decoded.
"""

from __future__ import annotations

import numpy as np

from ._layers import show_in_3d, show_map, show_points, show_vectors


def show_decoded(viewer, decoded, volume_name: str, points_name: str, vectors_name: str):
    """Show ``decoded`` (``engine.explore.decoding.Decoded``) in its three layers; the first time,
    switch to 3D and fit the camera to the molecule. Returns the volume layer."""
    first = volume_name not in viewer.layers
    layer = show_map(
        viewer, volume_name, decoded.volume, decoded.voxel_size_angstrom, colormap="gray"
    )
    show_points(
        viewer, points_name, decoded.positions_angstrom, size_angstrom=decoded.voxel_size_angstrom
    )
    show_vectors(
        viewer,
        vectors_name,
        decoded.consensus_angstrom,
        decoded.displacements_angstrom,
        visible=False,
    )  # arrows on demand: hundreds of them hide the density
    if first:
        show_in_3d(viewer, layer)
    return layer


def median_point(coords) -> np.ndarray:
    """The plot position of the particle nearest the per-axis median of ``coords`` (N, 2)."""
    coords = np.asarray(coords, dtype=np.float64)
    median = np.median(coords, axis=0)
    return coords[int(np.argmin(np.linalg.norm(coords - median, axis=1)))]
