"""Every option of a deformation run in one place, with the defaults and why they were chosen."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..settings_record import SettingsRecord, option

LATENT_INFERENCE = ("posterior", "encoder")
DECODERS = ("mlp", "factorised")
POSITIVE = {"minimum": 0.0, "exclusive_minimum": True}  # a limit: above 0


@dataclass(frozen=True)
class DeformationSettings(SettingsRecord):
    """Options of :func:`engine.deformation.run.optimize_deformations`.

    The default decoder is ``"factorised"`` (``networks.FactorisedDecoder``: 32 basis fields of
    position mixed by coefficients of the latent), whose cost per step is particles × Gaussians × 32
    × 3; it ordered the particles better than the coordinate network on every data variant of the
    robustness benchmark and never stalled. ``"mlp"`` (width 64, depth 4, 10 positional frequencies)
    costs particles × Gaussians × width² × depth; see docs/deformations.md, "Decoder".

    Each field is declared once with :func:`option` (engine/settings_record.py); the public ones
    make the command line's options and the napari form, the others (``public=False``) are the
    engine's own.
    """

    latent_dim: int = option(
        6, "latent dimension", minimum=1, maximum=128, metavar="D", label="latent dimension"
    )
    n_frequencies: int = option(
        10,
        "positional-encoding frequencies of the decoder's positions",
        minimum=0,
        maximum=64,
        flag="positional-frequencies",
        metavar="F",
    )
    decoder_width: int = option(64, "decoder layer width", minimum=1, maximum=8192)
    decoder_depth: int = option(4, "decoder hidden layers", minimum=0, maximum=64)
    decoder: str = option(
        "factorised",
        "deformation network: 'factorised', basis fields of "
        "position mixed by coefficients of the latent, or 'mlp', a coordinate "
        "network evaluated for every particle and Gaussian, much dearer with "
        "many Gaussians",
        choices=DECODERS,
    )  # engine/deformation/networks.py
    decoder_rank: int = option(
        32,
        "basis fields of the factorised decoder",
        minimum=1,
        maximum=4096,
        metavar="R",
        label="factorised decoder rank",
    )
    encoder_width: int = option(256, "encoder layer width", minimum=1, public=False)
    epochs: int = option(
        60, "maximum epochs, honoured exactly", minimum=1, maximum=100_000, metavar="E"
    )
    batch_size: int = option(64, "particles per step", minimum=1, maximum=8192, metavar="B")
    warmup_epochs: int = option(
        2, "Gaussian-only epochs first", minimum=0, maximum=10_000, label="warm-up epochs"
    )
    consensus_period: int = option(30, "every this many epochs ...", minimum=1, public=False)
    consensus_epochs: int = option(
        5, "... the last this many update only the Gaussians", minimum=0, public=False
    )
    reference_update_every: int = option(
        10, "non-frozen epochs between reference replacements", minimum=1, public=False
    )
    alignment_mask_angstrom: float = option(
        6.0, "alignment mask radius", unit="Å", public=False, **POSITIVE
    )
    alignment_predictions: int = option(100, "alignment predictions", minimum=1, public=False)
    stop_after_increases: int = option(
        40, "stop after this many increases of the data loss", minimum=1, public=False
    )
    regularisation_ratio: float = option(
        9.0,
        "stiffness of the distance regulariser relative to the images', λ·tr H_reg / tr H_data",
        minimum=0.0,
        maximum=100.0,
        step=0.05,
    )
    kl_weight: float = option(0.1, "KL weight", minimum=0.0, public=False)
    initial_log_variance: float = option(0.0, "initial log variance of the encoder", public=False)
    learning_rate_encoder: float = option(1e-3, "encoder learning rate", public=False, **POSITIVE)
    learning_rate_decoder: float = option(1e-3, "decoder learning rate", public=False, **POSITIVE)
    learning_rate_positions_angstrom: float = option(
        0.01, "learning rate of the Gaussian positions", unit="Å", public=False, **POSITIVE
    )
    reference_smoothing: float = option(
        1.0,
        "width of the kernel that smooths the reference positions' changes, in training pixels "
        "(0: not smoothed)",
        minimum=0.0,
        maximum=10.0,
        public=False,
    )
    learning_rate_scales: float = option(
        1e-3, "learning rate of the Gaussian amplitudes and widths", public=False, **POSITIVE
    )
    validation_fraction: float = option(
        0.1,
        "particles kept out of decoder training",
        minimum=0.0,
        maximum=0.5,
        exclusive_maximum=True,
        step=0.01,
    )
    checkpoint_every: int = option(5, "epochs between checkpoints", minimum=1, maximum=10_000)
    noise_subset: int = option(512, "particles of the noise estimate", minimum=1, public=False)
    latent_inference: str = option(
        "posterior",
        "final latents: the posterior mean over candidate "
        "latent points under the trained decoder, or the encoder's "
        "means",
        choices=LATENT_INFERENCE,
        label="final latents",
    )  # engine/deformation/inference.py
    posterior_candidates: int = option(
        128,
        "candidate latent points for --latent-inference posterior",
        minimum=2,
        maximum=100_000,
        metavar="K",
    )
    exact_posteriors: bool = option(
        True,
        "evaluate every candidate exactly in the refinement's E-steps and the final posterior "
        "(False: screen all at half the training box and evaluate the top ones exactly, 2.5-7x "
        "faster; on 4,000 particles at SNR 0.01 it ordered the worse half 0.02 worse)",
        public=False,
    )  # engine/deformation/inference.py, Screen
    refinement_rounds: int = option(
        8,
        "EM rounds after the VAE epochs that train each decoder on "
        "latents drawn from the particles' posteriors over the "
        "candidates (0: none)",
        minimum=0,
        maximum=10_000,
        metavar="R",
    )  # engine/deformation/refinement.py
    refinement_epochs: int = option(
        6,
        "epochs per refinement round",
        minimum=1,
        maximum=10_000,
        metavar="M",
        label="epochs per refinement round",
    )
    refinement_latent_rate: float = option(
        0.01, "learning rate of the candidate latent points", public=False, **POSITIVE
    )
    control_points: int = option(
        0,
        "evaluate the decoder on M control points among the Gaussians "
        "and interpolate to the rest (faster with many Gaussians); 0: "
        "decode every Gaussian, else at least 4",
        minimum=0,
        maximum=1_000_000,
        metavar="M",
        label="control points (0: every Gaussian)",
    )  # control_points.py
    atomic_model: str | None = option(
        None,
        "atomic-model prior: Gaussians coarse-grained from this PDB/mmCIF model, fitted in the "
        "consensus map, and its bonds as the distance regulariser's graph (default: off; the model "
        "can bias the maps: check the run with napari-dynamight model-bias RUN)",
        file=True,
        label="atomic-model prior (optional; can bias maps)",
    )  # engine/atomic_model.py
    bias_check: bool = option(
        True,
        "with --atomic-model: run the model-bias control (napari-dynamight model-bias, its "
        "defaults) when training ends, so the run's maps have their bias report; it takes about "
        "as long again as the training (--no-bias-check leaves it for later)",
        label="check model bias when training ends (atomic-model prior)",
    )  # engine/model_bias.py
    seed: int = option(0, "seed of every random choice", minimum=0, maximum=2**31 - 1, metavar="S")

    def check(self) -> None:
        """Raise InputError (one line, naming the option) for values that cannot work."""
        self.check_limits()
        if self.consensus_epochs >= self.consensus_period:
            raise InputError(
                f"consensus epochs {self.consensus_epochs} must be below the "
                f"consensus period {self.consensus_period}, else the networks never "
                "train"
            )
        if self.control_points != 0 and self.control_points < 4:
            raise InputError(
                f"{self.option('control_points')} {self.control_points}: must be 0 "
                "(decode every Gaussian) or at least 4"
            )
