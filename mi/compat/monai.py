"""MONAI's ``GlobalMutualInformationLoss`` on this library's op: ``from mi.compat.monai import
GlobalMutualInformationLoss`` in place of ``from monai.losses import ...``.

MONAI 1.6 builds (batch, pixels, bins) weight tensors: 15 GB of GPU memory for 8x512x512
at 256 bins, 49 GB for a 160x192x224 volume (``bench/results/bench_gpu.csv``). This class
computes the same numbers from the fused joint histogram, in O(B K^2 + N) memory.
"""

import math

import torch
from torch import Tensor
from torch.nn.modules.loss import _Loss

from .. import _autograd, _torch
from ..functional import (
    _check_histogram_size,
    _check_num_bins,
    _check_sigma,
    _check_tensor,
    _checks_on,
    _extremes,
    _grad_needed,
    _GradRange,
    _guard_grad,
    _no_checks,
    _queue_checks,
    _resolve_backend,
)
from ..information import read_number
from ..modules import reduce_loss

KERNEL_TYPES = ("gaussian", "b-spline")
REDUCTIONS = ("none", "mean", "sum")
#: Smallest ``sigma_ratio``: the op drops Gaussian weights below 2**-24 of the peak, and
#: MONAI divides each pixel's weights by their sum; above 0.2 bin widths what is dropped is
#: below 3e-6 of that sum for every pixel (below 6e-8 at MONAI's default 0.5).
MIN_SIGMA_RATIO = 0.2


def _reduction(reduction) -> str:
    """MONAI's ``LossReduction`` (a str Enum) or its value."""
    value = getattr(reduction, "value", reduction)
    if value not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return value


class _GaussianRowSum(torch.autograd.Function):
    """z(u) = sum_k exp(-(u - k)^2 / (2 s^2)) over the K bins, per pixel (u in bin coordinates):
    the sum MONAI divides each pixel's Gaussian weights by. Over the op's window only (W bins,
    the rest is below 2**-24 of the peak), in O(N) memory: the backward recomputes the terms
    from u (with differentiable ops, so a second derivative is exact)."""

    generate_vmap_rule = True  # (torch.func: elementwise torch ops both ways)

    @staticmethod
    def forward(u, num_bins, sigma):
        return _gaussian_row_sum(u, num_bins, sigma, 0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        u, num_bins, sigma = inputs
        ctx.save_for_backward(u)
        ctx.spec = (num_bins, sigma)

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return g * _gaussian_row_sum(u, *ctx.spec, 1), None, None


def _gaussian_row_sum(u, num_bins, sigma, order):
    """sum_k w^(order)(u - k) over each pixel's window (order 0: z, 1: dz/du)."""
    double = u.dtype == torch.float64
    r, width = (
        _torch.support("gaussian", sigma, double),
        _torch.window_size("gaussian", sigma, num_bins, double),
    )
    start = (torch.floor(u.detach() - r) + 1.0).clamp(0, num_bins - width)
    out = torch.zeros_like(u)
    for i in range(width):
        d = u - (start + i)
        w = torch.exp(d * d * (-0.5 / sigma**2))
        out = out + (w if order == 0 else d * w * (-1.0 / sigma**2))
    return out


def _bspline_terms(img: Tensor, num_bins: int) -> Tensor:
    """MONAI's window term of every pixel: min and max over the whole tensor (all samples,
    differentiated, as ``torch.max`` and ``torch.min``), bin size (max - min) / (K - 4),
    ``clamp(img / size - (min / size - 2), 2, K - 3)``. Everything is first scaled by the
    power of two that brings max(|min|, |max|) near 1: exact, so the arithmetic is MONAI's
    bit for bit, and nothing overflows near the float limit. A constant image (MONAI: 0 / 0)
    lands on bin 2."""
    s = _torch.pow2_scale(img.detach().abs().amax())
    x = img * s
    hi, lo = torch.max(x), torch.min(x)
    span = hi - lo
    size = torch.where(span > 0, span, num_bins - 4.0) / (num_bins - 4)
    return torch.clamp(x / size - (lo / size - 2), 2, num_bins - 3)


class GlobalMutualInformationLoss(_Loss):
    """MONAI 1.6's ``monai.losses.GlobalMutualInformationLoss``: same arguments, defaults and
    numbers, on the fused joint histogram.

    Convention (MONAI's): ``pred`` and ``target`` are B[NDHW] (batch first; channels and
    space pooled into one histogram per sample). The loss is ``-MI`` with
    ``MI = sum_ab p_ab log((p_ab + smooth_nr) / (p_a p_b + smooth_dr) + smooth_dr)`` in nats,
    ``p_ab`` the joint histogram divided by the number of pixels of a sample, ``p_a``,
    ``p_b`` its marginals, reduced over the batch by ``reduction``.

    * ``kernel_type="gaussian"``: intensities clamped to [0, 1] (MONAI expects that range),
      K bin centres ``linspace(0, 1, K)``, a Gaussian of ``sigma_ratio`` bin widths, each
      pixel's K weights divided by their sum. Here: the op's Gaussian window with a per-pixel
      weight 1 / (z(u) z(v)), z the window sum (``_GaussianRowSum``), which is the same
      thing. Needs ``sigma_ratio >= 0.2`` (``MIN_SIGMA_RATIO``): the op drops weights below
      2**-24 of the peak, which after MONAI's division would matter for narrower windows.
    * ``kernel_type="b-spline"`` (Mattes): ``pred`` gets a cubic B-spline window, ``target``
      MONAI's zero-order one (the nearest bin; a tie at half a bin splits half and half),
      at window terms from the min and max over the whole batch tensor, with 2 padding bins
      each side (``_bspline_terms``; ``num_bins >= 5``). ``target`` gets no gradient (as in
      MONAI); ``pred``'s also flows through its min and max.

    Differences from MONAI, all but the last where MONAI gives NaN or is imprecise: NaN
    inputs (and Inf in "b-spline" mode; "gaussian" clamps them) raise a ValueError when
    value checks are on (``mi.value_checks``); a constant image in "b-spline" mode gives 0
    instead of NaN; values near the float limit work; half precision is computed in float32
    (MONAI: in half); ``num_bins < 2`` is refused; so is ``smooth_dr=0`` (MONAI's Gaussian
    weights never reach exactly 0, so its empty cells never meet 0 / 0; this op drops the
    weights below 2**-24 of the peak, and some cells are empty); integer images are refused
    (in "gaussian" mode MONAI casts its bin centres and width to the image's dtype: in
    int64 all bin centres but the last are 0). And in "b-spline" mode a ``pred`` that
    needs a gradient and spans less than ``(num_bins - 4) / 2**100`` (1.5e-29 at 23 bins)
    is refused, as by :func:`mi.mutual_information`, where MONAI's gradient reaches 1e30.
    Extra keyword: ``backend`` (``"auto"``: Triton for CUDA tensors, as
    :func:`mi.mutual_information`).

    Example:
        >>> loss = GlobalMutualInformationLoss()
        >>> pred = torch.rand(2, 1, 32, 32, requires_grad=True)
        >>> loss(pred, torch.rand(2, 1, 32, 32)).backward()
    """

    def __init__(
        self,
        kernel_type: str = "gaussian",
        num_bins: int = 23,
        sigma_ratio: float = 0.5,
        reduction="mean",
        smooth_nr: float = 1e-7,
        smooth_dr: float = 1e-7,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__(reduction=_reduction(reduction))
        if kernel_type not in KERNEL_TYPES:
            raise ValueError(f"kernel_type must be one of {KERNEL_TYPES}, got {kernel_type!r}")
        self.kernel_type = kernel_type
        self.num_bins = _check_num_bins(num_bins)
        if kernel_type == "b-spline" and self.num_bins < 5:
            raise ValueError(
                f"kernel_type='b-spline' needs num_bins >= 5 (2 padding bins each side), got {num_bins}"
            )
        self.sigma_ratio = _check_sigma(sigma_ratio, "sigma_ratio")
        if kernel_type == "gaussian" and self.sigma_ratio < MIN_SIGMA_RATIO:
            raise ValueError(
                f"sigma_ratio must be at least {MIN_SIGMA_RATIO} bin widths here, got {sigma_ratio}: "
                f"narrower Gaussians lose weights that MONAI's per-pixel normalisation would amplify"
            )
        # (as MONAI's float(): also a numpy scalar or a one-element tensor)
        smooth_nr, smooth_dr = (read_number(n, v, "a finite real number") for n, v in
                                (("smooth_nr", smooth_nr), ("smooth_dr", smooth_dr)))  # fmt: skip
        if not (math.isfinite(smooth_nr) and math.isfinite(smooth_dr)):
            raise ValueError(f"smooth_nr and smooth_dr must be finite, got {smooth_nr} and {smooth_dr}")
        if not (smooth_nr >= 0 and smooth_dr > 0):
            raise ValueError(
                f"smooth_nr must be >= 0 and smooth_dr > 0, got {smooth_nr} and {smooth_dr}: the empty "
                f"cells of the joint histogram would give 0 log(0 / 0) = NaN"
            )
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)
        self.backend = backend

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred, target: B[NDHW], the same shape -> the reduced loss (``reduction="none"``: (B,))."""
        _check_tensor("pred", pred)
        _check_tensor("target", target)
        if target.shape != pred.shape:
            raise ValueError(f"ground truth has differing shape ({target.shape}) from pred ({pred.shape})")
        if pred.ndim < 1:
            raise ValueError("pred must have a batch dimension, got a 0-d tensor")
        if pred.device != target.device:
            raise ValueError(
                f"pred and target must be on the same device, got {pred.device} and {target.device}"
            )
        k, rows = self.num_bins, pred.shape[0]
        n = pred.numel() // rows if rows else 0
        if rows and not n:
            raise ValueError(f"pred must hold at least one pixel per sample, got shape {tuple(pred.shape)}")
        acc = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
        pred, target = _guard_grad("pred", pred, None, 0.0), _guard_grad("target", target, None, 0.0)
        x, y = pred.reshape(rows, n).to(acc), target.reshape(rows, n).to(acc)
        backend = _resolve_backend(self.backend, x)
        _check_histogram_size(rows, k, 2, x.device)
        check = _no_checks
        if self.kernel_type == "gaussian":
            u, v = (torch.clamp(t, 0, 1) * (k - 1) for t in (x, y))  # +-inf clamp too: NaN is refused
            if _checks_on():
                check = _queue_checks(backend, self._extremes(u, v))
            z_u, z_v = (_GaussianRowSum.apply(t, k, self.sigma_ratio) for t in (u, v))
            kinds, m, sigma = ("gaussian", "gaussian"), 1.0 / (z_u * z_v), self.sigma_ratio
        else:
            if _checks_on() and rows:  # finite, and pred's range wide enough for its gradient
                ext = self._extremes(x, y)
                whole = torch.stack([ext["pred"][:, 0].amin(), ext["pred"][:, 1].amax()])[None]
                grads = [_GradRange("pred", whole, k - 4, pred.dtype)] if _grad_needed(x) else []
                check = _queue_checks(backend, ext, grads=grads)
            u, v = (_bspline_terms(t, k) if rows else t for t in (x, y.detach()))
            kinds, m, sigma = ("bspline", "nearest"), None, 1.0
        joint = _autograd.joint_hist(u, v, m, _autograd.Binning(k, sigma, kinds, backend))
        mi = self._mutual_information(joint / max(n, 1))
        check()
        return reduce_loss(-mi.to(pred.dtype), self.reduction)

    @staticmethod
    def _extremes(x, y):
        return {"pred": _extremes(x), "target": _extremes(y)}

    def _mutual_information(self, pab: Tensor) -> Tensor:
        """MONAI's formula on the joint pdf (B, K, K), its marginals summed from it."""
        papb = pab.sum(2)[:, :, None] * pab.sum(1)[:, None, :]
        ratio = (pab + self.smooth_nr) / (papb + self.smooth_dr) + self.smooth_dr
        return torch.sum(pab * torch.log(ratio), dim=(1, 2))

    def extra_repr(self) -> str:
        return (
            f"kernel_type={self.kernel_type!r}, num_bins={self.num_bins}, sigma_ratio={self.sigma_ratio}, "
            f"reduction={self.reduction!r}"
        )


__all__ = ["GlobalMutualInformationLoss"]
