"""A tiny simulated adenylate-kinase data set shared by the deformation tests (made once per
session).

400 particles at box 32 (2.5 Å/px, SNR 1) drawn from 25 frames spread over the closed -> open
trajectory, and a 300-Gaussian consensus model fitted to its consensus map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest

from napari_dynamight.engine.consensus_stage import fit_consensus
from napari_dynamight.engine.deformation.settings import DeformationSettings
from napari_dynamight.engine.example_data import STRUCTURE, example_file
from napari_dynamight.engine.progress import run
from napari_dynamight.engine.simulate import simulate

ADK = example_file(STRUCTURE).parent  # the example files bundled with the package

# Small networks and few epochs: the whole test set must run in a few minutes on 2 cores.
FAST = DeformationSettings(
    epochs=6,
    batch_size=32,
    warmup_epochs=1,
    decoder_width=32,
    decoder_depth=2,
    encoder_width=64,
    checkpoint_every=2,
    consensus_period=5,
    consensus_epochs=1,
    reference_update_every=2,
    alignment_predictions=10,
    noise_subset=64,
    refinement_rounds=1,
    refinement_epochs=2,
)
# The noisier set's training in test_deformation_halves.py (and bench/bench_decoders.py): 16 epochs,
# batch 16, one refinement round.
HALVES_SETTINGS = replace(
    FAST,
    epochs=16,
    batch_size=16,
    checkpoint_every=16,
    consensus_period=30,
    consensus_epochs=5,
    reference_update_every=10,
    alignment_predictions=50,
    refinement_rounds=1,
    refinement_epochs=3,
)


# Batch 16 and a long consensus period: both halves of the tiny set learn their motion within 20
# epochs (the learning-signal and watchdog tests).
LEARNING = replace(
    FAST,
    epochs=20,
    batch_size=16,
    checkpoint_every=20,
    consensus_period=30,
    consensus_epochs=5,
    reference_update_every=10,
    alignment_predictions=100,
)
# The checkpoint files of a FAST run: every 2nd of the 6 VAE epochs, refinement round 1 (epoch 8).
FAST_CHECKPOINTS = ["epoch_0002.pt", "epoch_0004.pt", "epoch_0006.pt", "epoch_0008.pt", "final.pt"]


@dataclass
class Simulated:
    folder: Path
    star: Path
    consensus: Path
    model: Path
    labels: pd.DataFrame


def simulate_tiny(
    folder: Path, n_particles: int = 400, snr: float = 1.0, seed: int = 0
) -> Simulated:
    """AdK at box 32 (2.5 Å/px) from every 4th frame, and its fitted 300-Gaussian consensus
    model."""
    run(
        simulate(
            ADK / "adk_closed.pdb",
            ADK / "adk_dims.dcd",
            output_directory=folder / "sim",
            n_particles=n_particles,
            box=32,
            pixel_size_angstrom=2.5,
            snr=snr,
            frames=list(range(0, 98, 4)),
            seed=seed,
        )
    )
    sim = folder / "sim"
    fit = run(
        fit_consensus(sim / "consensus.mrc", folder / "consensus", n_gaussians=300, n_steps=100)
    )
    assert math.isfinite(fit.correlation) and fit.correlation > 0.9
    return Simulated(
        folder,
        sim / "particles.star",
        sim / "consensus.mrc",
        fit.model_path,
        pd.read_csv(sim / "ground_truth" / "labels.csv"),
    )


@pytest.fixture(scope="session")
def simulated(tmp_path_factory) -> Simulated:
    return simulate_tiny(tmp_path_factory.mktemp("adk_sim"))


def deformation_operation(
    simulated: Simulated, out: Path, settings: DeformationSettings, resume: bool = False, **options
):
    """The optimize-deformations operation (a generator) of the tiny set and its fitted consensus
    model into ``out``; ``options`` are further keywords of ``optimize_deformations``."""
    from napari_dynamight.engine.deformation.run import optimize_deformations

    return optimize_deformations(
        simulated.star,
        simulated.consensus,
        out,
        settings=settings,
        consensus_model=simulated.model,
        resume=resume,
        **options,
    )


def train(
    simulated: Simulated, out: Path, settings: DeformationSettings, resume: bool = False, **options
) -> Path:
    """A deformation run of the tiny set (its fitted consensus model) into ``out``."""
    run(deformation_operation(simulated, out, settings, resume, **options))
    return out


@pytest.fixture(scope="session")
def moving_run(simulated, tmp_path_factory) -> Path:
    """A tiny deformation run trained long enough (30 epochs) to learn motions of about 1 Å RMS,
    with its inverse deformations (20 epochs, batch 16: held-out error about 0.2 Å) in
    ``RUN/inverse``."""
    from napari_dynamight.engine.inverse.run import optimize_inverse_deformations
    from napari_dynamight.engine.inverse.settings import InverseSettings

    out = train(simulated, tmp_path_factory.mktemp("moving") / "run", replace(FAST, epochs=30))
    run(optimize_inverse_deformations(out, settings=InverseSettings(epochs=20, batch_size=16)))
    return out
