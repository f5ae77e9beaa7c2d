"""napari readers for cryo-EM files: MRC maps, images and stacks, RELION STAR and cryoSPARC .cs
particle files.

Maps and images open as image layers whose world coordinates are Å measured from the box centre
(index N // 2), the frame of the engine's Gaussian positions: scale = voxel size, translate =
−(N // 2)·voxel size (``_widgets._layers.world_placement``). The file type decides the layout:

- ``*.mrcs``, or a non-cubic ``*.mrc``/``*.map`` with several sections: a stack of 2D images
  (axis 0 = image index, scale 1), memory-mapped. The pixel size is the header's, which is often
  wrong for particle stacks (1 or 0; 0 shows as 1): RELION's STAR file holds the true one.
- a cubic ``*.mrc``/``*.map``: a 3D map with the header's voxel size.
- ``*.star``: a particle STAR file. With poses, a points layer of the particles' viewing directions
  on a sphere of radius box·pixel size / 2 around the box centre (radius 1 if the
  file lacks box or pixel size) (so it surrounds the map opened
  from the same project), coloured by defocus, with per-particle features (angles, defocus, optics
  group, half set). Without poses, the first particle images at the STAR file's pixel size.
  The layer's ``metadata["summary"]`` holds the same summary as ``napari-dynamight info``.
  A cryoSPARC particles ``*.cs`` file (merged with its passthrough files) opens the same way.
  A STAR file with latent columns (``dmLatent1``, ..., a deformation run's ``particles.star``)
  opens its latent space in the explorer instead (decoding too, when it sits in its run folder).
- a deformation run folder (``engine.run_folder.RunFolder``, with its run file), or that run file
  (``run.json``, which no other reader claims, so napari asks no question): the latent-space
  explorer is docked in the current viewer with the run loaded (the reader returns napari's "no
  layers" value ``[(None,)]``). Without a viewer, or before the run has latent means, its half maps
  open as layers and a message says why. napari's builtin reader accepts every folder too; the run
  folders the plugin has opened are made napari's preferred reader choice (``_widgets._run_drop``),
  so they open without the dialog. A run made with the atomic-model prior, and a map inside one,
  also shows its model-bias warning (``RunFolder.model_bias_warning``).

Nothing heavy is imported at module import time: napari imports readers while it starts.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .engine.run_folder import RunFolder

# Above this many particles the STAR reader shows a seeded random subset (napari points get slow).
MAX_POINTS = 50_000
# Number of particle images the STAR reader shows when the file has no poses.
MAX_IMAGES = 64

MRC_SUFFIXES = (".mrc", ".map", ".mrcs")
# napari's value for "the reader succeeded but added no layers" (it opened a widget instead)
NO_LAYERS = [(None,)]


def _single_path(path) -> str | None:
    if isinstance(path, (list, tuple)):
        return path[0] if len(path) == 1 else None
    return os.fspath(path)


def get_mrc_reader(path):
    """Return :func:`read_mrc` for one MRC file name, else None (napari tries other readers)."""
    single = _single_path(path)
    if single is None or not single.lower().endswith(MRC_SUFFIXES):
        return None
    return read_mrc


def get_star_reader(path):
    """Return :func:`read_star` for one STAR or cryoSPARC .cs file name, else None."""
    single = _single_path(path)
    if single is None or not single.lower().endswith((".star", ".cs")):
        return None
    return read_star


def _run_folder(path) -> Path | None:
    """The run folder of one path: the folder itself, or the folder of its run file
    (``run.json``)."""
    single = _single_path(path)
    if single is None:
        return None
    folder = Path(single)
    if folder.name == RunFolder(folder.parent).info.name and folder.is_file():
        folder = folder.parent
    return folder if RunFolder(folder).is_run() else None


def get_run_reader(path):
    """Return :func:`read_run` for one folder that holds a run file (or that run file), else
    None."""
    return None if _run_folder(path) is None else read_run


def _dock_explorer(run_path: Path) -> bool:
    """Dock the explorer on ``run_path`` in the current napari viewer; False if there is none."""
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        return False
    from ._widgets.explorer import open_explorer

    open_explorer(viewer, run_path)
    return True


def model_bias_notice(path) -> str | None:
    """The model-bias warning of the run that ``path`` (a run folder, or a map inside one, up to
    four levels down) belongs to, shown as a napari warning; None if there is nothing to warn
    about."""
    path = Path(path)
    for folder in [path, *path.parents][:5]:
        if RunFolder(folder).is_run():
            warning = RunFolder(folder).model_bias_warning()
            if warning:
                from napari.utils.notifications import show_warning

                show_warning(warning)
            return warning
    return None


def read_run(path) -> list[tuple]:
    """A deformation run folder: the explorer docked on it, or its half maps (see module doc)."""
    from napari.utils.notifications import show_info

    from ._widgets._run_drop import prefer_this_plugin
    from .engine.errors import InputError

    path = _run_folder(path)
    run = RunFolder(path)
    prefer_this_plugin(path)  # the next drop of this folder opens it without asking
    model_bias_notice(path)
    if run.latents.is_file() and _dock_explorer(path):
        return NO_LAYERS
    maps = [run.half_map(half) for half in (1, 2) if run.half_map(half).is_file()]
    if not maps:
        raise InputError(
            f"{path}: a deformation run without {run.latents.name} or half maps yet; open it "
            "again when the run has finished"
        )
    reason = (
        "it has no latent means yet (the run has not finished)"
        if not run.latents.is_file()
        else "there is no napari viewer to dock it in"
    )
    show_info(
        f"{path}: opened the half maps; the latent-space explorer needs the finished run, "
        f"and {reason}"
    )
    return [layer for map_path in maps for layer in read_mrc(map_path)]


def has_latent_columns(path, max_bytes: int = 1 << 16) -> bool:
    """Whether a STAR file's header names dmLatent columns (a deformation run's particles.star)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        return "_dmLatent1" in handle.read(max_bytes)


def read_mrc(path) -> list[tuple]:
    """One image layer: a 3D map (scale = voxel size) or a stack of 2D images (see module doc)."""
    import mrcfile
    import numpy as np
    from mrcfile.utils import data_dtype_from_header

    from ._widgets._layers import world_placement
    from .engine.io.mrc import read_map, stack_shape

    path = Path(_single_path(path))
    nz, ny, nx = stack_shape(path)
    is_stack = path.suffix.lower() == ".mrcs" or not (nz == ny == nx) or nz == 1
    name = path.stem
    if not is_stack:
        model_bias_notice(path.resolve().parent)
        volume, voxel_size = read_map(path)
        voxel_size = voxel_size if voxel_size > 0 else 1.0
        kwargs = {
            "name": name,
            **world_placement(volume.shape, voxel_size),
            "colormap": "gray",
            "metadata": {"path": str(path), "voxel_size_angstrom": voxel_size, "kind": "map"},
        }
        return [(volume, kwargs, "image")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mrc = mrcfile.open(path, mode="r", permissive=True, header_only=True)
    with mrc:
        pixel_size = float(mrc.voxel_size.x)
        offset = 1024 + int(mrc.header.nsymbt)
        dtype = data_dtype_from_header(mrc.header)
    stack = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(nz, ny, nx))
    pixel_size = pixel_size if pixel_size > 0 else 1.0
    kwargs = {
        "name": name,
        **world_placement((nz, ny, nx), pixel_size, leading=1),
        "colormap": "gray",
        "metadata": {"path": str(path), "pixel_size_angstrom": pixel_size, "kind": "stack"},
    }
    return [(stack, kwargs, "image")]


def viewing_directions(euler_degrees):
    """Unit vectors (N, 3) in x, y, z: each particle's projection direction in map coordinates.

    That is the third row of RELION's rotation matrix A (the image z axis written in the map frame).
    """
    import numpy as np

    rot, tilt = np.deg2rad(euler_degrees[:, 0]), np.deg2rad(euler_degrees[:, 1])
    return np.stack([np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot), np.cos(tilt)], axis=1)


def read_star(path) -> list[tuple]:
    """Points at the viewing directions, or (without poses) an image of the first particles."""
    import numpy as np

    from ._widgets._layers import world_placement
    from .engine.data.particle_file import read_particle_file
    from .engine.data.summary import summarise
    from .engine.errors import InputError

    path = Path(_single_path(path))
    if path.suffix.lower() == ".star" and has_latent_columns(path) and _dock_explorer(path):
        return NO_LAYERS
    table = read_particle_file(path)
    summary = summarise(table, path)
    if summary["poses"]:
        return [_directions_layer(table, path, summary)]
    images = _first_images(table, path)
    if images is None:
        raise InputError(
            f"{path}: has no poses (rlnAngleRot/Tilt/Psi) and its images were not found; nothing "
            "to show (run 'napari-dynamight info' on it for a summary)"
        )
    pixel_size = float(table.pixel_size_angstrom[0])
    kwargs = {
        "name": f"{path.stem} (first {len(images)} particles)",
        **world_placement(images.shape, pixel_size, leading=1),
        "colormap": "gray",
        "metadata": {"path": str(path), "summary": summary, "pixel_size_angstrom": pixel_size},
    }
    return [(np.asarray(images), kwargs, "image")]


def _directions_layer(table, path: Path, summary: dict) -> tuple:
    import numpy as np

    n = len(table.particles)
    shown = np.arange(n)
    if n > MAX_POINTS:
        shown = np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False))
    euler = np.asarray(table.euler_degrees, dtype=np.float64)[shown]
    radius = (
        np.asarray(table.image_box, dtype=np.float64)[shown]
        * np.asarray(table.pixel_size_angstrom, dtype=np.float64)[shown]
        / 2
    )
    known = np.isfinite(radius) & (radius > 0)
    radius[~known] = radius[known].max() if known.any() else 1.0
    xyz = viewing_directions(euler) * radius[:, None]
    features = {
        "particle": shown,
        "rot_degrees": euler[:, 0],
        "tilt_degrees": euler[:, 1],
        "psi_degrees": euler[:, 2],
        "defocus_u_angstrom": np.asarray(table.ctf.defocus_u_angstrom, dtype=np.float64)[shown],
        "defocus_v_angstrom": np.asarray(table.ctf.defocus_v_angstrom, dtype=np.float64)[shown],
        "optics_group": np.asarray(table.optics_group)[shown],
    }
    if "rlnRandomSubset" in table.particles.columns:
        features["half_set"] = table.particles["rlnRandomSubset"].to_numpy()[shown]
    kwargs = {
        "name": f"{path.stem} viewing directions",
        "features": features,
        "face_color": "defocus_u_angstrom",
        "face_colormap": "viridis",
        "border_width": 0,
        "size": float(radius.max()) / 25,
        "metadata": {"path": str(path), "summary": summary, "shown_particles": len(shown)},
    }
    return (xyz[:, ::-1].copy(), kwargs, "points")


def _first_images(table, path: Path):
    """Up to :data:`MAX_IMAGES` particle images (float32, one box), or None if none are readable."""
    import numpy as np

    from .engine.errors import InputError
    from .engine.io.mrc import open_stack

    images = []
    for file_name, index in zip(table.image_files[:MAX_IMAGES], table.image_indices[:MAX_IMAGES]):
        try:
            with open_stack(file_name) as stack:
                images.append(stack[int(index)])
        except InputError:
            break
    if not images or len({image.shape for image in images}) != 1:
        return None
    return np.stack(images)
