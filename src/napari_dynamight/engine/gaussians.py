"""The Gaussian pseudo-atom model and its image formation (render to a map, project to images).

Density: ``f(x) = Σ_j a_j exp(-|x - c_j|² / (2 σ_j²))`` with centres ``c_j`` in Å from the box
centre (order x, y, z). Rendering and projection splat the centres onto the grid (tri/bilinear),
Fourier transform, multiply by the exact Gaussian kernel and divide by the splat's own sinc² blur,
so the result is the band-limited image of the continuous model, fast and differentiable on any
device.

The linear splat also folds copies of the spectrum back from beyond Nyquist (aliasing): about 7% of
the amplitude at 0.6 × Nyquist and 50–70% near Nyquist, changing with each centre's position within
its pixel. A Gaussian wider than the pixel has little power left there; a narrower one (10,000
Gaussians on a small protein, a Fourier-cropped training box) does not, and its image then changes
with sub-pixel shifts that move nothing in the model. So Gaussians narrower than ``ALIAS_WIDTH``
pixels are splatted on a grid ``oversampling`` times finer, whose spectrum is cropped back to the
box. Against the exact band-limited model (``tests/test_gaussians.py``) the error falls from 16% to
0.8% for projections at σ = 0.28 pixel, and from 15% to 2.3% for a map at σ = 0.53 voxel. The finer
grid is capped at 256³ for a map, so large boxes splat as before.

A projection is the line integral along the beam divided by the voxel size: what summing a rendered
map along z gives, which is also ``relion_project``'s scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError

MAX_WIDTH_CLASSES = 16
ALIAS_WIDTH = 0.75  # σ / pixel from which the plain splat's aliasing is small (see the docstring)
MAX_OVERSAMPLING = 4
MAX_OVERSAMPLED_ELEMENTS = 2**24
# projected centres per pass of project_spectrum_pairs: 2**18 took 0.5-0.8 of the time of 2**19
# for 128 candidates of 1,000 Gaussians (1 and 2 threads), and 2**19 1/1.7 of 2**23
PAIR_POINTS = 2**18


def _per_gaussian(value, n: int) -> torch.Tensor:
    """A scalar (or one-element tensor) shared by all ``n`` Gaussians becomes an (n,) tensor."""
    value = torch.as_tensor(value)
    return value.reshape(1).expand(n).clone() if value.numel() == 1 else value


@dataclass
class GaussianModel:
    """N isotropic Gaussians: centres (N, 3) Å, peak amplitudes (N,), widths σ (N,) Å."""

    positions_angstrom: torch.Tensor
    amplitudes: torch.Tensor
    sigmas_angstrom: torch.Tensor

    def __post_init__(self) -> None:
        n = self.positions_angstrom.shape[0]
        self.amplitudes = _per_gaussian(self.amplitudes, n)
        self.sigmas_angstrom = _per_gaussian(self.sigmas_angstrom, n)

    @property
    def n_gaussians(self) -> int:
        return self.positions_angstrom.shape[0]

    def to(self, device=None, dtype=None) -> GaussianModel:
        return GaussianModel(
            *(
                t.to(device=device, dtype=dtype)
                for t in (self.positions_angstrom, self.amplitudes, self.sigmas_angstrom)
            )
        )

    def detach(self) -> GaussianModel:
        return GaussianModel(
            self.positions_angstrom.detach(),
            self.amplitudes.detach(),
            self.sigmas_angstrom.detach(),
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors, safe to save with ``torch.save`` and load with ``weights_only=True``."""
        return {
            "positions_angstrom": self.positions_angstrom.detach().cpu(),
            "amplitudes": self.amplitudes.detach().cpu(),
            "sigmas_angstrom": self.sigmas_angstrom.detach().cpu(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> GaussianModel:
        return cls(state["positions_angstrom"], state["amplitudes"], state["sigmas_angstrom"])


def _width_classes(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct widths and each Gaussian's class index (a Fourier kernel is applied per class)."""
    values, index = torch.unique(sigmas.detach(), return_inverse=True)
    if len(values) > MAX_WIDTH_CLASSES:
        raise InputError(
            f"Gaussian model has {len(values)} distinct widths; at most {MAX_WIDTH_CLASSES} width "
            "classes are supported (share widths between Gaussians)"
        )
    if len(values) == 1:
        return sigmas[:1], index
    # keep the gradient: pick a representative Gaussian of each class
    first = torch.zeros(len(values), dtype=torch.long, device=sigmas.device)
    first.scatter_(0, index.flip(0), torch.arange(len(index) - 1, -1, -1, device=sigmas.device))
    return sigmas[first], index


def oversampling(sigmas: torch.Tensor, pixel_size_angstrom: float, box: int, dim: int) -> int:
    """How many times finer than the pixel the splat grid must be for the narrowest width: 1 for
    Gaussians at least ``ALIAS_WIDTH`` pixels wide, at most ``MAX_OVERSAMPLING``, and never a grid
    of more than ``MAX_OVERSAMPLED_ELEMENTS`` (256³ for a volume) per image or class."""
    narrowest = float(sigmas.detach().min())
    wanted = MAX_OVERSAMPLING
    if narrowest > 0:
        wanted = math.ceil(ALIAS_WIDTH * pixel_size_angstrom / narrowest)
    fits = int((MAX_OVERSAMPLED_ELEMENTS ** (1 / dim) + 1e-6) // box)
    return max(1, min(MAX_OVERSAMPLING, wanted, fits))


def _cropped_rfftn(grid: torch.Tensor, box: int, dim: int) -> torch.Tensor:
    """The frequencies of a ``box`` grid in the rfftn of a finer ``grid`` (…, F, …, F) of the same
    extent: per full axis the first ``box - box//2`` and last ``box//2``, on the half axis the first
    ``box//2 + 1`` (the Fourier crop that ``fourier.fourier_resample`` applies to images). One axis
    at a time, each cropped before the next is transformed, so the later passes run on the crop."""
    spectrum = torch.fft.rfft(grid, dim=-1)[..., : box // 2 + 1]
    for axis in range(-2, -dim - 1, -1):
        spectrum = torch.fft.fft(spectrum, dim=axis)
        fine = spectrum.shape[axis]
        spectrum = torch.cat(
            [
                spectrum.narrow(axis, 0, box - box // 2),
                spectrum.narrow(axis, fine - box // 2, box // 2),
            ],
            dim=axis,
        )
    return spectrum


def _splat_spectrum(
    coords: torch.Tensor,
    weights: torch.Tensor,
    sigmas: torch.Tensor,
    channel: torch.Tensor,
    box: int,
    pixel_size_angstrom: float,
) -> torch.Tensor:
    """The rfftn (B, C, box, ..., box//2+1) of points at continuous pixel indices ``coords``
    (B, N, d), splatted with ``weights`` per width class and multiplied by each class's Gaussian
    kernel: on an oversampled grid (then cropped) when the narrowest width asks for it."""
    dim = coords.shape[-1]
    factor = oversampling(sigmas, pixel_size_angstrom, box, dim)
    size = box * factor
    if factor > 1:
        coords = coords * factor
    grid = _splat(coords, weights, channel, len(sigmas), size)
    if factor == 1:
        spectrum = torch.fft.rfftn(grid, dim=tuple(range(-dim, 0)))
    else:
        spectrum = _cropped_rfftn(grid, box, dim)
    return spectrum * _kernel_spectrum(
        sigmas.to(coords.dtype), box, pixel_size_angstrom, dim, pixel_size_angstrom / factor
    )


def _splat_rows(
    rows: torch.Tensor,
    columns: torch.Tensor,
    weights: torch.Tensor,
    channel: torch.Tensor,
    n_channels: int,
    box: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The padded grid (B, C·(box+2)²) of a bilinear splat of points at continuous pixel indices
    ``rows`` and ``columns`` (B, N each, any strides), and what a derivative needs: each point's
    top-left corner as an index into its image's padded grid, and its fractional offsets (fy, fx).

    Each image's points are added into its own row of the grid (``scatter_add_`` along the row),
    which spreads the images over the threads; a single ``index_add_`` into the flattened grid runs
    on one thread."""
    padded = box + 2
    plane = padded**2
    y = rows.clamp(-1.0, float(box))
    x = columns.clamp(-1.0, float(box))
    base_y = y.floor().clamp_(max=box - 1)
    base_x = x.floor().clamp_(max=box - 1)
    corner = base_y.long().mul_(padded).add_(base_x.long()).add_(padded + 1)
    if n_channels > 1:
        corner += channel.view(1, -1) * plane
    fy, fx = y.sub_(base_y), x.sub_(base_x)
    bottom = weights * fy
    top = weights - bottom
    top_right, bottom_right = top * fx, bottom * fx
    grid = rows.new_zeros(rows.shape[0], n_channels * plane)
    index = corner.clone()
    grid.scatter_add_(1, index, top.sub_(top_right))
    grid.scatter_add_(1, index.add_(1), top_right)
    grid.scatter_add_(1, index.add_(padded - 1), bottom.sub_(bottom_right))
    grid.scatter_add_(1, index.add_(1), bottom_right)
    return grid, corner, fy, fx


def _crop_padding(grid: torch.Tensor, n_channels: int, box: int) -> torch.Tensor:
    """(B, C, box, box): the padded grid (B, C·(box+2)²) without its one-pixel border."""
    padded = box + 2
    return grid.view(-1, n_channels, padded, padded)[:, :, 1:-1, 1:-1].contiguous()


class _Splat(torch.autograd.Function):
    """Bilinear splat of image points with a hand-written backward (and forward-mode derivative).

    The grid is padded by one pixel on each side, so that every point whose coordinates lie in
    [-1, box] writes its four corners without bounds checks (the padding is cropped away, which
    drops what lands outside, exactly as the bounds checks would); points further out are clamped
    into the padding and get no gradient along the clamped axis. The backward gathers the grid's
    gradient at the four corners once and forms the coordinate and weight gradients from them,
    instead of keeping every intermediate of the forward for autograd."""

    @staticmethod
    def forward(ctx, coords, weights, channel, n_channels: int, box: int):
        grid, corner, fy, fx = _splat_rows(
            coords[..., 0], coords[..., 1], weights, channel, n_channels, box
        )
        ctx.save_for_backward(corner, fy, fx, weights, coords)
        ctx.save_for_forward(corner, fy, fx, weights, coords)
        ctx.shape = (n_channels, box)
        return _crop_padding(grid, n_channels, box)

    @staticmethod
    def jvp(ctx, coords_tangent, weights_tangent, *_):
        corner, fy, fx, weights, coords = ctx.saved_tensors
        n_channels, box = ctx.shape
        padded = box + 2
        batch, n = fy.shape
        unclamped = (coords >= -1.0) & (coords < float(box))
        zero = torch.zeros_like(fy)
        dw = zero if weights_tangent is None else weights_tangent.expand(batch, n)
        if coords_tangent is None:
            dy = dx = zero
        else:
            moved = coords_tangent * unclamped * weights.expand(batch, n).unsqueeze(-1)
            dy, dx = moved[..., 0], moved[..., 1]
        # d/dt of w (1-fy)(1-fx), w (1-fy) fx, w fy (1-fx), w fy fx
        values = (
            (1 - fy) * (1 - fx) * dw - dy * (1 - fx) - dx * (1 - fy),
            (1 - fy) * fx * dw - dy * fx + dx * (1 - fy),
            fy * (1 - fx) * dw + dy * (1 - fx) - dx * fy,
            fy * fx * dw + dy * fx + dx * fy,
        )
        grid = fy.new_zeros(batch, n_channels * padded**2)
        for offset, value in zip((0, 1, padded, padded + 1), values, strict=True):
            grid = grid.scatter_add(1, corner + offset, value)  # out of place, for vmap
        return _crop_padding(grid, n_channels, box)

    @staticmethod
    def backward(ctx, grad_grid):
        corner, fy, fx, weights, coords = ctx.saved_tensors
        _, box = ctx.shape
        padded = box + 2
        unclamped = (coords >= -1.0) & (coords < float(box))
        grad = torch.nn.functional.pad(grad_grid, [1, 1, 1, 1]).flatten(1)
        g00, g01 = grad.gather(1, corner), grad.gather(1, corner + 1)
        g10, g11 = grad.gather(1, corner + padded), grad.gather(1, corner + (padded + 1))
        left, right = g01 - g00, g11 - g10  # along x, in the top and the bottom row
        top, bottom = (
            torch.addcmul(g00, fx, left),
            torch.addcmul(g10, fx, right),
        )  # interpolated along x
        grad_coords = grad_weights = None
        if ctx.needs_input_grad[0]:
            w = weights.expand(fy.shape)
            grad_coords = (
                torch.stack([(bottom - top) * w, torch.lerp(left, right, fy) * w], dim=-1)
                * unclamped
            )
        if ctx.needs_input_grad[1]:
            grad_weights = torch.lerp(top, bottom, fy)
            if weights.dim() < 2:
                grad_weights = grad_weights.sum(0).view(weights.shape)
        return grad_coords, grad_weights, None, None, None


def _splat(
    coords: torch.Tensor, weights: torch.Tensor, channel: torch.Tensor, n_channels: int, box: int
) -> torch.Tensor:
    """Linear-interpolation splat of points onto a (batch, channel, box^d) grid.

    ``coords`` (B, N, d) are continuous pixel indices in the order of the grid axes; points outside
    the grid are dropped. ``weights`` (B, N) or (N,), ``channel`` (N,) class per point. Images
    (d = 2) use :class:`_Splat`; volumes use bounds checks (a padded copy of a large volume would
    cost memory).
    """
    if coords.shape[-1] == 2:
        return _Splat.apply(coords, weights, channel, n_channels, box)
    return _splat_checked(coords, weights, channel, n_channels, box)


def _splat_checked(
    coords: torch.Tensor, weights: torch.Tensor, channel: torch.Tensor, n_channels: int, box: int
) -> torch.Tensor:
    """:func:`_splat` with a bounds check per corner and autograd's backward."""
    batch, n, dim = coords.shape
    base = torch.floor(coords)
    frac = coords - base
    base = base.long()
    weights = weights.expand(batch, n)
    grid = coords.new_zeros(batch * n_channels * box**dim)
    batch_offset = (torch.arange(batch, device=coords.device) * n_channels).view(
        batch, 1
    ) + channel.view(1, n)
    for corner in range(2**dim):
        offsets = [(corner >> k) & 1 for k in range(dim)]
        flat = batch_offset
        w = weights
        inside = torch.ones_like(weights, dtype=torch.bool)
        for axis, o in enumerate(offsets):
            idx = base[..., axis] + o
            inside = inside & (idx >= 0) & (idx < box)
            flat = flat * box + idx.clamp(0, box - 1)
            w = w * (frac[..., axis] if o else 1.0 - frac[..., axis])
        grid.index_add_(0, flat.reshape(-1), (w * inside).reshape(-1))
    return grid.view(batch, n_channels, *([box] * dim))


def _kernel_spectrum(
    sigmas: torch.Tensor, box: int, pixel_size: float, dim: int, splat_pixel_size: float
) -> torch.Tensor:
    """Fourier transform (C, box, ..., box//2+1) of the sampled Gaussian kernel of each width class
    on an rfftn grid, with the blur of a splat on a grid of ``splat_pixel_size`` (the pixel, or
    finer when oversampled) divided out.

    Both the Gaussian ``exp(-2π²σ²|f|²)`` and the blur ``Π sinc²(f_k p)`` are products over the
    axes, so the kernel is the outer product of 1D factors: no box^dim frequency grid is ever built
    (that grid cost more than the FFTs of a box-128 render)."""
    full = torch.fft.fftfreq(box, d=pixel_size, device=sigmas.device, dtype=sigmas.dtype)
    half = torch.fft.rfftfreq(box, d=pixel_size, device=sigmas.device, dtype=sigmas.dtype)
    s = sigmas.view(-1, 1)
    norm = (2 * math.pi * sigmas**2 / pixel_size**2) ** (dim / 2)
    kernel = norm.view(-1, *([1] * dim))
    for axis, f in enumerate([full] * (dim - 1) + [half]):
        factor = (
            torch.exp(-2 * math.pi**2 * s**2 * f**2) / torch.sinc(f * splat_pixel_size) ** 2
        )  # (C, n)
        shape = [len(sigmas)] + [1] * dim
        shape[axis + 1] = len(f)
        kernel = kernel * factor.view(shape)
    return kernel


def render_volume(model: GaussianModel, box: int, voxel_size_angstrom: float) -> torch.Tensor:
    """The model's density sampled on a box³ grid [z, y, x] with the given voxel size."""
    positions = model.positions_angstrom
    sigmas, channel = _width_classes(model.sigmas_angstrom)
    coords = positions.flip(-1) / voxel_size_angstrom + box // 2  # (N, 3) in z, y, x index order
    spectrum = _splat_spectrum(
        coords.unsqueeze(0), model.amplitudes, sigmas, channel, box, voxel_size_angstrom
    )[0]
    return torch.fft.irfftn(spectrum.sum(0), s=(box, box, box), dim=(-3, -2, -1))


def image_positions(
    positions_angstrom: torch.Tensor, rotations: torch.Tensor, origin_angstrom: torch.Tensor
) -> torch.Tensor:
    """Where the centres land in each image (B, N, 2), Å from the box centre, x then y.

    ``positions_angstrom`` is (N, 3) or per image (B, N, 3); the image position of map point ``x``
    is ``(A x)[:2] - origin`` (RELION: the particle centre sits at box centre − origin).
    """
    if positions_angstrom.ndim == 2:
        rotated = torch.einsum("bij,nj->bni", rotations[:, :2, :], positions_angstrom)
    else:
        rotated = torch.einsum("bij,bnj->bni", rotations[:, :2, :], positions_angstrom)
    return rotated - origin_angstrom.unsqueeze(1)


def _pixel_coordinates(
    positions_angstrom: torch.Tensor,
    rotations: torch.Tensor,
    origin_angstrom: torch.Tensor,
    box: int,
    pixel_size_angstrom: float,
) -> torch.Tensor:
    """Continuous (row, column) pixel indices (B, N, 2) of the centres in each image: the
    :func:`image_positions` flipped to (y, x), in pixels, from the box corner; one batched
    product."""
    matrix = rotations[:, [1, 0], :].transpose(1, 2) / pixel_size_angstrom  # (B, 3, 2)
    offset = (box // 2 - origin_angstrom.flip(-1) / pixel_size_angstrom).unsqueeze(1)  # (B, 1, 2)
    positions = positions_angstrom
    if positions.ndim == 2:
        positions = positions.expand(len(rotations), -1, -1)
    return torch.baddbmm(offset, positions, matrix)


def project(
    model: GaussianModel,
    rotations: torch.Tensor,
    origin_angstrom: torch.Tensor,
    box: int,
    pixel_size_angstrom: float,
    positions_angstrom: torch.Tensor | None = None,
) -> torch.Tensor:
    """Projection images (B, box, box) [y, x] of the model under RELION poses, without CTF (images
    as the microscope forms them: ``engine.image_formation``).

    ``positions_angstrom`` (B, N, 3) overrides the model's centres per image (deformed models).
    """
    spectrum = project_spectrum(
        model, rotations, origin_angstrom, box, pixel_size_angstrom, positions_angstrom
    )
    return torch.fft.irfft2(spectrum, s=(box, box))


def project_spectrum(
    model: GaussianModel,
    rotations: torch.Tensor,
    origin_angstrom: torch.Tensor,
    box: int,
    pixel_size_angstrom: float,
    positions_angstrom: torch.Tensor | None = None,
) -> torch.Tensor:
    """The rfft2 (B, box, box//2+1) of the projections, before any CTF (see
    ``engine.image_formation``)."""
    positions = model.positions_angstrom if positions_angstrom is None else positions_angstrom
    coords = _pixel_coordinates(positions, rotations, origin_angstrom, box, pixel_size_angstrom)
    return _spectrum_of_coordinates(model, coords, box, pixel_size_angstrom)


def project_spectrum_pairs(
    model: GaussianModel,
    rotations: torch.Tensor,
    origin_angstrom: torch.Tensor,
    box: int,
    pixel_size_angstrom: float,
    positions_angstrom: torch.Tensor,
    reduce: Callable[[torch.Tensor, slice, slice], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The rfft2 (B, K, box, box//2+1) of every pose (B) applied to every set of centres (K, N, 3):
    what :func:`project_spectrum` gives for the B·K repeated poses and positions, without repeating
    them.

    With ``reduce``, each pass's spectra (b, k, box, box//2+1) of the poses and candidates of two
    slices go to ``reduce(spectra, poses, candidates)`` and the (B, K, …) result holds what it
    returns for them (b, k, …): the spectra of all pairs, which run to hundreds of MB, are never
    held at once, and each pass's stay in the cache for it."""
    matrix = rotations[:, [1, 0], :] / pixel_size_angstrom  # (B, 2, 3): row, column
    offset = box // 2 - origin_angstrom.flip(-1) / pixel_size_angstrom  # (B, 2)
    count, n = positions_angstrom.shape[:2]
    # a pass projects poses × candidates with at most PAIR_POINTS centres: its arrays stay in cache
    per_pass = max(1, min(count, PAIR_POINTS // max(1, n)))  # candidates
    poses_per_pass = max(1, PAIR_POINTS // max(1, per_pass * n))
    points = positions_angstrom.reshape(count * n, 3).t().contiguous()  # (3, KN)
    out = None
    for start in range(0, len(rotations), poses_per_pass):
        b = min(poses_per_pass, len(rotations) - start)
        poses = slice(start, start + b)
        rows = matrix[poses].transpose(0, 1).reshape(2 * b, 3)
        shift = offset[poses].t().reshape(2 * b, 1)
        for first in range(0, count, per_pass):
            k = min(per_pass, count - first)
            # one product gives all rows, then all columns: (2, b·k, N), seen as (b·k, N, 2)
            coords = torch.addmm(shift, rows, points[:, first * n : (first + k) * n])
            coords = coords.view(2, b * k, n).permute(1, 2, 0)
            spectra = _spectrum_of_coordinates(model, coords, box, pixel_size_angstrom)
            spectra = spectra.view(b, k, *spectra.shape[1:])
            if reduce is not None:
                spectra = reduce(spectra, poses, slice(first, first + k))
            if out is None:
                out = spectra.new_empty(len(rotations), count, *spectra.shape[2:])
            out[poses, first : first + k] = spectra
    return out


def _spectrum_of_coordinates(
    model: GaussianModel, coords: torch.Tensor, box: int, pixel_size_angstrom: float
) -> torch.Tensor:
    """The rfft2 (B, box, box//2+1) of the model's Gaussians at pixel coordinates (B, N, 2)
    (row, column)."""
    sigmas, channel = _width_classes(model.sigmas_angstrom)
    line_integral = (
        model.amplitudes * math.sqrt(2 * math.pi) * model.sigmas_angstrom / pixel_size_angstrom
    )
    return _splat_spectrum(coords, line_integral, sigmas, channel, box, pixel_size_angstrom).sum(1)


def normalised_cross_correlation(
    a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray
) -> np.ndarray:
    """Per-image NCC of two stacks (B, ...): mean-subtracted, unit-norm dot product."""
    a = (
        torch.as_tensor(np.array(a, dtype=np.float64))
        if not isinstance(a, torch.Tensor)
        else a.double()
    )
    b = (
        torch.as_tensor(np.array(b, dtype=np.float64))
        if not isinstance(b, torch.Tensor)
        else b.double()
    )
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-30)).numpy()
