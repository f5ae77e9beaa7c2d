"""Simulate a RELION 3.1 particle data set, with ground truth, from an atomic structure and its motion.

Model. Every atom (hydrogens and waters dropped by default) is a 3D Gaussian whose peak amplitude is
its atomic number and whose width σ is common to all atoms: ``max(1 Å, pixel size / 2)``. One Å is
about the blur of a well-resolved cryo-EM map (B = 8π²σ² ≈ 80 Å²); at coarser pixels σ = pixel/2
keeps real signal up to Nyquist (the kernel still has 29% of its amplitude there) while the atoms
do not become sharper than the sampling can represent. All frames are shifted by ONE common vector:
the atomic-number-weighted centre of the first trajectory frame (or of the structure), so the motion
between frames is kept and not re-centred away.

Each particle draws a frame (uniformly among the frames used), an orientation (uniform on SO(3)), an
origin (normal, σ = ``origin_sd_angstrom`` per axis), a mean defocus (uniform in the range), an
astigmatism ``|dU − dV|`` (uniform in 0..``astigmatism_angstrom``) at a uniform angle. The image is the
Gaussian model's projection (``engine.gaussians.project``), multiplied by the CTF in Fourier space,
plus white Gaussian noise.

SNR definition. ``SNR = signal variance / noise variance``, where the signal variance is the pixel
variance of the noise-free CTF-filtered images over the whole box, averaged over the first chunk of
particles (they are a random sample of the same distribution). One noise level is used for all images,
as a detector does. Because the variance is taken over the whole box, the same SNR in a larger box
means less noise per particle pixel.

Outputs, in ``output_directory``: ``particles.star``, ``particles.mrcs``, ``consensus.mrc`` (the
standard reconstruction of the simulated particles, weighted by its half-map FSC as refinement
programs do) and ``ground_truth/labels.csv`` plus ``ground_truth/frame_NNN.mrc`` (each frame used,
rendered without CTF at the same box and voxel size; NNN is the 0-based trajectory frame). Everything
is written to a hidden staging folder first and moved into place only when the whole run succeeded.
"""

from __future__ import annotations

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
from .data.particles import table_from_blocks
from .errors import InputError
from .fourier import fsc, radial_index
from .gaussians import GaussianModel, project, render_volume
from .geometry import euler_to_matrix, random_euler_angles
from .io.atomic import atomic_path
from .io.dcd import read_dcd, read_dcd_info
from .io.mrc import write_map
from .io.star import write_particles
from .io.structure import AtomicStructure, read_structure
from .progress import Progress, ProgressGenerator
from .reconstruction.standard import FourierAccumulator

STACK_NAME = "particles.mrcs"


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
    n_particles: int
    n_atoms: int
    box: int
    pixel_size_angstrom: float
    atom_sigma_angstrom: float
    signal_variance: float
    noise_variance: float
    max_radius_angstrom: float


def default_atom_sigma(pixel_size_angstrom: float) -> float:
    """Width σ (Å) of every atom's Gaussian: max(1 Å, pixel size / 2); see the module docstring."""
    return max(1.0, 0.5 * pixel_size_angstrom)


def _validate_numbers(n_particles, box, pixel_size_angstrom, snr, defocus_range_angstrom,
                      astigmatism_angstrom, origin_sd_angstrom, chunk_size) -> None:
    if int(n_particles) != n_particles or n_particles < 1:
        raise InputError(f"n_particles {n_particles} is invalid: give a whole number >= 1")
    if int(box) != box or box < 16 or box % 2:
        raise InputError(f"box {box} is invalid: give an even number of pixels >= 16")
    if not (math.isfinite(pixel_size_angstrom) and pixel_size_angstrom > 0):
        raise InputError(f"pixel size {pixel_size_angstrom} Å is invalid: give a positive number")
    if not snr > 0:
        raise InputError(f"snr {snr} is invalid: give a positive number (inf for noise-free images)")
    low, high = (float(v) for v in defocus_range_angstrom)
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
        raise InputError(f"defocus range {low} {high} Å is invalid: give 0 <= MIN <= MAX")
    if not astigmatism_angstrom >= 0 or not origin_sd_angstrom >= 0:
        raise InputError("astigmatism and origin spread must be >= 0 Å")
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise InputError(f"chunk size {chunk_size} is invalid: give a whole number >= 1")


def _load_frames(structure: AtomicStructure, trajectory, frames) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(used frame numbers, their coordinates (F, n, 3) Å, frame 0's coordinates (n, 3) Å)."""
    if trajectory is None:
        if frames is not None and list(np.asarray(frames).ravel()) != [0]:
            raise InputError("frames can only be chosen together with a trajectory; drop --frames")
        xyz = structure.positions_angstrom[None]
        return np.array([0]), xyz, xyz[0]
    info = read_dcd_info(trajectory)
    if info.n_atoms != structure.n_atoms_in_file:
        raise InputError(
            f"{info.path}: trajectory has {info.n_atoms} atoms but {structure.path} has "
            f"{structure.n_atoms_in_file}; give the structure the trajectory was written for"
        )
    used = np.arange(info.n_frames) if frames is None else np.unique(np.asarray(frames, dtype=np.int64))
    wanted = np.union1d(used, [0])
    xyz = read_dcd(trajectory, info.n_atoms, wanted)[:, structure.atom_indices].astype(np.float64)
    return used, xyz[np.searchsorted(wanted, used)], xyz[0]


def _draw_particles(rng: np.random.Generator, n: int, frames: np.ndarray, defocus_range, astigmatism,
                    origin_sd) -> pd.DataFrame:
    """Per-particle ground truth: frame, pose, origin, defocus, half set."""
    euler = random_euler_angles(n, rng)
    frame = frames[rng.integers(0, len(frames), n)]
    origin = rng.normal(0.0, origin_sd, (n, 2))
    mean_defocus = rng.uniform(defocus_range[0], defocus_range[1], n)
    astig = rng.uniform(0.0, astigmatism, n)
    angle = rng.uniform(0.0, 180.0, n)
    subset = np.zeros(n, dtype=np.int64)
    subset[rng.permutation(n)[: n // 2]] = 1
    return pd.DataFrame({
        "index": np.arange(n),
        "image_name": [f"{i + 1:06d}@{STACK_NAME}" for i in range(n)],
        "frame": frame,
        "rot": euler[:, 0], "tilt": euler[:, 1], "psi": euler[:, 2],
        "origin_x_angstrom": origin[:, 0], "origin_y_angstrom": origin[:, 1],
        "defocus_u_angstrom": mean_defocus + astig / 2,
        "defocus_v_angstrom": mean_defocus - astig / 2,
        "defocus_angle_degrees": angle,
        "random_subset": subset + 1,
    })


def _star_blocks(labels: pd.DataFrame, box: int, pixel_size: float, voltage: float, cs: float,
                 amplitude_contrast: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
        "rlnImagePixelSize": [pixel_size], "rlnImageSize": [box], "rlnImageDimensionality": [2],
        "rlnVoltage": [voltage], "rlnSphericalAberration": [cs],
        "rlnAmplitudeContrast": [amplitude_contrast],
    })
    n = len(labels)
    particles = pd.DataFrame({
        "rlnImageName": labels["image_name"],
        "rlnAngleRot": labels["rot"], "rlnAngleTilt": labels["tilt"], "rlnAnglePsi": labels["psi"],
        "rlnOriginXAngst": labels["origin_x_angstrom"], "rlnOriginYAngst": labels["origin_y_angstrom"],
        "rlnDefocusU": labels["defocus_u_angstrom"], "rlnDefocusV": labels["defocus_v_angstrom"],
        "rlnDefocusAngle": labels["defocus_angle_degrees"],
        "rlnPhaseShift": np.zeros(n), "rlnCtfBfactor": np.zeros(n), "rlnCtfScalefactor": np.ones(n),
        "rlnOpticsGroup": np.ones(n, dtype=np.int64), "rlnRandomSubset": labels["random_subset"],
    })
    return optics, particles


def _fsc_weighted(accumulators: list[FourierAccumulator], pixel_size: float) -> tuple[torch.Tensor, np.ndarray]:
    """The full reconstruction filtered by sqrt(2 FSC / (1 + FSC)) of its two half maps."""
    halves = [acc.reconstruct() for acc in accumulators]
    _, curve = fsc(halves[0], halves[1], pixel_size)
    accumulators[0].merge(accumulators[1])
    full = accumulators[0].reconstruct().to(torch.float64)
    clipped = np.clip(curve, 0.0, 1.0)
    weight = torch.as_tensor(np.sqrt(2 * clipped / (1 + clipped)))
    radius = radial_index(tuple(full.shape)).clamp(max=len(weight) - 1)
    spectrum = torch.fft.rfftn(full) * weight[radius]
    return torch.fft.irfftn(spectrum, s=full.shape).to(torch.float32), curve


def _project_frames(model: GaussianModel, frame_positions: torch.Tensor, frame_of_image: np.ndarray,
                    rotations, shifts, box: int, pixel_size: float, ctf: torch.Tensor) -> torch.Tensor:
    """CTF-filtered projections of a batch whose images show different frames (one call per frame)."""
    images = torch.empty(len(frame_of_image), box, box, dtype=ctf.dtype, device=ctf.device)
    for k in np.unique(frame_of_image):
        index = torch.as_tensor(np.nonzero(frame_of_image == k)[0], device=ctf.device)
        model.positions_angstrom = frame_positions[k]
        images[index] = project(model, rotations[index], shifts[index], box, pixel_size, ctf=ctf[index])
    return images


def _half_set_accumulators(box, pixel_size, device) -> list[FourierAccumulator]:
    return [FourierAccumulator(box, pixel_size, device=device) for _ in range(2)]


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
) -> ProgressGenerator[SimulationSummary]:
    """Write a simulated RELION 3.1 data set; a generator of Progress returning a SimulationSummary.

    ``snr=math.inf`` gives noise-free images. ``frames`` (0-based trajectory frames, default all) are
    the frames particles are drawn from. ``origin_sd_angstrom`` defaults to one pixel.
    """
    origin_sd = pixel_size_angstrom if origin_sd_angstrom is None else origin_sd_angstrom
    _validate_numbers(n_particles, box, pixel_size_angstrom, snr, defocus_range_angstrom,
                      astigmatism_angstrom, origin_sd, chunk_size)
    output = Path(output_directory)
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: exists and is not a folder; give a folder for the outputs")
    atoms = read_structure(structure, drop_waters=True, drop_hydrogens=not include_hydrogens)
    used, xyz, first = _load_frames(atoms, trajectory, frames)
    weights = atoms.atomic_numbers.astype(np.float64)
    centre = (first * weights[:, None]).sum(0) / weights.sum()
    xyz = xyz - centre
    max_radius = float(np.linalg.norm(xyz, axis=-1).max())
    if max_radius > box * pixel_size_angstrom / 2:
        raise InputError(
            f"{atoms.path}: atoms reach {max_radius:.1f} Å from the centre but the box is only "
            f"{box * pixel_size_angstrom:.1f} Å wide; use a larger box or pixel size"
        )
    sigma = default_atom_sigma(pixel_size_angstrom) if atom_sigma_angstrom is None else atom_sigma_angstrom
    if not sigma > 0:
        raise InputError(f"atom width {sigma} Å is invalid: give a positive number")

    seeds = np.random.SeedSequence(seed).spawn(2)
    labels = _draw_particles(np.random.default_rng(seeds[0]), int(n_particles), used,
                             defocus_range_angstrom, astigmatism_angstrom, origin_sd)
    noise_rng = np.random.default_rng(seeds[1])
    optics, particles = _star_blocks(labels, box, pixel_size_angstrom, voltage_kilovolts,
                                     spherical_aberration_millimetres, amplitude_contrast)

    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".simulate-", dir=output))
    try:
        table = table_from_blocks(particles, optics, output / "particles.star")
        amplitudes = torch.as_tensor(weights, dtype=torch.float32, device=device)
        model = GaussianModel(torch.as_tensor(xyz[0], dtype=torch.float32, device=device), amplitudes,
                              torch.tensor(sigma, dtype=torch.float32, device=device))
        frame_positions = torch.as_tensor(xyz, dtype=torch.float32, device=device)
        accumulators = _half_set_accumulators(box, pixel_size_angstrom, device)
        noise_variance = signal_variance = 0.0
        with mrcfile.new_mmap(staging / STACK_NAME, shape=(int(n_particles), box, box), mrc_mode=2) as stack:
            stack.set_image_stack()
            stack.voxel_size = pixel_size_angstrom
            for start in range(0, int(n_particles), chunk_size):
                part = slice(start, min(start + chunk_size, int(n_particles)))
                rows = labels.iloc[part]
                rotations = euler_to_matrix(
                    torch.tensor(rows[["rot", "tilt", "psi"]].to_numpy(), dtype=torch.float32)
                ).to(device)
                shifts = torch.tensor(rows[["origin_x_angstrom", "origin_y_angstrom"]].to_numpy(),
                                         dtype=torch.float32, device=device)
                ctf = compute_ctf(table.ctf.select(part).torch(device), box, pixel_size_angstrom)
                images = _project_frames(model, frame_positions, np.searchsorted(used, rows["frame"].to_numpy()),
                                         rotations, shifts, box, pixel_size_angstrom, ctf)
                if start == 0:
                    signal_variance = float(images.var(dim=(1, 2)).mean())
                    noise_variance = 0.0 if math.isinf(snr) else signal_variance / snr
                if noise_variance > 0:
                    noise = noise_rng.standard_normal(images.shape, dtype=np.float32)
                    images = images + math.sqrt(noise_variance) * torch.as_tensor(noise, device=device)
                stack.data[part] = images.cpu().numpy()
                subset = torch.tensor(rows["random_subset"].to_numpy(), device=device)
                for half, acc in enumerate(accumulators):
                    keep = subset == half + 1
                    if keep.any():
                        acc.add(images[keep], rotations[keep], shifts[keep], ctf[keep])
                yield Progress("simulating particles", part.stop, int(n_particles),
                               metrics={"signal_variance": signal_variance})
        ground_truth = staging / "ground_truth"
        ground_truth.mkdir()
        for k, frame in enumerate(used):
            model.positions_angstrom = frame_positions[k]
            write_map(ground_truth / f"frame_{frame:03d}.mrc",
                      render_volume(model, box, pixel_size_angstrom).cpu().numpy(), pixel_size_angstrom)
            yield Progress("rendering frame maps", k + 1, len(used))
        yield Progress("reconstructing consensus", 0, 1)
        consensus, _ = _fsc_weighted(accumulators, pixel_size_angstrom)
        write_map(staging / "consensus.mrc", consensus.cpu().numpy(), pixel_size_angstrom)
        with atomic_path(ground_truth / "labels.csv") as tmp:
            labels.to_csv(tmp, index=False)
        write_particles(staging / "particles.star", table)
        yield Progress("reconstructing consensus", 1, 1)
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
        frame_maps=tuple(output / "ground_truth" / f"frame_{f:03d}.mrc" for f in used),
        frames=used,
        n_particles=int(n_particles),
        n_atoms=atoms.n_atoms,
        box=int(box),
        pixel_size_angstrom=float(pixel_size_angstrom),
        atom_sigma_angstrom=float(sigma),
        signal_variance=signal_variance,
        noise_variance=noise_variance,
        max_radius_angstrom=max_radius,
    )


def _publish(staging: Path, output: Path) -> None:
    """Move the finished outputs from the staging folder into place (renames on one file system).

    An old ``ground_truth`` folder is replaced as a whole so no stale frame maps remain.
    """
    old_truth = output / "ground_truth"
    if old_truth.exists():
        retired = Path(tempfile.mkdtemp(prefix=".old-ground-truth-", dir=output))
        os.replace(old_truth, retired / "ground_truth")
    else:
        retired = None
    for name in ("particles.mrcs", "consensus.mrc", "ground_truth", "particles.star"):
        os.replace(staging / name, output / name)
    staging.rmdir()
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
