"""Demo data with known transforms: a 2-D multi-modal photo pair and a synthetic 3-D pair
(voxel space), and how far a found transform is from the true one. The real 3-D brain pair
(physical space) is :mod:`mi.registration.brain`."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .space import extent, matrix_to_theta, sample_points
from .transforms import rigid_matrix, skew


def transform_error(matrix, true, shape) -> tuple:
    """How far ``matrix`` is from the ``true`` one (both fixed -> moving, pixel coordinates) on a
    fixed image of array ``shape``: (rotation error in degrees (of the nearest rotations),
    displacement error at the image centre, and the largest at its corners, in pixels)."""
    matrix, true = torch.as_tensor(matrix, dtype=torch.float64), torch.as_tensor(true, dtype=torch.float64)
    d = len(shape)
    diff = _nearest_rotation(matrix[:d, :d]) @ _nearest_rotation(true[:d, :d]).T
    cos = (diff.trace().item() - (d - 2)) / 2.0
    angle = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
    sizes = list(reversed(shape))  # (x, y[, z])
    centre = torch.tensor([(s - 1) / 2 for s in sizes], dtype=torch.float64)
    corners = torch.tensor(list(itertools.product(*[(0, s - 1) for s in sizes])), dtype=torch.float64)
    pts = torch.cat([centre[None], corners])
    err = (pts @ (matrix - true)[:d, :d].T + (matrix - true)[:d, d]).norm(dim=1)
    return angle, err[0].item(), err[1:].max().item()


def _nearest_rotation(lin: Tensor) -> Tensor:
    """The rotation of the polar decomposition ``lin = R S`` (S symmetric positive)."""
    u, _, vh = torch.linalg.svd(lin)
    return u @ vh


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
        true = rigid_matrix(math.radians(angle_deg), shift, (extent(shape) - 1.0) / 2.0)
    else:
        true = torch.as_tensor(matrix, dtype=torch.float64)
    # the same transform in the photo's pixels: p_big = k (p + 1/2) - 1/2 per axis
    k = extent(big_shape) / extent(shape)
    s = torch.eye(3, dtype=torch.float64)
    s[:2, :2], s[:2, 2] = torch.diag(k), (k - 1.0) / 2.0
    big_true = s @ true @ torch.linalg.inv(s)
    # zero padding (the photo fades out over its last half pixel), not ``warp``'s ITK border
    theta = matrix_to_theta(torch.linalg.inv(big_true), big_shape, big_shape).to(big)
    grid = F.affine_grid(theta[None], (1, 1, *big_shape), align_corners=False)
    moved = sample_points(big, grid.reshape(-1, 2)).reshape(1, 1, *big_shape)

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
        [torch.linalg.matrix_exp(skew(v)) for v in torch.randn(nb, 3, generator=g, dtype=torch.float64)]
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
    true = rigid_matrix(torch.tensor(angles_deg).double().deg2rad(), shift, ((size - 1) / 2.0,) * 3)
    inv = torch.linalg.inv(true)
    fixed = field(pts)
    back = pts @ inv[:3, :3].T + inv[:3, 3]
    lo, hi = fixed.min(), fixed.max()
    moving = _remap(((field(back) - lo) / (hi - lo)).clamp(0, 1))
    return fixed.float(), moving.float(), true
