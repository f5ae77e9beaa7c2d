"""Deformed weighted backprojection: images backprojected along the rays that each particle's
inverse deformation field bends back into the consensus frame.

For particle ``i`` with latent ``z_i`` and inverse field ``g_i`` (deformed position ``y`` ->
consensus position ``x``), its straight backprojection ``B_i`` (the CTF-multiplied image smeared
along the viewing direction) lives in the particle's deformed frame and belongs at ``x = g_i(y)``:
the map is ``Σ_i B_i(g_i⁻¹(x))`` divided by ``Σ_i CTF_i²`` in Fourier space, "as if homogeneous"
(the paper's approximation).

Each field code's displacement ``u(x) = x − g⁻¹(x)`` is split into a constant ``t`` (the field's
value far from the moving parts: its median over the evaluated points) and a residual ``r = u − t``
that is zero away from the molecule (where the field is constant). The translation is exact and
free: every particle of the code is inserted with its origin moved by the projection of ``t`` (a
translated backprojection is the backprojection of the translated image), into the ordinary Fourier
sums, everywhere on the periodic padded grid. Only the residual is a warp. Particles sharing one
code (one latent code, or one cluster centre) go into a pending Fourier accumulator; when the code
changes, the real-space equivalent of its data, ``R_c = irfftn(D_c)``, is computed only on the block
where ``r`` is not zero (plus the largest residual displacement), by a partial inverse transform,
warped there, ``R_c(x − r(x))``, and the difference ``R_c∘(x − r) − R_c`` is added to a real-space
correction that covers the box plus a ``TAPER_VOXELS`` margin (beyond the box the residual takes its
border values, tapered linearly to zero across the margin). So the correction is consistent with the
Fourier insertion, including the wrapped-around, CTF-delocalised part of the backprojection outside
the box, which moves with the exact translation. The identity field gives the standard
reconstruction exactly (no warp, no correction), a constant field the exactly translated standard
map. Where ``Σ CTF²`` is small the correction is damped (``CORRECTION_DAMPING``): warping the
CTF-weighted backprojection is only approximately consistent with the weights ("as if homogeneous"),
and dividing by a tiny weight amplified that error into a ruined map. ``g⁻¹`` comes from fixed-point
steps ``y ← x − d(y)`` (``d = g − identity``) on a grid ``grid_factor`` times coarser than the map,
extended beyond the box by its border values.

Where the field is known only near the molecule (``region``), it is evaluated at the coarse points
of the region and extended outside by normalised Gaussian smoothing that fades to the constant
``t`` (``EXTENSION_FLOOR``), so rays bend smoothly, the solvent near the molecule follows the
nearest density, and the warped block is the molecule plus a margin rather than the whole box.

Memory: the standard and (while a code that needs a warp is inserted) the pending Fourier sums
(3 × (2L+2)² × (L+2) floats each), the correction
((L + 2·TAPER_VOXELS)³ floats) and, while a code is warped, its complex data (2L)² × (L+1) and a
block of the partial transform; the warp itself runs in slabs of ``CHUNK_SAMPLES`` voxels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import InputError
from .inversion import invert
from .standard import FourierAccumulator, fold_channel

#: ``field(latents (B, D), points (P, 3) Å) -> consensus points (B, P, 3) Å``, x y z from the
#: centre.
InverseFieldFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Maximum voxels warped at once; bounds memory for any box.
CHUNK_SAMPLES = 2_000_000
#: Fixed-point steps that invert the inverse field.
PULL_ITERATIONS = 2
#: The correction is damped by ``W / (W + this · mean W)``: where the CTF² weight ``W`` is small
#: (low frequencies, CTF zeros) the division would amplify the warp's inconsistencies (measured:
#: 0.3).
CORRECTION_DAMPING = 0.3
#: Width (σ, in coarse grid steps) of the smoothing that extends the field outside the region.
EXTENSION_SIGMA = 3.0
#: Where the smoothed indicator of the region falls below this, the extended residual fades to zero.
EXTENSION_FLOOR = 0.1
#: Beyond the box the residual displacement falls linearly to zero across this many voxels.
TAPER_VOXELS = 4
#: A residual displacement (voxels) below this everywhere is none: the code's field is a
#: translation.
RESIDUAL_TOLERANCE = 1e-4
#: Complex spectrum elements transformed at once in the partial inverse transform.
CHUNK_SPECTRUM = 1 << 24


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
            raise InputError(
                f"grid factor {grid_factor} is invalid: use an integer >= 1 (2 is usual)"
            )
        self.standard = FourierAccumulator(box, pixel_size_angstrom, padding, device)
        self.box, self.pixel_size_angstrom = self.standard.box, self.standard.pixel_size_angstrom
        self.padding, self.device = self.standard.padding, self.standard.device
        self.field, self.grid_factor, self.region = field, int(grid_factor), region
        n = self.standard.padded_box
        self.taper = min(TAPER_VOXELS, (n - box) // 2)
        extent = box + 2 * self.taper
        # Σ R_c∘(x − r_c) − R_c on the box plus the taper margin, [z, y, x]; voxel v from the centre
        # at index v + box // 2 + taper.
        self.correction = (
            torch.zeros((extent,) * 3, device=self.device)
            if field is not None
            else torch.zeros((0,) * 3, device=self.device)
        )
        self.warps = 0  # codes whose residual was warped
        self.warped_voxels = 0  # voxels warped, summed over those codes
        self._pending: FourierAccumulator | None = None  # allocated when a code needs a warp
        self._pending_code: torch.Tensor | None = None
        self._translation = torch.zeros(3, device=self.device)  # Å, x y z: the code's constant part
        self._residual: torch.Tensor | None = None  # (3, S, S, S) voxels, None for a translation
        self._size = (box - 1) // self.grid_factor + 2  # coarse points per axis
        axis = torch.arange(self._size, device=self.device) * self.grid_factor - box // 2
        zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")
        coarse = torch.stack([xx, yy, zz], -1).reshape(-1, 3).float()  # voxels from the centre
        self._coarse_voxels = coarse
        self._evaluated = self._coarse_region(region)
        self._points_angstrom = coarse[self._evaluated] * self.pixel_size_angstrom

    def _coarse_region(self, region: torch.Tensor | None) -> torch.Tensor:
        """Indices of the coarse points where the field is evaluated (those of the region's
        cells)."""
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
        pending = 0 if self._pending is None else self._pending.particle_count
        return self.standard.particle_count + pending

    def add(self, images, rotations, shifts_angstrom, ctf=None, latents=None) -> None:
        """Insert a batch: as :meth:`FourierAccumulator.add`, plus each particle's field code (B,
        D).

        Each run of consecutive equal codes is inserted with its origins moved by the code's
        translation, into the standard sums when the code's field is a translation and otherwise
        into the pending accumulator, which is warped (:meth:`flush`) when the code changes.
        """
        if self.field is None:
            self.standard.add(images, rotations, shifts_angstrom, ctf)
            return
        if latents is None:
            raise InputError("a deformed reconstruction needs each particle's latent code")
        codes = torch.as_tensor(latents).to(self.device, torch.float32)
        if codes.ndim != 2 or len(codes) != len(images):
            raise InputError(
                f"{len(images)} images need latent codes ({len(images)}, D); got "
                f"{tuple(codes.shape)}"
            )
        change = torch.nonzero((codes[1:] != codes[:-1]).any(1)).squeeze(1) + 1
        bounds = [0, *change.tolist(), len(codes)]
        for start, end in zip(bounds[:-1], bounds[1:], strict=False):
            if self._pending_code is None or not torch.equal(codes[start], self._pending_code):
                self.flush()
                self._pending_code = codes[start].clone()
                self._set_code(self._pending_code)
            shifts = shifts_angstrom[start:end]
            if bool(self._translation.any()):
                turn = torch.as_tensor(rotations[start:end]).to(self.device, torch.float32)
                shifts = (
                    torch.as_tensor(shifts).to(self.device, torch.float32)
                    + turn[:, :2, :] @ self._translation
                )
            if self._residual is not None and self._pending is None:
                self._pending = FourierAccumulator(
                    self.box, self.pixel_size_angstrom, self.padding, self.device
                )
            target = self.standard if self._residual is None else self._pending
            target.add(
                images[start:end],
                rotations[start:end],
                shifts,
                None if ctf is None else ctf[start:end],
            )

    def _set_code(self, code: torch.Tensor) -> None:
        """The code's translation (Å) and residual displacement (voxels, None if it has none)."""
        displacement, constant = self._displacement(code)
        residual = displacement[0] - constant[:, None, None, None]
        self._translation = constant * self.pixel_size_angstrom
        self._residual = residual if bool((residual.abs() > RESIDUAL_TOLERANCE).any()) else None

    def flush(self) -> None:
        """Warp the pending particles' backprojection by their residual field and move their sums
        over."""
        if self._pending is None or self._pending.particle_count == 0:
            return
        lows, highs = self._active_block(self._residual)
        reach = int(torch.ceil(self._residual.abs().max()).item()) + 1
        n, box, taper = self.standard.padded_box, self.box, self.taper
        starts, sizes = [], []
        for low, high in zip(
            lows, highs, strict=True
        ):  # extended indices -> voxels from the centre
            size = high - low + 1
            margin = min(reach, (n - size) // 2)
            starts.append(low - taper - box // 2 - margin)
            sizes.append(size + 2 * margin)
        data = _folded_data(self._pending)
        self.standard.merge(self._pending)
        self._pending = None  # allocated again for the next code that needs a warp
        first = _partial_first_axis(data, starts[0], sizes[0])
        del data
        block = _partial_irfftn(first, starts, sizes, n)
        del first
        self._warp_block(block, starts, lows, highs)
        self.warps += 1
        self.warped_voxels += int(torch.tensor([h - lo + 1 for lo, h in zip(lows, highs)]).prod())

    def _active_block(self, residual: torch.Tensor) -> tuple[list[int], list[int]]:
        """Per axis (z, y, x), the first and last index of the correction grid where the residual
        displacement may be nonzero."""
        box, factor, taper = self.box, self.grid_factor, self.taper
        moving = residual.abs().amax(0) > RESIDUAL_TOLERANCE  # (S, S, S) [z, y, x]
        lows, highs = [], []
        for dim in range(3):
            others = tuple(d for d in range(3) if d != dim)
            where = torch.nonzero(moving.any(others[1]).any(others[0])).squeeze(1)
            first, last = int(where[0]), int(where[-1])
            low, high = max(0, (first - 1) * factor), min(box - 1, (last + 1) * factor)
            lows.append(low + taper if low > 0 else 0)
            highs.append(high + taper if high < box - 1 else box - 1 + 2 * taper)
        return lows, highs

    def _fine_residual(self, lows: list[int], highs: list[int]) -> torch.Tensor:
        """The residual displacement (3, Z, Y, X) voxels on correction-grid indices lows..highs per
        axis (z, y, x): trilinear from the coarse grid, border values beyond the box tapered to
        zero."""
        box, factor, taper = self.box, self.grid_factor, self.taper
        fine = self._residual
        tapers = []
        for dim, (low, high) in enumerate(zip(lows, highs, strict=True), 1):
            voxels = (
                torch.arange(low, high + 1, device=self.device) - taper
            )  # box indices, may be outside
            inside = voxels.clamp(0, box - 1)
            first, last = int(inside[0]), int(inside[-1])
            c0, c1 = first // factor, min(fine.shape[dim] - 1, last // factor + 1)
            part = fine.narrow(dim, c0, c1 - c0 + 1)
            if factor > 1:
                lo, hi = (
                    part.narrow(dim, 0, part.shape[dim] - 1),
                    part.narrow(dim, 1, part.shape[dim] - 1),
                )
                steps = [torch.lerp(lo, hi, j / factor) for j in range(factor)]
                part = torch.cat(
                    [torch.stack(steps, dim + 1).flatten(dim, dim + 1), part.narrow(dim, -1, 1)],
                    dim,
                )
            if first == int(voxels[0]) and last == int(voxels[-1]):  # inside the box: a view
                fine = part.narrow(dim, first - c0 * factor, last - first + 1)
            else:
                fine = part.index_select(dim, inside - c0 * factor)
            outside = (voxels - inside).abs().float()
            tapers.append((1 - outside / max(taper, 1)).clamp(min=0))
        return fine * (
            tapers[0][:, None, None] * tapers[1][None, :, None] * tapers[2][None, None, :]
        )

    def _warp_block(
        self, block: torch.Tensor, starts: list[int], lows: list[int], highs: list[int]
    ) -> None:
        """Add ``R(x − r(x)) − R(x)`` to the correction on indices lows..highs; ``block`` is ``R``
        on the voxels (from the centre) ``starts`` + its shape, per axis (z, y, x)."""
        box, taper = self.box, self.taper
        sizes = [high - low + 1 for low, high in zip(lows, highs, strict=True)]
        offsets = [low - taper - box // 2 - start for low, start in zip(lows, starts, strict=True)]
        scale = torch.tensor(
            [
                2 / max(block.shape[2] - 1, 1),
                2 / max(block.shape[1] - 1, 1),
                2 / max(block.shape[0] - 1, 1),
            ],
            device=self.device,
        )
        volume = block[None, None]
        ay = torch.arange(sizes[1], device=self.device, dtype=torch.float32) + offsets[1]
        ax = torch.arange(sizes[2], device=self.device, dtype=torch.float32) + offsets[2]
        per_slab = max(1, CHUNK_SAMPLES // (sizes[1] * sizes[2]))
        for z0 in range(0, sizes[0], per_slab):
            z1 = min(sizes[0], z0 + per_slab)
            residual = self._fine_residual(
                [lows[0] + z0, lows[1], lows[2]], [lows[0] + z1 - 1, highs[1], highs[2]]
            )
            az = torch.arange(z0, z1, device=self.device, dtype=torch.float32) + offsets[0]
            zz, yy, xx = torch.meshgrid(az, ay, ax, indexing="ij")
            source = torch.stack([xx - residual[0], yy - residual[1], zz - residual[2]], -1)
            grid = (source * scale - 1).view(1, -1, 1, 1, 3)
            sampled = F.grid_sample(
                volume, grid, mode="bilinear", padding_mode="border", align_corners=True
            )
            straight = block[
                offsets[0] + z0 : offsets[0] + z1,
                offsets[1] : offsets[1] + sizes[1],
                offsets[2] : offsets[2] + sizes[2],
            ]
            self.correction[
                lows[0] + z0 : lows[0] + z1, lows[1] : highs[1] + 1, lows[2] : highs[2] + 1
            ] += sampled.view(z1 - z0, sizes[1], sizes[2]) - straight

    def _displacement(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x − g⁻¹(x)`` in voxels on the coarse grid, (1, 3, S, S, S) [x y z channels; z, y, x],
        with ``g⁻¹`` from fixed-point steps ``y ← x − d(y)``, and its constant part (3,) voxels: the
        median over the evaluated points, which the field fades to away from a region."""
        consensus = self.field(code[None], self._points_angstrom)
        if consensus.shape != (1, len(self._points_angstrom), 3):
            raise InputError(
                f"inverse field returned shape {tuple(consensus.shape)}, expected "
                f"(1, {len(self._points_angstrom)}, 3)"
            )
        evaluated = (consensus - self._points_angstrom) / self.pixel_size_angstrom
        constant = evaluated.median(1).values[0]  # where most of the evaluated points move
        size = self._size
        shift = (
            evaluated
            if len(self._evaluated) == size**3
            else _extend(evaluated - constant, self._evaluated, size) + constant
        )
        field = shift.transpose(1, 2).reshape(1, 3, size, size, size).contiguous()
        target = self._coarse_voxels
        source = target - shift
        for _ in range(PULL_ITERATIONS - 1):
            source = target - self._sample_field(field, source)
        return (target - source).transpose(1, 2).reshape(1, 3, size, size, size), constant

    def _sample_field(self, field: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
        """Trilinear samples (1, P, 3) of a coarse field at voxels (1, P, 3) from the centre; beyond
        the coarse grid, its border values."""
        grid = (voxels + self.box // 2) * (2 / (self.grid_factor * (self._size - 1))) - 1
        sampled = F.grid_sample(
            field,
            grid[:, :, None, None, :],
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )
        return sampled[:, :, :, 0, 0].transpose(1, 2)

    def fourier_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(data, weight) on the padded half-spectrum grid: the standard sums plus the correction
        (its x = 0 plane halved, as :func:`.inversion.invert` adds the Friedel mates there)."""
        self.flush()
        data, weight = self.standard.fourier_sums()
        if self.field is None or not bool(self.correction.any()):
            return data, weight
        n, box, taper = self.standard.padded_box, self.box, self.taper
        index = (torch.arange(len(self.correction), device=self.device) - box // 2 - taper) % n
        total = count = 0
        rows = max(1, CHUNK_SPECTRUM // (n * weight.shape[2]))
        for z0 in range(0, n, rows):  # the mean positive weight, one slab at a time
            part = weight[z0 : z0 + rows]
            total += float(part.sum(dtype=torch.float64))  # the weights are never negative
            count += int((part > 0).sum())
        floor = CORRECTION_DAMPING * total / count
        _add_partial_rfftn(data, self.correction, index, weight, floor)
        return data, weight

    def merge(self, other: DeformedAccumulator) -> None:
        """Add another accumulator's sums (half sets, distributed reduction)."""
        self.flush()
        other.flush()
        self.standard.merge(other.standard)
        if self.field is not None and other.field is not None:
            self.correction += other.correction.to(self.correction)

    def reconstruct(
        self,
        wiener_constant: float = 1e-3,
        shell_regularisation=None,
        gridding_iterations: int = 10,
        mask_corners: bool = True,
    ) -> torch.Tensor:
        """The map (L, L, L) [z, y, x] (see :func:`.inversion.invert`)."""
        if self.particle_count == 0:
            raise InputError("nothing to reconstruct: no particle was added (check the selection)")
        data, weight = self.fourier_sums()
        return invert(
            data,
            weight,
            self.box,
            self.padding,
            wiener_constant,
            shell_regularisation,
            gridding_iterations,
            mask_corners,
            overwrite=True,
        ).to(torch.float32)


def _folded_data(accumulator: FourierAccumulator) -> torch.Tensor:
    """An accumulator's complex data (n, n, n//2+1) in FFT order with the Friedel mates of the x = 0
    plane added (its full, Hermitian spectrum there), each channel copied straight into place."""
    n = accumulator.padded_box
    sums = accumulator.sums
    out = torch.empty(n, n, n // 2 + 1, 2, dtype=sums.dtype, device=sums.device)
    for channel in range(2):
        fold_channel(sums[channel], out[..., channel], accumulator._offset)
    data = torch.view_as_complex(out)
    mirror = (-torch.arange(n, device=sums.device)) % n
    plane = data[:, :, 0].clone()
    data[:, :, 0] = plane + plane[mirror][:, mirror].conj()
    return data


def _partial_first_axis(data: torch.Tensor, start: int, size: int) -> torch.Tensor:
    """The inverse transform of ``data`` (n, n, n//2+1) along z, only on the rows ``start`` +
    ``size`` (periodic), in chunks of spectrum columns."""
    n, _, half = data.shape
    columns = max(1, CHUNK_SPECTRUM // (n * n))
    first = data.new_empty(size, n, half)
    for x0 in range(0, half, columns):
        part = torch.fft.ifft(data[:, :, x0 : x0 + columns], dim=0)
        first[:, :, x0 : x0 + columns] = _circular(part, 0, start, size)
    return first


def _partial_irfftn(
    first: torch.Tensor, starts: list[int], sizes: list[int], n: int
) -> torch.Tensor:
    """``irfftn(data, s=(n, n, n))`` only on the block of grid indices ``starts`` + ``sizes`` (z, y,
    x; periodic), from ``first`` = :func:`_partial_first_axis` of ``data``: the y and x axes one
    slab of z rows at a time."""
    block = first.real.new_empty(sizes)
    rows = max(1, CHUNK_SPECTRUM // (n * first.shape[2]))
    for z0 in range(0, sizes[0], rows):
        part = _circular(torch.fft.ifft(first[z0 : z0 + rows], dim=1), 1, starts[1], sizes[1])
        part = torch.fft.irfft(part, n=n, dim=2)
        block[z0 : z0 + rows] = _circular(part, 2, starts[2], sizes[2])
    return block


def _circular(tensor: torch.Tensor, dim: int, start: int, size: int) -> torch.Tensor:
    """Indices ``start`` .. ``start + size − 1`` (modulo the length) of ``dim``: a view unless they
    wrap."""
    length = tensor.shape[dim]
    start %= length
    if start + size <= length:
        return tensor.narrow(dim, start, size)
    return torch.cat(
        [tensor.narrow(dim, start, length - start), tensor.narrow(dim, 0, size - length + start)],
        dim,
    )


def _add_partial_rfftn(
    data: torch.Tensor, block: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, floor: float
) -> None:
    """Add to ``data`` the ``rfftn`` of the (n, n, n) grid that is ``block`` (E, E, E) at the grid
    indices ``index`` on every axis and zero elsewhere, its x = 0 plane halved and damped by
    ``weight / (weight + floor)``: one axis at a time, each zero-padded only when it is transformed,
    the last axis (z) in chunks of spectrum columns added in place."""
    n = data.shape[0]
    size = len(index)
    padded = block.new_zeros(size, size, n)
    padded[:, :, index] = block
    spectrum = torch.fft.rfft(padded, dim=2)
    del padded
    rows = spectrum.new_zeros(size, n, spectrum.shape[2])
    rows[:, index] = spectrum
    del spectrum
    rows = torch.fft.fft(rows, dim=1)
    columns = max(1, CHUNK_SPECTRUM // (n * n))
    for x0 in range(0, rows.shape[2], columns):
        x1 = min(x0 + columns, rows.shape[2])
        full = rows.new_zeros(n, n, x1 - x0)
        full[index] = rows[:, :, x0:x1]
        full = torch.fft.fft(full, dim=0)
        if x0 == 0:
            full[:, :, 0] *= 0.5
        damping = weight[:, :, x0:x1]
        data[:, :, x0:x1] += full * (damping / (damping + floor))


def _extend(evaluated: torch.Tensor, where: torch.Tensor, size: int) -> torch.Tensor:
    """The (B, S³, 3) field from its values (B, P, 3) at coarse points ``where``: elsewhere a
    normalised smoothing (the kernel of repeated 3-point box filters, σ ≈ EXTENSION_SIGMA, applied
    one axis at a time) of the known values, fading to zero where the smoothed indicator of
    ``where`` is below EXTENSION_FLOOR (exactly zero beyond the kernel's reach)."""
    batch = len(evaluated)
    known = evaluated.new_zeros(batch, 4, size**3)
    known[:, :3, where] = evaluated.transpose(1, 2)
    known[:, 3, where] = 1
    smooth = known.reshape(batch * 4, size, size, size)
    kernel = _smoothing_kernel(int(round(1.5 * EXTENSION_SIGMA**2))).to(
        smooth
    )  # each pass adds variance 2/3
    reach = len(kernel) // 2
    for dim in (1, 2, 3):
        rows = smooth.movedim(dim, -1)
        shape = rows.shape
        rows = F.conv1d(rows.reshape(-1, 1, size), kernel.view(1, 1, -1), padding=reach)
        smooth = rows.view(shape).movedim(-1, dim)
    smooth = smooth.reshape(batch, 4, -1)
    filled = smooth[:, :3] / smooth[:, 3:].clamp(min=EXTENSION_FLOOR)
    filled[:, :, where] = known[:, :3, where]
    return filled.transpose(1, 2)


def _smoothing_kernel(passes: int) -> torch.Tensor:
    """``passes`` 3-point box filters composed: a 1D kernel of 2·passes + 1 taps summing to one."""
    kernel = torch.ones(1)
    for _ in range(passes):
        kernel = torch.nn.functional.pad(kernel, (1, 1))
        kernel = (kernel + kernel.roll(1) + kernel.roll(-1)) / 3
    return kernel
