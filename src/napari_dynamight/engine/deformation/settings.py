"""Every option of a deformation run in one place, with the defaults and why they were chosen."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..settings_record import SettingsRecord

LATENT_INFERENCE = ("posterior", "encoder")
DECODERS = ("mlp", "factorised")


@dataclass(frozen=True)
class DeformationSettings(SettingsRecord):
    """Options of :func:`engine.deformation.run.optimize_deformations`.

    The default decoder is ``"factorised"`` (``networks.FactorisedDecoder``: 32 basis fields of
    position mixed by coefficients of the latent), whose cost per step is particles × Gaussians × 32 × 3;
    it ordered the particles better than the coordinate network on every data variant of the
    robustness benchmark and never stalled. ``"mlp"`` (width 64, depth 4, 10 positional frequencies)
    costs particles × Gaussians × width² × depth; see docs/deformations.md, "Decoder".
    """

    OPTION_NAMES = {"n_frequencies": "positional-frequencies"}  # a class attribute, not a field

    latent_dim: int = 6
    n_frequencies: int = 10
    decoder_width: int = 64
    decoder_depth: int = 4
    decoder: str = "factorised"  # or "mlp": see engine/deformation/networks.py
    decoder_rank: int = 32  # basis fields of the factorised decoder
    encoder_width: int = 256
    epochs: int = 60
    batch_size: int = 64
    warmup_epochs: int = 2
    consensus_period: int = 30  # every this many epochs ...
    consensus_epochs: int = 5  # ... the last this many update only the Gaussians
    reference_update_every: int = 10  # non-frozen epochs between reference replacements
    alignment_mask_angstrom: float = 6.0
    alignment_predictions: int = 100
    stop_after_increases: int = 40
    regularisation_ratio: float = 0.9
    kl_weight: float = 0.02
    initial_log_variance: float = 0.0
    learning_rate_encoder: float = 1e-3
    learning_rate_decoder: float = 1e-3
    learning_rate_positions_angstrom: float = 0.01
    learning_rate_scales: float = 1e-3
    validation_fraction: float = 0.1
    checkpoint_every: int = 5
    noise_subset: int = 512
    latent_inference: str = "posterior"  # or "encoder": see engine/deformation/inference.py
    posterior_candidates: int = 128
    refinement_rounds: int = 8  # EM rounds after the VAE epochs: see engine/deformation/refinement.py
    refinement_epochs: int = 6  # M-step epochs per round
    refinement_latent_rate: float = 0.01  # learning rate of the candidate latent points
    control_points: int = 0  # 0: decode every Gaussian; else see engine/deformation/control_points.py
    atomic_model: str | None = None  # PDB/mmCIF fitted in the consensus: the atomic-model prior (engine/atomic_model.py)
    seed: int = 0

    def check(self) -> None:
        """Raise InputError (one line, naming the option) for values that cannot work."""
        positive = ("latent_dim", "decoder_width", "encoder_width", "epochs", "batch_size",
                    "consensus_period", "reference_update_every", "alignment_predictions",
                    "stop_after_increases", "checkpoint_every", "noise_subset")
        self.require_at_least(positive, 1)
        self.require_at_least(("n_frequencies", "decoder_depth", "warmup_epochs", "consensus_epochs",
                               "refinement_rounds"), 0)
        self.require_at_least(("refinement_epochs",), 1)
        if self.consensus_epochs >= self.consensus_period:
            raise InputError(f"--consensus-epochs {self.consensus_epochs} must be below the period "
                             f"{self.consensus_period}, else the networks never train")
        if not 0.0 <= self.validation_fraction < 0.5:
            raise InputError(f"--validation-fraction must be in [0, 0.5), got {self.validation_fraction}")
        if not self.regularisation_ratio >= 0.0:
            raise InputError(f"--regularisation-ratio must not be negative, got {self.regularisation_ratio}")
        for name in ("learning_rate_encoder", "learning_rate_decoder", "learning_rate_positions_angstrom",
                     "learning_rate_scales", "alignment_mask_angstrom", "refinement_latent_rate"):
            if not getattr(self, name) > 0.0:
                raise InputError(f"{name.replace('_', ' ')} must be positive, got {getattr(self, name)}")
        if self.latent_inference not in LATENT_INFERENCE:
            raise InputError(f"--latent-inference must be one of {', '.join(LATENT_INFERENCE)}, "
                             f"got {self.latent_inference!r}")
        if self.decoder not in DECODERS:
            raise InputError(f"--decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        self.require_at_least(("decoder_rank",), 1)
        if self.posterior_candidates < 2:
            raise InputError(f"--posterior-candidates must be at least 2, got {self.posterior_candidates}")
        if self.control_points != 0 and self.control_points < 4:
            raise InputError(f"--control-points must be 0 (decode every Gaussian) or at least 4, "
                             f"got {self.control_points}")
        if self.kl_weight < 0:
            raise InputError(f"KL weight must not be negative, got {self.kl_weight}")
