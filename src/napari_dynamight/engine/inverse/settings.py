"""Every option of an inverse-deformation run in one place, with the defaults and why they were chosen."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..settings_record import SettingsRecord


@dataclass(frozen=True)
class InverseSettings(SettingsRecord):
    """Options of :func:`engine.inverse.run.optimize_inverse_deformations`.

    ``depth`` counts the hidden layers: with the input and output layers the network has
    ``depth + 2`` linear layers, six by default as in the method. ``smoothness_weight`` (Å²) multiplies
    the mean squared finite-difference Jacobian of the inverse displacement at random points of the
    box, so the field stays smooth where there are no Gaussians to fit. ``gaussians_per_particle``
    caps the Gaussians each particle contributes to one step (a fresh random subset every step; 0 =
    all): the Gaussians of one particle are strongly correlated, so a subset gives nearly the same
    gradient for a fraction of the cost. Defaults: see docs/inverse.md for the measurements.
    """

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3
    final_learning_rate_ratio: float = 0.1
    smoothness_weight: float = 0.1
    smoothness_points: int = 32  # random box points per particle and step
    gaussians_per_particle: int = 256
    width: int = 64
    depth: int = 4
    n_frequencies: int = 6
    checkpoint_every: int = 5
    seed: int = 0

    def check(self) -> None:
        """Raise InputError (one line, naming the option) for values that cannot work."""
        self.require_at_least(("epochs", "batch_size", "width", "checkpoint_every", "smoothness_points"), 1)
        self.require_at_least(("depth", "n_frequencies", "gaussians_per_particle"), 0)
        if not self.learning_rate > 0.0:
            raise InputError(f"--learning-rate must be positive, got {self.learning_rate}")
        if not 0.0 < self.final_learning_rate_ratio <= 1.0:
            raise InputError(f"final learning-rate ratio must be in (0, 1], got {self.final_learning_rate_ratio}")
        if not self.smoothness_weight >= 0.0:
            raise InputError(f"--smoothness-weight must not be negative, got {self.smoothness_weight}")
