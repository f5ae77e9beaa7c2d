"""Standard reconstructions of whole data sets, streamed in batches (memory stays bounded).

Both entry points are progress generators (``engine.progress``): they yield
:class:`Progress` events and ``return`` their result.
"""

from __future__ import annotations

import numpy as np
import torch

from ..ctf import CtfParams, compute_ctf
from ..data.dataset import ParticleDataset
from ..data.particles import ParticleTable
from ..errors import InputError
from ..geometry import euler_to_matrix
from ..progress import Progress, ProgressGenerator
from .standard import FourierAccumulator

STAGE = "reconstruction"


def reconstruct_from_arrays(
    images,
    euler_degrees,
    origin_angstrom,
    ctf_params: CtfParams | None,
    pixel_size_angstrom: float,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    padding: int = 2,
    **options,
) -> ProgressGenerator[np.ndarray]:
    """Map (L, L, L) float32 [z, y, x] from images (N, L, L) (any array, e.g. a memory map),
    RELION Euler angles (N, 3) in degrees, origins (N, 2) in Å and CTF parameters (or ``None``).

    ``options`` go to :meth:`FourierAccumulator.reconstruct`.
    """
    count = len(images)
    if count == 0:
        raise InputError("no images to reconstruct: the selection is empty")
    euler_degrees = np.asarray(euler_degrees, dtype=np.float64)
    origin_angstrom = np.asarray(origin_angstrom, dtype=np.float64)
    if euler_degrees.shape != (count, 3) or origin_angstrom.shape != (count, 2):
        raise InputError(
            f"{count} images need Euler angles ({count}, 3) and origins ({count}, 2); got "
            f"{euler_degrees.shape} and {origin_angstrom.shape}"
        )
    if ctf_params is not None and len(ctf_params) != count:
        raise InputError(f"{count} images but {len(ctf_params)} sets of CTF parameters")
    box = int(np.shape(images)[-1])
    accumulator = FourierAccumulator(box, pixel_size_angstrom, padding, device)
    for start in range(0, count, batch_size):
        part = slice(start, min(start + batch_size, count))
        batch = torch.as_tensor(np.asarray(images[part], dtype=np.float32))
        rotations = euler_to_matrix(torch.as_tensor(euler_degrees[part]))
        ctf = None
        if ctf_params is not None:
            params = ctf_params.select(np.arange(part.start, part.stop)).torch(device)
            ctf = compute_ctf(params, box, pixel_size_angstrom)
        accumulator.add(batch, rotations, torch.as_tensor(origin_angstrom[part]), ctf)
        yield Progress(STAGE, part.stop, count, "inserting images")
    yield Progress(STAGE, count, count, "inverting")
    return accumulator.reconstruct(**options).cpu().numpy()


def accumulate_particles(
    table: ParticleTable,
    indices=None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    use_ctf: bool = True,
    padding: int = 2,
    **dataset_options,
) -> ProgressGenerator[FourierAccumulator]:
    """Insert the chosen particles of ``table`` into a new :class:`FourierAccumulator`.

    ``dataset_options`` go to :class:`ParticleDataset` (``target_box``,
    ``target_pixel_size_angstrom``, ``normalise``; images are not normalised by default, as in
    ``relion_reconstruct``). Without ``use_ctf`` the images are inserted as they are.
    """
    dataset_options.setdefault("normalise", False)
    with ParticleDataset(
        table, indices, device=device, require_ctf=use_ctf, **dataset_options
    ) as dataset:
        box, pixel_size = dataset.box, dataset.pixel_size_angstrom
        accumulator = FourierAccumulator(box, pixel_size, padding, device)
        done = 0
        for batch in dataset.batches(batch_size):
            ctf = None
            if use_ctf and batch.ctf is not None:
                ctf = compute_ctf(batch.ctf, box, pixel_size)
            accumulator.add(batch.images, batch.rotations, batch.origin_angstrom, ctf)
            done += len(batch)
            yield Progress(STAGE, done, len(dataset), "inserting particles")
    return accumulator


def reconstruct_particles(
    table: ParticleTable,
    indices=None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    use_ctf: bool = True,
    reconstruct_options: dict | None = None,
    **dataset_options,
) -> ProgressGenerator[tuple[np.ndarray, float]]:
    """(map float32 [z, y, x], voxel size in Å) of the chosen particles of ``table``.

    See :func:`accumulate_particles` for the options; ``reconstruct_options`` go to
    :meth:`FourierAccumulator.reconstruct`.
    """
    accumulator = yield from accumulate_particles(
        table, indices, batch_size, device, use_ctf, **dataset_options
    )
    count = accumulator.particle_count
    yield Progress(STAGE, count, count, "inverting")
    volume = accumulator.reconstruct(**(reconstruct_options or {}))
    return volume.cpu().numpy(), accumulator.pixel_size_angstrom
