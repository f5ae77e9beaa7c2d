"""One half set's view of a run's latent space: which particles it shows, with which codes.

The two half sets are trained independently, each with its own encoder and decoder, so their latent
spaces are unrelated coordinate systems: a latent point only means something to the half that made
it. The explorer therefore embeds, colours, selects and decodes one half at a time. Half ``h``'s
view holds its training particles with their own codes and every validation particle (held out from
both halves' training, encoded by both) with half ``h``'s code: half 1's from the run's latent means
(``RunFolder.latents``), half 2's from ``RunFolder.latents_half2``. Rows are always rows of the
original STAR file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HALF_COLUMN = "dmHalfSet"
VALIDATION_COLUMN = "dmValidation"


@dataclass
class HalfView:
    """``rows`` (K,) of the original STAR shown in one half's view and their ``latents`` (K, D).

    ``half`` is 1 or 2, or None when the data have no half sets (every particle, one latent space).
    """

    half: int | None
    rows: np.ndarray
    latents: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def label(self) -> str:
        return "all particles" if self.half is None else f"half {self.half}"


def half_membership(frame) -> tuple[np.ndarray, np.ndarray] | None:
    """(half set (N,) int, validation (N,) bool) from a run's STAR columns, or None without them."""
    if frame is None or HALF_COLUMN not in frame.columns:
        return None
    halves = frame[HALF_COLUMN].to_numpy(dtype=np.int64)
    validation = (
        frame[VALIDATION_COLUMN].to_numpy(dtype=np.int64) != 0
        if VALIDATION_COLUMN in frame.columns
        else np.zeros(len(frame), dtype=bool)
    )
    return halves, validation


def half_view(
    latents: np.ndarray, membership, half: int | None, half2_validation: np.ndarray | None = None
) -> HalfView:
    """Half ``half``'s particles and codes (see the module docstring).

    ``latents`` (N, D) are each particle's own half's codes, validation particles by half 1;
    ``half2_validation`` (N, D) holds half 2's codes of the validation particles (NaN elsewhere).
    Without it, half 2's view lacks the validation particles (their half-2 codes are unknown).
    """
    if membership is None or half is None:
        return HalfView(None, np.arange(len(latents)), latents)
    halves, validation = membership
    if half == 1:
        rows = np.nonzero((halves == 1) | validation)[0]
        return HalfView(1, rows, latents[rows])
    chosen = (halves == 2) & ~validation
    if half2_validation is not None:
        chosen |= validation & np.isfinite(half2_validation).all(axis=1)
    rows = np.nonzero(chosen)[0]
    codes = latents[rows].copy()
    if half2_validation is not None:
        from_half2 = validation[rows]
        codes[from_half2] = half2_validation[rows[from_half2]]
    return HalfView(2, rows, codes)
