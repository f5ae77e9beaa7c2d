"""Metrics that compare learned motions with the simulation's ground truth.

- Latent ordering: the latent space has no preferred axes or sign, so we take its principal
  components (``engine.statistics.principal_components``) and report |Spearman| of each with the
  true frame; the issue's criterion is the best of them.
- Maps: Pearson correlation of a decoded per-particle volume with the particle's true frame map,
  next to the consensus map's correlation with the same true map.
- Error estimates: Spearman of the estimated error with the true motion size (per particle: RMSD of
  its true frame from the mean structure; per Gaussian: the RMS motion of the atoms near it). It is
  signed: larger errors should go with larger motion.
- RMS displacement in Å, e.g. of the learned displacements on real signal and on pure noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import spearmanr

from ..statistics import map_correlation, principal_components


def abs_spearman(a, b) -> float:
    """|Spearman ρ| of two 1D sequences; 0 when either is constant (no ordering at all)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if len(a) != len(b):
        raise ValueError(f"sequences differ in length: {len(a)} and {len(b)}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(abs(spearmanr(a, b).statistic))


@dataclass(frozen=True)
class LatentOrdering:
    """How well principal components of a latent embedding order particles by their true frame.

    ``per_component[k]`` is |Spearman| of PC k (0-based) with the true frame; ``best`` is the
    largest over the first ``n_components`` PCs and ``best_component`` its index.
    """

    per_component: tuple[float, ...]
    explained_variance_ratio: tuple[float, ...]
    best_component: int
    best: float
    first_component: float
    n_components: int

    def to_dict(self) -> dict:
        return {
            "per_component_abs_spearman": list(self.per_component),
            "explained_variance_ratio": list(self.explained_variance_ratio),
            "best_component": self.best_component,
            "best_abs_spearman": self.best,
            "first_component_abs_spearman": self.first_component,
            "n_components_searched": self.n_components,
        }


def latent_frame_ordering(latent, true_frame, n_components: int | None = None) -> LatentOrdering:
    """|Spearman| of each principal component of ``latent`` (N, D) with ``true_frame`` (N,).

    ``n_components`` limits the search for the best component to the first k PCs (default: all).
    """
    scores, ratio = principal_components(latent)
    frames = np.asarray(true_frame, dtype=np.float64).ravel()
    if len(frames) != len(scores):
        raise ValueError(f"latent has {len(scores)} rows but there are {len(frames)} true frames")
    values = tuple(abs_spearman(scores[:, k], frames) for k in range(scores.shape[1]))
    k = len(values) if n_components is None else max(1, min(int(n_components), len(values)))
    best = int(np.argmax(values[:k]))
    return LatentOrdering(
        per_component=values,
        explained_variance_ratio=tuple(float(r) for r in ratio),
        best_component=best,
        best=values[best],
        first_component=values[0],
        n_components=k,
    )


def low_pass(volume, voxel_size_angstrom: float, resolution_angstrom: float) -> np.ndarray:
    """``volume`` with every Fourier component finer than ``resolution_angstrom`` set to zero."""
    volume = np.asarray(volume, dtype=np.float64)
    axes = [np.fft.fftfreq(n, d=voxel_size_angstrom) for n in volume.shape[:-1]]
    axes.append(np.fft.rfftfreq(volume.shape[-1], d=voxel_size_angstrom))
    grid = np.meshgrid(*axes, indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grid))
    spectrum = np.fft.rfftn(volume) * (radius <= 1.0 / resolution_angstrom)
    return np.fft.irfftn(spectrum, s=volume.shape, axes=tuple(range(volume.ndim)))


def decoded_vs_consensus(
    decoded, truth, consensus, mask=None, low_pass_to: tuple[float, float] | None = None
) -> dict:
    """Per-particle correlation of decoded volumes and of the consensus with each true frame map.

    ``decoded`` and ``truth`` are sequences of maps (one per particle, same order), ``consensus``
    one map; ``low_pass_to`` = (voxel size, resolution) Å compares all of them up to that
    resolution only. Returns the two arrays of correlations, their means and the fraction of
    particles whose decoded volume beats the consensus.
    """

    def band(volume):
        return volume if low_pass_to is None else low_pass(volume, *low_pass_to)

    consensus = band(consensus)
    decoded_cc, consensus_cc = [], []
    for volume, true_map in zip(decoded, truth, strict=True):
        true_map = band(true_map)
        decoded_cc.append(map_correlation(band(volume), true_map, mask))
        consensus_cc.append(map_correlation(consensus, true_map, mask))
    decoded_cc, consensus_cc = np.array(decoded_cc), np.array(consensus_cc)
    return {
        "decoded": decoded_cc,
        "consensus": consensus_cc,
        "mean_decoded": float(decoded_cc.mean()),
        "mean_consensus": float(consensus_cc.mean()),
        "fraction_decoded_better": float((decoded_cc > consensus_cc).mean()),
    }


def atom_motion(frame_positions) -> np.ndarray:
    """RMS distance (Å) of each atom from its mean position over frames (F, n, 3) -> (n,)."""
    x = np.asarray(frame_positions, dtype=np.float64)
    deviation = x - x.mean(axis=0)
    return np.sqrt((deviation**2).sum(-1).mean(0))


def frame_motion(frame_positions, reference=None) -> np.ndarray:
    """RMSD (Å, no superposition) of each frame (F, n, 3) from ``reference`` (n, 3), default the
    mean."""
    x = np.asarray(frame_positions, dtype=np.float64)
    ref = x.mean(axis=0) if reference is None else np.asarray(reference, dtype=np.float64)
    return np.sqrt(((x - ref) ** 2).sum(-1).mean(-1))


def motion_at(points, atom_positions, motion, k: int = 8) -> np.ndarray:
    """Mean of ``motion`` (n,) over the ``k`` atoms nearest to each point (G, 3) Å -> (G,)."""
    atoms = np.asarray(atom_positions, dtype=np.float64)
    k = max(1, min(int(k), len(atoms)))
    _, nearest = cKDTree(atoms).query(np.asarray(points, dtype=np.float64), k=k)
    return np.asarray(motion, dtype=np.float64)[np.asarray(nearest).reshape(len(points), k)].mean(1)


def gaussian_error_vs_motion(points, errors, frame_positions, k: int = 8) -> float:
    """Spearman ρ of per-Gaussian error estimates ``errors`` (G,) at ``points`` (G, 3) Å with the
    true motion there: the RMS motion over the simulated frames ``frame_positions`` (F, n, 3) of
    the ``k`` atoms nearest to each point (their mean positions)."""
    frames = np.asarray(frame_positions, dtype=np.float64)
    motion = motion_at(points, frames.mean(axis=0), atom_motion(frames), k)
    return error_motion_spearman(errors, motion)


def error_motion_spearman(errors, motion) -> float:
    """Signed Spearman ρ of error estimates with true motion size (positive = agreement)."""
    a, b = (
        np.asarray(errors, dtype=np.float64).ravel(),
        np.asarray(motion, dtype=np.float64).ravel(),
    )
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def rms_displacement(displacements) -> float:
    """Root-mean-square length (Å) of displacement vectors (..., 3)."""
    d = np.asarray(displacements, dtype=np.float64)
    return float(np.sqrt((d**2).sum(-1).mean()))
