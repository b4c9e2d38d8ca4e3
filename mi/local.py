"""Local (patch-wise) mutual information: the MI of every patch of two images, in one call.

The op already batches rows; the patches of a batch of images are just more rows. Each
image is padded to a whole number of patches, cut into patches (non-overlapping, or every
``stride`` voxels) by a view and one copy of the samples (never a patches x voxels x bins
tensor), and all the patches' joint histograms come from one call of the op:
O(patches K^2 + N (patch / stride)**d) memory.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _autograd
from ._torch import _acc_dtype
from .functional import (
    ValueRange,
    _binning,
    _check_histogram_size,
    _check_images,
    _check_peaks,
    _occupied,
    _unit_rows,
)
from .information import _score, check_base, check_normalize
from .modules import MI_KWARGS, MutualInformationLoss


def _per_axis(name: str, value, d=None) -> tuple:
    """An int, or one int per spatial dimension (a sequence, array or tensor), as d positive
    ints (d None: any number)."""
    if hasattr(value, "tolist"):  # a tensor or numpy array (or numpy integer): its numbers
        value = value.tolist()
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        sizes = (int(value),) * (d or 1)
    elif isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be an int or one int per spatial dimension, got {value!r}")
    else:
        try:
            sizes = tuple(value)
        except TypeError:
            raise TypeError(
                f"{name} must be an int or one int per spatial dimension, got {value!r}"
            ) from None
        d = len(sizes) if d is None else d
        if len(sizes) != d or not all(
            isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in sizes
        ):
            raise ValueError(f"{name} must give {d} ints (one per spatial dimension), got {value!r}")
        sizes = tuple(int(p) for p in sizes)
    if not all(p >= 1 for p in sizes):
        raise ValueError(f"{name} must be positive, got {sizes}")
    return sizes


def _patch_size(patch_size, spatial: Sequence[int]) -> tuple:
    sizes = _per_axis("patch_size", patch_size, len(spatial))
    if any(p > s for p, s in zip(sizes, spatial)):
        raise ValueError(f"patch_size {sizes} is larger than the image {tuple(spatial)} along an axis")
    return sizes


def _stride(stride, sizes: tuple) -> tuple:
    if stride is None:
        return sizes
    strides = _per_axis("stride", stride, len(sizes))
    if any(s > p for s, p in zip(strides, sizes)):
        raise ValueError(f"stride {strides} must be at most patch_size {sizes} (larger would skip voxels)")
    return strides


def _grid(spatial: tuple, sizes: tuple, strides: tuple) -> tuple:
    """Patches per axis: starts 0, stride, 2 stride, ... until one reaches the far end.
    (ceil((s - p) / st) + 1 as integer floor division: under torch.compile(dynamic=True) the
    float form made a shape expression inductor fails to bound.)"""
    return tuple(-((p - s) // st) + 1 for s, p, st in zip(spatial, sizes, strides))


def _patches(t: Tensor, lead: int, chans: int, spatial: tuple, sizes: tuple, strides: tuple) -> Tensor:
    """Rows (R, chans * N) of images (R, chans, *spatial) -> (R * P, chans * prod(sizes)),
    zero-padded at the far end of every axis to whole patches, patches in C order of the grid
    (one copy of the samples; (patch / stride)**d of them where patches overlap).

    Non-overlapping patches are views (a reshape and a permute) until that copy; overlapping
    ones first take one gather per axis (``index_select`` of the voxels i stride + j along
    it, whose backward sums a voxel's patches). Not one gather of flat indices into the
    whole image, as before 2026-12-02: under ``torch.compile(dynamic=True)`` its index
    arithmetic (products of symbolic sizes) sent inductor's CPU code generation into sympy
    for 280-430 s on the 2-D case of ``tests/test_local.py`` (now 50-70 s) and over 20
    minutes on a 3-D one of 6x37x20 voxels (now about 3 minutes), with a cold inductor
    cache (a fresh machine: CI). Not ``Tensor.unfold``: inductor's unfold backward
    (PyTorch 2.13, CPU) gave wrong gradients and corrupted memory."""
    d = len(spatial)
    grid = _grid(spatial, sizes, strides)
    x = t.reshape(lead, chans, *spatial)
    ends = [(g - 1) * st + p for g, p, st in zip(grid, sizes, strides)]
    pad = [q for s, e in zip(reversed(spatial), reversed(ends)) for q in (0, e - s)]
    if any(pad):
        x = F.pad(x, pad)
    if tuple(sizes) != tuple(strides):  # overlapping: voxels i st + j of each axis, one axis at a time
        for axis, (g, p, st) in enumerate(zip(grid, sizes, strides)):
            pos = torch.arange(g, device=x.device)[:, None] * st + torch.arange(p, device=x.device)
            x = x.index_select(2 + axis, pos.reshape(-1))
    # (R, C, g1, p1, ..., gd, pd) -> (R, g1, ..., gd, C, p1, ..., pd)
    x = x.reshape(lead, chans, *[n for g, p in zip(grid, sizes) for n in (g, p)])
    order = [0, *range(2, 2 + 2 * d, 2), 1, *range(3, 3 + 2 * d, 2)]
    return x.permute(order).reshape(lead * math.prod(grid), chans * math.prod(sizes))


def local_mutual_information(
    x: Tensor,
    y: Tensor,
    *,
    patch_size,
    stride=None,
    num_bins: int = 32,
    sigma: float = 1.0,
    value_range: ValueRange = "auto",
    normalize="none",
    mask: Tensor | None = None,
    base: float | None = None,
    per_channel: bool = False,
    kernel: str = "gaussian",
    backend: str = "auto",
    deterministic: bool = False,
) -> Tensor:
    """Mutual information of every patch of two batches of images.

    Convention:
        The images (B, C, *spatial) are cut into patches of ``patch_size`` voxels (an int, or
        one per spatial dimension), starting at voxel 0 of every axis and every ``stride``
        voxels (default: the patch size, non-overlapping) until a patch reaches the far end.
        Where the last patch passes the far end of an axis it is padded and the padding is
        masked out: it never counts (a border patch is the MI of its real voxels only).
        Intensities map to bins as in :func:`mi.mutual_information`, with one range per
        *image* (``value_range="auto"``: each image's own min..max over its mask), so every
        patch of an image shares its bins. Each patch's MI (and its
        normalisation) is then that of its own soft joint histogram. A patch whose voxels
        all have zero mask weight scores as independent variables (0; 1 for studholme).

    Args:
        x, y: images (B, C, *spatial) of the same shape, any number of spatial dimensions.
        patch_size: voxels per patch edge, an int or one per spatial dimension; at most the
            image's size along every axis.
        stride: voxels between patch starts, an int or one per spatial dimension, at most
            the patch size (overlapping patches below it); None: the patch size.
        num_bins, sigma, value_range, normalize, mask, base, kernel, backend, deterministic:
            as in :func:`mi.mutual_information` (``kernel="mattes"`` too).
        per_channel: False: a patch spans all channels; True: one score per channel.

    Returns:
        (B, *grid) scores, or (B, C, *grid) with ``per_channel=True``, where ``grid`` is
        ``ceil((size - patch) / stride) + 1`` per spatial axis (``ceil(size / patch)``
        without a stride); dtype of the inputs; differentiable with respect to x, y and a
        float mask. Memory: O(B * patches * K^2) for the histograms plus one copy of the
        samples ((patch / stride)**d copies with overlap); all patches go through one call
        of the op. Works under ``torch.compile`` (``fullgraph=True``, ``dynamic`` either
        way; with ``dynamic=True`` inductor's shape arithmetic makes a first compile slow: about
        a minute on 2-D patches, three on 3-D ones, on a 2-core CPU).

    Example:
        >>> x = torch.rand(1, 1, 64, 48)
        >>> local_mutual_information(x, x ** 2, patch_size=16).shape
        torch.Size([1, 4, 3])
    """
    normalize = check_normalize(normalize)
    base = check_base(base)
    a = _check_images(
        x, y, num_bins=num_bins, sigma=sigma, value_range=value_range, mask=mask,
        per_channel=per_channel, kernel=kernel, backend=backend, unit_mask=False,
    )  # fmt: skip
    spatial = tuple(x.shape[2:])
    if not spatial:
        raise ValueError(f"x must have spatial dimensions (B, C, *spatial), got shape {tuple(x.shape)}")
    sizes = _patch_size(patch_size, spatial)
    strides = _stride(stride, sizes)
    grid = _grid(spatial, sizes, strides)
    rows, chans = a.x.shape[0], 1 if per_channel else x.shape[1]
    count = math.prod(grid)
    _check_histogram_size(rows * count, a.num_bins, 2, x.device)
    u, v, keep, binning, op_ranges, check, _ = _binning(a, deterministic=deterministic)
    if keep is None:  # the padding still has to be masked out
        keep = torch.ones((), dtype=_acc_dtype(a.dtype), device=u.device).expand(a.x.shape)
    u, v, m = (_patches(t, rows, chans, spatial, sizes, strides) for t in (u, v, keep))
    if a.mask is None and all((s - p) % st == 0 for s, p, st in zip(spatial, sizes, strides)):
        m = None  # no padding and no mask: every voxel counts fully
    elif a.mask is not None:
        m = _unit_rows(m, "mask")  # per patch: one patch's weights may be tiny beside another's
    ranges = [r if r is None or r.shape[0] == 1 else r.repeat_interleave(count, 0) for r in op_ranges]
    joint = _autograd.joint_hist(u, v, m, binning, *ranges)
    _check_peaks(joint, a.backend, occupied=lambda: _occupied(m, u))
    score = _score(joint.reshape(*a.lead, *grid, *joint.shape[-2:]), normalize, base, a.backend)
    out = score.to(a.dtype)
    check()
    return out


class LocalMutualInformationLoss(MutualInformationLoss):
    """Negative local (patch-wise) MI, a loss for deformable registration: the mean (or sum,
    or none) over patches and the batch of ``-local_mutual_information(...)``.

    Args:
        patch_size, stride: as in :func:`local_mutual_information`.
        num_bins, sigma, normalize, value_range, reduction and ``**kwargs``: as in
            :class:`mi.MutualInformationLoss` (defaults: 32 bins, sigma 1 bin, Studholme's
            normalisation, each image's own range, the mean); ``"none"`` gives the
            (B, *grid) map.

    Example:
        >>> loss = LocalMutualInformationLoss(patch_size=8)
        >>> a = torch.rand(1, 1, 32, 32, requires_grad=True)
        >>> loss(a, a.detach() ** 2).backward()
    """

    _KWARGS = tuple(k for k in MI_KWARGS if k != "group")  # (patches are not sharded)

    def __init__(
        self, patch_size, num_bins: int = 32, sigma: float = 1.0, normalize="studholme", stride=None, **kwargs
    ):
        super().__init__(num_bins, sigma, normalize, **kwargs)
        _per_axis("patch_size", patch_size)  # checked now (again against each image when called)
        if stride is not None:
            _per_axis("stride", stride)
        self.patch_size, self.stride = patch_size, stride

    def _score(self, fixed: Tensor, moving: Tensor, mask: Tensor | None) -> Tensor:
        return local_mutual_information(
            fixed, moving, patch_size=self.patch_size, stride=self.stride, num_bins=self.num_bins,
            sigma=self.sigma, value_range=self.value_range, normalize=self.normalize, mask=mask,
            **self.kwargs,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size!r}, stride={self.stride!r}, {super().extra_repr()}"


__all__ = ["local_mutual_information", "LocalMutualInformationLoss"]
