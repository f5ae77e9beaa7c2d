"""Evaluation against simulated ground truth: the Bayes-optimal latent ceiling and quality metrics.

- :mod:`.ceiling` — for each particle, the posterior over the true trajectory frames given its
  image, pose, origin and CTF: what no method can beat at a given noise level.
- :mod:`.metrics` — latent ordering (|Spearman| of principal components with the true frame), map
  correlations, error-versus-motion agreement and RMS displacement.
"""

from .ceiling import CeilingResult, bayes_ceiling
from .metrics import (
    LatentOrdering,
    abs_spearman,
    atom_motion,
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

__all__ = [
    "CeilingResult",
    "LatentOrdering",
    "abs_spearman",
    "atom_motion",
    "bayes_ceiling",
    "decoded_vs_consensus",
    "error_motion_spearman",
    "frame_motion",
    "gaussian_error_vs_motion",
    "latent_frame_ordering",
    "low_pass",
    "map_correlation",
    "motion_at",
    "principal_components",
    "rms_displacement",
]
