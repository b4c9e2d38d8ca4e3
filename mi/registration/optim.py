"""The registration loop: pyramid, sampling, Adam on the transform, convergence.

:func:`register` finds the rigid or affine transform, in physical space, that maximises the
MI of the fixed image and the moving image resampled through it. Conventions are those of
:mod:`mi.registration.space` (transforms map fixed physical points to moving ones, mm).
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
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

from .._warn import warn
from ..functional import _MAX_SLOPE, mutual_information, value_checks
from ..local import LocalMutualInformationLoss, _per_axis
from ..modules import MutualInformationLoss
from .space import (
    Geometry,
    as_image,
    as_mask,
    center_of_mass,
    extent,
    finite_part,
    has_affine,
    has_geometry,
    interpolable,
    mask_for,
    matrix_to_theta,
    overlap_weight,
    read_path,
    sample_grid,
    sample_points,
    to_normalized,
    voxel_matrix,
)
from .transforms import TRANSFORMS, Transform, angle_deg, as_matrix, rotation_part, to_sitk, write_transform

#: The default loss: Studholme's normalised MI, 32 bins, cubic B-spline Parzen windows on
#: both images (4 x 4 bins per voxel, about 9x cheaper than a 1-bin Gaussian). Mattes'
#: windows (the fixed image's nearest bin: 4 bins per voxel) were a third faster on the
#: brain pair at its error, but less accurate on the smooth 3-D demo (0.27-0.37 against
#: 0.04-0.15 degree).
DEFAULT_LOSS = dict(num_bins=32, normalize="studholme", kernel="bspline")
#: How mi_before / mi_after are measured (independent of the loss used to register).
SCORE = dict(num_bins=32, normalize="studholme", kernel="bspline")
#: Pyramid levels keep at least MIN_LEVEL_SIZE voxels along an axis (:func:`shrink_factors`);
#: an image needs MIN_SIZE (interpolation between two): a slab of 2 or 3 slices (SPM
#: resamples to such slabs) is not pooled along them.
MIN_LEVEL_SIZE, MIN_SIZE = 4, 2
#: ``levels=None``: at least DEFAULT_LEVELS, and enough that the fixed image's coarsest level
#: has at most COARSEST_SIZE voxels along every axis (:func:`default_levels`).
DEFAULT_LEVELS, COARSEST_SIZE = 3, 96
#: ``levels=None`` adds no level whose fixed image would keep fewer voxels than this (three
#: quarters of a voxel per cell of the default loss's 32 x 32 joint histogram), measured on
#: small 2-D images (:func:`default_levels`).
MIN_COARSEST_VOXELS = 768
SAMPLING_STRATEGIES = ("random", "regular")
#: ``sampling="auto"``: at most AUTO_COUNT fixed voxels per iteration (every voxel of smaller
#: images and levels). Measured on the 1 mm brain pair (mi.registration.brain, 197x233x189):
#: every voxel 0.052 mm in 56 s; 2**18 samples 0.056 mm in 28 s, 2**17 0.060 mm in 20 s
#: (final step 5 %); with the sampled levels' final step at 1 %, 2**17: 0.026-0.028 mm in
#: 17 s (two seeds). Fewer on the coarse levels (where most iterations run) was 1.5-2x
#: faster on volumes at the same errors, but noisier coarse gradients shorten Adam's reach
#: (its steps, m / sqrt(v), shrink with the noise): 4x fewer per level stopped the 600x512
#: demo photo 1.9 and 12.9 degrees short of 20 and 25 degrees with 3 levels (every voxel:
#: 0 and 3.4), and 2**17 / sqrt(k) on a level of 1/k of the voxels left its 30-degree case
#: with the default 4 levels still moving (0.05 degree off, four seeds, against 0.018).
#: (Instrumented runs outside ``bench/``, 2026-11-30; per-case numbers in that session's note.)
AUTO_COUNT = 2**17
#: The step decays (cosine) to this fraction of a level's first step. Sampled gradients are
#: noisy and Adam's step does not shrink with the gradient, so a sampled level decays
#: further (1 %) to average the noise out: 5 % -> 1 % took the brain pair from 0.060 to
#: 0.027 mm. With every voxel 5 % is better on short schedules (the 3-D demo volume: 0.04
#: degree at 5 %, 0.15 at 1 %).
FINAL_STEP_DENSE, FINAL_STEP_SAMPLED = 0.05, 0.01
DEFAULT_SAMPLING = "auto"
DEFAULT_TOLERANCE = 0.0
#: Convergence test: the least-squares slope of the loss over the last CONVERGENCE_WINDOW
#: iterations of a level, times the window, below ``tolerance`` (absolute: the default
#: loss is a normalised MI, of order 1).
CONVERGENCE_WINDOW = 10
#: ``graph``: a level is replayed from a CUDA graph when it runs at least this many
#: iterations (the capture costs about one iteration's host time).
MIN_GRAPH_ITERATIONS = 4
#: The fewest voxels per iteration a ``sampling`` count may ask for (sampling=1 is one voxel,
#: not every voxel: refused, with a pointer to None / 1.0).
MIN_SAMPLES = 64
#: The fewest fixed voxels a level samples per iteration, whatever fraction or count
#: ``sampling`` asks (every voxel of a level that has fewer): fewer left the default loss's
#: 32 x 32 joint histogram too few samples. The 128x108 demo pair, 10 rigid trials (up to 12
#: degrees, shifts up to 8 %): sampling=0.2, 0.1 and 0.05 (173, 86 and 43 samples at the
#: coarsest level) ended 2, 3 and 5 of them more than a pixel off at the worst corner (up to
#: 71 px); with this floor none (at most 0.13 px; ``python bench/bench_pyramid.py``; with
#: the default ``winsorize``, 2026-12-03: 2, 3 and 6, up to 70 px; none, at most 0.19 px).
MIN_LEVEL_SAMPLES = MIN_COARSEST_VOXELS
#: :func:`register` warns when the normalised MI (1..2) ends more than this below its start.
DIVERGED = 1e-3
#: :func:`register` warns when the normalised MI at the result (Studholme's: 1 for independent
#: images, 2 when one determines the other) is below this: the images share almost no
#: information there. 120 rigid 2-D cases (20 real images, starts up to 20 degrees and 8 % of
#: the image, three intensity remaps; an audit of 2026-12-03): 26 ended 13-39 px off, silent
#: but one; 21 of those (periodic textures, a checkerboard, text) ended at 1.0003-1.029, the
#: other 5 (a page of text, coins) at 1.067-1.146; the 92 that succeeded at 1.120-1.409.
LOW_SCORE = 1.05
#: :func:`register` warns when a parameter's net change over the finest level is more than
#: this fraction of the sum of its step sizes (it ended still moving: not converged).
STILL_MOVING = 0.5
#: ``initial=`` names that start from a translation (``initial_transform``).
INITIAL_CENTRES = ("geometry", "moments")
#: Below this fraction of the fixed image (its mask) inside the moving image at the initial
#: transform (coarsest level), :func:`register` warns: MI sees only that part, and a start
#: that far off usually ends in a wrong optimum. No overlap at all raises.
MIN_INITIAL_OVERLAP = 0.1
#: A moving image whose face voxels hold one value, at least this fraction of them, continues
#: with it beyond its edges in :func:`register`'s loss (``border_value``): fixed samples that
#: map outside it count against that value instead of dropping out of the overlap, as ITK's
#: metrics drop them. Dropped, fixed background that a pose pushes out of the overlap raises
#: NMI: a brain region of 2 % of a zero canvas (3 mm MNI, 75x89x77, moved 3 deg / 4 mm;
#: MR/MR, MR/CT, MR/PET-like) registered 20.7-22.7 mm off, rotated 56-62 deg, without a
#: warning (SimpleITK's Mattes: 0.4-1.8 mm); with it 0.09-0.13 mm (also from 10 deg / 12 mm
#: off), and 0.18-0.28 mm at 1 %.
#: The brain pair's moving images have such a border (0): their errors stayed within
#: 0.002 mm (bench/bench_register.py).
UNIFORM_BORDER = 0.99
#: The default ``winsorize`` of :func:`register`: the loss sees each image clamped to these
#: quantiles of its intensities (within its mask), as ANTs' registration scripts do
#: (``--winsorize-image-intensities [0.005,0.995]``). A few voxels far beyond the rest (hot
#: pixels, metal in CT, spikes) otherwise stretch the bins' range so that the anatomy falls
#: into a few bins: 0.01 % of the 1 mm MNI pair's voxels at 20 times its maximum moved the
#: result 5.4 mm off, against 0.037 mm winsorized (``spikes`` in bench/bench_register.py);
#: clean real scans register a little closer (nibabel's SPM pair 0.134 mm against 0.191:
#: tests/test_nonfinite.py; the 1 mm brain pair 0.036 against 0.038).
WINSORIZE = (0.005, 0.995)
ImageLike = Union[Tensor, np.ndarray]


@dataclass
class RegistrationResult:
    """What :func:`register` found.

    Attributes:
        physical: (d+1, d+1) float64, fixed physical points (mm; voxels for images without
            geometry) -> moving physical points: ITK's convention, what
            :meth:`save_transform` writes.
        matrix: the same transform on voxel indices: fixed index (x, y[, z]) -> moving index.
        theta: (d, d+1) float64, the same for ``affine_grid(theta[None], (1, C,
            *fixed_shape), align_corners=False)`` + ``grid_sample(moving, ...)`` (whose zero
            padding fades the half voxel past the moving image's edge voxels, where
            :attr:`warped` keeps their values).
        warped: the moving image resampled onto the fixed grid as ITK's ``Resample`` does it
            (bilinear; the edge values up to half a voxel beyond the edge voxels' centres, 0
            further out), in the layout the fixed image was given ((H, W), (1, 1, H, W),
            ...; a tensor), from the moving image as given (not winsorized).
        loss_history: the loss at every iteration, coarsest level first.
        mi_before, mi_after: Studholme's normalised MI ``(H(f) + H(w)) / H(f, w)`` in [1, 2]
            (32 bins, cubic B-spline window) of the full-resolution fixed image and the
            moving image resampled by ``initial`` (identity) / by the result, over their
            overlap times the masks; both images as the loss saw them (``winsorize``).
        transform: "rigid" or "affine". center: the fixed image's physical centre.
        iterations: iterations run per level, coarsest first (fewer than asked where the
            convergence test stopped a level). seconds: wall time.
        fixed_geometry, moving_geometry: the images' :class:`~mi.registration.space.Geometry`.
    """

    physical: Tensor
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
    fixed_geometry: Geometry | None = field(default=None, repr=False)
    moving_geometry: Geometry | None = field(default=None, repr=False)

    @property
    def fixed_shape(self) -> tuple:
        return self.fixed_geometry.shape

    @property
    def dim(self) -> int:
        return self.physical.shape[0] - 1

    @property
    def rotation(self) -> Tensor:
        """The rotation part (d x d): the linear part itself for rigid, its polar factor
        (the nearest rotation) for affine."""
        return rotation_part(self.physical)

    @property
    def angle_deg(self) -> float:
        """2-D: the signed rotation angle in degrees (x towards y); 3-D: the total angle."""
        return angle_deg(self.physical)

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
        """Displacement (mm, (x, y[, z])) of the fixed image's physical centre: ``T c - c``."""
        return self.transform_points(self.center) - self.center

    def transform_points(self, points) -> Tensor:
        """Fixed physical points (..., d) in (x, y[, z]) -> moving physical points."""
        p = torch.as_tensor(points, dtype=torch.float64)
        d = self.dim
        return p @ self.physical[:d, :d].T + self.physical[:d, d]

    def sitk_transform(self):
        """The transform as a ``SimpleITK.AffineTransform`` (centred on the fixed image)."""
        return to_sitk(self.physical, self.center)

    def save_transform(self, path):
        """Write the transform as an ITK transform file (``.tfm``, ``.txt``, ``.mat``, ``.h5``)
        that ``SimpleITK.ReadTransform``, ITK and ANTs read: fixed physical -> moving physical,
        so ``SimpleITK.Resample(moving, fixed, transform)`` reproduces :attr:`warped`.
        Returns the path."""
        return write_transform(path, self.physical, self.center)

    def warped_image(self):
        """:attr:`warped` as a SimpleITK image with the fixed image's geometry."""
        from .space import _sitk

        img = _sitk().GetImageFromArray(self.warped.detach().cpu().reshape(self.fixed_shape).numpy())
        return self.fixed_geometry.to_sitk(img)


# ---------------------------------------------------------------- argument checks


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name} must be a positive int, got {v}")
    return int(v)


def read_pair(fixed, moving, device, spacing, moving_spacing):
    """(fixed tensor, its geometry, moving tensor, its geometry, valid) of :func:`register`'s
    inputs, both on the fixed image's device, with the same number of dimensions, their NaN
    and Inf voxels set to 0; ``valid``: (fixed, moving), each 1 at the image's finite voxels
    and 0 at the others, or None when all are finite (:func:`~mi.registration.space.finite_part`)."""
    f, gf = as_image("fixed", fixed, device, spacing, nonfinite=True)
    if isinstance(moving, (str, Path)):
        moving = read_path(moving)
    if moving_spacing is None and not has_geometry(moving):
        moving_spacing = spacing  # (an image with its own geometry keeps it)
    m, gm = as_image("moving", moving, f.device, moving_spacing, nonfinite=True)
    if f.ndim != m.ndim:
        raise ValueError(
            f"fixed and moving must both be 2-D or both 3-D, got spatial shapes "
            f"{tuple(f.shape[2:])} and {tuple(m.shape[2:])}"
        )
    (f, vf), (m, vm) = finite_part(f), finite_part(m)
    return f, gf, m, gm, (vf, vm)


def _with_valid(name: str, mask: Tensor | None, valid: Tensor | None, moving: bool = False) -> Tensor | None:
    """``mask`` x ``valid`` (either may be None), x ``interpolable(valid)`` if ``moving``."""
    if valid is None:
        return mask
    keep = interpolable(valid) if moving else valid
    out = keep if mask is None else mask * keep
    if not (out > 0).any():
        what = "" if mask is None else " within its mask"
        raise ValueError(
            f"{name}: no voxel{what} is finite with finite neighbours ({int((valid == 0).sum())} "
            "of its voxels are NaN or Inf, which count as outside the image)"
        )
    return out


def check_winsorize(winsorize) -> tuple[float, float] | None:
    """``winsorize``: None, or quantiles (lo, hi) with 0 <= lo < hi <= 1, as floats."""
    if winsorize is None:
        return None
    try:
        lo, hi = (float(q) for q in winsorize)
    except (TypeError, ValueError):
        raise TypeError(
            f"winsorize must be None or a pair of quantiles (lo, hi), got {winsorize!r}"
        ) from None
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"winsorize must be quantiles with 0 <= lo < hi <= 1, got {winsorize!r}")
    return lo, hi


def winsorized(img: Tensor, weights: Tensor | None, valid: Tensor | None, quantiles) -> Tensor:
    """``img`` clamped to its ``quantiles`` (lo, hi) over the voxels of positive ``weights``
    (None: every voxel): the order statistics numpy's ``quantile`` gives with
    ``method="lower"`` for lo and ``"higher"`` for hi (never between two voxels' values: the
    clamp moves only the voxels beyond them). ``img`` itself when ``quantiles`` is None or
    the two are equal (the clamp would leave the image constant there: an object in fewer
    than ``1 - hi`` of the voxels on a constant background keeps its intensities; on a noisy
    one it merges with the brightest background: pass ``winsorize=None``). Voxels where
    ``valid`` is 0 (NaN, Inf: :func:`read_pair`) stay 0."""
    if quantiles is None:
        return img
    v = img.reshape(-1) if weights is None else img[weights > 0]
    n = v.numel()
    if n == 0:
        return img
    lo = torch.kthvalue(v, math.floor(quantiles[0] * (n - 1)) + 1).values
    hi = torch.kthvalue(v, math.ceil(quantiles[1] * (n - 1)) + 1).values
    if not bool(lo < hi):
        return img
    out = img.clamp(lo, hi)
    return out if valid is None else out * valid


def _setup(
    f, gf, m, gm, mask, moving_mask, loss, loss_kwargs, seed, sampling, valid=(None, None), winsorize=None
):
    """(fixed mask, moving mask, loss function on the images' device, the sampling
    generator, ``pyramid(ff, fm)``: :func:`level_images` of the images at those factors,
    (fixed, moving) as the loss sees them: :func:`winsorized` by ``winsorize``, checked).
    The masks include ``valid`` (:func:`read_pair`): the fixed image's finite voxels; the
    moving image's voxels whose neighbours are all finite
    (:func:`~mi.registration.space.interpolable`: a sample whose interpolation reads a NaN
    voxel gets weight 0)."""
    winsorize = check_winsorize(winsorize)
    w = _with_valid("fixed", as_mask("mask", mask, f, gf), valid[0])
    user_wm = as_mask("moving_mask", moving_mask, m, gm)
    wm = _with_valid("moving", user_wm, valid[1], moving=True)
    f, m = winsorized(f, w, valid[0], winsorize), winsorized(m, wm, valid[1], winsorize)
    pyramid = functools.partial(level_images, f, w, m, user_wm, valid)
    loss_fn = _make_loss(loss, loss_kwargs, lambda bins: _image_ranges(f, w, m, wm, bins))
    if isinstance(loss_fn, LocalMutualInformationLoss) and sampling is not None:
        raise ValueError(
            "loss=LocalMutualInformationLoss cuts its patches from the image grid: it needs "
            f"sampling=None (every voxel), got sampling={sampling!r}"
        )
    if isinstance(loss_fn, nn.Module):
        loss_fn = loss_fn.to(f.device)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if not -(2**63) <= seed < 2**64:  # torch.Generator's seeds
        raise ValueError(f"seed must be an int from -2**63 to 2**64 - 1, got {seed}")
    return w, wm, loss_fn, torch.Generator(device=f.device).manual_seed(int(seed)), pyramid, (f, m)


def constant_images(f, w, m, wm) -> list:
    """The names of the images ("fixed", "moving") that are constant within their masks, each
    with a warning: MI of a constant image is 0 whatever the transform, so there is nothing
    to register: both registrations skip their steps (whose gradients there are rounding
    noise, 1e-19 to 1e-9, that Adam would scale into full-size moves)."""
    names = []
    for name, img, wt in (("fixed", f, w), ("moving", m, wm)):
        v = img if wt is None else img[wt > 0]
        if v.numel() and bool(v.min() == v.max()):
            names.append(name)
            warn(
                f"the {name} image is constant ({v.flatten()[0].item():.6g}) within its mask: it carries "
                "no information to register by, and the result is the start transform"
            )
    return names


def initial_transform(initial, kind: str, f, gf: Geometry, m, gm: Geometry, w=None, wm=None) -> Tensor:
    """``initial=`` of :func:`register` -> the physical matrix (fixed mm -> moving mm):
    "geometry" (ITK's centred initialiser, GEOMETRY) the translation that maps the fixed
    grid's centre onto the moving grid's, "moments" (ITK's MOMENTS, ANTs' default) the one
    that maps the fixed image's centre of mass onto the moving image's (``center_of_mass``:
    intensities above the image's minimum, within the masks ``w``, ``wm``); anything else as
    :func:`~mi.registration.transforms.as_matrix` (None: identity)."""
    d = f.ndim - 2
    if isinstance(initial, RegistrationResult):
        initial = initial.physical  # checked as a matrix (a result of another dimension is refused)
    if not (isinstance(initial, str) and initial in INITIAL_CENTRES):
        return as_matrix(initial, d, kind)
    if initial == "geometry":
        shift = gm.center() - gf.center()
    else:
        shift = center_of_mass(m, gm, wm) - center_of_mass(f, gf, w)
    out = torch.eye(d + 1, dtype=torch.float64)
    out[:d, d] = shift
    return out


def check_overlap(theta: Tensor, fixed_level: Tensor, weights: Tensor | None, moving_shape) -> None:
    """Raise if no voxel of ``fixed_level`` (weighted by ``weights``) maps into a grid of
    ``moving_shape`` through ``theta`` (``affine_grid``'s (d, d+1) matrix), and warn when
    less than ``MIN_INITIAL_OVERLAP`` of them do (the start is too far off for MI) unless
    half the moving image lies within the fixed one: a slab or a smaller field of view, which
    covers little of the fixed image where it belongs (there, initial='geometry' would move
    it away: 3.9 mm off instead of 0.9 for an 8-slice slab)."""
    grid = F.affine_grid(
        theta.detach()[None].to(fixed_level), (1, 1, *fixed_level.shape[2:]), align_corners=False
    )
    cover = overlap_weight(grid, moving_shape)[0]
    weights = torch.ones_like(cover) if weights is None else weights[0, 0]
    total = float(weights.sum())
    if not total > 0:  # (the finer levels' masks keep at least the coarsest's voxels)
        raise ValueError(
            "mask: at the coarsest pyramid level the fixed mask keeps no voxel (pooling drops an "
            "odd last voxel per axis, and the mask keeps only such voxels): "
            "use fewer levels or a larger mask"
        )
    fraction = float((cover * weights).sum()) / total
    if (
        0 < fraction < MIN_INITIAL_OVERLAP
        and _inside_fraction(theta, fixed_level.shape[2:], moving_shape) >= 0.5
    ):
        return  # a moving image of a smaller field of view (a slab) inside the fixed one
    hint = (
        "pass initial='geometry' (align the grids' centres), initial='moments' (align the centres "
        "of mass) or a transform that brings the images together"
    )
    if not fraction > 0:
        raise ValueError(
            f"initial: at the initial transform the moving image covers none of the fixed image; {hint}"
        )
    if fraction < MIN_INITIAL_OVERLAP:
        warn(
            f"at the initial transform the moving image covers only {100 * fraction:.1f} % of the "
            f"fixed image: MI sees only that part; {hint}"
        )


def _inside_fraction(theta: Tensor, fixed_shape, moving_shape) -> float:
    """The fraction of the moving grid's voxels that ``theta`` (fixed -> moving, normalised)
    maps back into the fixed grid."""
    d = len(fixed_shape)
    full = torch.eye(d + 1, dtype=torch.float64)
    full[:d] = theta.detach().double().cpu()
    back = torch.linalg.inv(full)[:d].float()
    grid = F.affine_grid(back[None], (1, 1, *moving_shape), align_corners=False)
    return float(overlap_weight(grid, fixed_shape).mean())


def _pools_further(gf: Geometry, gm: Geometry, level: int) -> bool:
    """Whether pyramid ``level`` pools the fixed or the moving image further than ``level - 1``."""
    return any(
        shrink_factors(g, level, like) != shrink_factors(g, level - 1, like)
        for g, like in ((gf, None), (gm, gf))
    )


def default_levels(gf: Geometry, gm: Geometry, mask: Tensor | None = None) -> int:
    """``levels=None``: ``DEFAULT_LEVELS`` (3), more while the fixed image's coarsest level
    keeps more than ``COARSEST_SIZE`` (96) voxels along an axis (4 levels from 388 voxels per
    axis), fewer where the images pool no further (each axis keeps ``MIN_LEVEL_SIZE``).

    The steps' reach is counted in voxels (``lr`` is half a voxel, doubled per level: about
    170 finest voxels with 3 levels, 590 with 4), so a fixed number of levels reaches a
    smaller rotation on a finer grid of the same scene. Ending the pyramid at a bounded size
    in voxels keeps the reach near the image's extent. Measured
    (``bench/bench_register.py``, cases photo25 and fine35): with 3 levels, sklearn's
    china.jpg at 0.5 mm (640x427) rotated 25 degrees stopped 15.9 mm off, and the MNI T1 on
    a 0.5x0.5x3 mm grid against a contrast rotated 35 degrees 5.0 mm off; with 4 levels (the
    default for both) they come within 0.025 mm. Ending at 64 voxels (5 levels on the photo,
    40x27 pixels) was too coarse for an affine stage: the photo scaled by diag(0.85, 1.15)
    ended 15 mm off, against 0.03 mm with 4 levels (a run outside ``bench/``).

    Small images: no level is added whose fixed image would keep fewer than
    ``MIN_COARSEST_VOXELS`` (768) voxels in all (in the fixed ``mask`` (1, 1, *shape), when
    given: its samples), even below 3 levels: a 32 x 32 joint histogram from a few hundred
    voxels rewards wrong overlaps. Rigid trials of the demo pair (30 per size, up to 12
    degrees, shifts up to 8 % of the size) that ended more than 1 px off at the worst
    corner, with 1 / 2 / 3 levels: 48x40 pixels 1 / 4 / 11, 64x54 7 / 2 / 4, 80x66 4 / 0 / 1
    and 96x80 10 / 0 / 1 (this rule picks 1, 2, 2 and 2 levels; below 2 levels the steps
    reach less); affine maps (10 trials: rotations to 10 degrees, scales 0.9-1.1, shear to
    0.05) at 64x54: 6 with 3 levels (median 21 px), none with 2 (with the default
    ``winsorize``, 2026-12-03: 3 / 3 / 9, 7 / 1 / 7, 6 / 0 / 3, 10 / 0 / 1; affine 4 and
    none: the same choice). Real images, 8 trials each:
    with 3 levels 0-3 of 8 of a 64x64 DICOM MR, a T1 slice and photographs at 48x48 and
    64x64 ended more than 1 px off, in wrong optima (the MR slice rotated 8 degrees ended 20
    degrees the other way, with no warning), none of 40 at 64x64 with 2 levels. A small mask
    on a large image is the same: the 192x160 demo pair with a centred mask of 32^2 to 64^2
    pixels, 10 trials each, failed 9 of 40 with 3 levels (up to 35 px off) and 2 of 40 with
    these (1.3 and 1.6 px, with 1 level). On 3-D volumes (blobs of 20^3 to 40^3, the MNI
    brain at 5 and 6 mm, 6 trials each) 2 and 3 levels were equally accurate, 2 in 20-41 %
    less time. (The demo pair's numbers: ``python bench/bench_pyramid.py``; the real images,
    masks and 3-D volumes: one-off scripts outside ``bench/``, 2026-12-02;
    ``tests/test_register.py`` has some of the cases.)"""
    levels = 1
    while _pools_further(gf, gm, levels):
        coarsest = max(n // f for n, f in zip(gf.size, shrink_factors(gf, levels - 1)))
        if levels >= DEFAULT_LEVELS and coarsest <= COARSEST_SIZE:
            break
        if _level_voxels(gf, levels, mask) < MIN_COARSEST_VOXELS:
            break
        levels += 1
    return levels


def _level_voxels(gf: Geometry, level: int, mask: Tensor | None) -> int:
    """The fixed voxels at pyramid ``level``: of the grid, or those the fixed ``mask`` (1, 1,
    *shape) keeps (a positive pooled weight), which are all that level's samples."""
    factors = shrink_factors(gf, level)
    if mask is None:
        return math.prod(n // f for n, f in zip(gf.size, factors))
    return int((_pool(mask, factors) > 0).sum())


def _check_levels(levels, gf: Geometry, gm: Geometry, iterations=None, mask: Tensor | None = None) -> int:
    """A positive number of pyramid levels, each pooling further than the last, for images of
    MIN_SIZE voxels per axis or more (``shrink_factors`` keeps MIN_LEVEL_SIZE, or all of
    them, at every level);
    None: as many as ``iterations`` gives counts (one per level), else :func:`default_levels`
    (counting the voxels the fixed ``mask`` keeps)."""
    for name, g in (("fixed", gf), ("moving", gm)):
        if any(n < MIN_SIZE for n in g.size):
            raise ValueError(
                f"{name} has {'x'.join(map(str, g.size))} voxels: registration needs at least "
                f"{MIN_SIZE} along every axis (one slice: pass it as a 2-D image)"
            )
    given = f"levels={levels}"
    if levels is None:
        if isinstance(iterations, (tuple, list)) and iterations:
            levels, given = len(iterations), f"iterations={tuple(iterations)} (one count per level)"
        else:
            return default_levels(gf, gm, mask)
    levels = _positive_int("levels", levels)
    for level in range(1, levels):
        if not _pools_further(gf, gm, level):
            sizes = " and ".join("x".join(map(str, g.size)) for g in (gf, gm))
            raise ValueError(
                f"{given}: images of {sizes} voxels pool no further after {level} levels "
                f"(each axis keeps at least {MIN_LEVEL_SIZE} voxels); use fewer levels"
            )
    return levels


#: ``iterations=None``: ``min(MAX_ITERATIONS, max(FINEST_ITERATIONS, 30 * 2**level))`` per
#: level (coarse levels are cheap: more steps there; 120, 60, 60 for 3 levels). The finest
#: level took 30 until 2026-12-01; 60 there (runs outside ``bench/``, the same code and
#: seeds): the 2-D demo pair at eight random rigid transforms, corner error 0.054 px mean
#: (0.097 with 30; better on all eight), the 3-D demo pair with ten seeds 0.062 voxel
#: (0.128; all ten), the 25-degree photo 0.0044 mm (0.0085), the 600x512 photo at 30
#: degrees 0.0024 degree (0.018), the brain pair with four seeds 0.037 mm (0.040), its 3 mm
#: slices with two 0.051 mm (0.043), for 14 % more iterations with 3 levels.
MAX_ITERATIONS, FINEST_ITERATIONS = 200, 60


def _check_iterations(iterations, levels: int) -> tuple:
    if iterations is None:
        return tuple(
            min(MAX_ITERATIONS, max(FINEST_ITERATIONS, 30 * 2**lvl)) for lvl in reversed(range(levels))
        )
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


def _check_sampling(sampling, strategy):
    if strategy not in SAMPLING_STRATEGIES:
        raise ValueError(f"sampling_strategy must be one of {SAMPLING_STRATEGIES}, got {strategy!r}")
    if sampling is None or sampling == "auto":
        return sampling
    if isinstance(sampling, bool) or not isinstance(sampling, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"sampling must be None, a fraction in (0, 1] or a voxel count, got {type(sampling).__name__}"
        )
    if isinstance(sampling, (float, np.floating)):
        if not (0.0 < sampling <= 1.0):
            raise ValueError(f"sampling as a fraction must be in (0, 1], got {sampling}")
        return float(sampling)
    count = _positive_int("sampling", sampling)
    if count < MIN_SAMPLES:
        raise ValueError(
            f"sampling={count} voxels per iteration is too few for a histogram (at least {MIN_SAMPLES}); "
            "for every voxel pass None or the fraction 1.0"
        )
    return count


def _check_graph(graph, loss, device: torch.device) -> bool:
    """``graph=`` of :func:`register` -> whether to capture (only ever on CUDA)."""
    if graph is not None and not isinstance(graph, bool):
        raise TypeError(f"graph must be None, True or False, got {type(graph).__name__}")
    if device.type != "cuda":
        if graph:
            raise ValueError(f"graph=True needs a CUDA device, the images are on {device}")
        return False
    return graph if graph is not None else not callable(loss)


def default_lr(geometry: Geometry) -> float:
    """The default step (``lr``) of :func:`register` and ``register_deformable``: half the
    fixed image's smallest voxel spacing, in its units (ITK's optimisers likewise bound a
    step by the fixed image's smallest spacing)."""
    return 0.5 * min(geometry.spacing)


def check_lr(lr, geometry: Geometry) -> float:
    """``lr=`` of :func:`register` and ``register_deformable``: None for :func:`default_lr`,
    else a positive step in the fixed image's units, at most its diagonal (a step that moves
    the image past its own size leaves nothing to register: at lr=1e20 the rotation's
    ``matrix_exp`` lost its orthogonality, at 1e30 the transform became NaN)."""
    if lr is None:
        return default_lr(geometry)
    lr = _check_positive("lr", lr)
    diagonal = 2.0 * geometry.radius()
    if lr > diagonal:
        raise ValueError(
            f"lr={lr:g} {geometry.unit} is a step beyond the fixed image's diagonal ({diagonal:.4g} "
            f"{geometry.unit}); Adam moves a parameter about lr per step (default: {default_lr(geometry):g})"
        )
    return lr


def check_loss_value(value) -> Tensor:
    """A callable ``loss``'s result: a real scalar tensor with a gradient (it must depend on
    the warped image); else TypeError / ValueError."""
    if not isinstance(value, Tensor) or not value.is_floating_point():
        what = type(value).__name__ if not isinstance(value, Tensor) else f"a {value.dtype} tensor"
        raise TypeError(f"loss must return a floating-point scalar tensor, got {what}")
    if value.numel() != 1:
        raise ValueError(f"loss must return a scalar (one element), got shape {tuple(value.shape)}")
    if not value.requires_grad:
        raise ValueError(
            "loss returned a value with no gradient: it must be computed from the warped image "
            "(its second argument) with differentiable torch operations"
        )
    return value.reshape(())


def check_finite_step(value: float, params: Tensor, level: int, it: int) -> None:
    """Raise when an iteration's loss (a float) or the transform's parameters after its step
    are not finite: a callable loss that returned NaN/Inf or whose gradient did (the built-in
    loss does neither on finite images)."""
    if not math.isfinite(value):
        raise ValueError(
            f"loss returned {value} at iteration {it + 1} of pyramid level {level}: the loss must be finite"
        )
    if not bool(torch.isfinite(params).all()):
        raise ValueError(
            f"the transform's parameters became non-finite at iteration {it + 1} of pyramid level {level}: "
            "the loss's gradient is not finite"
        )


def _check_positive(name, v, allow_zero=False):
    if (
        isinstance(v, bool)
        or not isinstance(v, numbers.Real)  # numpy scalars too
        or not math.isfinite(v)
        or v < 0
        or (v == 0 and not allow_zero)
    ):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {v!r}")
    return float(v)


def _image_ranges(f: Tensor, w: Tensor | None, m: Tensor, wm: Tensor | None, num_bins=None) -> tuple:
    """The built-in loss's ``value_range``: each whole image's min..max (within its mask), taken
    once, as ITK's metrics take theirs ("auto" for a constant image). The loss then holds
    them fixed. With "auto" each iteration's warped samples would set the moving range, and
    its derivative, which MI's includes, pulls on the extreme samples alone: on the 2-D demo
    with an occlusion masked out, 0.196 px at the corners against 0.153 with the images'
    ranges; the brain pairs (``bench/bench_register.py``) moved from 0.028 / 0.057 mm (the
    per-iteration range, not differentiated then) to 0.029 / 0.041.

    An image whose span is so narrow that ``num_bins`` bins over it would overflow float32
    in the gradient (the op's own limit, ``functional._MAX_SLOPE``: 2**100 bins per unit)
    is refused here, by name (the op's message would name a value_range the caller never
    gave); a ``num_bins`` that is not an integer is left to the loss to refuse."""
    try:
        bins = operator.index(num_bins)
    except TypeError:
        bins = None
    out = []
    for name, img, mask in (("fixed", f, w), ("moving", m, wm)):
        v = img if mask is None else img[mask > 0]
        lo, hi = float(v.min()), float(v.max())
        if bins is not None and 0 < hi - lo and bins > _MAX_SLOPE[torch.float32] * (hi - lo):
            raise ValueError(
                f"{name}'s intensities span only {hi - lo:.3g} (from {lo:.6g} to {hi:.6g})"
                f"{' in its mask' * (mask is not None)}: the loss's gradient ({bins} bins over so narrow "
                "a range) overflows float32; rescale the image (MI does not depend on the intensities' scale)"
            )
        out.append((lo, hi) if hi > lo else "auto")
    return tuple(out)


def _make_loss(loss, loss_kwargs: dict, ranges: Callable) -> Callable:
    """The loss function: ``loss`` if callable, else the built-in loss with its keywords,
    ``value_range`` from ``ranges(num_bins)`` unless they give one."""
    if loss is None or isinstance(loss, dict):
        kw = {**DEFAULT_LOSS, **(loss or {}), **loss_kwargs}
        if "value_range" not in kw:
            kw["value_range"] = ranges(kw.get("num_bins"))
        return MutualInformationLoss(**kw)
    if loss_kwargs:
        raise TypeError(f"loss keywords {sorted(loss_kwargs)} given with a loss module; pass one")
    if not callable(loss):
        raise TypeError(f"loss must be None, a dict of keywords or a callable, got {type(loss).__name__}")
    return loss


# ---------------------------------------------------------------- pyramid and sampling


def shrink_factors(geom: Geometry, level: int, like: Geometry | None = None) -> tuple:
    """Per index axis (x, y[, z]), the voxels pooled into one at pyramid ``level``: 2**level
    along the finest axis, fewer along coarser ones, so that the level's voxels approach
    isotropy (a 3 mm slice axis of a 1 mm image is left alone at level 2, of 4 mm in-plane,
    and first pooled at level 3: 3 slices of 9 mm beside 8 mm in-plane), and
    never below ``MIN_LEVEL_SIZE`` voxels along an axis (a slab of 8 slices is pooled at
    most 2 along them, as ITK's and ANTs' per-axis shrink factors allow).

    ``like``: the fixed image's geometry, when ``geom`` is the moving image's: its level is
    then pooled by its own 2**level but no coarser than the fixed level's voxels (2**level
    times the fixed image's finest spacing), as ITK smooths both images to one physical
    scale. Pooled by its own 2**level alone, a 4 mm moving image against a 2 mm fixed one
    came to 16 mm voxels (5x6x5) where the fixed level had 8 mm, and the affine stage on
    nibabel's pair of them ran off (40 mm mean error; 1.5 mm with this). Pooled to the fixed
    level's voxels alone, a finer moving image lost its detail (1 mm against 4 mm on the brain
    pair: 0.36 mm rigid against 0.14; tests/test_registration_space.py)."""
    # the min of the two poolings (each monotone in the spacing it targets): the finer target
    finest = min(geom.spacing) if like is None else min(*geom.spacing, *like.spacing)
    return tuple(
        max(1, min(round(2**level * finest / s), n // MIN_LEVEL_SIZE))
        for s, n in zip(geom.spacing, geom.size)
    )


def _pool(x: Tensor | None, factors: tuple) -> Tensor | None:
    """Average pooling by ``factors`` (index order; odd sizes drop the last voxels)."""
    if x is None or all(f == 1 for f in factors):
        return x
    pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
    k = tuple(reversed(factors))  # array order
    return pool(x, k, stride=k)


def level_images(f, w, m, wm, valid, ff: tuple, fm: tuple) -> tuple:
    """A pyramid level's ``(fixed, its weights, moving[ and its weights as a second
    channel])``: the images and the weights pooled by ``ff`` and ``fm`` (:func:`shrink_factors`).
    ``w``: the fixed weights (the mask x the finite voxels), ``wm``: the moving mask as
    given (or None), ``valid``: (fixed, moving) finite voxels or None (:func:`read_pair`).

    With NaN or Inf voxels, a level's voxel is the mean of the finite voxels in its block
    (0 if there are none), weighted in the fixed image by their share of the block; in the
    moving image a voxel's weight is 0 unless its neighbours' blocks all hold a finite voxel
    (:func:`~mi.registration.space.interpolable`), so that no weighted sample's
    interpolation reads a block without data. At full resolution this is ``w`` and ``wm`` x
    ``interpolable(valid)``, as :func:`_setup` has them."""
    fl, wl = _pool(f, ff), _pool(w, ff)
    vf, vm = valid
    if vf is not None:
        share = _pool(vf, ff)
        fl = torch.where(share > 0, fl / share, 0.0)
    if vm is None:
        return fl, wl, _pool(torch.cat([m] + ([wm] if wm is not None else []), 1), fm)
    share = _pool(vm, fm)
    weight = interpolable((share > 0).to(share))
    if wm is not None:
        weight = weight * _pool(wm, fm)
    return fl, wl, torch.cat([torch.where(share > 0, _pool(m, fm) / share, 0.0), weight], 1)


class _Sampler:
    """The fixed-image voxels of each iteration of one pyramid level (``numel`` voxels),
    among those the fixed mask keeps: a ``fraction`` of them (or a ``count``; "auto":
    ``AUTO_COUNT``), at least ``MIN_LEVEL_SAMPLES``, drawn afresh each call at random (with
    replacement) or on a regular stride with a random offset. When the count reaches the
    kept voxels: every kept voxel, each call (their flat indices; not ``noisy``), or None
    without a mask (the dense path, also for ``sampling=None``): a small mask's voxels, not
    the whole grid (a 25 mm sphere in the 1 mm brain took 149 s through the grid)."""

    def __init__(self, sampling, strategy, mask: Tensor | None, numel: int, generator):
        self.candidates = None if mask is None else (mask.reshape(-1) > 0).nonzero()[:, 0]
        n = numel if self.candidates is None else self.candidates.numel()
        self.count, self.every = None, False
        if sampling is not None:
            if sampling == "auto":
                count = AUTO_COUNT
            else:
                count = math.ceil(sampling * n) if isinstance(sampling, float) else sampling
                count = max(count, MIN_LEVEL_SAMPLES)
            if count < n:
                self.count = count
            else:
                self.every = n < numel  # a mask that leaves voxels out: its voxels alone
        self.n, self.strategy, self.gen = n, strategy, generator

    @property
    def noisy(self) -> bool:
        """Whether the voxels change between calls (a sample), not all kept voxels each time."""
        return self.count is not None

    def __call__(self, device) -> Tensor | None:
        if self.count is None:
            return self.candidates if self.every else None
        if self.strategy == "random":
            pick = torch.randint(self.n, (self.count,), generator=self.gen, device=self.gen.device)
        else:
            step = self.n / self.count
            offset = torch.rand((), generator=self.gen, device=self.gen.device) * step
            pick = (
                (offset + torch.arange(self.count, device=self.gen.device) * step)
                .long()
                .clamp_max(self.n - 1)
            )
        pick = pick.to(device)
        return pick if self.candidates is None else self.candidates[pick]


def _normalized_points(flat: Tensor, shape: Sequence[int]) -> Tensor:
    """Flat voxel indices of an array ``shape`` -> normalised grid coordinates (n, d), (x, y[, z])."""
    coords = []
    for size in reversed(tuple(shape)):  # x first: the last array axis
        coords.append((2.0 * (flat % size).float() + 1.0) / size - 1.0)
        flat = flat // size
    return torch.stack(coords, -1)


def _slope(values) -> float:
    """Least-squares slope of values against their index."""
    n = len(values)
    x = np.arange(n) - (n - 1) / 2.0
    return float(np.dot(x, np.asarray(values) - np.mean(values)) / np.dot(x, x))


def _step_size(lr0: float, it: int, n: int, final: float) -> float:
    """Cosine decay from lr0 to ``final`` lr0 over a level's n steps (a linear warm-up was
    tried: with short schedules it cost accuracy, 0.04 -> 0.28 degree on the 3-D pair)."""
    return lr0 * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * it / n)))


def _score(fixed, moving, voxel, weights, moving_mask, output=None):
    """(Studholme NMI over overlap x masks, ``output`` (default: ``moving``; the image before
    :func:`winsorized`) warped, covered) at full resolution, every voxel; ``covered`` is the
    fraction of the fixed image (its ``weights``) that maps into the moving image."""
    theta = matrix_to_theta(voxel, fixed.shape[2:], moving.shape[2:])
    extra = [] if output is None or output is moving else [output]
    stack = [moving] + extra + ([moving_mask] if moving_mask is not None else [])
    out, w = sample_grid(torch.cat(stack, 1), theta, fixed.shape[2:])
    total = w.numel()
    if weights is not None:
        w, total = w * weights, weights.sum()
    covered = float(w.sum() / total)
    if moving_mask is not None:
        w = w * out[:, -1:]
    warped = out[:, len(extra) : len(extra) + 1]
    return mutual_information(fixed, out[:, :1], mask=w, **SCORE).item(), warped, covered


def _warn_small_overlap(covered: float, voxel: Tensor, fixed_shape, moving_shape) -> None:
    """Warn when the result maps less than ``MIN_INITIAL_OVERLAP`` of the fixed image into
    the moving image, unless half the moving image lies within the fixed one (a slab): NMI
    over a small overlap can exceed that of the true alignment (a corner of one image on a
    corner of the other: a handful of voxels, nearly one-to-one)."""
    theta = matrix_to_theta(voxel, fixed_shape, moving_shape)
    if covered < MIN_INITIAL_OVERLAP and _inside_fraction(theta, fixed_shape, moving_shape) < 0.5:
        warn(
            f"the result maps only {100 * covered:.1f} % of the fixed image into the moving "
            "image: MI over so small an overlap is no evidence of alignment (a start that far "
            "off: try initial='geometry' or 'moments', or a transform; a step too large: a "
            "smaller lr)"
        )


def border_value(moving: Tensor) -> float | None:
    """The value that ``moving`` (1, 1, *shape) continues with beyond its edges: the value of
    the voxels on its faces when at least ``UNIFORM_BORDER`` of them hold it exactly (a
    zero-filled canvas, a skull-stripped or resampled image), else None (anatomy or noise at
    the edges: what lies beyond is unknown)."""
    x = moving[0, 0]
    faces = torch.cat([x.select(a, i).reshape(-1) for a in range(x.ndim) for i in (0, -1)])
    mode = faces.mode().values
    return float(mode) if float((faces == mode).float().mean()) >= UNIFORM_BORDER else None


def _level_step(fl, wl, ml, moving_mask: bool, loss_fn, pad=None):
    """One iteration's work on the images' device at one pyramid level, a pure function
    ``step(theta, idx) -> (loss, d loss / d theta)``: theta (d, d+1) on the device (the
    ``affine_grid`` matrix), idx the sampled fixed voxels' flat indices (None: every voxel).
    It resamples the moving image (and its mask) at the fixed voxels, weights the samples
    by overlap x masks and evaluates the loss; with ``pad`` (:func:`border_value`) every
    sample counts, the moving image continuing with ``pad`` beyond its edges. Being pure (no
    state, no host read but the loss's own value checks), it can be replayed from a CUDA
    graph (:class:`_Replay`)."""
    d = fl.ndim - 2
    shifted = None if pad is None else ml - pad

    def step(theta: Tensor, idx: Tensor | None):
        th = theta.detach().requires_grad_()
        if idx is None:
            grid = F.affine_grid(th[None], (1, 1, *fl.shape[2:]), align_corners=False)
            fixed_vals, weights = fl, wl
        else:
            grid = _normalized_points(idx, fl.shape[2:]) @ th[:, :d].T + th[:, d]
            fixed_vals = fl.reshape(1, 1, -1)[:, :, idx]
            weights = None if wl is None else wl.reshape(1, 1, -1)[:, :, idx]
        if pad is None:
            out = sample_points(ml, grid.reshape(-1, d)).reshape(1, ml.shape[1], *fixed_vals.shape[2:])
            overlap = overlap_weight(grid, ml.shape[2:]).reshape(fixed_vals.shape)  # no resampling of ones
            if weights is not None:
                overlap = overlap * weights
        else:  # the moving image continues with ``pad`` beyond its edges: every sample counts
            out = sample_points(shifted, grid.reshape(-1, d)).reshape(1, 1, *fixed_vals.shape[2:]) + pad
            overlap = torch.ones_like(fixed_vals) if weights is None else weights
        if moving_mask:
            overlap = overlap * out[:, 1:2]
        value = check_loss_value(loss_fn(fixed_vals, out[:, :1], overlap))
        (grad,) = torch.autograd.grad(value, th)
        return value.detach(), grad

    return step


class _Replay:
    """A level's ``step`` (:func:`_level_step`) captured in a CUDA graph: a call copies theta
    and idx into the graph's static inputs and replays it, one launch instead of the ~100
    kernel launches of the warp, the loss and its backward, which bound small problems by
    the host. Value checks are off in the capture (they read data on the host)."""

    def __init__(self, step, theta: Tensor, idx: Tensor | None):
        self.theta, self.idx = theta.clone(), None if idx is None else idx.clone()
        self.graph = torch.cuda.CUDAGraph()
        # (the images' device current: the capture records the current device's stream)
        with torch.cuda.device(theta.device), value_checks(False), torch.cuda.graph(self.graph):
            self.out = step(self.theta, self.idx)

    @classmethod
    def first(cls, step, theta: Tensor, idx: Tensor | None, strict: bool):
        """Run ``step`` once eagerly on a side stream (the warm-up a capture needs, and a
        real iteration, with the value checks as set), then capture it: (loss, grad, replay).
        If the capture fails, ``strict`` raises; otherwise a warning and replay None (eager)."""
        side, main = torch.cuda.Stream(theta.device), torch.cuda.current_stream(theta.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            value, grad = step(theta, idx)
        main.wait_stream(side)
        try:
            return value, grad, cls(step, theta, idx)
        except RuntimeError as e:
            if strict:
                raise
            warn(f"mi.register: the step did not capture in a CUDA graph ({e}); running eagerly")
            return value, grad, None

    def __call__(self, theta: Tensor, idx: Tensor | None):
        self.theta.copy_(theta)
        if idx is not None:
            self.idx.copy_(idx)
        self.graph.replay()
        return self.out


# ---------------------------------------------------------------- registration


@torch.inference_mode(False)  # (a model's predict or validation step may call it)
@torch.enable_grad()
def register(
    fixed,
    moving,
    *,
    transform: str = "rigid",
    levels: int | None = None,
    iterations: int | Sequence[int] | None = None,
    lr: float | None = None,
    loss: None | dict | Callable = None,
    initial=None,
    mask=None,
    moving_mask=None,
    spacing=None,
    moving_spacing=None,
    sampling: None | str | float | int = DEFAULT_SAMPLING,
    sampling_strategy: str = "random",
    tolerance: float = DEFAULT_TOLERANCE,
    winsorize=WINSORIZE,
    seed: int = 0,
    device=None,
    graph: bool | None = None,
    progress: bool = True,
    **loss_kwargs,
) -> RegistrationResult:
    """Find the rigid or affine transform that aligns ``moving`` to ``fixed`` by maximising MI.

    Coarse to fine over a pyramid (average pooling, per axis towards isotropic voxels:
    :func:`shrink_factors`); at each level Adam updates the transform parameters with a
    cosine-decaying step. Each iteration resamples the moving image at the fixed image's
    voxels (all of them, or a fresh sample: ``sampling``) through the physical transform
    (grid_sample, bilinear/trilinear, zero padding) and evaluates the loss with weights =
    overlap (samples from outside the moving image do not count, as in ITK's metrics) x the
    fixed ``mask`` x the ``moving_mask`` at the mapped point; except that a moving image
    whose faces hold one value (a zero-filled canvas, a skull-stripped or resampled image;
    ``UNIFORM_BORDER``), given no ``moving_mask`` and no NaN voxels, continues with it
    beyond its edges and every sample counts: dropped, fixed background pushed out of the
    overlap raises NMI, which took a small object on such a canvas tens of mm off. It takes
    its own gradients, also when called under ``torch.no_grad()`` or
    ``torch.inference_mode()`` (a model's validation step).

    Args:
        fixed, moving: SimpleITK images, file paths (NIfTI, NRRD, MHA/MHD, a DICOM series
            folder or one of its files: their geometry is used; PNG/JPEG/.npy: voxel space),
            nibabel images or MONAI ``MetaTensor`` objects (voxels (i, j[, k]) and their
            affine, read as SimpleITK images: :func:`~mi.registration.space.from_affine`;
            ``warped`` is then in SimpleITK's array order ``[k, j, i]``, and
            ``warped_image()`` places it), or 2-D (H, W) / (1, H, W) / (1, 1, H, W) or 3-D
            (D, H, W) / (1, 1, D, H, W) tensors or arrays (voxel space, scaled by ``spacing`` /
            ``moving_spacing`` if given: one number or one per axis (x, y[, z]): x is the
            array's last axis; ``spacing`` is a moving array's too unless ``moving_spacing``
            is given, and a moving image with its own geometry keeps it). Any real dtype
            (computed in float32: values float32 would merge, such as a signal on an offset
            of 1e9, are refused); the shapes may
            differ, the number of dimensions may not. A 3-D array is a volume, not (C, H, W)
            ((H, W, 3 or 4), a colour picture's layout, is refused: convert it to grey). NaN and
            Inf voxels (SPM and resampling tools write NaN where there is no data; NIfTI
            files keep them, :func:`mi.io.read_medical`) are outside the image: fixed ones
            are never sampled, and a sample whose interpolation reads a moving one, or a
            voxel next to one, does not count (as NaN would propagate, with a margin of up to
            a voxel: :func:`~mi.registration.space.interpolable`); coarse levels pool the
            finite voxels alone. They read as 0 in ``warped``.
        transform: "rigid" (rotation about the fixed image's physical centre + translation,
            rigid in mm) or "affine".
        levels: pyramid levels (1 = full resolution only); an axis is pooled only as far as
            it keeps 4 voxels (a slab of 8 slices: 2 along them; one of 2 or 3 slices: none,
            and fewer than 2 voxels along an axis are refused), and each level must pool
            further than the last. None (the default): as many as ``iterations`` gives
            counts, else :func:`default_levels`: 3, or more while the coarsest level keeps
            over 96 voxels along an axis (4 from 388 voxels, 5 from 776), fewer for images
            too small to pool that far or whose coarsest level would keep fewer than 768
            voxels in all, or in the fixed ``mask`` (2 levels below about 112x112 pixels or
            40^3 voxels, 1 below about 56x56 or 20^3: a 16x16 level misled MI,
            :func:`default_levels`).
        iterations: Adam steps per level, coarsest first: an int for every level, one int
            per level (a tuple or list: with ``levels=None`` its length sets the levels), or
            None for ``min(200, max(60, 30 * 2**level))`` (120, 60, 60 for 3 levels; 200,
            120, 60, 60 for 4).
        lr: Adam's step in mm (voxels without geometry): rotations and linear parts are
            scaled so one unit moves the image's corners by about that; level ``l`` starts
            at ``lr * 2**l`` and decays (cosine) to 5 % of that, 1 % on sampled levels.
            None (the default): half the fixed image's smallest voxel spacing
            (:func:`default_lr`: 0.5 mm for 1 mm voxels, 0.5 without geometry), so that
            the step follows the image's scale (0.05 mm or 20 mm pixels register as 1 mm
            ones do: a fixed 0.5 mm step diverged on the first and crawled on the second).
            Adam moves a parameter at most about ``lr`` per step, so the schedule's reach
            is counted in voxels: about 170 of the finest for 3 levels, 590 for 4 (the
            default levels keep the reach near the image's extent). When the finest level
            ends still moving (a parameter's net change over it more than half of what its
            steps allow), :func:`register` warns that it has not converged: the start was
            beyond the reach, or the steps too small; use more levels or coarse iterations,
            or start closer (``initial``). At most the fixed image's diagonal (ValueError).
        loss: None (``MutualInformationLoss(num_bins=32, normalize="studholme",
            kernel="bspline")``, updated with ``loss_kwargs``; its ``value_range``, unless
            given, each whole image's min..max within its mask, taken once, as ITK's
            metrics do), a dict of keywords for
            :class:`mi.MutualInformationLoss`, or any callable ``loss(fixed, warped,
            weights) -> scalar`` to minimise: its arguments are (1, 1, n), the level's
            samples, or a mask's voxels (see ``sampling``); with ``sampling=None``, or
            ``"auto"`` on a level without a mask and no more voxels than the count, the
            level's grid (1, 1, *shape). :class:`mi.LocalMutualInformationLoss` cuts its
            patches from the grid: it needs ``sampling=None`` (else ValueError). A callable
            must return a floating-point scalar tensor computed from ``warped`` (else
            TypeError / ValueError), finite and with a finite gradient (else ValueError,
            naming the level and iteration).
        **loss_kwargs: keywords for the default loss (num_bins, sigma, kernel, normalize, ...).
        initial: the starting transform, fixed physical -> moving physical: a
            :class:`RegistrationResult` (a rigid stage before an affine one), a (d+1)x(d+1)
            matrix, a SimpleITK transform, or an ITK transform file (what
            :meth:`RegistrationResult.save_transform` writes); default None, the identity
            (the images' headers are trusted: right for scans of one session). For rigid its
            linear part must be a rotation. "geometry": a translation that maps the fixed
            grid's centre onto the moving grid's (ITK's centred initialiser); "moments": one
            that maps the centres of mass onto each other (intensity above each image's
            minimum, within the masks; ANTs' default start). Use one of these when the
            images' physical positions are unrelated (other scanners, other subjects).
            ValueError when the start maps no fixed voxel into the moving image; a warning
            when less than ``MIN_INITIAL_OVERLAP`` (10 %) does, unless half the moving image
            lies within the fixed one (a slab, a smaller field of view); the same warning
            when the result covers that little (NMI over a corner of each image can beat the
            true alignment's).
        mask, moving_mask: optional weights (bool or non-negative float) on the fixed and
            the moving image: tensors/arrays of that image's shape (indexed as the image's
            own array: SimpleITK's [k, j, i], a nibabel image's or a MetaTensor's (i, j, k):
            :func:`~mi.registration.space.mask_for`), or SimpleITK / nibabel images or files
            on its grid. Fixed voxels outside ``mask`` are never sampled; samples that
            map outside ``moving_mask`` (bilinear) do not count.
        sampling: fixed voxels per iteration, drawn afresh each iteration (``seed``); only
            those are resampled: a fraction in (0, 1] of each level's voxels (in the mask),
            a count on every level (at least ``MIN_SAMPLES`` = 64), None (every voxel of the
            grid, the mask's weights included), or "auto" (the default): 2**17 = 131072
            voxels on every level. A fraction or count is raised to 768 voxels per level
            (``MIN_LEVEL_SAMPLES``: fewer misled MI on small images and coarse levels). A
            level with no more voxels than that (in the mask) uses all of them, each
            iteration: the grid without a mask, else the mask's voxels alone.
            ``sampling_strategy``: "random" (uniform, with replacement) or "regular"
            (a stride with a random offset).
        tolerance: stop a level early when the loss's least-squares slope over the last
            10 iterations, times 10, is below this (0: run every iteration).
        winsorize: quantiles (lo, hi): the loss (and ``mi_before``, ``mi_after``) sees each
            image clamped to its lo and hi quantiles over the voxels in its mask (finite
            ones; :func:`winsorized`), as ANTs' scripts; default ``WINSORIZE`` = (0.005,
            0.995). A few voxels far beyond the rest then no longer squeeze the anatomy into
            a few bins (the loss bins each image's range). None: every intensity as it is,
            as ITK's metrics. ``warped`` and the initial "moments" use the image as given.
        device: where to compute: "cpu", "cuda[:index]", a torch.device (default: the fixed
            image's device; CPU for files). Another kind, or a CUDA device this machine
            lacks: ValueError.
        graph: on CUDA, replay each level's device work (warp, loss, its gradient with
            respect to the transform) from a CUDA graph captured at the level's first
            iteration, which runs eagerly (levels of fewer than 4 iterations run eagerly
            throughout). The transform, Adam and the convergence test stay on the host, as
            in eager mode, and so do the results: the replay runs the same kernels. None
            (the default): when the loss is the built-in one (``loss`` None or a dict);
            True: also for a callable ``loss``, which must then be capturable (no host
            reads, no data-dependent shapes); False: never. Value checks run on each
            level's first iteration and not in the replays.
        progress: a progress bar per level (tqdm) on stderr.

    Returns:
        :class:`RegistrationResult` (physical, matrix, theta, warped, mi_before, mi_after, ...).
        Warnings (besides those above): the result's ``mi_after`` more than ``DIVERGED``
        below ``mi_before`` (it diverged), or under ``LOW_SCORE`` = 1.05, where the images
        look independent (a failed registration, most often: a start beyond the reach, or
        content such as a periodic texture).
    """
    t_start = time.perf_counter()
    if not isinstance(transform, str):
        raise TypeError(f"transform must be a string, got {type(transform).__name__}")
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    mask, moving_mask = mask_for("mask", mask, fixed), mask_for("moving_mask", moving_mask, moving)
    f, gf, m, gm, valid = read_pair(fixed, moving, device, spacing, moving_spacing)
    lr = check_lr(lr, gf)
    tolerance = _check_positive("tolerance", tolerance, allow_zero=True)
    sampling = _check_sampling(sampling, sampling_strategy)
    d = f.ndim - 2
    w, wm, loss_fn, gen, pyramid, (fs, ms) = _setup(
        f, gf, m, gm, mask, moving_mask, loss, loss_kwargs, seed, sampling, valid, winsorize
    )
    levels = _check_levels(levels, gf, gm, iterations, w)
    its = _check_iterations(iterations, levels)
    check_level_sizes(gf, w, mask is not None, loss_fn, levels)
    constant = constant_images(fs, w, ms, wm)
    if constant:  # nothing to register by: no steps (and a warning that says so)
        its = (0,) * levels
    init = initial_transform(initial, transform, f, gf, m, gm, w, wm)
    use_graph = _check_graph(graph, loss, f.device)
    pad = border_value(ms) if wm is None else None  # (a moving mask or NaN voxels: their weights)

    center = gf.center()
    model = Transform(transform, center, gf.radius(), init)
    to_fixed, to_moving_inv = gf.index_to_physical(), torch.linalg.inv(gm.index_to_physical())
    history, ran = [], []
    for level in reversed(range(levels)):  # coarse to fine
        ff, fm = shrink_factors(gf, level), shrink_factors(gm, level, gf)
        fl, wl, ml = pyramid(ff, fm)  # ml: moving[, moving mask]
        nf = to_normalized(extent(fl.shape[2:], ff))
        nm = to_normalized(extent(ml.shape[2:], fm))
        before_fixed, after = nm @ to_moving_inv, to_fixed @ torch.linalg.inv(nf)
        sampler = _Sampler(sampling, sampling_strategy, wl, fl[0, 0].numel(), gen)
        n, lr0 = its[levels - 1 - level], lr * 2.0**level
        opt = torch.optim.Adam(model.parameters(), lr=lr0)
        bar = _progress(progress, level, levels, n)
        level_losses, start, reach = [], _parameters(model), 0.0
        step, replay = _level_step(fl, wl, ml, wm is not None, loss_fn, pad), None
        for it in range(n):
            for group in opt.param_groups:
                group["lr"] = _step_size(
                    lr0, it, n, FINAL_STEP_SAMPLED if sampler.noisy else FINAL_STEP_DENSE
                )
            opt.zero_grad(set_to_none=True)
            theta = (before_fixed @ model() @ after)[:d]
            th, idx = theta.detach().to(ml), sampler(f.device)
            if not ran and it == 0:
                check_overlap(th, fl, wl, ml.shape[2:])
            if replay is None and use_graph and n >= MIN_GRAPH_ITERATIONS:
                value, grad, replay = _Replay.first(step, th, idx, strict=graph is True)
                use_graph = replay is not None
            else:
                value, grad = step(th, idx) if replay is None else replay(th, idx)
            theta.backward(grad.to(theta))
            opt.step()
            reach += opt.param_groups[0]["lr"]
            level_losses.append(value.item())
            check_finite_step(level_losses[-1], _parameters(model), levels - level, it)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{level_losses[-1]:+.5f}", refresh=False)
            if tolerance and len(level_losses) >= CONVERGENCE_WINDOW:
                if abs(_slope(level_losses[-CONVERGENCE_WINDOW:])) * CONVERGENCE_WINDOW < tolerance:
                    break
        if bar is not None:
            bar.close()
        history += level_losses
        ran.append(len(level_losses))
    _warn_if_moving(model, start, reach, len(level_losses))

    with torch.no_grad():
        physical = model().detach()
        voxel = voxel_matrix(physical, gf, gm)
        mi_before, *_ = _score(fs, ms, voxel_matrix(init, gf, gm), w, wm)
        mi_after, warped, covered = _score(fs, ms, voxel, w, wm, output=m)
    _warn_small_overlap(covered, voxel, f.shape[2:], m.shape[2:])
    if mi_after < mi_before - DIVERGED:
        warn(
            f"the registration ended below its start (normalised MI {mi_after:.4f} < {mi_before:.4f}): "
            "it diverged or the start was already the optimum; try a smaller lr or more levels"
        )
    if mi_after < LOW_SCORE and not constant:
        warn(
            f"the images share almost no information at the result (normalised MI {mi_after:.4f}; "
            "1 for independent images): if they should match, the registration has likely failed "
            "(a start beyond its reach: try initial='moments' or a transform, or more levels; or "
            "content MI cannot align, such as a periodic texture)"
        )
    out_shape = (
        fixed.shape if isinstance(fixed, (Tensor, np.ndarray)) and not has_affine(fixed) else f.shape[2:]
    )
    return RegistrationResult(
        physical=physical,
        matrix=voxel,
        theta=matrix_to_theta(voxel, f.shape[2:], m.shape[2:]),
        warped=warped.reshape(tuple(out_shape)),
        loss_history=history,
        mi_before=mi_before,
        mi_after=mi_after,
        transform=transform,
        center=center,
        iterations=tuple(ran),
        seconds=time.perf_counter() - t_start,
        fixed_geometry=gf,
        moving_geometry=gm,
    )


def check_level_sizes(gf: Geometry, w: Tensor | None, masked: bool, loss_fn, levels: int) -> None:
    """Before the work: warn about a fixed image of few voxels (``_warn_if_few_voxels``), and
    refuse, naming the level, local MI patches larger than the coarsest pyramid level's
    fixed image (cut from each level's grid: the message named an image the caller never
    gave)."""
    _warn_if_few_voxels(gf, w, masked)
    if not isinstance(loss_fn, LocalMutualInformationLoss):
        return
    factors = shrink_factors(gf, levels - 1)
    shape = tuple(n // f for n, f in zip(gf.size, factors))[::-1]  # (the tensor's axes: z, y, x)
    sizes = _per_axis("patch_size", loss_fn.patch_size, len(shape))
    if any(p > n for p, n in zip(sizes, shape)):
        raise ValueError(
            f"the loss's patch_size {sizes} is larger than the coarsest pyramid level's fixed image "
            f"{shape} (level {levels} of {levels}: the image pooled by {factors[::-1]}), whose grid "
            "local MI cuts its patches from: pass fewer levels or a smaller patch_size"
        )


def _warn_if_few_voxels(gf: Geometry, w: Tensor | None, masked: bool) -> None:
    """Warn when the fixed image (in its mask, and finite: ``w``; ``masked``: a mask was
    given) holds fewer than ``MIN_COARSEST_VOXELS``: MI of
    so few voxels rewards wrong overlaps (``default_levels``), whatever the levels or bins.
    The MNI T1 smoothed onto 4^3, 6^3 and 8^3 voxels against a copy shifted 0.3 voxel
    (2026-12-03, a one-off script): rotations of 26.6, 7.6 and 2.6 degrees where there is
    none, with 32 bins (11.4, 6.5 and 5.3 with 8)."""
    n = _level_voxels(gf, 0, w)
    if n < MIN_COARSEST_VOXELS:
        where = "in its mask" if masked else "that are finite" if w is not None else "in all"
        warn(
            f"the fixed image has {n} voxels {where}, fewer than {MIN_COARSEST_VOXELS}: MI of so "
            "few voxels rewards wrong overlaps, and the result may be far off; check it, or "
            "register larger images"
        )


def _parameters(model: Transform) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _warn_if_moving(model: Transform, start: Tensor, reach: float, n: int) -> None:
    """Warn when the finest level ended still moving: a parameter's net change over its ``n``
    steps more than ``STILL_MOVING`` of ``reach``, the sum of its step sizes (Adam moves a
    parameter about its step size when the gradient keeps its sign). Converged runs end far
    below (the brain pairs and the demos: at most 0.03); runs that stopped short of a large
    rotation at the full step (0.94-1.02: a 0.5 mm photo rotated 25 degrees with 3 levels)."""
    if n < CONVERGENCE_WINDOW or reach <= 0:
        return
    moved = float((_parameters(model) - start).abs().max()) / reach
    if moved > STILL_MOVING:
        warn(
            f"the registration has not converged: over the finest level a parameter still moved "
            f"{moved:.0%} of the way its steps allow (the full step, one way): the "
            "misalignment may lie beyond the steps' reach: use more levels or coarse iterations, "
            "or start closer (initial=)"
        )


def _progress(enabled: bool, level: int, levels: int, n: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=n, desc=f"level {levels - level}/{levels} (1/{2**level})", file=sys.stderr, leave=True)
