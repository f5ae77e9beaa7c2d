"""Standard (undeformed) reconstruction: direct Fourier inversion of CTF-weighted images.

Each image's Fourier transform (origin at the box centre, index ``L // 2``) is re-centred
with its origin shift, multiplied by its CTF and inserted as a central slice into a
``padding``-times oversampled 3D Fourier grid with trilinear weights; the CTF² is inserted
the same way. :func:`.inversion.invert` turns the sums into a map. This is the scheme of
``relion_reconstruct``: the image transform is taken at the original box and its samples
land ``padding`` grid steps apart, so the CTF is given on the original box too.

Geometry (docs/conventions.md): a map point ``x`` (Å from the box centre) appears in the
image at ``(A @ x)[:2] − origin``, so the image frequency ``(kx, ky)`` samples the map's
transform at ``kx · A[0] + ky · A[1]``. Only half of Fourier space (map frequency x ≥ 0) is
stored; Friedel symmetry gives the rest.
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError
from .inversion import invert

#: Maximum number of (particle, sample, corner) insertions handled in one vectorised step.
_CHUNK_INSERTIONS = 4_000_000


class FourierAccumulator:
    """Running sums of CTF-weighted central slices (data) and CTF² (weights).

    Partial accumulators with the same box, pixel size and padding can be added with
    :meth:`merge` (half sets, distributed reduction) or saved with :meth:`state_dict`.
    """

    def __init__(
        self,
        box: int,
        pixel_size_angstrom: float,
        padding: int = 2,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if int(box) != box or box < 4:
            raise InputError(f"reconstruction box {box} is invalid: use a box of at least 4 pixels")
        if int(padding) != padding or padding < 1:
            raise InputError(
                f"padding factor {padding} is invalid: use an integer >= 1 (2 is usual)"
            )
        if not pixel_size_angstrom > 0:
            raise InputError(f"pixel size {pixel_size_angstrom} Å is invalid: it must be positive")
        self.box = int(box)
        self.padding = int(padding)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.device = torch.device(device)
        self.dtype = dtype
        self.padded_box = self.box * self.padding
        self.particle_count = 0
        # Storage: channels (Re data, Im data, weight) × z × y × x, with z and y shifted by
        # ``_offset`` so that trilinear corners never wrap; folded to FFT order on demand.
        n = self.padded_box
        self._offset = n // 2 + 1
        self._shape = (n + 2, n + 2, n // 2 + 2)
        self.sums = torch.zeros(3, *self._shape, dtype=dtype, device=self.device)
        ny, nx = self._shape[1], self._shape[2]
        corners = [(dz * ny + dy) * nx + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]
        self._corner_offsets = torch.tensor(corners, device=self.device)
        self._init_slice_samples()

    def _init_slice_samples(self) -> None:
        """Image Fourier samples inside the Nyquist circle (rfft2 layout) and their weights."""
        box = self.box
        ky = torch.fft.fftfreq(box, d=1.0 / box, device=self.device, dtype=self.dtype)
        kx = torch.fft.rfftfreq(box, d=1.0 / box, device=self.device, dtype=self.dtype)
        grid_y, grid_x = torch.meshgrid(ky, kx, indexing="ij")
        inside = (grid_x**2 + grid_y**2 < (box / 2) ** 2).flatten()
        self._sample_index = torch.nonzero(inside).squeeze(1)
        self._kx = grid_x.flatten()[self._sample_index]
        self._ky = grid_y.flatten()[self._sample_index]
        self._k = torch.stack([self._kx, self._ky], -1)  # (S, 2)
        # The kx = 0 column holds both members of each Friedel pair: count each half.
        self._sample_factor = torch.where(self._kx == 0, 0.5, 1.0).to(self.dtype)

    def add(
        self,
        images: torch.Tensor,
        rotations: torch.Tensor,
        origin_angstrom: torch.Tensor,
        ctf: torch.Tensor | None = None,
    ) -> None:
        """Insert a batch: images (B, L, L), RELION matrices (B, 3, 3), origins (B, 2) in Å
        (x, y; particle centre at box centre − origin), CTF (B, L, L//2+1) or ``None``."""
        box = self.box
        images = torch.as_tensor(images).to(device=self.device, dtype=self.dtype)
        if images.ndim != 3 or images.shape[1:] != (box, box):
            raise InputError(
                f"images of shape {tuple(images.shape)} do not match the reconstruction box "
                f"{box}: pass (batch, {box}, {box})"
            )
        batch = images.shape[0]
        rotations = torch.as_tensor(rotations).to(device=self.device, dtype=self.dtype)
        shifts = torch.as_tensor(origin_angstrom).to(device=self.device, dtype=self.dtype)
        if rotations.shape != (batch, 3, 3) or shifts.shape != (batch, 2):
            raise InputError(
                f"{batch} images need rotations ({batch}, 3, 3) and origins ({batch}, 2); got "
                f"{tuple(rotations.shape)} and {tuple(shifts.shape)}"
            )
        if ctf is not None:
            ctf = torch.as_tensor(ctf).to(device=self.device, dtype=self.dtype)
            if ctf.shape != (batch, box, box // 2 + 1):
                raise InputError(
                    f"CTF of shape {tuple(ctf.shape)} does not match "
                    f"({batch}, {box}, {box // 2 + 1})"
                )
        if not bool(torch.isfinite(images).all()):
            raise InputError("images contain NaN or infinite pixels: check the particle stack")
        per_chunk = max(1, _CHUNK_INSERTIONS // (8 * len(self._sample_index)))
        for start in range(0, batch, per_chunk):
            part = slice(start, start + per_chunk)
            self._insert(
                images[part], rotations[part], shifts[part], None if ctf is None else ctf[part]
            )
        self.particle_count += batch

    def _insert(self, images, rotations, shifts, ctf) -> None:
        box = self.box
        values = torch.fft.rfft2(images).flatten(1)[:, self._sample_index]
        # Move the Fourier origin to the box centre and undo the origin shift, in one phase.
        centre = box // 2 - shifts / self.pixel_size_angstrom  # (B, 2) x, y in pixels
        phase = (2 * math.pi / box) * (centre @ self._k.T)  # (B, S)
        values = values * torch.polar(self._sample_factor.expand_as(phase), phase)
        weights = self._sample_factor.expand(values.shape)
        if ctf is not None:
            ctf_samples = ctf.flatten(1)[:, self._sample_index]
            values = values * ctf_samples
            weights = weights * ctf_samples**2

        # Map frequency of each sample in padded-grid units: kx · A[0] + ky · A[1].
        coords = self.padding * (self._k @ rotations[:, :2, :])  # (B, S, 3) x, y, z
        flip = coords[..., 0] < 0
        coords = torch.where(flip[..., None], -coords, coords)
        imag = torch.where(flip, -values.imag, values.imag)

        floor = torch.floor(coords)
        frac = coords - floor
        base = floor.long()
        ny, nx = self._shape[1], self._shape[2]
        shifted = base + torch.tensor([0, self._offset, self._offset], device=base.device)
        flat = (shifted[..., 2] * ny + shifted[..., 1]) * nx + shifted[..., 0]
        index = (flat[..., None] + self._corner_offsets).flatten()
        linear = torch.stack([1 - frac, frac], -1)  # (B, S, 3, 2)
        wx, wy, wz = linear.unbind(-2)  # each (B, S, 2)
        corner_weights = wz[..., :, None, None] * wy[..., None, :, None] * wx[..., None, None, :]
        corner_weights = corner_weights.flatten(-3)  # (B, S, 8) in (dz, dy, dx) order
        for channel, value in enumerate((values.real, imag, weights)):
            self.sums[channel].view(-1).index_add_(
                0, index, (value[..., None] * corner_weights).flatten()
            )

    def fourier_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(data complex, weight) on the half-spectrum grid (n, n, n//2+1) in FFT order.

        Memory: the sums and the two outputs; each channel is copied straight into its output (the
        stored rows that wrap around are added afterwards), with no folded copy.
        """
        n = self.padded_box
        options = {"dtype": self.dtype, "device": self.device}
        data = torch.empty(n, n, n // 2 + 1, 2, **options)
        weight = torch.empty(n, n, n // 2 + 1, **options)
        for channel, target in ((0, data[..., 0]), (1, data[..., 1]), (2, weight)):
            fold_channel(self.sums[channel], target, self._offset)
        return torch.view_as_complex(data), weight

    def state_dict(self) -> dict:
        """The partial sums and their geometry, for saving or sending elsewhere."""
        return {
            "box": self.box,
            "padding": self.padding,
            "pixel_size_angstrom": self.pixel_size_angstrom,
            "particle_count": self.particle_count,
            "sums": self.sums,
        }

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> FourierAccumulator:
        """An accumulator holding the sums of :meth:`state_dict`."""
        sums = torch.as_tensor(state["sums"])
        result = cls(
            state["box"], state["pixel_size_angstrom"], state["padding"], device, sums.dtype
        )
        result.sums.copy_(sums)
        result.particle_count = int(state["particle_count"])
        return result

    def merge(self, other: FourierAccumulator | dict) -> None:
        """Add another accumulator's sums (same box, pixel size and padding) to this one."""
        state = other.state_dict() if isinstance(other, FourierAccumulator) else other
        mine = (self.box, self.padding, self.pixel_size_angstrom)
        theirs = (state["box"], state["padding"], state["pixel_size_angstrom"])
        if mine[:2] != theirs[:2] or not math.isclose(mine[2], theirs[2], rel_tol=1e-6):
            raise InputError(
                f"cannot merge reconstructions with box/padding/pixel size {theirs} into {mine}"
            )
        self.sums += torch.as_tensor(state["sums"]).to(self.sums)
        self.particle_count += int(state["particle_count"])

    def reconstruct(
        self,
        wiener_constant: float = 1e-3,
        shell_regularisation: torch.Tensor | None = None,
        gridding_iterations: int = 10,
        mask_corners: bool = True,
        release: bool = False,
    ) -> torch.Tensor:
        """The map (L, L, L) [z, y, x] from the sums so far (see :func:`.inversion.invert`).

        With ``release`` the sums are freed once folded (the inversion then holds only its own
        work space); the accumulator cannot be used afterwards.
        """
        if self.particle_count == 0:
            raise InputError("nothing to reconstruct: no particle was added (check the selection)")
        data, weight = self.fourier_sums()
        if release:
            self.sums = torch.empty(0, dtype=self.dtype, device=self.device)
        volume = invert(
            data,
            weight,
            self.box,
            self.padding,
            wiener_constant=wiener_constant,
            shell_regularisation=shell_regularisation,
            gridding_iterations=gridding_iterations,
            mask_corners=mask_corners,
            overwrite=True,
        )
        return volume.to(torch.float32)


def fold_channel(stored: torch.Tensor, target: torch.Tensor, offset: int) -> None:
    """Write one stored channel (n + 2, n + 2, n//2 + 2) [z, y, x] (z and y shifted by ``offset``)
    into ``target`` (n, n, n//2 + 1) in FFT order, adding the rows that wrap around (z, y ≡ ±n/2).

    Stored row ``i`` is frequency ``i − offset``, FFT index ``(i − offset) mod n``: rows 2..n+1 are
    a permutation of the FFT indices (two blocks per axis, copied), rows 0 and 1 wrap onto them.
    """
    n, half = target.shape[0], target.shape[2]
    stored = stored[..., :half]
    index = (torch.arange(stored.shape[0], device=stored.device) - offset) % n
    # Rows 2..n+1: stored row offset + f for f = 0 .. n+1-offset, then rows 2 .. offset-1.
    blocks = [(offset, n + 2, 0), (2, offset, n + 2 - offset)]  # (first, stop, target start)
    for z0, z1, tz in blocks:
        for y0, y1, ty in blocks:
            target[tz : tz + z1 - z0, ty : ty + y1 - y0] = stored[z0:z1, y0:y1]
    wrap = index[:2]
    # Rows z = 0, 1 (every y), then y = 0, 1 for the rows z = 2 .. n+1.
    rows = target.new_zeros(2, n, half)
    rows.index_add_(1, index, stored[:2])
    target.index_add_(0, wrap, rows)
    for z0, z1, tz in blocks:
        target[tz : tz + z1 - z0].index_add_(1, wrap, stored[z0:z1, :2])
