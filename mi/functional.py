"""Public functions: argument checks, value ranges, backend dispatch.

The heavy lifting is one op (``mi._autograd``): the soft (joint) histogram, with a
hand-written backward, run by the torch backend (CPU, or any device) or by the Triton
kernels (CUDA). It takes the samples as they are with one range [lo, hi] per row and maps
them to bin coordinates itself, so no bin-coordinate copy of the images is made here.
Everything after the histogram is autograd on (B, K, K) tensors (``mi.information``).
"""

import math
import os
import warnings
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor

from . import _autograd
from ._torch import _acc_dtype
from .information import (
    BACKENDS,
    _safe_div,
    check_base,
    check_normalize,
    entropies_from_joint,
    joint_pdf,
    mutual_information_from_joint,
)

PUBLIC_KERNELS = ("gaussian", "bspline", "mattes")
ValueRange = Union[str, tuple[float, float], Sequence[float]]

_TRITON_OK = None


def triton_available() -> bool:
    """True when the Triton kernels import (Triton installed; no GPU needed to import)."""
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            from . import kernels

            _TRITON_OK = kernels.is_available()
        except Exception:  # triton missing or broken: the torch backend does everything
            _TRITON_OK = False
    return _TRITON_OK


def _compiling() -> bool:
    return torch.compiler.is_compiling()


# ---------------------------------------------------------------- argument checks


def _check_tensor(name: str, t, floating=True) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(
            f"{name} must have a floating dtype (float16/bfloat16/float32/float64), got {t.dtype}"
        )
    return t


def _check_sigma(sigma, name="sigma") -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise TypeError(f"{name} must be a positive number, got {type(sigma).__name__}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"{name} must be a positive finite number, got {sigma!r}")
    return float(sigma)


def _check_num_bins(num_bins) -> int:
    if isinstance(num_bins, bool) or not isinstance(num_bins, int):
        raise TypeError(f"num_bins must be an int, got {type(num_bins).__name__}")
    if num_bins < 2:
        raise ValueError(f"num_bins must be at least 2, got {num_bins}")
    return num_bins


def _check_kernel(kernel) -> str:
    if kernel not in PUBLIC_KERNELS:
        raise ValueError(f"kernel must be one of {PUBLIC_KERNELS}, got {kernel!r}")
    return kernel


def _resolve_backend(backend, t: Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_gpu = t.device.type == "cuda"
    if backend == "auto":
        if on_gpu and t.dtype != torch.float64 and triton_available():
            return "triton"
        return "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError("backend='triton' needs the triton package (pip install triton)")
        if not on_gpu and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1), got device {t.device}"
            )
        if t.dtype == torch.float64:
            raise ValueError("backend='triton' accumulates in float32; use backend='torch' for float64")
    return backend


def _check_weights(name: str, w, like: Tensor) -> Optional[Tensor]:
    """A per-sample weight/mask: bool or floating, broadcastable to ``like``; -> float, expanded."""
    if w is None:
        return None
    if not isinstance(w, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(w).__name__}")
    if not (w.dtype == torch.bool or w.is_floating_point()):
        raise TypeError(f"{name} must be a bool or floating tensor, got {w.dtype}")
    if w.device != like.device:
        raise ValueError(f"{name} is on {w.device} but the data are on {like.device}")
    try:
        w = w.expand(like.shape)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(w.shape)} does not broadcast to the data's shape {tuple(like.shape)}"
        ) from None
    return w.to(_acc_dtype(like.dtype))


_VALUE_CHECKS = True


def set_value_checks(enabled: bool) -> bool:
    """Turn the checks that read tensor data on or off; returns the previous setting.

    They are: NaN/Inf in the samples, negative or NaN weights/masks, and the warnings about
    samples that miss the bins. Together they cost one host read per call. On a GPU with the
    Triton backend a few numbers go to pinned memory right after the pass that computes them
    (behind an event) and the call reads them only after it has queued all its own kernels,
    so the host waits for none of those; with the torch backend the read comes first (its
    indexing needs sound bins). On by default; turn them off in a tight GPU loop once the
    data are known to be sound. Argument checks (shapes, dtypes, sigma, ...) always run.
    Skipped anyway while ``torch.compile`` traces (no graph break).
    """
    global _VALUE_CHECKS
    previous, _VALUE_CHECKS = _VALUE_CHECKS, bool(enabled)
    return previous


def _checks_on() -> bool:
    return _VALUE_CHECKS and not _compiling()


def _extremes(x: Tensor) -> Tensor:
    """(R, 2) [min, max] of each row of x (R, N), in one pass (zeros for N = 0). NaN propagates
    through min and max, so a row holding a NaN or an Inf has a non-finite extreme."""
    if x.shape[-1] == 0:
        return x.new_zeros((x.shape[0], 2))
    return torch.stack(torch.aminmax(x.detach(), dim=-1), -1)


def _no_checks():
    pass


def _queue_checks(backend: str, extremes: dict, weights=None, wname="weights", binned=()):
    """All data checks of one call behind one host read; returns ``finish()``, which runs them.

    extremes: {name: (R, 2) per-row [min, max] of the samples} (``_extremes``), which must
    be finite; weights: must be >= 0 (and not NaN); binned: for each fixed range,
    (name, samples (R, N), (lo, hi), first, length, K, data_units): lo..hi map onto bin
    coordinates first..first + length, and samples that miss the K bins get a warning.

    On a GPU with the Triton backend, the few numbers the checks need are queued for the
    host now, into pinned memory behind an event; the caller launches its work and calls
    ``finish()`` last, which waits only for the work queued before the event (the extremes),
    not for the call's own kernels. The kernels are safe on NaN/Inf input (every bin index
    is clamped), so running them before the error is raised does no harm. Elsewhere (the
    torch backend indexes with the bin numbers) the checks run now and ``finish()`` is a
    no-op.
    """
    if not _checks_on():
        return _no_checks
    parts = [e.reshape(-1).float() for e in extremes.values()]
    if weights is not None:
        parts.append(weights.amin().float().reshape(1) if weights.numel() else weights.new_zeros(1))
    stats = torch.cat(parts)
    if not (stats.is_cuda and backend == "triton"):
        _run_checks(stats.tolist(), extremes, weights is not None, wname, binned)
        return _no_checks
    host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
    host.copy_(stats, non_blocking=True)
    event = torch.cuda.Event()
    event.record()

    def finish():
        event.synchronize()
        _run_checks(host.tolist(), extremes, weights is not None, wname, binned)

    return finish


def _run_checks(stats, extremes, has_weights, wname, binned):
    """The host side of ``_queue_checks``: ``stats`` are its numbers, as floats."""
    found, at = {}, 0
    for name, e in extremes.items():
        found[name] = stats[at : at + e.numel()]
        at += e.numel()
        if not all(math.isfinite(t) for t in found[name]):
            raise ValueError(f"{name} contains NaN or Inf")
    if has_weights and not stats[-1] >= 0:
        raise ValueError(f"{wname} must be non-negative (and not NaN)")
    for name, x, (lo, hi), first, length, k, data_units in binned:
        if x.numel() == 0:
            continue
        scale = length / (hi - lo)  # bin coordinate u = (x - lo) * scale + first, on the host
        u_lo = (min(found[name][0::2]) - lo) * scale + first
        u_hi = (max(found[name][1::2]) - lo) * scale + first
        outside = 0.0
        if u_lo < -1.0 or u_hi > k:  # rare: a second look only when some sample misses the bins
            below, above = lo + (-1.0 - first) / scale, lo + (k - first) / scale
            outside = ((x < below) | (x > above)).float().mean().item()
        _warn_binning(k, name, data_units, outside, u_lo, u_hi)


def _warn_binning(num_bins, name, data_units, outside, lo, hi):
    """Warn when the bins cannot be what the caller meant (u in bin coordinates)."""
    hint = (
        " Are x and bins in the same units? (Unlike the seed repository, histogram() does not "
        "scale x by 255: for images in [0, 1] use bins = torch.linspace(0, 1, K).)"
        if data_units
        else " Is value_range right for these images? (value_range='auto' uses each image's own range.)"
    )
    if outside > 0.5:
        warnings.warn(
            f"{100 * outside:.0f}% of the samples of {name} lie more than one bin beyond the "
            f"first or last bin; their mass is lost.{hint}",
            stacklevel=4,
        )
    elif data_units and num_bins >= 16 and hi - lo <= 1.0 and hi > lo:
        warnings.warn(
            f"the samples of {name} all fall within one bin width of the {num_bins} bins' span: "
            f"the histogram will have 1-2 occupied bins.{hint}",
            stacklevel=4,
        )


# ---------------------------------------------------------------- histograms in data units


def _bin_layout(bins) -> tuple[float, float, int]:
    """(first centre, step, K) of equally spaced increasing bin centres."""
    if isinstance(bins, Tensor):
        if bins.is_complex() or bins.dtype == torch.bool:
            raise TypeError(f"bins must be a real tensor, got {bins.dtype}")
        b = bins.detach().double().cpu()
    else:
        try:
            b = torch.as_tensor(bins, dtype=torch.float64)
        except (TypeError, ValueError):
            raise TypeError(f"bins must be a 1-D tensor of bin centres, got {type(bins).__name__}") from None
    if b.ndim != 1:
        raise ValueError(f"bins must be 1-D (the bin centres), got shape {tuple(b.shape)}")
    if b.numel() < 2:
        raise ValueError(f"bins must hold at least 2 bin centres, got {b.numel()}")
    if not torch.isfinite(b).all():
        raise ValueError("bins contains NaN or Inf")
    k = b.numel()
    step = (b[-1] - b[0]).item() / (k - 1)
    if not step > 0:
        raise ValueError("bins must be increasing")
    # linspace in float32 rounds each centre to ~1e-7 relative: allow that, not more.
    dev = (b - (b[0] + step * torch.arange(k, dtype=torch.float64))).abs().max().item()
    if dev > 1e-4 * step + 1e-6 * b.abs().max().item():
        raise ValueError(
            f"bins must be equally spaced (centres of a uniform grid); the largest deviation "
            f"from a uniform grid is {dev:.3g} for a step of {step:.3g}"
        )
    return b[0].item(), step, k


def _flatten_samples(x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension (..., N), got a 0-d tensor")
    lead = tuple(x.shape[:-1])
    return x.reshape(math.prod(lead), x.shape[-1]), lead


def histogram(x: Tensor, bins, sigma: float, *, weights: Optional[Tensor] = None, backend="auto") -> Tensor:
    """Soft (Gaussian kernel density) histogram of the samples in the last dimension.

    Convention:
        ``H[..., k] = sum_n w_n exp(-(x[..., n] - bins[k])^2 / (2 sigma^2))``, normalised so
        that it sums to 1 over the bins. ``x``, ``bins`` and ``sigma`` are all in the same
        (data) units; ``sigma`` is the kernel's standard deviation. Kernel mass beyond the
        first and last bin is dropped (then renormalised). Unlike the seed repository, ``x``
        is not scaled by 255: a warning is raised when most samples miss the bins.
        The kernel is truncated where it falls below 2**-24 of its peak (exact to float32).

    Args:
        x: samples (..., N), any floating dtype (half precision is computed in float32).
        bins: equally spaced bin centres (K,), K >= 2 (a tensor or a sequence).
        sigma: kernel standard deviation, > 0, in the units of ``x``.
        weights: optional non-negative per-sample weights broadcastable to ``x`` (bool or float).
        backend: ``"auto"`` (Triton for CUDA tensors when available, else torch), ``"torch"``,
            ``"triton"``.

    Returns:
        (..., K) histogram summing to 1 (all zeros when every weight is zero), dtype of ``x``.
        Differentiable with respect to ``x`` and ``weights``.

    Example:
        >>> x = torch.tensor([[0.0, 1.0, 1.0, 2.0]])
        >>> h = histogram(x, torch.linspace(0, 2, 3), sigma=0.1)
        >>> [round(v, 4) for v in h[0].tolist()]
        [0.25, 0.5, 0.25]
    """
    _check_tensor("x", x)
    lo, step, k = _bin_layout(bins)
    sig = _check_sigma(sigma) / step
    xf, lead = _flatten_samples(x)
    w = _check_weights("weights", weights, x)
    be = _resolve_backend(backend, x)
    span = (lo, lo + step * (k - 1))  # the first and last bin centres -> bin coordinates 0 and K - 1
    check = _no_checks
    if _checks_on():
        check = _queue_checks(be, {"x": _extremes(xf)}, w, binned=[("x", xf, span, 0.0, k - 1.0, k, True)])
    wf = None if w is None else w.reshape(xf.shape)
    r = torch.tensor([span], dtype=_acc_dtype(x.dtype), device=x.device)
    h = _autograd.hist(xf, wf, k, sig, "gaussian", be, False, r, 0.0, k - 1.0)
    h = _safe_normalize(h, -1).reshape(*lead, k).to(x.dtype)
    check()
    return h


def _safe_normalize(h: Tensor, dims) -> Tensor:
    return _safe_div(h, h.sum(dims, keepdim=True), 0.0)


def histogram2d(
    x1: Tensor, x2: Tensor, bins, sigma: float, *, weights: Optional[Tensor] = None, backend="auto"
) -> Tensor:
    """Soft (Gaussian kernel density) joint histogram of paired samples in the last dimension.

    Convention:
        ``J[..., a, c] = sum_n w_n g(x1[..., n] - bins[a]) g(x2[..., n] - bins[c])`` with
        ``g(d) = exp(-d^2 / (2 sigma^2))`` (a diagonal bandwidth: the 2-D kernel factorises),
        normalised to sum to 1. Rows index ``x1``'s bins, columns ``x2``'s. ``x1``, ``x2``,
        ``bins`` and ``sigma`` are in the same (data) units. Edges as in :func:`histogram`.
        No (N x K) weight matrix is built: each sample touches only the bins where its
        kernel is above float32 resolution.

    Args:
        x1, x2: paired samples (..., N) of the same shape.
        bins: equally spaced bin centres (K,), shared by both axes.
        sigma: kernel standard deviation, > 0, in data units.
        weights: optional non-negative per-sample weights broadcastable to ``x1``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        (..., K, K) joint histogram summing to 1 over the last two dimensions.

    Example:
        >>> x = torch.tensor([[0.0, 1.0]])
        >>> j = histogram2d(x, 1 - x, torch.tensor([0.0, 1.0]), sigma=0.05)
        >>> j[0].round(decimals=4).tolist()
        [[0.0, 0.5], [0.5, 0.0]]
    """
    _check_tensor("x1", x1)
    _check_tensor("x2", x2)
    if x1.shape != x2.shape:
        raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    if x1.device != x2.device:
        raise ValueError(f"x1 and x2 must be on the same device, got {x1.device} and {x2.device}")
    lo, step, k = _bin_layout(bins)
    sig = _check_sigma(sigma) / step
    xf1, lead = _flatten_samples(x1)
    xf2 = x2.reshape(xf1.shape)
    w = _check_weights("weights", weights, x1)
    dtype = torch.promote_types(x1.dtype, x2.dtype)
    xf1, xf2 = xf1.to(dtype), xf2.to(dtype)  # no copy unless the dtypes differ
    be = _resolve_backend(backend, xf1)
    span = (lo, lo + step * (k - 1))
    check = _no_checks
    if _checks_on():
        check = _queue_checks(
            be, {"x1": _extremes(xf1), "x2": _extremes(xf2)}, w,
            binned=[("x1", xf1, span, 0.0, k - 1.0, k, True), ("x2", xf2, span, 0.0, k - 1.0, k, True)],
        )  # fmt: skip
    wf = None if w is None else w.reshape(xf1.shape)
    r = torch.tensor([span], dtype=_acc_dtype(dtype), device=x1.device)
    j = _autograd.joint_hist(xf1, xf2, wf, k, sig, "gaussian", "gaussian", be, False, r, r, 0.0, k - 1.0)
    j = _safe_normalize(j, (-2, -1)).reshape(*lead, k, k).to(dtype)
    check()
    return j


# ---------------------------------------------------------------- images -> joint histogram


def _check_pair(value_range, name="value_range"):
    try:
        lo, hi = (float(t) for t in value_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be 'auto', a pair (lo, hi), or a pair of pairs ((lo_x, hi_x), (lo_y, hi_y)), "
            f"got {value_range!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"{name} must be finite with lo < hi, got {value_range!r}")
    return lo, hi


def _check_range(value_range):
    """-> (range of x, range of y), each "auto" or (lo, hi)."""
    if isinstance(value_range, str):
        if value_range != "auto":
            raise ValueError(f"value_range must be 'auto' or a pair (lo, hi), got {value_range!r}")
        return "auto", "auto"
    try:
        parts = list(value_range)
    except TypeError:
        parts = None
    if parts is not None and len(parts) == 2 and all(isinstance(p, (str, tuple, list)) for p in parts):
        return tuple(p if p == "auto" else _check_pair(p) for p in parts)
    pair = _check_pair(value_range)
    return pair, pair


def _row_range(x: Tensor, rng, m: Optional[Tensor], extremes: Optional[Tensor] = None):
    """(lo, hi) of each row: the given pair, or its own min/max over the pixels that count
    ((R, 1) tensors; ``extremes``, the rows' ``_extremes``, saves a pass without a mask)."""
    if rng != "auto":
        return rng
    xd = x.detach()  # the range is a binning choice, not differentiated
    if m is None:
        e = _extremes(xd) if extremes is None else extremes
        return e[:, :1], e[:, 1:]
    keep = m > 0
    lo = torch.where(keep, xd, math.inf).amin(-1, keepdim=True)
    hi = torch.where(keep, xd, -math.inf).amax(-1, keepdim=True)
    empty = ~keep.any(-1, keepdim=True)
    return torch.where(empty, 0.0, lo), torch.where(empty, 1.0, hi)


def _range_rows(x: Tensor, rng, m: Optional[Tensor], extremes: Optional[Tensor], dtype) -> Tensor:
    """The op's ranges: (R, 2) [lo, hi] per row, or (1, 2) for a fixed pair, in ``dtype``."""
    if rng == "auto" and m is None and extremes is not None:
        return extremes.to(dtype)
    lo, hi = _row_range(x, rng, m, extremes)
    if isinstance(lo, Tensor):
        return torch.cat([lo, hi], -1).to(dtype)
    return torch.tensor([[lo, hi]], dtype=dtype, device=x.device)


# Where lo..hi land in bin coordinates, per kernel: (first, margin at the end). The B-spline's
# support is 2 bins: one bin of margin keeps every pixel's unit of mass inside the K bins.
_LAYOUT = {"gaussian": (0.0, 1.0), "bspline": (1.0, 2.0)}


def _mattes_terms(x: Tensor, rng, num_bins: int, m: Optional[Tensor], extremes: Optional[Tensor]) -> Tensor:
    """ITK's continuous Parzen window index, in float64 with ITK's own arithmetic:
    bin width (max - min) / (K - 4), ``term = x / width - (min / width - 2)``."""
    x = x.double()
    lo, hi = _row_range(x, rng, m, None if extremes is None else extremes.double())
    span = hi - lo
    if isinstance(span, Tensor):
        width = torch.where(span > 0, span, float(num_bins - 4)) / (num_bins - 4)
    else:
        width = span / (num_bins - 4)
    return x / width - (lo / width - 2.0)


def _image_joint(x, y, *, num_bins, sigma, value_range, mask, per_channel, kernel, backend, deterministic):
    """(soft joint histogram (R, K, K), leading shape of the result, result dtype, resolved
    backend, ``finish()`` of the data checks: the caller calls it after queuing the rest of
    its work)."""
    _check_tensor("x", x)
    _check_tensor("y", y)
    if x.ndim < 3:
        raise ValueError(f"x must be a batch of images (B, C, *spatial), got shape {tuple(x.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    k = _check_num_bins(num_bins)
    sig = _check_sigma(sigma)
    rng = _check_range(value_range)
    kernel = _check_kernel(kernel)
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be a bool, got {type(per_channel).__name__}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    acc = _acc_dtype(dtype)
    m = _check_weights("mask", mask, x)
    b, c = x.shape[:2]
    rows, lead = (b * c, (b, c)) if per_channel else (b, (b,))
    xr, yr = x.reshape(rows, -1).to(dtype), y.reshape(rows, -1).to(dtype)  # no copy for equal dtypes
    be = _resolve_backend(backend, xr)
    mr = None if m is None else m.reshape(rows, -1)
    if kernel == "mattes" and k < 5:
        raise ValueError(f"kernel='mattes' needs num_bins >= 5 (it keeps 4 padding bins), got {k}")
    # One pass per image gives the rows' extremes: the NaN/Inf check and, for value_range="auto"
    # without a mask, the range itself.
    ext = [
        _extremes(t) if (_checks_on() or (r == "auto" and mr is None)) else None
        for t, r in zip((xr, yr), rng)
    ]
    if kernel == "mattes":
        # ITK: the fixed image's bin is floor(term) clamped to [2, K-3] (a box window, at that
        # bin's centre here, so rounding cannot move it); the moving one a cubic B-spline at term.
        u = _mattes_terms(xr, rng[0], k, mr, ext[0]).floor().clamp(2.0, k - 3.0).to(acc)
        v = _mattes_terms(yr, rng[1], k, mr, ext[1]).to(acc)
        kernel_u, kernel_v, r_x, r_y = "box", "bspline", None, None
        first, length = 2.0, k - 4.0  # where a fixed range lands, for the warnings
    else:
        u, v, kernel_u, kernel_v = xr, yr, kernel, kernel
        r_x = _range_rows(xr, rng[0], mr, ext[0], acc)
        same = rng[0] != "auto" and rng[1] == rng[0]  # one fixed range: one host-to-device copy
        r_y = r_x if same else _range_rows(yr, rng[1], mr, ext[1], acc)
        first, end = _LAYOUT[kernel]
        length = k - end - first
    check = _no_checks
    if _checks_on():
        binned = [(n, t, r, first, length, k, False) for n, t, r in (("x", xr, rng[0]), ("y", yr, rng[1]))
                  if r != "auto"]  # fmt: skip
        check = _queue_checks(be, {"x": ext[0], "y": ext[1]}, m, "mask", binned)
    j = _autograd.joint_hist(
        u, v, mr, k, sig, kernel_u, kernel_v, be, bool(deterministic), r_x, r_y, first, length
    )
    return j, lead, dtype, be, check


def joint_histogram(
    x: Tensor,
    y: Tensor,
    *,
    num_bins: int = 64,
    sigma: float = 0.5,
    value_range: ValueRange = "auto",
    mask: Optional[Tensor] = None,
    per_channel: bool = False,
    kernel: str = "gaussian",
    backend: str = "auto",
    deterministic: bool = False,
) -> Tensor:
    """Soft joint histogram of two images, normalised to sum to 1: (B, K, K) or (B, C, K, K).

    Rows index x's bins, columns y's bins. Arguments as in :func:`mutual_information`.
    """
    j, lead, dtype, be, check = _image_joint(
        x, y, num_bins=num_bins, sigma=sigma, value_range=value_range, mask=mask,
        per_channel=per_channel, kernel=kernel, backend=backend, deterministic=deterministic,
    )  # fmt: skip
    p = joint_pdf(j).reshape(*lead, num_bins, num_bins).to(dtype)
    check()
    return p


def entropies(
    x: Tensor,
    y: Tensor,
    *,
    num_bins: int = 64,
    sigma: float = 0.5,
    value_range: ValueRange = "auto",
    mask: Optional[Tensor] = None,
    per_channel: bool = False,
    base: Optional[float] = None,
    kernel: str = "gaussian",
    backend: str = "auto",
    deterministic: bool = False,
):
    """Marginal and joint entropies ``(H(x), H(y), H(x, y))`` of two images, each (B,) or (B, C).

    Natural log (nats) unless ``base`` (``base=2``: bits). Marginals are the sums of the
    joint histogram. Other arguments as in :func:`mutual_information`.
    """
    base = check_base(base)
    j, lead, dtype, be, check = _image_joint(
        x, y, num_bins=num_bins, sigma=sigma, value_range=value_range, mask=mask,
        per_channel=per_channel, kernel=kernel, backend=backend, deterministic=deterministic,
    )  # fmt: skip
    h = tuple(t.reshape(lead).to(dtype) for t in entropies_from_joint(j, base, be))
    check()
    return h


def mutual_information(
    x: Tensor,
    y: Tensor,
    *,
    num_bins: int = 64,
    sigma: float = 0.5,
    value_range: ValueRange = "auto",
    normalize: Union[bool, str, None] = "none",
    mask: Optional[Tensor] = None,
    base: Optional[float] = None,
    per_channel: bool = False,
    kernel: str = "gaussian",
    backend: str = "auto",
    deterministic: bool = False,
) -> Tensor:
    """Mutual information of two batches of images from their soft joint histogram.

    Convention:
        Intensities map to bin coordinates (``value_range``); the soft joint histogram
        ``J[a, c] = sum_n m_n w(u_n - a) w(v_n - c)`` (Gaussian window with ``sigma`` in bin
        widths) is normalised to ``P``; marginals are its row/column sums;
        ``H(p) = -sum p log p`` with ``0 log 0 = 0``; ``I = H(x) + H(y) - H(x, y)``.
        Natural log (nats) unless ``base``. ``normalize``:

        * ``"none"`` (False): ``I``.
        * ``"arithmetic"`` (True): ``2 I / (H(x) + H(y))`` in [0, 1], the seed's
          normalisation (= scikit-learn's arithmetic NMI, Maes' entropy correlation).
        * ``"studholme"``: ``(H(x) + H(y)) / H(x, y)`` in [1, 2] (Studholme et al. 1999).

        A zero denominator (constant images at tiny sigma, an all-zero mask) gives the
        value of independent variables (0, or 1 for studholme), never NaN.

    Args:
        x, y: images (B, C, *spatial) of the same shape: 2-D (B, C, H, W), 3-D (B, C, D, H, W)
            or any other number of spatial dimensions; any floating dtype (half precision
            is computed in float32).
        num_bins: K >= 2 bins per image.
        sigma: the Gaussian kernel's standard deviation in *bin widths* (> 0). The kernel is
            truncated where it falls below 2**-24 of its peak. Ignored by ``kernel="bspline"``.
        value_range: ``(lo, hi)``: intensities lo..hi map onto the bin centres 0..K-1 (the
            same for x and y; mass falling beyond the first/last bin is dropped); or
            ``"auto"``: each sample's (and image's) own min..max, over the pixels the mask
            keeps (not differentiated: the range is a binning choice); or a pair of those,
            one for x and one for y, e.g. ``((0, 1), "auto")``. With ``kernel="bspline"``
            lo..hi map onto 1..K-2 and with ``"mattes"`` onto 2..K-2 (padding bins that keep
            each pixel's whole unit of mass inside the histogram).
        mask: optional per-pixel weights broadcastable to x: bool, or non-negative floats
            (differentiable), e.g. the overlap region in registration.
        per_channel: False: one histogram per sample over all channels -> (B,); True: one
            per (sample, channel) -> (B, C).
        kernel: ``"gaussian"`` (default); ``"bspline"``: cubic B-spline Parzen windows on both
            images (support of 4 bins, a partition of unity: every pixel adds exactly one unit
            of mass; ``sigma`` is not used); ``"mattes"``: ITK's Mattes MI
            (MattesMutualInformationImageToImageMetricv4): x is the *fixed* image (a box
            window: its nearest bin, no gradient), y the *moving* one (cubic B-spline), bin
            width (max - min) / (K - 4) with 2 padding bins each side, each image's own range
            by default; ``-mutual_information(f, m, kernel="mattes", num_bins=50)`` is ITK's
            metric value (K >= 5).
        backend: ``"auto"`` (Triton for CUDA tensors when available, else torch),
            ``"torch"`` or ``"triton"``.
        deterministic: bitwise-identical results run to run on the GPU (Triton backend;
            also on when ``torch.use_deterministic_algorithms(True)``). The torch backend
            on CPU is always deterministic.
        normalize: see above.
        base: logarithm base of the unnormalised MI (None: nats; 2: bits).

    Returns:
        (B,) scores, or (B, C) with ``per_channel=True``; dtype of the inputs.
        Differentiable with respect to x, y and a float mask.

    Example:
        >>> x = torch.rand(2, 1, 64, 64)
        >>> y = torch.sin(3 * x) ** 2  # another "modality": a non-monotonic remap
        >>> z = torch.rand(2, 1, 64, 64)  # unrelated
        >>> bool((mutual_information(x, y) > mutual_information(x, z)).all())
        True
    """
    normalize = check_normalize(normalize)
    base = check_base(base)
    j, lead, dtype, be, check = _image_joint(
        x, y, num_bins=num_bins, sigma=sigma, value_range=value_range, mask=mask,
        per_channel=per_channel, kernel=kernel, backend=backend, deterministic=deterministic,
    )  # fmt: skip
    score = mutual_information_from_joint(j, normalize, base, be).reshape(lead).to(dtype)
    check()
    return score
