"""The contrast transfer function exactly as RELION defines it (``CTF::getCTF``)::

    ctf(u) = -scale * exp(-B |u|² / 4)
             * sin(π λ Δf(φ) |u|² + (π/2) Cs λ³ |u|⁴ - φ_shift - atan(Q0 / sqrt(1 - Q0²)))

with ``Δf(φ) = -(dU + dV)/2 - (dU - dV)/2 · cos(2(φ - φ_astig))`` and λ the relativistic electron
wavelength. It is positive at low frequency, so RELION's images are protein-white.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch


def electron_wavelength_angstrom(voltage_kilovolts: torch.Tensor) -> torch.Tensor:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV."""
    volts = voltage_kilovolts * 1e3
    return 12.2643247 / torch.sqrt(volts * (1.0 + volts * 0.978466e-6))


@dataclass
class CtfParams:
    """Per-particle CTF parameters in RELION's units; each field has shape (N,).

    Fields are numpy arrays (as read from a STAR file) or torch tensors (after :meth:`torch`).
    """

    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    defocus_angle_degrees: np.ndarray
    voltage_kilovolts: np.ndarray
    spherical_aberration_millimetres: np.ndarray
    amplitude_contrast: np.ndarray
    phase_shift_degrees: np.ndarray
    bfactor_angstrom2: np.ndarray
    scale: np.ndarray

    def __len__(self) -> int:
        return len(self.defocus_u_angstrom)

    @classmethod
    def broadcast(cls, n: int, **values) -> CtfParams:
        """Parameters for ``n`` particles from scalars or arrays (defaults: no phase shift, B 0,
        scale 1)."""
        defaults = {"phase_shift_degrees": 0.0, "bfactor_angstrom2": 0.0, "scale": 1.0}
        defaults.update(values)
        arrays = {
            f.name: np.broadcast_to(np.asarray(defaults[f.name], dtype=np.float64), (n,)).copy()
            for f in fields(cls)
        }
        return cls(**arrays)

    def select(self, index) -> CtfParams:
        """The parameters of a subset of particles (any numpy/torch index)."""
        return CtfParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def torch(self, device: torch.device | str = "cpu", dtype=torch.float32) -> CtfParams:
        """The same parameters as tensors on ``device``."""
        return CtfParams(
            **{
                f.name: torch.as_tensor(
                    np.array(getattr(self, f.name), dtype=np.float64), dtype=dtype, device=device
                )
                if not isinstance(getattr(self, f.name), torch.Tensor)
                else getattr(self, f.name).to(device=device, dtype=dtype)
                for f in fields(self)
            }
        )


def frequency_grid_2d(
    box: int, pixel_size_angstrom: float, device=None, dtype=torch.float32, rfft: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial frequencies (1/Å) along image x and y for an ``fft2``/``rfft2`` of a box² image.

    Shapes are (box, box // 2 + 1) for ``rfft`` else (box, box); index order [y, x].
    """
    fy = torch.fft.fftfreq(box, d=pixel_size_angstrom, device=device, dtype=dtype)
    if rfft:
        fx = torch.fft.rfftfreq(box, d=pixel_size_angstrom, device=device, dtype=dtype)
    else:
        fx = torch.fft.fftfreq(box, d=pixel_size_angstrom, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(fy, fx, indexing="ij")
    return grid_x, grid_y


def compute_ctf(
    params: CtfParams, box: int, pixel_size_angstrom: float, rfft: bool = True
) -> torch.Tensor:
    """CTF images (N, box, box//2+1) — or (N, box, box) with ``rfft=False`` — for tensor params.

    ``params`` must hold torch tensors (see :meth:`CtfParams.torch`); the result lives on their
    device.
    """
    device, dtype = params.defocus_u_angstrom.device, params.defocus_u_angstrom.dtype
    fx, fy = frequency_grid_2d(box, pixel_size_angstrom, device=device, dtype=dtype, rfft=rfft)
    u2 = fx**2 + fy**2
    angle = torch.atan2(fy, fx)

    def per_particle(value: torch.Tensor) -> torch.Tensor:
        return value.reshape(-1, 1, 1)

    wavelength = electron_wavelength_angstrom(per_particle(params.voltage_kilovolts))
    cs_angstrom = per_particle(params.spherical_aberration_millimetres) * 1e7
    q0 = per_particle(params.amplitude_contrast)
    k1 = torch.pi * wavelength
    k2 = 0.5 * torch.pi * cs_angstrom * wavelength**3
    k3 = torch.atan(q0 / torch.sqrt(1.0 - q0**2))
    k4 = -per_particle(params.bfactor_angstrom2) / 4.0
    k5 = torch.deg2rad(per_particle(params.phase_shift_degrees))

    defocus_u = per_particle(params.defocus_u_angstrom)
    defocus_v = per_particle(params.defocus_v_angstrom)
    astigmatism_angle = torch.deg2rad(per_particle(params.defocus_angle_degrees))
    defocus = -(defocus_u + defocus_v) / 2 - (defocus_u - defocus_v) / 2 * torch.cos(
        2 * (angle - astigmatism_angle)
    )
    argument = k1 * defocus * u2 + k2 * u2**2 - k5 - k3
    return -per_particle(params.scale) * torch.exp(k4 * u2) * torch.sin(argument)
