"""Every option of an inverse-deformation run in one place, with the defaults and why they were
chosen."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings_record import SettingsRecord, option

FINAL_LEARNING_RATE_RATIO = 0.1  # the learning rate decays to this fraction by the last epoch


@dataclass(frozen=True)
class InverseSettings(SettingsRecord):
    """Options of :func:`engine.inverse.run.optimize_inverse_deformations`.

    ``depth`` counts the hidden layers: with the input and output layers the network has
    ``depth + 2`` linear layers, six by default as in the method. ``smoothness_weight`` (Å²)
    multiplies the mean squared finite-difference Jacobian of the inverse displacement at random
    points of the box, so the field stays smooth where there are no Gaussians to fit.
    ``gaussians_per_particle`` caps the Gaussians each particle contributes to one step (a fresh
    random subset every step; 0 = all): the Gaussians of one particle are strongly correlated, so a
    subset gives nearly the same gradient for a fraction of the cost. Defaults: see docs/inverse.md
    for the measurements. Each field is declared once with :func:`option`
    (engine/settings_record.py).
    """

    epochs: int = option(30, "epochs", minimum=1, maximum=100_000, metavar="E")
    batch_size: int = option(32, "particles per step", minimum=1, maximum=8192, metavar="B")
    learning_rate: float = option(
        2e-3,
        "Adam learning rate at the first epoch, decaying "
        f"{1 / FINAL_LEARNING_RATE_RATIO:g}x by the last",
        minimum=0.0,
        exclusive_minimum=True,
        maximum=1.0,
        step=1e-4,
        metavar="LR",
    )
    final_learning_rate_ratio: float = option(
        FINAL_LEARNING_RATE_RATIO,
        "final learning-rate ratio",
        minimum=0.0,
        exclusive_minimum=True,
        maximum=1.0,
        public=False,
    )
    smoothness_weight: float = option(
        0.1,
        "weight of the Jacobian smoothness penalty",
        minimum=0.0,
        maximum=1000.0,
        step=0.01,
        unit="Å²",
        metavar="W",
    )
    smoothness_points: int = option(
        32, "random box points per particle and step", minimum=1, public=False
    )
    gaussians_per_particle: int = option(
        256, "Gaussians per particle and step (0: all)", minimum=0, public=False
    )
    width: int = option(64, "layer width", minimum=1, maximum=8192)
    depth: int = option(4, "hidden layers", minimum=0, maximum=64)
    n_frequencies: int = option(6, "positional-encoding frequencies", minimum=0, public=False)
    checkpoint_every: int = option(
        5, "epochs between checkpoints", minimum=1, maximum=10_000, metavar="E"
    )
    seed: int = option(0, "seed of every random choice", minimum=0, maximum=2**31 - 1, metavar="S")

    def check(self) -> None:
        """Raise InputError (one line, naming the option) for values that cannot work."""
        self.check_limits()
