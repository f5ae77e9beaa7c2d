"""The simulated images and the consensus map: projections of each particle's frame under its pose,
filtered by its CTF (and the envelope) through ``engine.image_formation``, plus white noise at the
requested SNR, written chunk by chunk; the consensus is their standard reconstruction.
"""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import torch

from ..ctf import compute_ctf
from ..fourier import fsc, radial_index
from ..image_formation import frame_images, image_envelope, transfer
from ..io.mrc import write_map
from ..progress import Progress
from ..reconstruction.standard import FourierAccumulator
from ..scene import Scene
from .particles import STACK_NAME, ctf_params, poses


def fsc_weighted(halves: list[torch.Tensor], pixel_size: float) -> torch.Tensor:
    """The mean of the two half-set maps, filtered by sqrt(2 FSC / (1 + FSC)) of their FSC."""
    halves = [half.to(torch.float64) for half in halves]
    _, curve = fsc(halves[0], halves[1], pixel_size)
    full = (halves[0] + halves[1]) / 2
    clipped = np.clip(curve, 0.0, 1.0)
    weight = torch.as_tensor(np.sqrt(2 * clipped / (1 + clipped)))
    radius = radial_index(tuple(full.shape)).clamp(max=len(weight) - 1)
    spectrum = torch.fft.rfftn(full) * weight[radius]
    return torch.fft.irfftn(spectrum, s=full.shape).to(torch.float32)


def sums_bytes(box: int) -> int:
    """Bytes of one half set's Fourier sums (:class:`FourierAccumulator`, padding 2, float32)."""
    return 3 * (2 * box + 2) ** 2 * (box + 2) * 4


def write_images(
    staging: Path,
    scene: Scene,
    labels: pd.DataFrame,
    box: int,
    pixel_size: float,
    optics: tuple[float, float, float],
    snr: float,
    noise_rng: np.random.Generator,
    chunk_size: int,
    device,
    envelope_bfactor: float = 0.0,
    key: str = "frame",
    one_pass: bool = True,
):
    """Make the images chunk by chunk into a memory-mapped stack, then reconstruct the consensus.

    The consensus is reconstructed with the recorded CTF only (not the envelope), as a user would.
    ``one_pass``: both half sets' Fourier sums are held during the simulation; otherwise the first
    half set's, and the second's in a second pass over the written stack (its images are re-read,
    not re-simulated): the sums are identical either way.

    Writes ``staging/particles.mrcs`` and ``staging/consensus.mrc``; yields Progress and returns
    (signal variance, noise variance).
    """
    n = len(labels)
    accumulators = {
        half: FourierAccumulator(box, pixel_size, device=device)
        for half in (1, 2)[: 2 if one_pass else 1]
    }
    subsets = torch.as_tensor(labels["random_subset"].to_numpy().copy(), device=device)
    signal_variance = noise_variance = 0.0
    envelope = (
        image_envelope(box, pixel_size, envelope_bfactor, device) if envelope_bfactor else None
    )

    def insert(accumulator, half, start, images, pose, ctf) -> None:
        keep = subsets[start : start + len(images)] == half
        if keep.any():
            accumulator.add(
                images[keep], pose.rotations[keep], pose.origin_angstrom[keep], ctf[keep]
            )

    with mrcfile.new_mmap(staging / STACK_NAME, shape=(n, box, box), mrc_mode=2) as stack:
        stack.set_image_stack()
        stack.voxel_size = pixel_size
        for start in range(0, n, chunk_size):
            rows = labels.iloc[start : start + chunk_size]
            pose = poses(rows, device)
            ctf = compute_ctf(ctf_params(rows, *optics).torch(device), box, pixel_size)
            frame_index = np.searchsorted(scene.frames, rows[key].to_numpy())
            images = frame_images(
                scene, frame_index, pose, box, pixel_size, transfer(ctf, envelope)
            )
            if start == 0:
                signal_variance = float(images.var(dim=(1, 2)).mean())
                noise_variance = 0.0 if math.isinf(snr) else signal_variance / snr
            if noise_variance > 0:
                noise = torch.as_tensor(noise_rng.standard_normal(images.shape, dtype=np.float32))
                images = images + math.sqrt(noise_variance) * noise.to(device)
            stack.data[start : start + len(rows)] = images.cpu().numpy()
            for half, accumulator in accumulators.items():
                insert(accumulator, half, start, images, pose, ctf)
            yield Progress(
                "simulating particles",
                start + len(rows),
                n,
                metrics={"signal_variance": signal_variance},
            )
        yield Progress("reconstructing consensus", 0, 1)
        halves = [accumulators.pop(1).reconstruct(release=True)]
        if not one_pass:
            accumulators[2] = FourierAccumulator(box, pixel_size, device=device)
            for start in range(0, n, chunk_size):
                rows = labels.iloc[start : start + chunk_size]
                ctf = compute_ctf(ctf_params(rows, *optics).torch(device), box, pixel_size)
                images = torch.as_tensor(np.array(stack.data[start : start + len(rows)]))
                insert(accumulators[2], 2, start, images.to(device), poses(rows, device), ctf)
        halves.append(accumulators.pop(2).reconstruct(release=True))
    write_map(staging / "consensus.mrc", fsc_weighted(halves, pixel_size).cpu().numpy(), pixel_size)
    yield Progress("reconstructing consensus", 1, 1)
    return signal_variance, noise_variance
