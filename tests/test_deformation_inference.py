"""Posterior-mean latents over candidate latent points (engine/deformation/inference.py)."""

import numpy as np
import torch

from napari_dynamight.engine.ctf import CtfParams, compute_ctf
from napari_dynamight.engine.deformation.inference import (
    Candidates,
    negative_log_likelihoods,
    posterior_mean,
)
from napari_dynamight.engine.deformation.losses import NoiseModel
from napari_dynamight.engine.gaussians import GaussianModel, project_spectrum
from napari_dynamight.engine.geometry import euler_to_matrix, random_euler_angles

BOX, PIXEL = 32, 2.5


def two_domain_model(seed=0, n=80):
    generator = torch.Generator().manual_seed(seed)
    positions = torch.randn(n, 3, generator=generator) * 6.0
    positions[: n // 2, 0] -= 10.0
    positions[n // 2 :, 0] += 10.0
    return GaussianModel(positions, torch.ones(n), torch.full((n,), 2.5))


def candidate_set(model, shifts_angstrom):
    """Candidates whose latent is the shift (Å) of the second domain along y."""
    latents = torch.tensor(shifts_angstrom, dtype=torch.float32)[:, None]
    moved = model.positions_angstrom.expand(len(latents), -1, -1).clone()
    half = model.n_gaussians // 2
    moved[:, half:, 1] += latents
    return Candidates(latents, moved)


def simulated_batch(model, candidates, truth, noise_sigma, seed=1):
    rng = np.random.default_rng(seed)
    count = len(truth)
    rotations = euler_to_matrix(torch.as_tensor(random_euler_angles(count, rng)))
    shifts = torch.as_tensor(rng.uniform(-3, 3, (count, 2)), dtype=torch.float32)
    ctf = compute_ctf(
        CtfParams.broadcast(
            count,
            defocus_u_angstrom=rng.uniform(8000, 20000, count),
            defocus_v_angstrom=rng.uniform(8000, 20000, count),
            defocus_angle_degrees=0.0,
            voltage_kilovolts=300.0,
            spherical_aberration_millimetres=2.7,
            amplitude_contrast=0.1,
        ).torch("cpu"),
        BOX,
        PIXEL,
    )
    clean = (
        project_spectrum(
            model,
            rotations.float(),
            shifts,
            BOX,
            PIXEL,
            positions_angstrom=candidates.positions[truth],
        )
        * ctf
    )
    noise = torch.fft.rfft2(
        torch.as_tensor(rng.normal(0, noise_sigma, (count, BOX, BOX)), dtype=torch.float32)
    )
    return {
        "rows": np.arange(count),
        "rotations": rotations.float(),
        "shifts_angstrom": shifts,
        "ctf": ctf,
        "spectra": clean + noise,
    }


def white_noise_model(noise_sigma):
    noise = NoiseModel(BOX)
    noise.power = torch.full((noise.n_shells,), noise_sigma**2 * BOX**2)
    return noise


def test_the_true_candidate_leaves_noise_that_scores_one_per_frequency():
    model = two_domain_model()
    candidates = candidate_set(model, [0.0, 6.0])
    batch = simulated_batch(model, candidates, np.zeros(64, int), noise_sigma=1.0)
    noise = white_noise_model(1.0)
    nll = negative_log_likelihoods(batch, candidates, model, noise, BOX, PIXEL)
    assert abs(float(nll[:, 0].mean()) / noise.n_frequencies - 1.0) < 0.05
    assert float(nll[:, 1].mean()) > float(nll[:, 0].mean())


def test_posterior_mean_recovers_the_true_candidate_and_shrinks_under_noise():
    model = two_domain_model()
    candidates = candidate_set(model, [-6.0, -3.0, 0.0, 3.0, 6.0])
    truth = np.tile(np.arange(5), 20)
    signal = float(
        torch.fft.irfft2(
            simulated_batch(model, candidates, truth, 0.0)["spectra"], s=(BOX, BOX)
        ).std()
    )
    clean = simulated_batch(model, candidates, truth, noise_sigma=signal)  # SNR 1
    estimate = posterior_mean(clean, candidates, model, white_noise_model(signal), BOX, PIXEL)[
        :, 0
    ].numpy()
    assert np.mean(np.abs(estimate - candidates.latents[truth, 0].numpy()) < 0.5) > 0.95
    noisy_sigma = (
        signal * 10.0
    )  # SNR 0.01: estimates spread and shrink towards the middle, never beyond
    noisy = simulated_batch(model, candidates, truth, noise_sigma=noisy_sigma)
    estimate = posterior_mean(noisy, candidates, model, white_noise_model(noisy_sigma), BOX, PIXEL)[
        :, 0
    ].numpy()
    assert np.all(np.abs(estimate) <= 6.0 + 1e-4)
    assert np.corrcoef(estimate, candidates.latents[truth, 0].numpy())[0, 1] > 0.3
