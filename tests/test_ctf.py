"""The CTF formula: values that follow from RELION's definition, independent of its code path."""

import math

import numpy as np
import torch

from napari_dynamight.engine.ctf import CtfParams, compute_ctf, electron_wavelength_angstrom


def _ctf(box=64, pixel=1.0, **values):
    base = dict(
        defocus_u_angstrom=10000.0,
        defocus_v_angstrom=10000.0,
        defocus_angle_degrees=0.0,
        voltage_kilovolts=300.0,
        spherical_aberration_millimetres=2.7,
        amplitude_contrast=0.1,
    )
    base.update(values)
    return compute_ctf(CtfParams.broadcast(1, **base).torch(dtype=torch.float64), box, pixel)[0]


def test_wavelength_at_300_kv():
    assert math.isclose(
        electron_wavelength_angstrom(torch.tensor(300.0)).item(), 0.019687, rel_tol=1e-4
    )


def test_low_frequency_value_is_amplitude_contrast():
    # at u = 0 the CTF is sin(atan(Q0/sqrt(1-Q0^2))) = Q0, positive: protein-white images
    assert math.isclose(_ctf()[0, 0].item(), 0.1, rel_tol=1e-9)
    # a 90 degree phase plate shift makes it cos(...) = sqrt(1 - Q0^2)
    assert math.isclose(
        _ctf(phase_shift_degrees=90.0)[0, 0].item(), math.sqrt(1 - 0.01), rel_tol=1e-9
    )


def test_first_zero_where_theory_puts_it():
    box, pixel, defocus = 256, 1.0, 15000.0
    ctf = _ctf(
        box=box,
        pixel=pixel,
        defocus_u_angstrom=defocus,
        defocus_v_angstrom=defocus,
        spherical_aberration_millimetres=0.0,
    )
    wavelength = electron_wavelength_angstrom(torch.tensor(300.0, dtype=torch.float64)).item()
    # without Cs: pi*lambda*df*u^2 = pi - atan(Q0/...) at the first zero
    k3 = math.atan(0.1 / math.sqrt(1 - 0.01))
    u_zero = math.sqrt((math.pi - k3) / (math.pi * wavelength * defocus))
    profile = ctf[0, : box // 2].numpy()
    crossing = np.nonzero(np.diff(np.sign(profile)))[0][0]
    assert abs((crossing + 0.5) / (box * pixel) - u_zero) < 1.0 / (box * pixel)


def test_astigmatism_angle_is_measured_from_x():
    # with defocus U along the angle, the x axis has defocus U when the angle is 0 and V when 90
    u_only = _ctf(defocus_u_angstrom=20000.0, defocus_v_angstrom=5000.0, defocus_angle_degrees=0.0)
    rotated = _ctf(
        defocus_u_angstrom=5000.0, defocus_v_angstrom=20000.0, defocus_angle_degrees=90.0
    )
    assert torch.allclose(u_only, rotated, atol=1e-9)
    plain = _ctf(defocus_u_angstrom=20000.0, defocus_v_angstrom=20000.0)
    assert torch.allclose(u_only[0, :], plain[0, :], atol=1e-9)  # along x (ky = 0)


def test_bfactor_and_scale():
    plain, damped = _ctf(), _ctf(bfactor_angstrom2=100.0, scale=0.5)
    u2 = (torch.fft.rfftfreq(64, d=1.0) ** 2)[10].item()
    assert math.isclose(
        damped[0, 10].item(), 0.5 * math.exp(-100.0 * u2 / 4) * plain[0, 10].item(), rel_tol=1e-9
    )
