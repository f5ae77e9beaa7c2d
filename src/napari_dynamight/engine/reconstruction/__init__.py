"""Standard reconstruction of 3D maps from particle images (direct Fourier inversion)."""

from .inversion import invert
from .standard import FourierAccumulator
from .streaming import accumulate_particles, reconstruct_from_arrays, reconstruct_particles

__all__ = [
    "FourierAccumulator",
    "accumulate_particles",
    "invert",
    "reconstruct_from_arrays",
    "reconstruct_particles",
]
