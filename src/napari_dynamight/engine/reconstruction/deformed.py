"""Deformed weighted backprojection: images backprojected along the rays that each particle's
inverse deformation field bends back into the consensus frame.

For particle ``i`` with latent ``z_i`` and inverse field ``g_i`` (deformed position ``y`` ->
consensus position ``x``), its straight backprojection ``B_i`` (the CTF-multiplied image smeared
along the viewing direction) lives in the particle's deformed frame and belongs at ``x = g_i(y)``:
the map is ``Σ_i B_i(g_i⁻¹(x))`` divided by ``Σ_i CTF_i²`` in Fourier space, "as if homogeneous"
(the paper's approximation).

Warp formulation: particles sharing one field (one latent code, or one cluster centre) are
inserted into their own Fourier accumulator; when the code changes, the real-space equivalent of
that accumulator's data, ``R_c = irfftn(D_c)`` on the whole padded (periodic) grid, is warped once
``R_c(g_c⁻¹(x))`` and the difference ``R_c∘g_c⁻¹ − R_c`` is added to a real-space correction. So
the correction is consistent with the Fourier insertion everywhere, including the wrapped-around,
CTF-delocalised part of the backprojection outside the box (a correction summed only inside the
box, from zero-padded images, is not: with defocus of 2 µm in an 80 Å box it ruined even a constant
field). A constant field gives exactly the translated standard map (the mean displacement of each
code is applied as an exact Fourier phase, only the rest is interpolated), the identity field the
standard map. Where ``Σ CTF²`` is small the correction is damped (``CORRECTION_DAMPING``): warping
the CTF-weighted backprojection is only approximately consistent with the weights ("as if
homogeneous"), and dividing by a tiny weight amplified that error into a ruined map. ``g⁻¹`` comes from fixed-point steps ``y ← x − d(y)`` (``d = g − identity``) on a grid
``grid_factor`` times coarser than the map, extended beyond the box by its border values.

Where the field is known only near the molecule (``region``), it is evaluated at the coarse points
of the region and extended outside by normalised Gaussian smoothing, so rays bend smoothly and the
solvent follows the nearest density.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import InputError
from .inversion import add_friedel_mates_on_x_plane, invert
from .standard import FourierAccumulator

#: ``field(latents (B, D), points (P, 3) Å) -> consensus points (B, P, 3) Å``, x y z from the centre.
InverseFieldFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Maximum padded-grid voxels warped at once; bounds memory for any box.
CHUNK_SAMPLES = 2_000_000
#: Fixed-point steps that invert the inverse field.
PULL_ITERATIONS = 2
#: The correction is damped by ``W / (W + this · mean W)``: where the CTF² weight ``W`` is small (low
#: frequencies, CTF zeros) the division would amplify the warp's inconsistencies (measured: 0.3).
CORRECTION_DAMPING = 0.3
#: Width (σ, in coarse grid steps) of the smoothing that extends the field outside the region.
EXTENSION_SIGMA = 3.0


class DeformedAccumulator:
    """Running sums of a deformed backprojection (see the module docstring).

    ``field=None`` gives the standard reconstruction. ``region``: optional boolean (L, L, L)
    [z, y, x] mask where the field is evaluated (e.g. the dilated consensus); default everywhere.
    Consecutive particles with the same code share one field evaluation and one warp: pass
    particles sorted by code (e.g. cluster centres, ``clusters.quantise``).
    """

    def __init__(
        self,
        box: int,
        pixel_size_angstrom: float,
        field: InverseFieldFunction | None = None,
        region: torch.Tensor | None = None,
        grid_factor: int = 2,
        padding: int = 2,
        device: torch.device | str = "cpu",
    ) -> None:
        if int(grid_factor) != grid_factor or grid_factor < 1:
            raise InputError(f"grid factor {grid_factor} is invalid: use an integer >= 1 (2 is usual)")
        self.standard = FourierAccumulator(box, pixel_size_angstrom, padding, device)
        self.box, self.pixel_size_angstrom = self.standard.box, self.standard.pixel_size_angstrom
        self.padding, self.device = self.standard.padding, self.standard.device
        self.field, self.grid_factor, self.region = field, int(grid_factor), region
        n = self.standard.padded_box
        self.correction = torch.zeros((n,) * 3, device=self.device)  # Σ R_c∘g_c⁻¹ − R_c, [z, y, x] FFT order
        self._pending = FourierAccumulator(box, pixel_size_angstrom, padding, device)
        self._pending_code: torch.Tensor | None = None
        self._pending_displacement: torch.Tensor | None = None
        self._size = (box - 1) // self.grid_factor + 2  # coarse points per axis
        axis = torch.arange(self._size, device=self.device) * self.grid_factor - box // 2
        zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")
        coarse = torch.stack([xx, yy, zz], -1).reshape(-1, 3).float()  # voxels from the centre
        self._coarse_voxels = coarse
        self._evaluated = self._coarse_region(region)
        self._points_angstrom = coarse[self._evaluated] * self.pixel_size_angstrom

    def _coarse_region(self, region: torch.Tensor | None) -> torch.Tensor:
        """Indices of the coarse points where the field is evaluated (those of the region's cells)."""
        box, size = self.box, self._size
        if region is None:
            return torch.arange(size**3, device=self.device)
        region = torch.as_tensor(region, device=self.device, dtype=torch.bool)
        if region.shape != (box,) * 3:
            raise InputError(f"region of shape {tuple(region.shape)} does not match the box {box}")
        if not bool(region.any()):
            raise InputError("the reconstruction region is empty: lower the mask threshold")
        padded = F.pad(region.float()[None, None], (0, self.grid_factor * size - box) * 3)
        cells = F.max_pool3d(padded, self.grid_factor)[0, 0, :size, :size, :size] > 0
        corners = F.max_pool3d(F.pad(cells.float()[None, None], (1, 0) * 3), 2, 1)[0, 0] > 0
        return torch.nonzero(corners.flatten()).squeeze(1)

    @property
    def particle_count(self) -> int:
        return self.standard.particle_count + self._pending.particle_count

    def add(self, images, rotations, shifts_angstrom, ctf=None, latents=None) -> None:
        """Insert a batch: as :meth:`FourierAccumulator.add`, plus each particle's field code (B, D).

        Each run of consecutive equal codes is inserted into the pending accumulator, which is warped
        (:meth:`flush`) when the code changes.
        """
        if self.field is None:
            self.standard.add(images, rotations, shifts_angstrom, ctf)
            return
        if latents is None:
            raise InputError("a deformed reconstruction needs each particle's latent code")
        codes = torch.as_tensor(latents).to(self.device, torch.float32)
        if codes.ndim != 2 or len(codes) != len(images):
            raise InputError(f"{len(images)} images need latent codes ({len(images)}, D); got {tuple(codes.shape)}")
        change = torch.nonzero((codes[1:] != codes[:-1]).any(1)).squeeze(1) + 1
        bounds = [0, *change.tolist(), len(codes)]
        for start, end in zip(bounds[:-1], bounds[1:], strict=False):
            if self._pending_code is None or not torch.equal(codes[start], self._pending_code):
                self.flush()
                self._pending_code = codes[start].clone()
                self._pending_displacement = self._displacement(self._pending_code)
            self._pending.add(images[start:end], rotations[start:end], shifts_angstrom[start:end],
                              None if ctf is None else ctf[start:end])

    def flush(self) -> None:
        """Warp the pending particles' backprojection by their field and move their sums over."""
        if self._pending.particle_count == 0:
            return
        data, weight = self._pending.fourier_sums()
        add_friedel_mates_on_x_plane(data, weight)  # the full, Hermitian spectrum of the x = 0 plane
        n = self.standard.padded_box
        displacement = self._pending_displacement
        mean = displacement.flatten(2)[0][:, self._evaluated].mean(1)  # voxels, moved exactly
        moved = torch.fft.irfftn(data * _phase(mean, n, self.device), s=(n, n, n))
        residual = upsample_linear(displacement[0] - mean[:, None, None, None], self.grid_factor, self.box)
        self.correction += self._warp(moved, residual) - torch.fft.irfftn(data, s=(n, n, n))
        self.standard.merge(self._pending)
        self._pending.sums.zero_()
        self._pending.particle_count = 0

    def _displacement(self, code: torch.Tensor) -> torch.Tensor:
        """``x − g⁻¹(x)`` in voxels on the coarse grid, (1, 3, S, S, S) [x y z channels; z, y, x],
        with ``g⁻¹`` from fixed-point steps ``y ← x − d(y)``."""
        consensus = self.field(code[None], self._points_angstrom)
        if consensus.shape != (1, len(self._points_angstrom), 3):
            raise InputError(f"inverse field returned shape {tuple(consensus.shape)}, expected "
                             f"(1, {len(self._points_angstrom)}, 3)")
        evaluated = (consensus - self._points_angstrom) / self.pixel_size_angstrom
        size = self._size
        shift = evaluated if len(self._evaluated) == size**3 else _extend(evaluated, self._evaluated, size)
        field = shift.transpose(1, 2).reshape(1, 3, size, size, size).contiguous()
        target = self._coarse_voxels
        source = target - shift
        for _ in range(PULL_ITERATIONS - 1):
            source = target - self._sample_field(field, source)
        return (target - source).transpose(1, 2).reshape(1, 3, size, size, size)

    def _sample_field(self, field: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
        """Trilinear samples (1, P, 3) of a coarse field at voxels (1, P, 3) from the centre; beyond
        the coarse grid, its border values."""
        grid = (voxels + self.box // 2) * (2 / (self.grid_factor * (self._size - 1))) - 1
        sampled = F.grid_sample(field, grid[:, :, None, None, :], mode="bilinear",
                                padding_mode="border", align_corners=True)
        return sampled[:, :, :, 0, 0].transpose(1, 2)

    def _warp(self, volume: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
        """``volume(x − u(x))`` on the periodic padded grid (FFT order), trilinear, in z-slabs;
        ``displacement`` (3, L, L, L) [x y z channels; z, y, x] voxels, beyond the box its border values."""
        n, box = volume.shape[0], self.box
        wrapped = F.pad(volume[None, None], (0, 1, 0, 1, 0, 1), mode="circular")  # index n is index 0
        axis = (torch.arange(n, device=self.device) + n // 2) % n - n // 2  # FFT index -> voxel from centre
        nearest = (axis + box // 2).clamp(0, box - 1)  # the box voxel whose displacement it takes
        plane = displacement.index_select(2, nearest).index_select(3, nearest)  # (3, L, n, n)
        axis = axis.float()
        result = torch.empty_like(volume)
        per_slab = max(1, CHUNK_SAMPLES // (n * n))
        for z0 in range(0, n, per_slab):
            zz, yy, xx = torch.meshgrid(axis[z0:z0 + per_slab], axis, axis, indexing="ij")
            shift = plane.index_select(1, nearest[z0:z0 + per_slab])
            source = torch.stack([xx - shift[0], yy - shift[1], zz - shift[2]], -1)
            grid = (torch.remainder(source, n) * (2 / n) - 1).view(1, -1, 1, 1, 3)
            sampled = F.grid_sample(wrapped, grid, mode="bilinear", padding_mode="border", align_corners=True)
            result[z0:z0 + per_slab] = sampled.view(-1, n, n)
        return result

    def fourier_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(data, weight) on the padded half-spectrum grid: the standard sums plus the correction
        (its x = 0 plane halved, as :func:`.inversion.invert` adds the Friedel mates there)."""
        self.flush()
        data, weight = self.standard.fourier_sums()
        if self.field is None:
            return data, weight
        correction = torch.fft.rfftn(self.correction)
        correction[:, :, 0] *= 0.5
        floor = CORRECTION_DAMPING * weight[weight > 0].mean()
        return data + correction * (weight / (weight + floor)), weight

    def merge(self, other: DeformedAccumulator) -> None:
        """Add another accumulator's sums (half sets, distributed reduction)."""
        self.flush()
        other.flush()
        self.standard.merge(other.standard)
        self.correction += other.correction.to(self.correction)

    def reconstruct(self, wiener_constant: float = 1e-3, shell_regularisation=None,
                    gridding_iterations: int = 10, mask_corners: bool = True) -> torch.Tensor:
        """The map (L, L, L) [z, y, x] (see :func:`.inversion.invert`)."""
        if self.particle_count == 0:
            raise InputError("nothing to reconstruct: no particle was added (check the selection)")
        data, weight = self.fourier_sums()
        return invert(data, weight, self.box, self.padding, wiener_constant, shell_regularisation,
                      gridding_iterations, mask_corners).to(torch.float32)


def _extend(evaluated: torch.Tensor, where: torch.Tensor, size: int) -> torch.Tensor:
    """The (B, S³, 3) field from its values (B, P, 3) at coarse points ``where``: elsewhere a
    normalised smoothing (repeated 3³ box filters, σ ≈ EXTENSION_SIGMA) of the known values."""
    batch = len(evaluated)
    known = evaluated.new_zeros(batch, 4, size**3)
    known[:, :3, where] = evaluated.transpose(1, 2)
    known[:, 3, where] = 1
    smooth = known.reshape(batch, 4, size, size, size)
    for _ in range(int(round(1.5 * EXTENSION_SIGMA**2))):  # each pass adds variance 2/3
        smooth = F.avg_pool3d(smooth, 3, 1, 1, count_include_pad=False)
    smooth = smooth.reshape(batch, 4, -1)
    filled = smooth[:, :3] / smooth[:, 3:].clamp(min=1e-6)
    filled[:, :, where] = known[:, :3, where]
    return filled.transpose(1, 2)


def _phase(shift: torch.Tensor, n: int, device) -> torch.Tensor:
    """``exp(−2πi k·shift / n)`` on the (n, n, n//2+1) half spectrum: moves a map by ``shift``
    voxels (x, y, z) exactly."""
    full = torch.fft.fftfreq(n, device=device)
    half = torch.fft.rfftfreq(n, device=device)
    angle = -2 * torch.pi * (half * shift[0] + full[:, None] * shift[1] + full[:, None, None] * shift[2])
    return torch.polar(torch.ones_like(angle), angle)


def upsample_linear(coarse: torch.Tensor, factor: int, box: int) -> torch.Tensor:
    """Trilinear upsampling (C, S, S, S) -> (C, L, L, L) of a grid with a point every ``factor``
    voxels, one axis at a time (much faster than ``F.interpolate`` on the CPU)."""
    fine = coarse
    for dim in (1, 2, 3):
        if factor > 1:
            low, high = fine.narrow(dim, 0, fine.shape[dim] - 1), fine.narrow(dim, 1, fine.shape[dim] - 1)
            steps = [torch.lerp(low, high, j / factor) for j in range(factor)]
            fine = torch.stack(steps, dim + 1).flatten(dim, dim + 1)
        fine = fine.narrow(dim, 0, box)
    return fine
