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
the Gaussian model's projection multiplied by the CTF in Fourier space (``engine.image_formation``) (and, with ``envelope_bfactor``, by ``exp(−B s²/4)``: an envelope the STAR file does not
record, as a real microscope's would not be), plus white Gaussian noise.

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
trajectory frame; with independent domains ``state_NNNN.mrc`` and ``states.csv`` instead). Everything is written to a hidden staging folder first and moved into place only when the
whole run succeeded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import torch

from .ctf import CtfParams, compute_ctf
from .data.particle_file import write_particles
from .data.particles import table_from_blocks
from .device import check_device
from .domains import domain_frames
from .errors import InputError
from .fourier import fsc, radial_index
from .gaussians import render_volume
from .geometry import euler_to_matrix, random_euler_angles
from .image_formation import Pose, frame_images, image_envelope, transfer
from .io.atomic import atomic_path
from .io.mrc import write_map
from .progress import Progress, ProgressGenerator
from .reconstruction.standard import FourierAccumulator
from .scene import Scene, build_scene

STACK_NAME = "particles.mrcs"
FRAME_DISTRIBUTIONS = ("uniform", "bimodal")
#: Bytes of Fourier sums the consensus reconstruction may hold during the simulation: both half sets
#: are inserted as the images are made up to about box 220; above, the second half set is inserted
#: from the written stack after the first half map is made (memory: one set of sums at a time).
CONSENSUS_SUMS_BUDGET = 1 << 30
BIMODAL_CENTRES, BIMODAL_WIDTH = (0.2, 0.8), 0.1  # positions in the used-frame range, 0..1


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
            f"--amplitude-contrast {amplitude_contrast} is invalid: give a fraction in [0, 1), e.g. 0.1"
        )


def frame_probabilities(n_frames: int, distribution: str = "uniform", weights=None) -> np.ndarray:
    """The probability of each of ``n_frames`` used frames (see the module docstring)."""
    if weights is not None:
        if distribution != "uniform":
            raise InputError(
                f"frame distribution {distribution!r} and frame weights both given: give one of them"
            )
        w = np.asarray(weights, dtype=np.float64).ravel()
        if len(w) != n_frames:
            raise InputError(
                f"frame weights: {len(w)} values for {n_frames} frames used; give one weight per frame"
            )
        if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
            raise InputError("frame weights must be finite, >= 0 and not all 0")
        return w / w.sum()
    if distribution == "uniform":
        return np.full(n_frames, 1.0 / n_frames)
    if distribution == "bimodal":
        u = np.linspace(0.0, 1.0, n_frames) if n_frames > 1 else np.zeros(1)
        w = sum(np.exp(-((u - c) ** 2) / (2 * BIMODAL_WIDTH**2)) for c in BIMODAL_CENTRES)
        return w / w.sum()
    raise InputError(
        f"frame distribution {distribution!r} is unknown: give one of {', '.join(FRAME_DISTRIBUTIONS)}"
    )


def _draw_particles(
    rng: np.random.Generator,
    n: int,
    frames: np.ndarray,
    defocus_range,
    astigmatism,
    origin_sd,
    probabilities: np.ndarray | None = None,
    two_domains: bool = False,
) -> pd.DataFrame:
    """Per-particle ground truth: frame (or state and domain frames), pose, origin, defocus, half set.

    ``probabilities`` None draws frames uniformly with the generator's integers (the stream of the
    uniform simulations, unchanged).
    """
    euler = random_euler_angles(n, rng)

    def draw() -> np.ndarray:
        if probabilities is None:
            return rng.integers(0, len(frames), n)
        return rng.choice(len(frames), size=n, p=probabilities)

    first = draw()
    frame = frames[first]
    origin = rng.normal(0.0, origin_sd, (n, 2))
    mean_defocus = rng.uniform(defocus_range[0], defocus_range[1], n)
    astig = np.minimum(rng.uniform(0.0, astigmatism, n), mean_defocus)  # keeps defocus V >= 0
    angle = rng.uniform(0.0, 180.0, n)
    subset = np.zeros(n, dtype=np.int64)
    subset[rng.permutation(n)[: n // 2]] = 1
    if two_domains:
        second = draw()
        motion = {
            "state": first * len(frames) + second,
            "domain1_frame": frame,
            "domain2_frame": frames[second],
        }
    else:
        motion = {"frame": frame}
    return pd.DataFrame(
        {
            "index": np.arange(n),
            "image_name": [f"{i + 1:06d}@{STACK_NAME}" for i in range(n)],
            **motion,
            "rot": euler[:, 0],
            "tilt": euler[:, 1],
            "psi": euler[:, 2],
            "origin_x_angstrom": origin[:, 0],
            "origin_y_angstrom": origin[:, 1],
            "defocus_u_angstrom": mean_defocus + astig / 2,
            "defocus_v_angstrom": mean_defocus - astig / 2,
            "defocus_angle_degrees": angle,
            "random_subset": subset + 1,
        }
    )


def _ctf_params(
    rows: pd.DataFrame, voltage: float, cs: float, amplitude_contrast: float
) -> CtfParams:
    return CtfParams.broadcast(
        len(rows),
        defocus_u_angstrom=rows["defocus_u_angstrom"].to_numpy(),
        defocus_v_angstrom=rows["defocus_v_angstrom"].to_numpy(),
        defocus_angle_degrees=rows["defocus_angle_degrees"].to_numpy(),
        voltage_kilovolts=voltage,
        spherical_aberration_millimetres=cs,
        amplitude_contrast=amplitude_contrast,
    )


def _star_blocks(
    labels: pd.DataFrame,
    box: int,
    pixel_size: float,
    voltage: float,
    cs: float,
    amplitude_contrast: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The RELION 3.1 particles and optics tables of the simulated set."""
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnImagePixelSize": [pixel_size],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
            "rlnVoltage": [voltage],
            "rlnSphericalAberration": [cs],
            "rlnAmplitudeContrast": [amplitude_contrast],
        }
    )
    n = len(labels)
    particles = pd.DataFrame(
        {
            "rlnImageName": labels["image_name"],
            "rlnAngleRot": labels["rot"],
            "rlnAngleTilt": labels["tilt"],
            "rlnAnglePsi": labels["psi"],
            "rlnOriginXAngst": labels["origin_x_angstrom"],
            "rlnOriginYAngst": labels["origin_y_angstrom"],
            "rlnDefocusU": labels["defocus_u_angstrom"],
            "rlnDefocusV": labels["defocus_v_angstrom"],
            "rlnDefocusAngle": labels["defocus_angle_degrees"],
            "rlnPhaseShift": np.zeros(n),
            "rlnCtfBfactor": np.zeros(n),
            "rlnCtfScalefactor": np.ones(n),
            "rlnOpticsGroup": np.ones(n, dtype=np.int64),
            "rlnRandomSubset": labels["random_subset"],
        }
    )
    return particles, optics


def _fsc_weighted(halves: list[torch.Tensor], pixel_size: float) -> torch.Tensor:
    """The mean of the two half-set maps, filtered by sqrt(2 FSC / (1 + FSC)) of their FSC."""
    halves = [half.to(torch.float64) for half in halves]
    _, curve = fsc(halves[0], halves[1], pixel_size)
    full = (halves[0] + halves[1]) / 2
    clipped = np.clip(curve, 0.0, 1.0)
    weight = torch.as_tensor(np.sqrt(2 * clipped / (1 + clipped)))
    radius = radial_index(tuple(full.shape)).clamp(max=len(weight) - 1)
    spectrum = torch.fft.rfftn(full) * weight[radius]
    return torch.fft.irfftn(spectrum, s=full.shape).to(torch.float32)


def _sums_bytes(box: int) -> int:
    """Bytes of one half set's Fourier sums (:class:`FourierAccumulator`, padding 2, float32)."""
    return 3 * (2 * box + 2) ** 2 * (box + 2) * 4


def _poses(rows: pd.DataFrame, device) -> Pose:
    """The RELION poses (rotation matrices and origins in Å) of some label rows."""
    euler = torch.tensor(rows[["rot", "tilt", "psi"]].to_numpy(), dtype=torch.float32)
    origins = rows[["origin_x_angstrom", "origin_y_angstrom"]].to_numpy()
    return Pose(
        euler_to_matrix(euler).to(device),
        torch.tensor(origins, dtype=torch.float32, device=device),
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
    labels = _draw_particles(
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
        *_star_blocks(labels, box, pixel_size_angstrom, *optics), output / "particles.star"
    )

    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".simulate-", dir=output))
    try:
        variances = yield from _write_images(
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
        )
        (staging / "ground_truth").mkdir()
        for k, frame in enumerate(scene.frames):
            volume = render_volume(scene.at_frame(k), box, pixel_size_angstrom).cpu().numpy()
            write_map(
                staging / "ground_truth" / _truth_map_name(frame, domains is not None),
                volume,
                pixel_size_angstrom,
            )
            yield Progress("rendering frame maps", k + 1, len(scene.frames))
        with atomic_path(staging / "ground_truth" / "labels.csv") as tmp:
            labels.to_csv(tmp, index=False)
        if domains is not None:
            with atomic_path(staging / "ground_truth" / "states.csv") as tmp:
                pd.DataFrame(
                    {
                        "state": scene.frames,
                        "domain1_frame": state_frames[:, 0],
                        "domain2_frame": state_frames[:, 1],
                    }
                ).to_csv(tmp, index=False)
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
        with atomic_path(staging / "ground_truth" / "simulation.json") as tmp:
            tmp.write_text(json.dumps(settings, indent=2) + "\n")
        write_particles(staging / "particles.star", table)
        _publish(staging, output)
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
            output / "ground_truth" / _truth_map_name(f, domains is not None) for f in scene.frames
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


def _truth_map_name(frame: int, state: bool) -> str:
    return f"state_{frame:04d}.mrc" if state else f"frame_{frame:03d}.mrc"


def _write_images(
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
):
    """Make the images chunk by chunk into a memory-mapped stack, then reconstruct the consensus.

    The consensus is reconstructed with the recorded CTF only (not the envelope), as a user would.

    Writes ``staging/particles.mrcs`` and ``staging/consensus.mrc``; yields Progress and returns
    (signal variance, noise variance).
    """
    n = len(labels)
    # Both half sets' sums while they fit in CONSENSUS_SUMS_BUDGET; otherwise the first half set's
    # during the simulation and the second's in a second pass over the written stack (its images
    # are re-read, not re-simulated): the sums are identical either way.
    one_pass = 2 * _sums_bytes(box) <= CONSENSUS_SUMS_BUDGET
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
            pose = _poses(rows, device)
            ctf = compute_ctf(_ctf_params(rows, *optics).torch(device), box, pixel_size)
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
                ctf = compute_ctf(_ctf_params(rows, *optics).torch(device), box, pixel_size)
                images = torch.as_tensor(np.array(stack.data[start : start + len(rows)]))
                insert(accumulators[2], 2, start, images.to(device), _poses(rows, device), ctf)
        halves.append(accumulators.pop(2).reconstruct(release=True))
    write_map(
        staging / "consensus.mrc", _fsc_weighted(halves, pixel_size).cpu().numpy(), pixel_size
    )
    yield Progress("reconstructing consensus", 1, 1)
    return signal_variance, noise_variance


def _publish(staging: Path, output: Path) -> None:
    """Move the finished outputs from the staging folder into place (renames on one file system).

    An old ``ground_truth`` folder is replaced as a whole so no stale frame maps remain.
    """
    old_truth = output / "ground_truth"
    retired = None
    if old_truth.exists():
        retired = Path(tempfile.mkdtemp(prefix=".old-ground-truth-", dir=output))
        os.replace(old_truth, retired / "ground_truth")
    for name in ("particles.mrcs", "consensus.mrc", "ground_truth", "particles.star"):
        os.replace(staging / name, output / name)
    staging.rmdir()
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
