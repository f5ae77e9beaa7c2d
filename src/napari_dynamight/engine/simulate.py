"""Simulate a RELION 3.1 data set with ground truth from an atomic structure and its motion.

Model. Every atom (hydrogens and waters dropped by default) is a 3D Gaussian whose peak amplitude is
its atomic number and whose width σ is common to all atoms: ``max(1 Å, pixel size / 2)``. One Å is
about the blur of a well-resolved cryo-EM map (B = 8π²σ² ≈ 80 Å²); at coarser pixels σ = pixel/2
keeps real signal up to Nyquist (the kernel still has 29% of its amplitude there) while the atoms do
not become sharper than the sampling can represent. All frames are shifted by ONE common vector: the
atomic-number-weighted centre of the first trajectory frame (or of the structure), so the motion
between frames is kept and not re-centred away.

Each particle draws a frame (uniformly among the frames used, or with ``frame_distribution`` /
``frame_weights``), an orientation (uniform on SO(3)), an
origin (normal, σ = ``origin_sd_angstrom`` per axis), a mean defocus (uniform in the range), an
astigmatism ``|dU − dV|`` (uniform in 0..``astigmatism_angstrom``) at a uniform angle. The image is
the Gaussian model's projection multiplied by the CTF in Fourier space (and, with
``envelope_bfactor``, by ``exp(−B s²/4)``: an envelope the STAR file does not record, as a real
microscope's would not be), formed by ``engine.image_formation``, plus white Gaussian noise.

Frame distributions. ``uniform`` (default) gives every used frame the same probability;
``bimodal`` is a two-state mixture over the position u = k / (F − 1) of the k-th of the F used
frames: ``exp(−(u − 0.2)² / (2·0.1²)) + exp(−(u − 0.8)² / (2·0.1²))``, normalised (a closed-like and
an open-like population with few particles in between). ``frame_weights`` gives one non-negative
weight per used frame instead.

Independent domains. With ``independent_domains`` (two inclusive residue ranges) the molecule gets a
two-dimensional motion (``engine.domains``: frames superposed on the CORE of ``core_frame``): each
particle draws two frames independently (from the same frame distribution), domain 1 takes the
first, domain 2 the second; the pair (i, j) of the F used frames is *state* ``i·F + j``. The labels
then hold ``state``, ``domain1_frame`` and ``domain2_frame`` (0-based trajectory frames) instead of
``frame``, the ground truth holds ``state_NNNN.mrc`` for every state drawn and ``states.csv``
(state, domain1_frame, domain2_frame), and the centre is the core frame's.

SNR definition. ``SNR = signal variance / noise variance``, where the signal variance is the pixel
variance of the noise-free CTF-filtered images over the whole box, averaged over the first chunk of
particles (a random sample of the same distribution). One noise level is used for all images, as on
a detector. Because the variance is taken over the whole box, the same SNR in a larger box means
less noise per particle pixel.

Outputs, in ``output_directory``: ``particles.star``, ``particles.mrcs``, ``consensus.mrc`` (the
standard reconstruction of the simulated particles: mean of the half-set maps, FSC-weighted as
refinement programs do) and ``ground_truth/labels.csv`` plus ``ground_truth/frame_NNN.mrc`` (each
frame used, rendered without CTF or envelope at the same box and voxel size; NNN is the 0-based
trajectory frame; with independent domains ``state_NNNN.mrc`` and ``states.csv`` instead).
Everything is written to a hidden staging folder first and moved into place only when the whole run
succeeded.

Code: this module checks the inputs and runs the steps of ``engine.simulation`` (``particles``:
the draws and STAR blocks; ``images``: the stack and the consensus; ``ground_truth``: the truth
files and the publishing).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.particle_file import write_particles
from .data.particles import table_from_blocks
from .device import check_device
from .domains import domain_frames
from .errors import InputError
from .image_formation import image_envelope
from .progress import ProgressGenerator
from .scene import build_scene
from .simulation.ground_truth import publish, truth_map_name, write_ground_truth
from .simulation.images import sums_bytes, write_images
from .simulation.particles import (
    FRAME_DISTRIBUTIONS,
    STACK_NAME,
    draw_particles,
    frame_probabilities,
    star_blocks,
)

__all__ = [
    "FRAME_DISTRIBUTIONS",
    "STACK_NAME",
    "SimulationSummary",
    "frame_probabilities",
    "image_envelope",
    "simulate",
]

#: Bytes of Fourier sums the consensus reconstruction may hold during the simulation: both half sets
#: are inserted as the images are made up to about box 220; above, the second half set is inserted
#: from the written stack after the first half map is made (memory: one set of sums at a time).
CONSENSUS_SUMS_BUDGET = 1 << 30


@dataclass(frozen=True)
class SimulationSummary:
    """What :func:`simulate` wrote and the numbers that define the data set."""

    output_directory: Path
    particles_star: Path
    stack: Path
    consensus_map: Path
    labels_csv: Path
    frame_maps: tuple[Path, ...]
    frames: np.ndarray  # 0-based trajectory frames used
    frame_probabilities: np.ndarray  # probability of each used frame (per domain with two domains)
    n_particles: int
    n_atoms: int
    box: int
    pixel_size_angstrom: float
    atom_sigma_angstrom: float
    signal_variance: float
    noise_variance: float
    max_radius_angstrom: float
    envelope_bfactor_angstrom2: float = 0.0
    state_frames: np.ndarray | None = None  # (S, 2) domain frames of each drawn state, or None


def _validate_numbers(
    n_particles,
    box,
    pixel_size_angstrom,
    snr,
    defocus_range_angstrom,
    astigmatism_angstrom,
    origin_sd_angstrom,
    chunk_size,
) -> None:
    if int(n_particles) != n_particles or n_particles < 1:
        raise InputError(f"n_particles {n_particles} is invalid: give a whole number >= 1")
    if int(box) != box or box < 16 or box % 2:
        raise InputError(f"box {box} is invalid: give an even number of pixels >= 16")
    if not (math.isfinite(pixel_size_angstrom) and pixel_size_angstrom > 0):
        raise InputError(f"pixel size {pixel_size_angstrom} Å is invalid: give a positive number")
    if not snr > 0:
        raise InputError(
            f"snr {snr} is invalid: give a positive number (inf for noise-free images)"
        )
    low, high = (float(v) for v in defocus_range_angstrom)
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
        raise InputError(f"defocus range {low} {high} Å is invalid: give 0 <= MIN <= MAX")
    if not astigmatism_angstrom >= 0 or not origin_sd_angstrom >= 0:
        raise InputError("astigmatism and origin spread must be >= 0 Å")
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise InputError(f"chunk size {chunk_size} is invalid: give a whole number >= 1")


def _validate_optics(
    voltage_kilovolts, spherical_aberration_millimetres, amplitude_contrast
) -> None:
    """The microscope: a positive voltage, Cs >= 0 and an amplitude contrast in [0, 1)."""
    if not (math.isfinite(voltage_kilovolts) and voltage_kilovolts > 0):
        raise InputError(
            f"--voltage {voltage_kilovolts} kV is invalid: give the acceleration voltage, e.g. 300"
        )
    if not (
        math.isfinite(spherical_aberration_millimetres) and spherical_aberration_millimetres >= 0
    ):
        raise InputError(
            f"--cs {spherical_aberration_millimetres} mm is invalid: give a number >= 0, e.g. 2.7"
        )
    if not (math.isfinite(amplitude_contrast) and 0 <= amplitude_contrast < 1):
        raise InputError(
            f"--amplitude-contrast {amplitude_contrast} is invalid: give a fraction in [0, 1), "
            "e.g. 0.1"
        )


def simulate(
    structure: str | os.PathLike,
    trajectory: str | os.PathLike | None = None,
    *,
    output_directory: str | os.PathLike,
    n_particles: int = 1000,
    box: int = 64,
    pixel_size_angstrom: float = 1.5,
    snr: float = 0.1,
    defocus_range_angstrom: tuple[float, float] = (5000.0, 20000.0),
    seed: int = 0,
    frames=None,
    voltage_kilovolts: float = 300.0,
    spherical_aberration_millimetres: float = 2.7,
    amplitude_contrast: float = 0.1,
    astigmatism_angstrom: float = 300.0,
    origin_sd_angstrom: float | None = None,
    atom_sigma_angstrom: float | None = None,
    include_hydrogens: bool = False,
    chunk_size: int = 256,
    device: torch.device | str = "cpu",
    frame_distribution: str = "uniform",
    frame_weights=None,
    envelope_bfactor_angstrom2: float = 0.0,
    independent_domains=None,
    core_frame: int | None = None,
) -> ProgressGenerator[SimulationSummary]:
    """Write a simulated RELION 3.1 data set; a generator of Progress returning a SimulationSummary.

    ``snr=math.inf`` gives noise-free images. ``frames`` (0-based trajectory frames, default all)
    are the frames particles are drawn from, with ``frame_distribution`` ('uniform' or 'bimodal')
    or one weight per used frame in ``frame_weights``. ``envelope_bfactor_angstrom2`` multiplies
    the signal by ``exp(−B s²/4)`` without recording it in the STAR file. ``independent_domains``
    (two inclusive residue ranges, e.g. ``((30, 59), (122, 159))``) moves the two domains
    independently on the CORE of ``core_frame`` (default the first used frame); see the module
    docstring. ``origin_sd_angstrom`` defaults to one pixel. All inputs are checked before anything
    is written.
    """
    origin_sd = pixel_size_angstrom if origin_sd_angstrom is None else origin_sd_angstrom
    _validate_numbers(
        n_particles,
        box,
        pixel_size_angstrom,
        snr,
        defocus_range_angstrom,
        astigmatism_angstrom,
        origin_sd,
        chunk_size,
    )
    if not (math.isfinite(envelope_bfactor_angstrom2) and envelope_bfactor_angstrom2 >= 0):
        raise InputError(
            f"envelope B-factor {envelope_bfactor_angstrom2} Å² is invalid: give a number >= 0"
        )
    if core_frame is not None and independent_domains is None:
        raise InputError("a core frame only applies with independent domains; give both or neither")
    _validate_optics(voltage_kilovolts, spherical_aberration_millimetres, amplitude_contrast)
    check_device(device)
    n_particles, box, chunk_size = int(n_particles), int(box), int(chunk_size)
    output = Path(output_directory)
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: exists and is not a folder; give a folder for the outputs")
    domains = None
    if independent_domains is not None:
        domains = domain_frames(
            structure, trajectory, frames, independent_domains, core_frame, include_hydrogens
        )
        used_frames = domains.frames
    else:
        scene = build_scene(
            structure,
            trajectory,
            frames,
            box,
            pixel_size_angstrom,
            atom_sigma_angstrom,
            include_hydrogens,
            device,
        )
        used_frames = scene.frames
    probabilities = frame_probabilities(len(used_frames), frame_distribution, frame_weights)
    uniform = frame_weights is None and frame_distribution == "uniform"
    seeds = np.random.SeedSequence(seed).spawn(2)
    labels = draw_particles(
        np.random.default_rng(seeds[0]),
        n_particles,
        used_frames,
        defocus_range_angstrom,
        astigmatism_angstrom,
        origin_sd,
        None if uniform else probabilities,
        two_domains=domains is not None,
    )
    if domains is not None:
        scene = domains.scene(
            labels["state"].to_numpy(), box, pixel_size_angstrom, atom_sigma_angstrom, device
        )
    state_frames = None if domains is None else domains.state_frames(scene.frames)
    optics = (voltage_kilovolts, spherical_aberration_millimetres, amplitude_contrast)
    table = table_from_blocks(
        *star_blocks(labels, box, pixel_size_angstrom, *optics), output / "particles.star"
    )

    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".simulate-", dir=output))
    try:
        variances = yield from write_images(
            staging,
            scene,
            labels,
            box,
            pixel_size_angstrom,
            optics,
            snr,
            np.random.default_rng(seeds[1]),
            chunk_size,
            device,
            float(envelope_bfactor_angstrom2),
            "frame" if domains is None else "state",
            one_pass=2 * sums_bytes(box) <= CONSENSUS_SUMS_BUDGET,
        )
        settings = {
            "n_particles": n_particles,
            "box": box,
            "pixel_size_angstrom": float(pixel_size_angstrom),
            "snr": None if math.isinf(snr) else float(snr),
            "seed": seed,
            "atom_sigma_angstrom": float(scene.model.sigmas_angstrom[0]),
            "signal_variance": variances[0],
            "noise_variance": variances[1],
            "frames": [int(f) for f in used_frames],
            "structure": str(structure),
            "trajectory": None if trajectory is None else str(trajectory),
            "frame_distribution": "weights" if frame_weights is not None else frame_distribution,
            "frame_probabilities": [float(p) for p in probabilities],
            "envelope_bfactor_angstrom2": float(envelope_bfactor_angstrom2),
            "independent_domains": None
            if domains is None
            else {
                "domain1_residues": list(domains.domains[0]),
                "domain2_residues": list(domains.domains[1]),
                "core_frame": domains.core_frame,
                "states_drawn": len(scene.frames),
            },
        }
        yield from write_ground_truth(
            staging, scene, labels, box, pixel_size_angstrom, state_frames, settings
        )
        write_particles(staging / "particles.star", table)
        publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and output.is_dir() and not any(output.iterdir()):
            output.rmdir()
        raise
    return SimulationSummary(
        output_directory=output,
        particles_star=output / "particles.star",
        stack=output / STACK_NAME,
        consensus_map=output / "consensus.mrc",
        labels_csv=output / "ground_truth" / "labels.csv",
        frame_maps=tuple(
            output / "ground_truth" / truth_map_name(f, domains is not None) for f in scene.frames
        ),
        frames=used_frames,
        frame_probabilities=probabilities,
        n_particles=n_particles,
        n_atoms=scene.atoms.n_atoms,
        box=box,
        pixel_size_angstrom=float(pixel_size_angstrom),
        atom_sigma_angstrom=float(scene.model.sigmas_angstrom[0]),
        signal_variance=variances[0],
        noise_variance=variances[1],
        max_radius_angstrom=scene.max_radius_angstrom,
        envelope_bfactor_angstrom2=float(envelope_bfactor_angstrom2),
        state_frames=state_frames,
    )
