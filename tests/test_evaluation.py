"""The Bayes-optimal ceiling on tiny simulations, and the metrics on inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.evaluation import (
    abs_spearman,
    atom_motion,
    bayes_ceiling,
    decoded_vs_consensus,
    error_motion_spearman,
    frame_motion,
    gaussian_error_vs_motion,
    latent_frame_ordering,
    low_pass,
    map_correlation,
    motion_at,
    principal_components,
    rms_displacement,
)
from napari_dynamight.engine.example_data import STRUCTURE, example_file
from napari_dynamight.engine.progress import run
from napari_dynamight.engine.simulate import simulate

ADK = example_file(STRUCTURE).parent  # the example files bundled with the package
CLOSED, DCD = ADK / "adk_closed.pdb", ADK / "adk_dims.dcd"
FRAMES = [0, 19, 39, 58, 78, 97]
TINY = {
    "n_particles": 100,
    "box": 32,
    "pixel_size_angstrom": 2.5,
    "defocus_range_angstrom": (5000, 25000),
    "frames": FRAMES,
    "seed": 1,
}


def _simulated(factory, snr: float):
    folder = factory.mktemp(f"snr{snr}")
    return run(simulate(CLOSED, DCD, output_directory=folder, snr=snr, **TINY))


@pytest.fixture(scope="module")
def ceilings(tmp_path_factory):
    """The ceiling of the same 100 particles noise-free, at SNR 10 and at SNR 0.01."""
    out = {}
    for snr in (math.inf, 10.0, 0.01):
        summary = _simulated(tmp_path_factory, snr)
        noise = 1.0 if math.isinf(snr) else None
        out[snr] = (
            summary,
            run(bayes_ceiling(summary.output_directory, CLOSED, DCD, noise_variance=noise)),
        )
    return out


def test_ceiling_reproduces_the_simulated_images_exactly(ceilings):
    summary, result = ceilings[math.inf]
    # Noise-free images minus the ceiling's projection of their true frame: float32 rounding only.
    assert result.estimated_noise_variance < 1e-9 * result.signal_power
    assert result.signal_power == pytest.approx(summary.signal_variance, rel=0.2)
    assert result.map_accuracy == 1.0


def test_ceiling_recovers_the_frame_at_high_snr(ceilings):
    summary, result = ceilings[10.0]
    assert result.spearman > 0.95
    assert min(result.spearman_by_half().values()) > 0.95
    assert result.map_accuracy > 0.95
    np.testing.assert_array_equal(result.frames, FRAMES)
    np.testing.assert_allclose(result.posterior.sum(1), 1.0, rtol=1e-9)
    # the σ² estimated from residuals against the true frame matches the simulator's (1 % tolerance
    # for 100 × 1024 pixels: a 3-sigma sampling error is 1.3 %)
    assert result.estimated_noise_variance == pytest.approx(summary.noise_variance, rel=0.015)


def test_ceiling_drops_at_snr_0_01(ceilings):
    _, high = ceilings[10.0]
    _summary, low = ceilings[0.01]
    assert low.spearman < 0.9 < high.spearman
    assert low.spearman > 0.3  # still far better than chance at this box and frame spacing
    assert low.map_accuracy < 0.8
    entropy = -(low.posterior * np.log(np.clip(low.posterior, 1e-300, None))).sum(1).mean()
    assert entropy > 0.5  # the oracle is genuinely unsure


def test_ceiling_at_a_coarser_resolution_knows_less(ceilings):
    summary, full = ceilings[0.01]
    pixel = summary.pixel_size_angstrom
    everything = run(
        bayes_ceiling(summary.output_directory, CLOSED, DCD, resolution_angstrom=pixel)
    )  # 1/pixel lies beyond the half plane's corners: every frequency, the same posterior
    np.testing.assert_allclose(everything.posterior, full.posterior, rtol=1e-6, atol=1e-9)
    coarse = run(
        bayes_ceiling(summary.output_directory, CLOSED, DCD, resolution_angstrom=8 * pixel)
    )
    assert coarse.spearman < full.spearman - 0.02
    entropy = [
        -(c.posterior * np.log(np.clip(c.posterior, 1e-300, None))).sum(1).mean()
        for c in (full, coarse)
    ]
    assert entropy[1] > entropy[0]  # a blurrier view, a broader posterior
    with pytest.raises(InputError, match="resolution"):
        run(bayes_ceiling(summary.output_directory, CLOSED, DCD, resolution_angstrom=0.0))


def test_ceiling_frame_subsample_and_bad_input(ceilings, tmp_path):
    summary, _ = ceilings[10.0]
    every_other = run(bayes_ceiling(summary.output_directory, CLOSED, DCD, frame_step=2))
    np.testing.assert_array_equal(every_other.frames, FRAMES[::2])
    assert every_other.spearman > 0.9
    with pytest.raises(InputError, match="frame step"):
        run(bayes_ceiling(summary.output_directory, CLOSED, DCD, frame_step=0))
    with pytest.raises(InputError, match="labels.csv|particles.star"):
        run(bayes_ceiling(tmp_path, CLOSED, DCD))


def test_latent_ordering_of_a_noisy_linear_latent_matches_the_direct_spearman():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 98, 2000).astype(float)
    signal = frame + rng.normal(0, 25, frame.size)
    expected = abs(spearmanr(signal, frame).statistic)
    # embed in 4D: a rotated copy of the signal axis, plus isotropic noise of small variance
    latent = np.column_stack([signal, rng.normal(0, 1, (frame.size, 3))])
    rotation, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    ordering = latent_frame_ordering(latent @ rotation, frame)
    assert ordering.best_component == 0
    assert ordering.best == pytest.approx(expected, abs=0.01)
    assert 0.7 < ordering.best < 0.8  # roughly ρ of uniform(0, 98) + N(0, 25): ~0.74
    flipped = latent_frame_ordering(-latent @ rotation, frame)
    assert flipped.best == pytest.approx(ordering.best, abs=1e-12)


def test_pca_picks_the_component_that_orders_the_frames():
    rng = np.random.default_rng(1)
    frame = rng.uniform(0, 97, 1500)
    nuisance = rng.normal(0, 100, frame.size)  # largest variance, unrelated to the frame
    latent = np.column_stack(
        [nuisance, 0.3 * frame + rng.normal(0, 1, frame.size), rng.normal(0, 0.1, frame.size)]
    )
    ordering = latent_frame_ordering(latent, frame)
    assert ordering.best_component == 1
    assert ordering.best > 0.99
    assert ordering.first_component < 0.1
    assert ordering.explained_variance_ratio[0] > 0.9
    only_first = latent_frame_ordering(latent, frame, n_components=1)
    assert only_first.best == ordering.first_component and only_first.best_component == 0
    scores, ratio = principal_components(latent)
    assert scores.shape == latent.shape and ratio.sum() == pytest.approx(1.0)


def test_spearman_is_sign_and_monotone_invariant():
    x = np.linspace(-2, 3, 50)
    assert abs_spearman(np.exp(x), x) == pytest.approx(1.0)
    assert abs_spearman(-(x**3), x) == pytest.approx(1.0)
    assert abs_spearman(np.ones(50), x) == 0.0
    assert error_motion_spearman(2 * x + 1, x) == pytest.approx(1.0)
    assert error_motion_spearman(-x, x) == pytest.approx(-1.0)


def test_map_correlations_and_decoded_versus_consensus():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(8, 8, 8))
    assert map_correlation(a, 2 * a + 3) == pytest.approx(1.0)
    assert map_correlation(a, -a) == pytest.approx(-1.0)
    mask = np.zeros(a.shape, bool)
    mask[:4] = True
    b = a.copy()
    b[4:] = rng.normal(size=(4, 8, 8))
    assert map_correlation(a, b, mask) == pytest.approx(1.0)
    assert map_correlation(a, b) < 0.8
    truth = [rng.normal(size=(8, 8, 8)) for _ in range(5)]
    consensus = np.mean(truth, axis=0)
    decoded = [t + 0.1 * rng.normal(size=t.shape) for t in truth]
    result = decoded_vs_consensus(decoded, truth, consensus)
    assert result["fraction_decoded_better"] == 1.0
    assert result["mean_decoded"] > 0.99
    assert result["mean_consensus"] < 0.6


def test_low_pass_keeps_coarse_waves_exactly_and_removes_fine_ones():
    box, voxel = 32, 1.5
    z = np.arange(box)[:, None, None] * np.ones((1, box, box))
    coarse = np.cos(2 * np.pi * 2 * z / box)  # wavelength 16 px = 24 Å
    fine = np.cos(2 * np.pi * 10 * z / box)  # wavelength 3.2 px = 4.8 Å
    filtered = low_pass(coarse + fine, voxel, 6.0)
    np.testing.assert_allclose(filtered, coarse, atol=1e-9)
    # a decoded volume that differs from the truth only beyond 6 Å wins there, not to Nyquist
    truth, decoded, consensus = coarse, coarse + fine, 0.5 * coarse + np.sin(np.pi * z / box)
    full = decoded_vs_consensus([decoded], [truth], consensus)
    banded = decoded_vs_consensus([decoded], [truth], consensus, low_pass_to=(voxel, 6.0))
    assert full["mean_decoded"] < 0.75 and banded["mean_decoded"] > 0.999


def test_motion_sizes_and_rms_displacement():
    base = np.zeros((4, 3))
    base[:, 0] = np.arange(4) * 10.0
    frames = np.stack([base, base, base])
    frames[0, 3, 1] -= 3.0  # atom 3 moves ±3 Å in y across frames 0 and 2
    frames[2, 3, 1] += 3.0
    motion = atom_motion(frames)
    np.testing.assert_allclose(motion, [0, 0, 0, math.sqrt(6.0)])
    np.testing.assert_allclose(frame_motion(frames), [1.5, 0.0, 1.5])
    np.testing.assert_allclose(frame_motion(frames, reference=frames[0]), [0.0, 1.5, 3.0])
    np.testing.assert_allclose(
        motion_at([[29.0, 0, 0], [1.0, 0, 0]], base, motion, k=1), [math.sqrt(6), 0]
    )
    # errors that grow towards the moving atom rank with the motion there; reversed ones against it
    points = [[1.0, 0, 0], [19.0, 0, 0], [29.0, 0, 0]]
    frames[:, 2, 1] += frames[:, 3, 1] / 3  # atom 2 moves a third as much
    assert gaussian_error_vs_motion(points, [0.1, 0.2, 0.5], frames, k=1) == pytest.approx(1.0)
    assert gaussian_error_vs_motion(points, [0.5, 0.2, 0.1], frames, k=1) == pytest.approx(-1.0)
    assert rms_displacement(np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])) == pytest.approx(
        math.sqrt(12.5)
    )
