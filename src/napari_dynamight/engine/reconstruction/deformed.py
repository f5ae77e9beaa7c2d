"""Deformed weighted backprojection: images backprojected along the rays that each particle's
inverse deformation field bends back into the consensus frame.

For particle ``i`` with latent ``z_i`` and inverse field ``g_i`` (deformed position ``y`` ->
consensus position ``x``), voxel ``y`` of the particle's own (deformed) frame receives its
CTF-multiplied image ``b_i`` at ``(A_i y)[:2] − origin_i``, and that value belongs at
``x = g_i(y)``. The map is ``Σ_i b_i(P_i g_i⁻¹(x))`` divided by ``Σ_i CTF_i²`` in Fourier space,
"as if homogeneous" (the paper's approximation).

Pull formulation: for every consensus voxel ``x`` we find ``y = g_i⁻¹(x)`` by fixed-point steps
``y ← x − d_i(y)`` (``d = g − identity``) on a grid ``grid_factor`` times coarser than the map, project
the displacement into the image (``e_i = A_i[:2] (x − y)``, two channels), upsample it trilinearly
and sample the 2× Fourier-upsampled image bilinearly at ``A_i[:2] x − e_i``. All of it is dense,
batched and chunked over z-slabs, so memory stays bounded for any box.

The real-space sum ``M`` covers the box; the weights and the part of the rays outside the box
come from the standard Fourier insertion (:class:`FourierAccumulator`): on the padded grid the data
are ``rfftn(R_outside + L²/n³ · sinc² · M)``, ``R = irfftn(standard data)``, which is what Fourier
insertion of the images would give with straight rays. The identity field therefore reproduces
the standard reconstruction (to interpolation accuracy).

Where the field is known only near the molecule (``region``), it is evaluated at the coarse points
of the region and extended outside by normalised Gaussian smoothing, so rays bend smoothly and the
solvent follows the nearest density.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import InputError
from .inversion import invert
from .standard import FourierAccumulator

#: ``field(latents (B, D), points (P, 3) Å) -> consensus points (B, P, 3) Å``, x y z from the centre.
InverseFieldFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Maximum (particle × voxel) samples held at once; bounds memory for any box.
CHUNK_SAMPLES = 2_000_000
#: Fixed-point steps that invert the inverse field.
PULL_ITERATIONS = 2
#: Width (σ, in coarse grid steps) of the smoothing that extends the field outside the region.
EXTENSION_SIGMA = 3.0


class DeformedAccumulator:
    """Running sums of a deformed backprojection (see the module docstring).

    ``field=None`` gives the standard reconstruction. ``region``: optional boolean (L, L, L)
    [z, y, x] mask where the field is evaluated (e.g. the dilated consensus); default everywhere.
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
        self.field, self.grid_factor = field, int(grid_factor)
        self.correction = torch.zeros((box,) * 3, device=self.device)  # pulled − straight, [z, y, x]
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
        return self.standard.particle_count

    def add(self, images, rotations, shifts_angstrom, ctf=None, latents=None) -> None:
        """Insert a batch: as :meth:`FourierAccumulator.add`, plus latents (B, D) for the field."""
        self.standard.add(images, rotations, shifts_angstrom, ctf)
        if self.field is None:
            return
        if latents is None:
            raise InputError("a deformed reconstruction needs each particle's latent code")
        options = {"device": self.device, "dtype": torch.float32}
        images = torch.as_tensor(images).to(**options)
        rotations = torch.as_tensor(rotations).to(**options)
        shifts = torch.as_tensor(shifts_angstrom).to(**options)
        ctf = None if ctf is None else torch.as_tensor(ctf).to(**options)
        latents = torch.as_tensor(latents).to(**options)
        per_chunk = max(1, CHUNK_SAMPLES // self.box**3)
        for start in range(0, len(images), per_chunk):
            part = slice(start, start + per_chunk)
            upsampled = ctf_weighted_images(images[part], shifts[part],
                                            None if ctf is None else ctf[part], self.pixel_size_angstrom)
            self._backproject(upsampled, rotations[part], self._image_shifts(latents[part], rotations[part]))

    def _image_shifts(self, latents: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """``A[:2] (x − g⁻¹(x))`` on the coarse grid (B, 2, S, S, S) [z, y, x], in pixels."""
        consensus = self.field(latents, self._points_angstrom)
        if consensus.shape != (len(latents), len(self._points_angstrom), 3):
            raise InputError(f"inverse field returned shape {tuple(consensus.shape)}, expected "
                             f"({len(latents)}, {len(self._points_angstrom)}, 3)")
        evaluated = (consensus - self._points_angstrom) / self.pixel_size_angstrom
        size = self._size
        shift = evaluated
        if len(self._evaluated) < size**3:
            shift = _extend(evaluated, self._evaluated, size)
        field = shift.transpose(1, 2).reshape(-1, 3, size, size, size).contiguous()
        target = self._coarse_voxels
        source = target - shift
        for _ in range(PULL_ITERATIONS - 1):
            grid = (source + self.box // 2) * (2 / (self.grid_factor * (size - 1))) - 1
            sampled = F.grid_sample(field, grid[:, :, None, None, :], mode="bilinear",
                                    padding_mode="border", align_corners=True)
            source = target - sampled[:, :, :, 0, 0].transpose(1, 2)
        image_shift = torch.einsum("bij,bpj->bip", rotations[:, :2, :], target - source)
        return image_shift.reshape(-1, 2, size, size, size)

    def _backproject(self, upsampled, rotations, shift) -> None:
        """Add ``b_i(A_i[:2] x − e_i(x)) − b_i(A_i[:2] x)`` over the box, slab by slab along z."""
        box, factor, batch = self.box, self.grid_factor, len(rotations)
        size = upsampled.shape[-1]
        scale = 4 / (size - 1)  # grid_sample coordinate per map voxel (2 upsampled pixels)
        offsets = (torch.arange(box, device=self.device, dtype=torch.float32) - box // 2) * scale
        planar = rotations[:, :2, :].transpose(1, 2).reshape(batch, 3, 1, 1, 1, 2)
        rows = max(factor, (CHUNK_SAMPLES // (2 * batch * box * box)) // factor * factor)
        in_plane = planar[:, 0] * offsets[:, None] + planar[:, 1] * offsets[:, None, None]
        in_plane = in_plane + (size // 2 * 2 / (size - 1) - 1)  # (B, 1, y, x, 2)
        for z0 in range(0, box, rows):
            z1 = min(box, z0 + rows)
            straight = in_plane + planar[:, 2] * offsets[z0:z1, None, None, None]  # (B, z, y, x, 2)
            pulled = _upsample_rows(shift, z0, z1, factor, box).permute(0, 2, 3, 4, 1)
            pulled = torch.addcmul(straight, pulled, pulled.new_tensor(-scale))
            grid = torch.stack([pulled, straight], 1).reshape(batch, -1, 1, 2)
            sampled = F.grid_sample(upsampled[:, None], grid, mode="bilinear",
                                    padding_mode="zeros", align_corners=True)
            moved, unmoved = sampled.reshape(batch, 2, -1).sum(0)
            self.correction[z0:z1] += (moved - unmoved).reshape(z1 - z0, box, box)

    def fourier_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(data, weight) on the padded half-spectrum grid (see the module docstring)."""
        data, weight = self.standard.fourier_sums()
        if self.field is None:
            return data, weight
        n = self.padding * self.box
        padded = torch.zeros((n,) * 3, device=self.device)
        inner = (torch.arange(self.box, device=self.device) - self.box // 2) % n
        index = (inner[:, None, None], inner[None, :, None], inner[None, None, :])
        padded[index] = self.correction * (self.box**2 / n**3) * _sinc2(self.box, n, self.device)
        return data + torch.fft.rfftn(padded), weight

    def merge(self, other: DeformedAccumulator) -> None:
        """Add another accumulator's sums (half sets, distributed reduction)."""
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


def ctf_weighted_images(images, shifts_angstrom, ctf, pixel_size_angstrom: float) -> torch.Tensor:
    """CTF-multiplied images (B, 2L, 2L), 2× Fourier-upsampled, particle centre at index L.

    The origin shift is undone and frequencies beyond Nyquist dropped, as in the Fourier insertion.
    """
    box = images.shape[-1]
    ky = torch.fft.fftfreq(box, d=1.0 / box, device=images.device)
    kx = torch.fft.rfftfreq(box, d=1.0 / box, device=images.device)
    centre = box // 2 - shifts_angstrom / pixel_size_angstrom  # (B, 2) x, y pixels
    phase = (2 * math.pi / box) * (centre[:, 0, None, None] * kx + centre[:, 1, None, None] * ky[:, None])
    spectrum = torch.fft.rfft2(images) * torch.polar(torch.ones_like(phase), phase)
    spectrum = spectrum * (kx**2 + ky[:, None] ** 2 < (box / 2) ** 2)
    if ctf is not None:
        spectrum = spectrum * ctf
    padded = spectrum.new_zeros(len(images), 2 * box, box + 1)
    padded[:, ky.long() % (2 * box), : box // 2 + 1] = spectrum
    upsampled = torch.fft.irfft2(padded, s=(2 * box, 2 * box)) * 4
    return torch.roll(upsampled, (box, box), dims=(-2, -1))


def _upsample_rows(coarse: torch.Tensor, z0: int, z1: int, factor: int, box: int) -> torch.Tensor:
    """Rows z0..z1 of the full-resolution trilinear upsampling of a coarse (B, C, S, S, S) field."""
    first, last = z0 // factor, (z1 - 1) // factor + 1
    block = coarse[:, :, first : last + 1]
    full = (block.shape[2] - 1) * factor + 1, (coarse.shape[3] - 1) * factor + 1, (coarse.shape[4] - 1) * factor + 1
    fine = F.interpolate(block, size=full, mode="trilinear", align_corners=True)
    start = z0 - first * factor
    return fine[:, :, start : start + z1 - z0, :box, :box]


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


def _sinc2(box: int, n: int, device) -> torch.Tensor:
    """The trilinear insertion kernel's real-space factor Π sinc²(y / n) on the (L, L, L) box."""
    offsets = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    factor = torch.sinc(offsets / n) ** 2
    return factor[:, None, None] * factor[None, :, None] * factor
