"""Posterior-mean latents over candidate latent points (engine/deformation/inference.py)."""

import numpy as np
import torch

from napari_dynamight.engine.ctf import CtfParams, compute_ctf
from napari_dynamight.engine.deformation.batches import TrainingBatch
from napari_dynamight.engine.deformation.inference import (
    SCREEN_LEAST,
    SCREEN_MOST,
    Candidates,
    Screen,
    negative_log_likelihoods,
    posterior_mean,
    posteriors,
    screen_for,
    screened_choice,
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
    return TrainingBatch(
        rows=np.arange(count),
        spectra=clean + noise,
        encoder_input=torch.zeros(count, BOX, BOX),
        ctf=ctf,
        rotations=rotations.float(),
        origin_angstrom=shifts,
    )


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
        torch.fft.irfft2(simulated_batch(model, candidates, truth, 0.0).spectra, s=(BOX, BOX)).std()
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


def _screened_case(count=48, snr=1.0):
    """The two-domain model, ``count`` candidates 16/(count-1) Å apart, 96 particles at ``snr``."""
    model = two_domain_model(n=200)
    candidates = candidate_set(model, np.linspace(-8.0, 8.0, count))
    truth = np.arange(96) % count
    signal = float(
        torch.fft.irfft2(simulated_batch(model, candidates, truth, 0.0).spectra, s=(BOX, BOX)).std()
    )
    sigma = signal / np.sqrt(snr)
    batch = simulated_batch(model, candidates, truth, noise_sigma=sigma)
    return model, candidates, batch, white_noise_model(sigma)


def test_a_screen_that_is_the_exact_projection_gives_the_exact_posterior():
    """The screen's machinery (choice, exact pairs, the offset of the rest) loses nothing when the
    screen is the exact likelihood itself: posteriors equal to float rounding (the exact pairs and
    the all-candidates pass form their pixel coordinates by different products, which round
    differently: 2e-5 measured)."""
    model, candidates, batch, noise = _screened_case()
    exact = posteriors(batch, candidates, model, noise, BOX, PIXEL)
    perfect = Screen(model, candidates.positions, BOX, PIXEL, 1.0)
    fast = posteriors(batch, candidates, model, noise, BOX, PIXEL, perfect)
    assert torch.allclose(fast, exact, atol=1e-4)


def test_screened_posteriors_match_the_exact_ones():
    """The default screen (coarse model at half the box, exact top candidates) against every
    candidate evaluated exactly, 48 candidates 0.34 Å apart, SNR 1 and 0.1: the posteriors differ by
    less than 0.05 in mass (L1, mean over particles) and their means by less than 1% of the
    candidates' range (mean over particles)."""
    for snr in (1.0, 0.1):
        model, candidates, batch, noise = _screened_case(snr=snr)
        exact = posteriors(batch, candidates, model, noise, BOX, PIXEL)
        screen = screen_for(False, model, candidates, BOX, PIXEL)
        assert screen is not None and screen.box == BOX // 2
        fast = posteriors(batch, candidates, model, noise, BOX, PIXEL, screen)
        assert torch.allclose(fast.sum(1), torch.ones(len(fast)), atol=1e-5)
        assert float((fast - exact).abs().sum(1).mean()) < 0.05
        error = (fast @ candidates.latents - exact @ candidates.latents).abs()
        assert float(error.mean()) < 0.01 * 16.0
        assert screen_for(True, model, candidates, BOX, PIXEL) is None  # exact_posteriors


def test_screened_choice_keeps_the_likeliest_within_its_bounds():
    """Sharp rows keep SCREEN_LEAST candidates, flat rows SCREEN_MOST, in order of likelihood, ties
    by index."""
    flat = torch.zeros(1, 64)
    sharp = torch.arange(64.0).flip(0).unsqueeze(0) * 100.0
    order, kept = screened_choice(torch.cat([flat, sharp]))
    assert kept.sum(1).tolist() == [SCREEN_MOST, SCREEN_LEAST]
    assert order[0].tolist() == list(range(SCREEN_MOST))
    assert order[1, :SCREEN_LEAST].tolist() == [63, 62, 61, 60]
