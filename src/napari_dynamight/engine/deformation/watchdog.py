"""The watchdog: per half and per epoch, is the half learning motion, and do the two halves agree?

A half-set VAE can stall (its decoder stops moving, λ grows, the data loss goes flat) while the
other half learns; nothing in the losses shows it. After every epoch :func:`diagnose` measures, for
one half on a fixed subset of its particles (its validation particles, at most ``MAX_HELD_OUT``;
training particles only when it has none), with the encoder's latent means and no random draw:

- ``rms_displacement_angstrom``: RMS over particles and Gaussians of the deformed minus reference
  positions;
- ``validation_data``: the data loss of those particles, deformed (``losses.data_loss``);
- ``deformation_gain``: the mean over those particles of the data loss undeformed (reference
  positions) minus deformed, and ``deformation_gain_z``, that mean over its standard error;
- ``latent_gain`` / ``latent_gain_z``: the same with each particle deformed by another particle's
  latent (the list rolled by half its length) instead of the reference: only a latent space that
  carries each particle's own motion gains. A stalled half gains nothing either way; a half that
  fits noise may still gain against the reference (a deformed model with less power fits noise
  better: 0.2 on pure noise), which is why the rules use the latent gain.

:func:`check` turns a loss history with these fields into one-line warnings; :func:`final_check`
compares the two halves' final deformation fields with the error estimate. Thresholds and the
measurements behind them are in :func:`check`'s docstring and docs/deformations.md ("Watchdog").
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.func import functional_call

from ..gaussians import GaussianModel
from ..image_formation import image_spectra
from .losses import data_loss

# particles per half and epoch (2 decoder passes and 3 projections each, in double precision)
MAX_HELD_OUT = 256
MIN_FULL_EPOCHS = 10  # network-training epochs of a half before it is judged
STALL_RMS_ANGSTROM = 0.1  # below this a half's Gaussians do not move
NO_GAIN_Z = (
    3.0  # below this a half's own latents do not measurably improve the fit to held-out particles
)
DISAGREE_Z = 5.0  # the halves' gains differ by more than this many standard errors ...
DISAGREE_RATIO = 4.0  # ... and by more than this factor
FINAL_AGREEMENT = (
    0.3  # final check: below this the halves' motions are unrelated (1 = equal, 0 = unrelated)
)
FIELDS = (
    "rms_displacement_angstrom",
    "validation_data",
    "deformation_gain",
    "deformation_gain_z",
    "latent_gain",
    "latent_gain_z",
)
ADVICE = (
    "check the poses and the consensus map, try a smaller --regularisation-ratio, more particles, "
    "or a mask around the moving part"
)


def _held_out_rows(half) -> np.ndarray:
    rows = half.validation_rows if len(half.validation_rows) else half.train_rows
    return rows[:MAX_HELD_OUT]


@torch.no_grad()
def diagnose(half, batches) -> dict[str, float]:
    """The watchdog fields (see the module docstring) of ``half`` (a ``trainer.HalfSet``) now.

    Reads the half's state only and draws no random number, so training and resume are unchanged.
    Each rank of the half's group takes its share of the rows; the sums are added over the group."""
    rows = half.group.shard(_held_out_rows(half))
    size = half.settings.batch_size
    precise = _precise_dtype(half.device)
    encode, deformed_positions = _in_precision(half, precise)
    codes = [
        encode(batches.get(rows[start : start + size]).encoder_input)
        for start in range(0, len(rows), size)
    ]
    others = torch.cat(codes).roll(len(rows) // 2, 0).split(size) if len(rows) else []
    model = half.model(detach=True)
    model = GaussianModel(
        model.positions_angstrom.to(precise),
        model.amplitudes.to(precise),
        model.sigmas_angstrom.to(precise),
    )
    weights, n_freq = half.noise.weights.to(precise), half.noise.n_frequencies
    sums = torch.zeros(
        7, dtype=torch.float64
    )  # count, squared displacement, loss, gain, gain², latent gain, its ²
    for start, own, other in zip(range(0, len(rows), size), codes, others):
        batch = batches.get(rows[start : start + size])
        pose = batch.pose.to(dtype=precise)
        deformed = deformed_positions(own)
        reference = half.positions.detach().to(precise).expand(len(own), -1, -1)
        losses = []
        for positions in (deformed, reference, deformed_positions(other)):
            predicted = image_spectra(
                model,
                pose,
                batches.box,
                batches.pixel_size_angstrom,
                batch.ctf.to(precise),
                positions.to(precise),
            )
            losses.append(
                data_loss(predicted, batch.spectra.to(predicted.dtype), weights, n_freq)
                .cpu()
                .double()
            )
        gain, latent_gain = losses[1] - losses[0], losses[2] - losses[0]
        squared = (deformed - reference).pow(2).sum(-1).mean(-1).cpu().double()
        sums += torch.stack(
            [
                torch.tensor(float(len(own)), dtype=torch.float64),
                squared.sum(),
                losses[0].sum(),
                gain.sum(),
                gain.pow(2).sum(),
                latent_gain.sum(),
                latent_gain.pow(2).sum(),
            ]
        )
    if half.group.size > 1:
        sums = half.group.all_reduce_sum_(sums.to(half.device)).cpu()
    count, squared, loss, *moments = sums.tolist()
    n = max(count, 1.0)
    gain, gain_z = _mean_and_z(*moments[:2], n)
    latent_gain, latent_gain_z = _mean_and_z(*moments[2:], n)
    return {
        "rms_displacement_angstrom": math.sqrt(squared / n),
        "validation_data": loss / n,
        "deformation_gain": gain,
        "deformation_gain_z": gain_z,
        "latent_gain": latent_gain,
        "latent_gain_z": latent_gain_z,
    }


def _precise_dtype(device: torch.device) -> torch.dtype:
    """Double precision, except on devices without it (Apple's MPS), where single must do."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _in_precision(half, dtype: torch.dtype):
    """The half's encoder means and deformed positions computed in ``dtype`` (same parameters): the
    gains are small differences of losses near 1, and must come out the same (to 1e-6) in a resumed
    run, whose parameters differ from a straight run's by float32 rounding."""

    def converted(module):
        state = {
            name: value.detach().to(dtype) if value.is_floating_point() else value
            for name, value in [*module.named_parameters(), *module.named_buffers()]
        }
        return lambda *args: functional_call(module, state, tuple(a.to(dtype) for a in args))

    encoder, decoder = converted(half.encoder), converted(half.decoder)
    reference = half.positions.detach().to(dtype)
    moving = half.moving.to(dtype).view(-1, 1)
    if half.controls is not None:  # interpolated from the control points in single precision
        half.controls.update(half.positions)
        return (
            lambda images: encoder(images)[0],
            lambda z: half.deformed_positions(z.float()).to(dtype),
        )

    def deformed_positions(z):
        return reference + half.displacement(z, reference, call=decoder) * moving

    return (lambda images: encoder(images)[0]), deformed_positions


def _mean_and_z(total: float, squares: float, n: float) -> tuple[float, float]:
    """Mean of n values from their sum and sum of squares, and the mean over its standard error
    (0 if none)."""
    mean = total / n
    variance = max(squares / n - mean * mean, 0.0) * n / max(n - 1.0, 1.0)
    error = math.sqrt(variance / n)
    return mean, (mean / error if error > 0 else 0.0)


def check(history: list[dict], min_full_epochs: int | None = None) -> list[str]:
    """One-line warnings for the latest state of a loss history (rows as in the run's loss log).

    A half is judged on its latest row with the watchdog fields, once it has had ``min_full_epochs``
    (default ``MIN_FULL_EPOCHS`` = 10) network-training epochs; rows without the fields (runs made
    before the watchdog) are ignored. Rules (measured on the tiny simulated AdK set, 400 particles,
    box 32, SNR 1, 20 validation particles per half; docs/deformations.md, "Watchdog"):

    - **stalled**: RMS displacement < ``STALL_RMS_ANGSTROM`` (0.1 Å) and latent gain z <
      ``NO_GAIN_Z`` (3). A half whose decoder's learning rate was 0: 0.00 Å, z = 0; whose λ was
      forced to 1e6: 0.02–0.08 Å, z −1.0 to −0.5; halves that learn: 0.50–1.9 Å, z 3.4–6.4 from
      the 10th network epoch on.
    - **disagree**: both move, and one moves more than ``DISAGREE_RATIO`` (4) times the other, or
      their latent gains differ by more than ``DISAGREE_Z`` (5) standard errors and a factor of 4.
      Learning halves: ratios 1.2–2.2. The halves see statistically identical data, so their motions
      should be of one size.

    Pure noise is not judged here: a half's encoder fits the noise of each image with its D latent
    dimensions, which gives a gain of about D / (number of frequencies) on held-out particles too
    (0.012–0.016 measured, z up to 4.7), and a low-SNR run with real motion gains no more; the final
    check (:func:`final_check`) catches it. Each warning starts with a fixed key before its first
    colon ("half 2 has stalled", "the two halves disagree") so a caller can report each kind once.
    """
    needed = MIN_FULL_EPOCHS if min_full_epochs is None else min_full_epochs
    latest = {}
    for half in (1, 2):
        rows = [row for row in history if row.get("half") == half]
        full = sum(row.get("mode") == "full" for row in rows)
        judged = [row for row in rows if all(row.get(key) is not None for key in FIELDS)]
        if full >= max(needed, 1) and judged:
            latest[half] = judged[-1]
    warnings = []
    stalled = set()
    for half, row in latest.items():
        rms, z = row["rms_displacement_angstrom"], row["latent_gain_z"]
        if rms < STALL_RMS_ANGSTROM and z < NO_GAIN_Z:
            stalled.add(half)
            other = latest.get(3 - half)
            compare = (
                ""
                if other is None
                else f" (half {3 - half}: {other['rms_displacement_angstrom']:.2f} Å)"
            )
            warnings.append(
                f"half {half} has stalled: its decoder moves its Gaussians by {rms:.2f} Å "
                f"RMS{compare} and deforming by its latents does not improve its fit to held-out "
                f"particles (gain z = {z:.1f}, λ = {row.get('lambda', float('nan')):.3g}); its "
                f"latent space carries no motion: {ADVICE}"
            )
    if len(latest) == 2 and not stalled:
        one, two = latest[1], latest[2]
        rms = (one["rms_displacement_angstrom"], two["rms_displacement_angstrom"])
        gains = (one["latent_gain"], two["latent_gain"])
        errors = [
            abs(g / row["latent_gain_z"]) if row["latent_gain_z"] else 0.0
            for g, row in zip(gains, (one, two))
        ]
        separation = abs(gains[0] - gains[1]) / max(math.hypot(*errors), 1e-30)
        by_motion = max(rms) > DISAGREE_RATIO * min(rms)
        by_gain = separation > DISAGREE_Z and max(gains) > DISAGREE_RATIO * max(min(gains), 0.0)
        if by_motion or by_gain:
            weaker = 1 + int(rms[1] < rms[0]) if by_motion else 1 + int(gains[1] < gains[0])
            warnings.append(
                f"the two halves disagree: half 1 moves its Gaussians by {rms[0]:.2f} Å RMS, "
                f"half 2 by {rms[1]:.2f} Å; deforming by the latents improves the fit to held-out "
                f"particles by {gains[0]:.3g} and {gains[1]:.3g} ({separation:.1f} standard errors "
                f"apart); half {weaker} lags behind: train longer, or {ADVICE}"
            )
    return warnings


def warning_key(warning: str) -> str:
    """The fixed start of a :func:`check` warning (its kind and half), to report each kind once."""
    return warning.split(":", 1)[0]


@torch.no_grad()
def final_agreement(
    halves, latents: tuple[np.ndarray, np.ndarray], rows: np.ndarray
) -> dict[str, float] | None:
    """Do the two halves move the same particles the same way? (None with fewer than 2 rows, or when
    neither half moves any particle differently from its mean.)

    ``halves`` are the two ``trainer.HalfSet``, ``latents`` each half's final (N, D) latents of
    every row (``validation.ErrorEstimates.latents``), ``rows`` the particles to compare (the
    validation particles, which neither decoder saw; at most ``MAX_HELD_OUT`` are used). Both
    deformation fields are evaluated at half 1's reference positions, as for the error estimates,
    and each half's mean field over the particles is removed (a deformation common to all particles
    is not motion: it corrects the consensus model). Returns the agreement ``1 − Σ|v₁ − v₂|² /
    Σ(|v₁|² + |v₂|²)`` of the remaining per-particle fields (1 for equal motions, 0 for unrelated
    ones), their RMS per Gaussian in each half (``motion_half1_angstrom``,
    ``motion_half2_angstrom``) and of their difference (``difference_angstrom``), and the number of
    particles.
    """
    rows = np.asarray(rows)[:MAX_HELD_OUT]
    if len(rows) < 2:
        return None
    points = halves[0].positions.detach()
    precise = _precise_dtype(points.device)
    sums = [torch.zeros_like(points, dtype=precise) for _ in halves]
    squares = torch.zeros(3, dtype=torch.float64)  # Σ|f₁|², Σ|f₂|², Σ|f₁ − f₂|²
    for start in range(0, len(rows), 64):
        chunk = rows[start : start + 64]
        fields = [
            (
                half.deformed_positions(torch.as_tensor(z[chunk], device=points.device), points)
                - points
            ).to(precise)
            for half, z in zip(halves, latents, strict=True)
        ]
        for total, field in zip(sums, fields, strict=True):
            total += field.sum(0)
        squares += (
            torch.stack(
                [
                    fields[0].pow(2).sum(),
                    fields[1].pow(2).sum(),
                    (fields[0] - fields[1]).pow(2).sum(),
                ]
            )
            .cpu()
            .double()
        )
    n = len(rows)
    means = [total / n for total in sums]
    one = float(squares[0]) - n * float(means[0].pow(2).sum())
    two = float(squares[1]) - n * float(means[1].pow(2).sum())
    apart = float(squares[2]) - n * float((means[0] - means[1]).pow(2).sum())
    if one + two <= 1e-12 * n:  # neither half moves any particle differently: the stall rule's case
        return None
    rms = [math.sqrt(max(value, 0.0) / (n * len(points))) for value in (one, two, apart)]
    return {
        "agreement": 1.0 - apart / (one + two),
        "motion_half1_angstrom": rms[0],
        "motion_half2_angstrom": rms[1],
        "difference_angstrom": rms[2],
        "n_particles": n,
    }


def final_check(
    halves, latents: tuple[np.ndarray, np.ndarray], rows: np.ndarray, measured: dict | None = None
) -> list[str]:
    """Warnings from the final latents: the two halves' :func:`final_agreement` below
    ``FINAL_AGREEMENT``.

    Measured on the tiny set: learning halves 0.92; one half's decoder frozen or its λ forced to
    1e6: 0.00; images of noise: 0.01 and 0.04; a run whose half 2 lagged (0.4 vs 1.4 Å, λ 45 vs
    0.25): 0.10.
    """
    measured = final_agreement(halves, latents, rows) if measured is None else measured
    if measured is None or measured["agreement"] >= FINAL_AGREEMENT:
        return []
    agreement, n = measured["agreement"], measured["n_particles"]
    rms = [
        measured[k]
        for k in ("motion_half1_angstrom", "motion_half2_angstrom", "difference_angstrom")
    ]
    return [
        f"the two halves disagree: on {n} validation particles their final motions differ by "
        f"{rms[2]:.2f} Å RMS, as much as they move (half 1 {rms[0]:.2f} Å, half 2 {rms[1]:.2f} Å, "
        f"each without its mean deformation; agreement {agreement:.2f}: 1 = the same motion, "
        f"0 = unrelated); the motions are not reproducible: {ADVICE}"
    ]
