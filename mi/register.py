"""Rigid and affine image registration by maximising mutual information (2-D and 3-D).

Conventions (the whole module):

* **Pixel coordinates** are in index order ``(x, y)`` for 2-D and ``(x, y, z)`` for 3-D:
  ``x`` is the column (the array's last axis, W), ``y`` the row (H), ``z`` the slice (D);
  pixel centres sit at the integers ``0 .. size - 1``. This is the order of ITK/SimpleITK
  indices (spacing 1, origin 0) and of ``affine_grid``'s ``theta``; it is the *reverse* of
  the array's axis order (``image[y, x]``, ``volume[z, y, x]``). Units: pixels (voxels);
  voxel spacing is ignored, so "rigid" is rigid in voxel units.
* A **matrix** ``A`` ((d+1) x (d+1), homogeneous, float64) maps **fixed** pixel
  coordinates to **moving** pixel coordinates: ``p_moving = A @ [p_fixed, 1]``; the warped
  image is ``warped(p) = moving(A p)`` (what grid_sample computes, and the convention of
  the transform SimpleITK's registration returns).
* **Rigid**: ``A = [[R, c - R c + t], [0, 1]]``: a rotation ``R`` about the fixed image's
  centre ``c = (size - 1) / 2`` and a translation ``t`` (pixels, the displacement of that
  centre). In 2-D a positive angle turns the x axis towards the y axis: clockwise on screen
  with row 0 at the top (SimpleITK's Euler2DTransform has the same sign). In 3-D the
  rotation is a rotation vector (axis times angle) in (x, y, z). **Affine**: any invertible
  linear part ``L`` in place of ``R``.
* **theta** is the (d, d+1) matrix for ``torch.nn.functional.affine_grid(theta, size,
  align_corners=False)`` (normalised coordinates in [-1, 1], pixel *edges* at +-1) that
  resamples the moving image onto the fixed grid exactly as ``A`` does.

Functions (the ``mi register FIXED MOVING [-o OUT]`` subcommand is built from these)::

    register(fixed, moving, *, transform="rigid", levels=3, iterations=None, lr=0.5,
             loss=None, initial=None, mask=None, device=None, progress=True,
             **loss_kwargs) -> RegistrationResult
    run_cli(fixed_path, moving_path, out_dir=".", transform="rigid", *, levels=3,
            iterations=None, lr=0.5, progress=True, **loss_kwargs) -> dict of Paths
            # keys "warped" (PNG for 2-D, .npy for 3-D), "figure" (PNG), "matrix" (.txt)
    load_image(path) -> float32 ndarray (H, W) or (D, H, W)
    demo_pair(shape=(192, 160), angle_deg=7.0, shift=(6.0, -4.0)) -> (fixed, moving, true_matrix)
    demo_volume_pair(size=40, ...) -> (fixed, moving, true_matrix)
    matrix_to_theta(matrix, fixed_shape, moving_shape) / theta_to_matrix(...)
    warp(moving, matrix, fixed_shape) -> (warped, overlap)
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import joint_histogram, mutual_information
from .modules import MutualInformationLoss

__all__ = [
    "RegistrationResult",
    "register",
    "run_cli",
    "load_image",
    "demo_pair",
    "demo_volume_pair",
    "matrix_to_theta",
    "theta_to_matrix",
    "warp",
    "transform_error",
]

TRANSFORMS = ("rigid", "affine")
#: The default loss: Studholme's normalised MI, 32 bins, cubic B-spline Parzen window (the
#: window of Mattes' MI; 4 x 4 bins per pixel, so about 9x cheaper than a 1-bin Gaussian).
DEFAULT_LOSS = dict(num_bins=32, normalize="studholme", kernel="bspline")
#: How mi_before / mi_after are measured (independent of the loss used to register).
SCORE = dict(num_bins=32, normalize="studholme", kernel="bspline")
MIN_LEVEL_SIZE = 4
ImageLike = Union[Tensor, np.ndarray]


# ---------------------------------------------------------------- coordinates


def _extent(shape: Sequence[int], scale: float = 1.0) -> Tensor:
    """Extent in full-resolution pixels per axis, in (x, y[, z]) order, of an array shape."""
    return torch.tensor([scale * s for s in reversed(tuple(shape))], dtype=torch.float64)


def _to_normalized(extent: Tensor) -> Tensor:
    """(d+1)x(d+1) matrix: pixel coordinates -> grid_sample's normalised ones (align_corners=False).

    ``n = (2 p + 1) / e - 1``: pixel centre 0 -> -1 + 1/e, pixel edges -0.5 and e - 0.5 -> -1
    and +1. For a pyramid level whose pixels are ``s`` full-resolution pixels wide, pass
    ``e = s * level_size``: level pixel ``q`` is centred on full-resolution ``s q + (s-1)/2``,
    so ``p`` stays in full-resolution pixels at every level.
    """
    d = extent.numel()
    n = torch.eye(d + 1, dtype=torch.float64)
    n[:d, :d] = torch.diag(2.0 / extent)
    n[:d, d] = 1.0 / extent - 1.0
    return n


def _theta(matrix: Tensor, fixed_extent: Tensor, moving_extent: Tensor) -> Tensor:
    d = fixed_extent.numel()
    nf, nm = _to_normalized(fixed_extent), _to_normalized(moving_extent)
    return (nm @ matrix @ torch.linalg.inv(nf))[:d]


def matrix_to_theta(matrix, fixed_shape: Sequence[int], moving_shape: Sequence[int]) -> Tensor:
    """Pixel matrix (fixed -> moving, (x, y[, z]) order) -> affine_grid theta (d, d+1).

    ``fixed_shape``/``moving_shape`` are the spatial array shapes ((H, W) or (D, H, W)).
    Use ``affine_grid(theta[None], (1, C, *fixed_shape), align_corners=False)`` and
    ``grid_sample(moving, grid, align_corners=False)``.
    """
    m = torch.as_tensor(matrix, dtype=torch.float64)
    return _theta(m, _extent(fixed_shape), _extent(moving_shape))


def theta_to_matrix(theta, fixed_shape: Sequence[int], moving_shape: Sequence[int]) -> Tensor:
    """The inverse of :func:`matrix_to_theta`: theta (d, d+1) -> pixel matrix (d+1, d+1)."""
    t = torch.as_tensor(theta, dtype=torch.float64)
    d = t.shape[0]
    full = torch.eye(d + 1, dtype=torch.float64)
    full[:d] = t
    nf, nm = _to_normalized(_extent(fixed_shape)), _to_normalized(_extent(moving_shape))
    return torch.linalg.inv(nm) @ full @ nf


def _sample(moving: Tensor, theta: Tensor, out_shape: Sequence[int]):
    """Bilinear/trilinear resampling (zero padding) and the overlap weight in [0, 1]."""
    both = torch.cat([moving, torch.ones_like(moving)], dim=1)
    grid = F.affine_grid(theta.to(moving)[None], (1, 2, *out_shape), align_corners=False)
    out = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :1], out[:, 1:]


def warp(moving: ImageLike, matrix, fixed_shape: Sequence[int]):
    """Resample ``moving`` onto a grid of ``fixed_shape`` through the pixel ``matrix``.

    Returns ``(warped, overlap)``, both (1, 1, *fixed_shape) float32: ``warped(p) =
    moving(A p)`` (bilinear/trilinear, zero outside), ``overlap`` the same resampling of
    an image of ones (1 inside the moving image, fading to 0 over its last half pixel).
    """
    m = _as_image("moving", moving, None)
    theta = matrix_to_theta(matrix, fixed_shape, m.shape[2:])
    return _sample(m, theta, tuple(fixed_shape))


# ---------------------------------------------------------------- the transform


def _skew(w: Tensor) -> Tensor:
    """Rotation generator: 2-D angle (1,) -> 2x2; 3-D rotation vector (3,) -> 3x3."""
    z = torch.zeros((), dtype=w.dtype)
    if w.numel() == 1:
        return torch.stack([torch.stack([z, -w[0]]), torch.stack([w[0], z])])
    x, y, k = w
    return torch.stack([torch.stack([z, -k, y]), torch.stack([k, z, -x]), torch.stack([-y, x, z])])


class _Transform(nn.Module):
    """Parameters of a rigid or affine transform about the fixed image's centre.

    Scaled so that one unit of every parameter moves the image by about one pixel:
    rotation angle = parameter / r and linear part = L0 + parameters / r, with r the half
    diagonal of the fixed image; translation in pixels. Adam's step (``lr``) is then a
    displacement in pixels for all of them.
    """

    def __init__(self, kind: str, center: Tensor, radius: float, initial: Tensor):
        super().__init__()
        d = center.numel()
        self.kind, self.d, self.radius = kind, d, radius
        self.register_buffer("center", center)
        self.register_buffer("linear0", initial[:d, :d].clone())
        t0 = initial[:d, d] - center + initial[:d, :d] @ center
        self.translation = nn.Parameter(t0.clone())
        n = (1 if d == 2 else 3) if kind == "rigid" else d * d
        self.linear = nn.Parameter(torch.zeros(n, dtype=torch.float64))

    def forward(self) -> Tensor:
        d, c = self.d, self.center
        if self.kind == "rigid":
            lin = torch.linalg.matrix_exp(_skew(self.linear / self.radius)) @ self.linear0
        else:
            lin = self.linear0 + self.linear.view(d, d) / self.radius
        top = torch.cat([lin, (c - lin @ c + self.translation)[:, None]], dim=1)
        bottom = torch.zeros(1, d + 1, dtype=top.dtype)
        bottom[0, d] = 1.0
        return torch.cat([top, bottom], dim=0)


# ---------------------------------------------------------------- the result


@dataclass
class RegistrationResult:
    """What :func:`register` found.

    Attributes:
        matrix: (d+1, d+1) float64, fixed pixel coordinates (x, y[, z]) -> moving pixel
            coordinates (see the module docstring).
        theta: (d, d+1) float64, the same transform for ``affine_grid(theta[None], (1, C,
            *fixed_shape), align_corners=False)`` + ``grid_sample(moving, ...)``.
        warped: the moving image resampled onto the fixed grid (bilinear, zero outside), in
            the layout the fixed image was given ((H, W), (1, 1, H, W), ...).
        loss_history: the loss at every iteration, coarsest level first.
        mi_before, mi_after: Studholme's normalised MI ``(H(f) + H(w)) / H(f, w)`` in [1, 2]
            (32 bins, cubic B-spline window) of the full-resolution fixed image and the
            moving image resampled by ``initial`` (identity) / by ``matrix``, over their
            overlap times the fixed mask.
        transform: "rigid" or "affine". center: the fixed image's centre (pixels, (x, y[, z])).
        iterations: iterations run per level, coarsest first. seconds: wall time.
    """

    matrix: Tensor
    theta: Tensor
    warped: Tensor
    loss_history: list
    mi_before: float
    mi_after: float
    transform: str
    center: Tensor
    iterations: tuple = ()
    seconds: float = 0.0
    fixed_shape: tuple = field(default=(), repr=False)

    @property
    def dim(self) -> int:
        return self.matrix.shape[0] - 1

    @property
    def rotation(self) -> Tensor:
        """The rotation part (d x d): the linear part itself for rigid, its polar factor
        (the nearest rotation) for affine."""
        lin = self.matrix[: self.dim, : self.dim]
        u, _, vh = torch.linalg.svd(lin)
        return u @ vh

    @property
    def angle_deg(self) -> float:
        """2-D: the signed rotation angle in degrees (x towards y); 3-D: the total angle."""
        r = self.rotation
        if self.dim == 2:
            return math.degrees(math.atan2(r[1, 0].item(), r[0, 0].item()))
        return math.degrees(math.acos(max(-1.0, min(1.0, (r.trace().item() - 1.0) / 2.0))))

    @property
    def rotation_vector_deg(self) -> Tensor:
        """3-D: rotation axis (x, y, z) times angle in degrees (angles below 180 degrees)."""
        if self.dim != 3:
            raise ValueError("rotation_vector_deg is for 3-D transforms; use angle_deg in 2-D")
        r, angle = self.rotation, math.radians(self.angle_deg)
        axis = torch.stack([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
        n = axis.norm()
        return torch.zeros(3, dtype=r.dtype) if n < 1e-12 else axis / n * math.degrees(angle)

    @property
    def translation(self) -> Tensor:
        """Displacement (pixels, (x, y[, z])) of the fixed image's centre: ``A c - c``."""
        return self.transform_points(self.center) - self.center

    def transform_points(self, points) -> Tensor:
        """Fixed pixel coordinates (..., d) in (x, y[, z]) -> moving pixel coordinates."""
        p = torch.as_tensor(points, dtype=torch.float64)
        d = self.dim
        return p @ self.matrix[:d, :d].T + self.matrix[:d, d]


# ---------------------------------------------------------------- argument checks


def _as_image(name: str, x, device) -> Tensor:
    """(H, W) / (D, H, W) / (1, 1, H, W) / (1, 1, D, H, W) tensor or array -> (1, 1, ...) float32."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold real numbers, got {x.dtype}")
    if x.ndim in (2, 3):
        x = x[None, None]
    elif x.ndim in (4, 5):
        if x.shape[:2] != (1, 1):
            raise ValueError(
                f"{name} must be one single-channel image: (1, 1, H, W) or (1, 1, D, H, W), "
                f"got shape {tuple(x.shape)}"
            )
    else:
        raise ValueError(
            f"{name} must be 2-D (H, W) / (1, 1, H, W) or 3-D (D, H, W) / (1, 1, D, H, W), "
            f"got shape {tuple(x.shape)}"
        )
    x = x.detach().to(device=device if device is not None else x.device, dtype=torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name} must be a positive int, got {v}")
    return int(v)


def _check_iterations(iterations, levels: int) -> tuple:
    if iterations is None:  # coarse levels are cheap: more steps there
        return tuple(min(200, 30 * 2**lvl) for lvl in reversed(range(levels)))
    if isinstance(iterations, (int, np.integer)) and not isinstance(iterations, bool):
        return (_positive_int("iterations", iterations),) * levels
    try:
        its = tuple(iterations)
    except TypeError:
        raise TypeError(
            f"iterations must be an int or one int per level, got {type(iterations).__name__}"
        ) from None
    if len(its) != levels:
        raise ValueError(f"iterations must give one count per level ({levels}), got {len(its)}")
    return tuple(_positive_int("iterations", i) for i in its)


def _check_initial(initial, d: int, kind: str) -> Tensor:
    if initial is None:
        return torch.eye(d + 1, dtype=torch.float64)
    if not isinstance(initial, (Tensor, np.ndarray, list, tuple)):
        raise TypeError(f"initial must be a (d+1)x(d+1) matrix, got {type(initial).__name__}")
    m = torch.as_tensor(initial, dtype=torch.float64).detach().cpu()
    if m.shape != (d + 1, d + 1):
        raise ValueError(
            f"initial must be a {d + 1}x{d + 1} matrix for {d}-D images, got shape {tuple(m.shape)}"
        )
    if not torch.isfinite(m).all():
        raise ValueError("initial contains NaN or Inf")
    last = torch.zeros(d + 1, dtype=torch.float64)
    last[d] = 1.0
    if not torch.allclose(m[d], last):
        raise ValueError(f"initial's last row must be {last.tolist()}, got {m[d].tolist()}")
    s = torch.linalg.svdvals(m[:d, :d])
    if s[-1] <= 1e-8 * max(s[0].item(), 1.0):
        raise ValueError("initial is not invertible (its linear part is singular)")
    if kind == "rigid":
        lin = m[:d, :d]
        err = (lin.T @ lin - torch.eye(d, dtype=torch.float64)).abs().max().item()
        if err > 1e-4 or torch.linalg.det(lin) < 0:
            raise ValueError(
                "transform='rigid' needs an initial matrix whose linear part is a rotation "
                "(orthonormal, determinant +1); use transform='affine' for a general one"
            )
    return m


def _check_mask(mask, fixed: Tensor) -> Tensor | None:
    if mask is None:
        return None
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, numpy array or None, got {type(mask).__name__}")
    if not (mask.dtype == torch.bool or mask.is_floating_point()):
        raise TypeError(f"mask must be bool or floating, got {mask.dtype}")
    m = mask.detach().to(fixed.device, torch.float32)
    if m.ndim == fixed.ndim - 2:
        m = m[None, None]
    if m.shape != fixed.shape:
        raise ValueError(
            f"mask must have the fixed image's shape {tuple(fixed.shape[2:])}, got {tuple(mask.shape)}"
        )
    if not (torch.isfinite(m).all() and (m >= 0).all()):
        raise ValueError("mask must be finite and non-negative")
    if not (m > 0).any():
        raise ValueError("mask keeps no pixel (all zero)")
    return m


def _make_loss(loss, loss_kwargs: dict) -> Callable:
    if loss is None or isinstance(loss, dict):
        return MutualInformationLoss(**{**DEFAULT_LOSS, **(loss or {}), **loss_kwargs})
    if loss_kwargs:
        raise TypeError(f"loss keywords {sorted(loss_kwargs)} given with a loss module; pass one")
    if not callable(loss):
        raise TypeError(f"loss must be None, a dict of keywords or a callable, got {type(loss).__name__}")
    return loss


# ---------------------------------------------------------------- registration


def _pyramid(x: Tensor | None, levels: int) -> list:
    """[finest, ..., coarsest]: average pooling by 2 per level (odd sizes drop the last row)."""
    if x is None:
        return [None] * levels
    pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
    out = [x]
    for _ in range(levels - 1):
        out.append(pool(out[-1], 2))
    return out


def _score(fixed: Tensor, moving: Tensor, matrix: Tensor, mask: Tensor | None):
    """(Studholme NMI over overlap x mask, warped) at full resolution."""
    theta = matrix_to_theta(matrix, fixed.shape[2:], moving.shape[2:])
    warped, overlap = _sample(moving, theta, fixed.shape[2:])
    w = overlap if mask is None else overlap * mask
    return mutual_information(fixed, warped, mask=w, **SCORE).item(), warped


def _step_size(lr0: float, it: int, n: int) -> float:
    """Cosine decay from lr0 to 5 % of lr0 over a level's n steps (a linear warm-up was
    tried: with short schedules it cost accuracy, 0.04 -> 0.28 degree on the 3-D pair)."""
    return lr0 * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * it / n)))


def _show_progress(level: int, levels: int, it: int, n: int, loss: float):
    width = 24
    done = width * it // n
    sys.stderr.write(
        f"\rlevel {levels - level}/{levels} (1/{2**level} size) "
        f"[{'#' * done}{'.' * (width - done)}] {it:4d}/{n} loss {loss:+.5f}"
    )
    if it == n:
        sys.stderr.write("\n")
    sys.stderr.flush()


def register(
    fixed: ImageLike,
    moving: ImageLike,
    *,
    transform: str = "rigid",
    levels: int = 3,
    iterations: int | Sequence[int] | None = None,
    lr: float = 0.5,
    loss: None | dict | Callable = None,
    initial=None,
    mask: ImageLike | None = None,
    device=None,
    progress: bool = True,
    **loss_kwargs,
) -> RegistrationResult:
    """Find the rigid or affine transform that aligns ``moving`` to ``fixed`` by maximising MI.

    Coarse to fine over a pyramid (average pooling by 2 per level); at each level Adam
    updates the transform parameters with a cosine-decaying step. Each iteration resamples
    the moving image onto the fixed grid (grid_sample, bilinear/trilinear, zero padding) and
    evaluates the loss with weights = overlap (grid_sample of ones: pixels sampled from
    outside the moving image do not count) x the fixed ``mask``.

    Args:
        fixed, moving: 2-D (H, W) / (1, 1, H, W) or 3-D (D, H, W) / (1, 1, D, H, W) tensors
            or arrays, any real dtype (computed in float32); their shapes may differ, their
            number of dimensions may not. A 3-D array is a volume, not (C, H, W).
        transform: "rigid" (rotation about the fixed centre + translation) or "affine".
        levels: pyramid levels (1 = full resolution only); the coarsest level must still
            be at least 4 pixels along every axis.
        iterations: Adam steps per level, coarsest first: an int for every level, one int
            per level, or None for ``min(200, 30 * 2**level)`` (120, 60, 30 for 3 levels).
        lr: Adam's step, in full-resolution pixels (rotations and linear parts are scaled
            so one unit moves the image's corners by about a pixel); level ``l`` (1/2**l
            size) starts at ``lr * 2**l`` and decays to 5 % of that (cosine).
        loss: None (``MutualInformationLoss(num_bins=32, normalize="studholme",
            kernel="bspline")``, updated with ``loss_kwargs``), a dict of keywords for
            :class:`mi.MutualInformationLoss`, or any callable ``loss(fixed, warped,
            weights) -> scalar`` to minimise (e.g. an nn.Module).
        **loss_kwargs: keywords for the default loss (num_bins, sigma, kernel, normalize, ...).
        initial: starting (d+1)x(d+1) pixel matrix, fixed -> moving, (x, y[, z]) order
            (default identity); for rigid its linear part must be a rotation.
        mask: optional fixed-image weights (bool or non-negative float), fixed's shape.
        device: where to compute (default: the fixed image's device).
        progress: print a text progress bar to stderr.

    Returns:
        :class:`RegistrationResult` (matrix, theta, warped, loss_history, mi_before, mi_after).
    """
    t_start = time.perf_counter()
    if not isinstance(transform, str):
        raise TypeError(f"transform must be a string, got {type(transform).__name__}")
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    f = _as_image("fixed", fixed, device)
    m = _as_image("moving", moving, f.device)
    if f.ndim != m.ndim:
        raise ValueError(
            f"fixed and moving must both be 2-D or both 3-D, got spatial shapes "
            f"{tuple(f.shape[2:])} and {tuple(m.shape[2:])}"
        )
    levels = _positive_int("levels", levels)
    smallest = min(min(f.shape[2:]), min(m.shape[2:]))
    if smallest // 2 ** (levels - 1) < MIN_LEVEL_SIZE:
        raise ValueError(
            f"levels={levels} shrinks the smallest side ({smallest} pixels) below "
            f"{MIN_LEVEL_SIZE} pixels; use fewer levels"
        )
    its = _check_iterations(iterations, levels)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    d = f.ndim - 2
    init = _check_initial(initial, d, transform)
    w = _check_mask(mask, f)
    loss_fn = _make_loss(loss, loss_kwargs)
    if isinstance(loss_fn, nn.Module):
        loss_fn = loss_fn.to(f.device)

    ext_f = _extent(f.shape[2:])
    center = (ext_f - 1.0) / 2.0
    model = _Transform(transform, center, float(ext_f.norm()) / 2.0, init)
    fs, ms, ws = _pyramid(f, levels), _pyramid(m, levels), _pyramid(w, levels)
    history = []
    for level in reversed(range(levels)):  # coarse to fine
        scale = 2.0**level
        fl, ml, wl = fs[level], ms[level], ws[level]
        nf = _to_normalized(_extent(fl.shape[2:], scale))
        nm = _to_normalized(_extent(ml.shape[2:], scale))
        nf_inv = torch.linalg.inv(nf)
        n = its[levels - 1 - level]
        lr0 = lr * scale
        opt = torch.optim.Adam(model.parameters(), lr=lr0)
        for it in range(n):
            for group in opt.param_groups:
                group["lr"] = _step_size(lr0, it, n)
            opt.zero_grad(set_to_none=True)
            theta = (nm @ model() @ nf_inv)[:d]
            warped, overlap = _sample(ml, theta, fl.shape[2:])
            value = loss_fn(fl, warped, overlap if wl is None else overlap * wl)
            value.backward()
            opt.step()
            history.append(value.item())
            if progress and ((it + 1) % max(1, n // 40) == 0 or it + 1 == n):
                _show_progress(level, levels, it + 1, n, history[-1])

    with torch.no_grad():
        matrix = model().detach()
        mi_before, _ = _score(f, m, init, w)
        mi_after, warped = _score(f, m, matrix, w)
    out_shape = fixed.shape if isinstance(fixed, (Tensor, np.ndarray)) else f.shape
    return RegistrationResult(
        matrix=matrix,
        theta=matrix_to_theta(matrix, f.shape[2:], m.shape[2:]),
        warped=warped.reshape(tuple(out_shape)),
        loss_history=history,
        mi_before=mi_before,
        mi_after=mi_after,
        transform=transform,
        center=center,
        iterations=its,
        seconds=time.perf_counter() - t_start,
        fixed_shape=tuple(f.shape[2:]),
    )


# ---------------------------------------------------------------- demo pairs


def transform_error(matrix, true, shape) -> tuple:
    """How far ``matrix`` is from the ``true`` one (both fixed -> moving, pixel coordinates) on a
    fixed image of array ``shape``: (rotation error in degrees (of the nearest rotations),
    displacement error at the image centre, and the largest at its corners, in pixels)."""
    matrix, true = torch.as_tensor(matrix, dtype=torch.float64), torch.as_tensor(true, dtype=torch.float64)
    d = len(shape)
    lin = matrix[:d, :d]
    u, _, vh = torch.linalg.svd(lin)
    diff = (u @ vh) @ true[:d, :d].T
    cos = (diff.trace().item() - (d - 2)) / 2.0
    angle = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
    sizes = list(reversed(shape))  # (x, y[, z])
    centre = torch.tensor([(s - 1) / 2 for s in sizes], dtype=torch.float64)
    corners = torch.tensor(list(itertools.product(*[(0, s - 1) for s in sizes])), dtype=torch.float64)
    pts = torch.cat([centre[None], corners])
    err = (pts @ (matrix - true)[:d, :d].T + (matrix - true)[:d, d]).norm(dim=1)
    return angle, err[0].item(), err[1:].max().item()


def _rigid_matrix(angles_rad, shift, center) -> Tensor:
    """Rotation (2-D angle or 3-D rotation vector, radians) about ``center`` + ``shift``."""
    c = torch.as_tensor(center, dtype=torch.float64)
    r = torch.linalg.matrix_exp(_skew(torch.as_tensor(angles_rad, dtype=torch.float64).reshape(-1)))
    d = c.numel()
    a = torch.eye(d + 1, dtype=torch.float64)
    a[:d, :d] = r
    a[:d, d] = c - r @ c + torch.as_tensor(shift, dtype=torch.float64)
    return a


def _remap(x: Tensor) -> Tensor:
    """The demo's "other modality": sin(3 x)^2 of x in [0, 1] (non-monotonic, peak at 0.52)."""
    return torch.sin(3.0 * x) ** 2


def demo_pair(shape=(192, 160), angle_deg: float = 7.0, shift=(6.0, -4.0), matrix=None):
    """A 2-D multi-modal pair with a known rigid transform, from matplotlib's sample photo.

    ``fixed`` is grace_hopper.jpg in grey, [0, 1], area-downsampled to ``shape`` (H, W).
    ``moving`` is the photograph warped at full resolution (600 x 512) by the transform,
    then downsampled the same way (so the registration does not resample with its own
    interpolator: no "inverse crime"), zero outside, then remapped by sin(3 x)^2.

    Returns:
        (fixed, moving, true_matrix): two float32 tensors of ``shape`` and the (3, 3)
        float64 matrix mapping fixed pixel (x, y) to moving pixel (x, y): rotation by
        ``angle_deg`` (x towards y) about the fixed centre, then ``shift`` (x, y) pixels;
        or ``matrix`` (3, 3) itself when given (any invertible affine map, in the pixels
        of ``shape``).
    """
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        big = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)[None, None]
    big_shape, shape = tuple(big.shape[2:]), tuple(shape)
    if matrix is None:
        true = _rigid_matrix(math.radians(angle_deg), shift, (_extent(shape) - 1.0) / 2.0)
    else:
        true = torch.as_tensor(matrix, dtype=torch.float64)
    # the same transform in the photo's pixels: p_big = k (p + 1/2) - 1/2 per axis
    k = _extent(big_shape) / _extent(shape)
    s = torch.eye(3, dtype=torch.float64)
    s[:2, :2], s[:2, 2] = torch.diag(k), (k - 1.0) / 2.0
    big_true = s @ true @ torch.linalg.inv(s)
    moved, _ = _sample(big, matrix_to_theta(torch.linalg.inv(big_true), big_shape, big_shape), big_shape)

    def down(x):
        return F.interpolate(x, size=shape, mode="area")[0, 0]

    return down(big), _remap(down(moved)), true


def demo_volume_pair(size: int = 40, angles_deg=(3.0, -2.0, 4.0), shift=(2.5, -1.5, 2.0), seed: int = 0):
    """A smooth synthetic 3-D pair (size^3) with a known rigid transform, sampled analytically.

    ``fixed`` is a sum of 12 anisotropic, randomly oriented Gaussian blobs (widths 2.5-7
    voxels) plus a linear ramp; ``moving(q) = remap(fixed_function(A^-1 q))`` is evaluated
    from the formula (no interpolation), with remap = sin(3 x)^2 of x scaled to [0, 1].

    Returns:
        (fixed, moving, true_matrix): float32 (size, size, size) tensors and the 4x4 float64
        matrix, voxel (x, y, z) fixed -> moving: rotation vector ``angles_deg`` (x, y, z)
        about the centre, then ``shift`` voxels.
    """
    g = torch.Generator().manual_seed(seed)
    nb = 12
    mu = 6.0 + torch.rand(nb, 3, generator=g, dtype=torch.float64) * (size - 12.0)
    widths = 2.5 + 4.5 * torch.rand(nb, 3, generator=g, dtype=torch.float64)
    rots = torch.stack(
        [torch.linalg.matrix_exp(_skew(v)) for v in torch.randn(nb, 3, generator=g, dtype=torch.float64)]
    )
    prec = rots @ torch.diag_embed(widths**-2) @ rots.transpose(1, 2)  # (nb, 3, 3)
    amp = 0.5 + torch.rand(nb, generator=g, dtype=torch.float64)

    def field(p):  # p (..., 3) in (x, y, z) voxels
        dlt = p[..., None, :] - mu
        q = torch.einsum("...bi,bij,...bj->...b", dlt, prec, dlt)
        return (amp * torch.exp(-0.5 * q)).sum(-1) + 0.02 * p[..., 0]

    ax = torch.arange(size, dtype=torch.float64)
    zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
    pts = torch.stack([xx, yy, zz], -1)  # volume[z, y, x] at (x, y, z)
    true = _rigid_matrix(torch.tensor(angles_deg).double().deg2rad(), shift, ((size - 1) / 2.0,) * 3)
    inv = torch.linalg.inv(true)
    fixed = field(pts)
    back = pts @ inv[:3, :3].T + inv[:3, 3]
    lo, hi = fixed.min(), fixed.max()
    moving = _remap(((field(back) - lo) / (hi - lo)).clamp(0, 1))
    return fixed.float(), moving.float(), true


# ---------------------------------------------------------------- the command line


class RegisterError(ValueError):
    """A user error of the ``mi register`` command (bad file, unknown format)."""


def load_image(path) -> np.ndarray:
    """A grey image or volume as float32 (H, W) or (D, H, W): :func:`mi.io.read_image` (the
    project's one reader; NIfTI, NRRD and MHA through SimpleITK, as its voxel array
    ``[k, j, i]``, so (x, y, z) here are the file's voxel indices (i, j, k), as in ITK; the
    voxel spacing and orientation are not used). Raises :class:`RegisterError`."""
    from .io import ImageReadError, read_image

    try:
        return read_image(path)
    except ImageReadError as e:
        raise RegisterError(str(e)) from None


def _unit(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _middle(x: np.ndarray) -> np.ndarray:
    return x[x.shape[0] // 2] if x.ndim == 3 else x


def save_figure(path, fixed, moving, result: RegistrationResult) -> Path:
    """Before/after picture: colour overlays (fixed magenta, moving green; middle slice in
    3-D) and the 64-bin joint histograms (log colour scale) of fixed vs moving resampled by
    the initial (identity) and the found transform, over their overlap."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    f = _as_image("fixed", fixed, "cpu")
    m = _as_image("moving", moving, "cpu")
    eye = torch.eye(result.dim + 1, dtype=torch.float64)
    cmap = colormaps["magma"].with_extremes(bad="black", under="black")  # empty bins: black
    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    for col, (label, mat, score) in enumerate(
        [("before", eye, result.mi_before), ("after", result.matrix, result.mi_after)]
    ):
        warped, overlap = warp(m, mat, f.shape[2:])
        fa, wa = _unit(_middle(f[0, 0].numpy())), _unit(_middle(warped[0, 0].numpy()))
        axes[0, col].imshow(np.stack([fa, wa, fa], -1))
        axes[0, col].set_title(f"{label}: fixed (magenta) / moving (green), NMI {score:.4f}")
        axes[0, col].axis("off")
        j = joint_histogram(f, warped, num_bins=64, mask=overlap)[0].numpy()
        pos = j[j > 0]
        norm = LogNorm(vmin=max(pos.min(), j.max() * 1e-5), vmax=j.max()) if pos.size else None
        im = axes[1, col].imshow(j, origin="lower", cmap=cmap, norm=norm)
        axes[1, col].set_title(f"joint histogram {label} (log scale)")
        axes[1, col].set_xlabel("moving intensity bin")
        axes[1, col].set_ylabel("fixed intensity bin")
        fig.colorbar(im, ax=axes[1, col], shrink=0.8)
    fig.suptitle(f"mi register ({result.transform}, {result.dim}-D)")
    path = Path(path)
    fig.savefig(path, dpi=90)
    return path


def _describe(result: RegistrationResult) -> str:
    axes = "(x, y)" if result.dim == 2 else "(x, y, z)"
    lines = [
        f"transform ({result.transform}), fixed pixel {axes} -> moving pixel {axes}:",
        np.array2string(result.matrix.numpy(), precision=5, suppress_small=True),
    ]
    t = ", ".join(f"{v:+.3f}" for v in result.translation.tolist())
    if result.dim == 2:
        lines.append(f"rotation {result.angle_deg:+.3f} deg about the centre, translation ({t}) px")
    else:
        rv = ", ".join(f"{v:+.3f}" for v in result.rotation_vector_deg.tolist())
        lines.append(f"rotation vector ({rv}) deg about the centre, translation ({t}) voxels")
    lines.append(
        f"normalised MI (Studholme, 1..2): before {result.mi_before:.4f}  after {result.mi_after:.4f}"
        f"  ({result.seconds:.1f} s)"
    )
    return "\n".join(lines)


def run_cli(
    fixed_path,
    moving_path,
    out_dir=".",
    transform: str = "rigid",
    *,
    levels: int = 3,
    iterations=None,
    lr: float = 0.5,
    progress: bool = True,
    **loss_kwargs,
) -> dict:
    """Register two image files, print the result and write the outputs.

    Reads both files with :func:`load_image`, runs :func:`register`, prints the matrix
    (fixed pixel (x, y[, z]) -> moving pixel), rotation/translation and the normalised MI
    before/after to stdout, and writes into ``out_dir`` (created if needed):

    * ``<moving>_registered.png`` (2-D, scaled to the moving image's min..max) or
      ``<moving>_registered.npy`` (3-D, values kept): the moving image on the fixed grid;
    * ``<moving>_registration.png``: the before/after picture (:func:`save_figure`);
    * ``<moving>_matrix.txt``: the matrix (numpy.savetxt).

    Returns ``{"warped": Path, "figure": Path, "matrix": Path, "result": RegistrationResult}``.
    Raises :class:`RegisterError` (a ValueError) for unreadable files.
    """
    fixed, moving = load_image(fixed_path), load_image(moving_path)
    result = register(
        fixed, moving, transform=transform, levels=levels, iterations=iterations, lr=lr,
        progress=progress, **loss_kwargs,
    )  # fmt: skip
    print(_describe(result))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(moving_path).name.split(".")[0]
    warped = result.warped.cpu().numpy()
    if warped.ndim == 2:
        from PIL import Image

        lo, hi = float(moving.min()), float(moving.max())
        scaled = np.clip((warped - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
        warped_path = out / f"{stem}_registered.png"
        Image.fromarray(np.round(scaled * 255.0).astype(np.uint8)).save(warped_path)
    else:
        warped_path = out / f"{stem}_registered.npy"
        np.save(warped_path, warped)
    matrix_path = out / f"{stem}_matrix.txt"
    np.savetxt(matrix_path, result.matrix.numpy(), header="fixed pixel (x, y[, z]) -> moving pixel")
    figure_path = save_figure(out / f"{stem}_registration.png", fixed, moving, result)
    for label, p in (("image", warped_path), ("picture", figure_path), ("matrix", matrix_path)):
        print(f"wrote {label}: {p}")
    return {"warped": warped_path, "figure": figure_path, "matrix": matrix_path, "result": result}
