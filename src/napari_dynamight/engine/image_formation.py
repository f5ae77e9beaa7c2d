"""The image-formation path: a pose, the Gaussian model's projection, the CTF and an envelope.

Every image the engine predicts is made here, as in a forward model of the microscope::

    Ŷ(k) = CTF(k) · E(k) · P_pose[model](k)        (rfft2 half plane, k in 1/Å)

- the pose (:class:`Pose`) is RELION's: rotation matrices ``A`` (B, 3, 3) and origins (B, 2) Å; the
  map point ``x`` lands at image position ``(A x)[:2] − origin`` from the box centre (``box // 2``);
- ``P_pose[model]`` is the line integral of the Gaussian model (``engine.gaussians``), optionally
  with per-image (deformed) centres; voxel maps are projected by ``engine.projector``;
- the CTF is ``engine.ctf.compute_ctf`` of the particle's RELION parameters (rfft2 layout), and
  ``E(k) = exp(−B |k|²/4)`` an optional envelope (:func:`image_envelope`) that STAR files do not
  record (the simulator's ``envelope_bfactor``).

Training's data term, the posterior E-step (``deformation.inference``), the watchdog, the amplitude
fit, the Bayes ceilings (``evaluation``) and the simulator all call :func:`image_spectra` (or
:func:`pair_residuals` for every pose with every candidate model, :func:`form_images` /
:func:`frame_images` in real space), so they form images in one way; the data term and the
E-step's likelihoods weigh the residual with :func:`weighted_squared_residual`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .ctf import CtfParams, compute_ctf, frequency_grid_2d
from .gaussians import GaussianModel, project_spectrum, project_spectrum_pairs


@dataclass(frozen=True)
class Pose:
    """RELION poses of B images: ``rotations`` (B, 3, 3) and ``origin_angstrom`` (B, 2), x then y
    (the particle centre sits at box centre − origin)."""

    rotations: torch.Tensor
    origin_angstrom: torch.Tensor

    def __len__(self) -> int:
        return len(self.rotations)

    def select(self, index) -> Pose:
        """The poses at ``index`` (a slice, positions or a mask)."""
        return Pose(self.rotations[index], self.origin_angstrom[index])

    def to(self, device=None, dtype=None) -> Pose:
        return Pose(
            self.rotations.to(device=device, dtype=dtype),
            self.origin_angstrom.to(device=device, dtype=dtype),
        )


def image_envelope(box: int, pixel_size: float, bfactor: float, device=None) -> torch.Tensor:
    """``exp(−B s²/4)`` on the rfft2 half plane (box, box//2+1); s in 1/Å."""
    fx, fy = frequency_grid_2d(box, pixel_size, device=device, dtype=torch.float32, rfft=True)
    return torch.exp(-bfactor * (fx**2 + fy**2) / 4.0)


def transfer(ctf: torch.Tensor, envelope: torch.Tensor | None = None) -> torch.Tensor:
    """The filter of the images: CTF images (B, L, L//2+1) times an ``envelope`` (L, L//2+1)."""
    return ctf if envelope is None else ctf * envelope


def transfer_of(
    params: CtfParams, box: int, pixel_size: float, envelope: torch.Tensor | None = None
) -> torch.Tensor:
    """The filter (B, box, box//2+1) of particles with CTF ``params`` (tensors) and an envelope."""
    return transfer(compute_ctf(params, box, pixel_size), envelope)


def image_spectra(
    model: GaussianModel,
    pose: Pose,
    box: int,
    pixel_size_angstrom: float,
    ctf: torch.Tensor | None = None,
    positions_angstrom: torch.Tensor | None = None,
) -> torch.Tensor:
    """The predicted images' rfft2 (B, box, box//2+1): ``model`` projected under ``pose``, times
    ``ctf`` (B, box, box//2+1; from :func:`transfer_of`, None for none).

    ``positions_angstrom`` (B, N, 3) replaces the model's centres per image (deformed models)."""
    spectrum = project_spectrum(
        model, pose.rotations, pose.origin_angstrom, box, pixel_size_angstrom, positions_angstrom
    )
    return spectrum if ctf is None else spectrum * ctf


def weighted_squared_residual(
    predicted: torch.Tensor,
    observed: torch.Tensor,
    weights: torch.Tensor,
    ctf: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Σ_k w(k) |CTF(k)·P(k) − Y(k)|²`` over the last two axes of rfft2 arrays: ``predicted``
    (…, L, L//2+1) before the ``ctf`` (None: already applied), ``observed`` and the ``ctf``
    broadcast against it, ``weights`` (L, L//2+1) shared by all.

    One fused multiply-add, one square of the real and imaginary parts and one product with the
    weights: the plain expression (multiply, subtract, complex modulus, square, weight, sum) makes
    twice as many passes over the (particles × candidates) spectra of the E-step and takes a square
    root it then undoes."""
    residual = predicted - observed if ctf is None else torch.addcmul(-observed, predicted, ctf)
    power = torch.view_as_real(residual).square().flatten(-3)
    return power @ weights.unsqueeze(-1).expand(*weights.shape, 2).reshape(-1)


def pair_residuals(
    model: GaussianModel,
    pose: Pose,
    box: int,
    pixel_size_angstrom: float,
    ctf: torch.Tensor,
    positions_angstrom: torch.Tensor,
    observed: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """(B, K): :func:`weighted_squared_residual` of each image's spectrum ``observed`` (B, box,
    box//2+1) against the prediction of its pose (B) and ``ctf`` with every set of centres
    ``positions_angstrom`` (K, N, 3), formed pass by pass as the projections are made (the (B, K)
    spectra are never held at once)."""

    def residual(spectra: torch.Tensor, poses: slice, _candidates: slice) -> torch.Tensor:
        return weighted_squared_residual(spectra, observed[poses, None], weights, ctf[poses, None])

    return project_spectrum_pairs(
        model,
        pose.rotations,
        pose.origin_angstrom,
        box,
        pixel_size_angstrom,
        positions_angstrom,
        reduce=residual,
    )


def filter_images(images: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Real images (B, L, L) filtered by ``ctf`` (B, L, L//2+1) in rfft2 layout."""
    box = images.shape[-1]
    return torch.fft.irfft2(torch.fft.rfft2(images) * ctf, s=(box, box))


def form_images(
    model: GaussianModel,
    pose: Pose,
    box: int,
    pixel_size_angstrom: float,
    ctf: torch.Tensor | None = None,
    positions_angstrom: torch.Tensor | None = None,
) -> torch.Tensor:
    """The predicted images (B, box, box) [y, x]: the real-space :func:`image_spectra`."""
    spectrum = image_spectra(model, pose, box, pixel_size_angstrom, ctf, positions_angstrom)
    return torch.fft.irfft2(spectrum, s=(box, box))


def frame_images(
    scene, frame_of_image: np.ndarray, pose: Pose, box: int, pixel_size: float, ctf: torch.Tensor
) -> torch.Tensor:
    """:func:`form_images` of a batch whose images show different frames of a ``Scene``
    (``engine.scene``; ``frame_of_image``: each image's index into ``scene.frames``), one
    projection per frame."""
    out = torch.empty(len(frame_of_image), box, box, dtype=ctf.dtype, device=ctf.device)
    for k in np.unique(frame_of_image):
        index = torch.as_tensor(np.nonzero(frame_of_image == k)[0], device=ctf.device)
        out[index] = form_images(scene.at_frame(k), pose.select(index), box, pixel_size, ctf[index])
    return out
