"""Public functions: argument checks, value ranges, backend dispatch.

The heavy lifting is one op (``mi._autograd``): the soft (joint) histogram, with a
hand-written backward, run by the torch backend (CPU, or any device) or by the Triton
kernels (CUDA). It takes the samples as they are with one range [lo, hi] per row and maps
them to bin coordinates itself, so no bin-coordinate copy of the images is made here.
Everything after the histogram is autograd on (B, K, K) tensors (``mi.information``).
"""

import contextlib
import contextvars
import math
import numbers
import operator
import os
import struct
from collections.abc import Sequence
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from . import _autograd
from ._autograd import Binning
from ._torch import _acc_dtype, pow2_scale
from ._warn import warn
from .distributed import all_reduce_minmax, all_reduce_sum, check_group, check_same
from .information import (
    BACKENDS,
    NORMALIZATIONS,
    _safe_div,
    _scaled_entropies,
    _score,
    check_base,
    check_normalize,
    check_triton_here,
    host_values,
    joint_pdf,
    read_number,
    tails_only_peak,
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
    expected = "a positive real number (int, float, a numpy scalar or a one-element tensor)"
    sigma = read_number(name, sigma, expected)
    if not 0 < sigma < math.inf:  # (not math.isfinite: torch.compile(dynamic=True) makes sigma symbolic)
        raise ValueError(f"{name} must be a positive finite number, got {sigma!r}")
    return sigma


def _check_num_bins(num_bins) -> int:
    """Any integral number (int, numpy.int64, ...: ``operator.index``), at least 2."""
    if isinstance(num_bins, bool):
        raise TypeError("num_bins must be an integer (int, numpy integer), got bool")
    try:
        num_bins = operator.index(num_bins)
    except TypeError:
        raise TypeError(
            f"num_bins must be an integer (int, numpy integer: anything operator.index accepts), "
            f"got {type(num_bins).__name__}"
        ) from None
    if num_bins < 2:
        raise ValueError(f"num_bins must be at least 2, got {num_bins}")
    return num_bins


def _device_memory(device: torch.device) -> Optional[int]:
    """Bytes of memory on the device (physical memory for the CPU), None if unknown."""
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
        if device.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError, RuntimeError):
        pass
    return None


#: Bytes per histogram cell that a call holds at its peak: the float64 accumulator, the
#: result, P and the entropies' terms (46 measured for MI at K = 3000 on a CPU, with
#: ``resource.getrusage``; ``mi score``, which computes four scores, 57).
_BYTES_PER_CELL = 48


def _check_histogram_size(rows: int, k: int, ndim: int, device: torch.device):
    """Refuse, before any allocation, histograms that cannot fit on the device (not while
    torch.compile traces: the compiled call was checked eagerly, or runs on a known size)."""
    if _compiling():
        return
    cells = max(rows, 1) * k**ndim
    need, have = cells * _BYTES_PER_CELL, _device_memory(device)
    if have is not None and need > have:
        shape = " x ".join([str(k)] * ndim)
        raise ValueError(
            f"num_bins={k}: {max(rows, 1)} histogram(s) of {shape} bins need about "
            f"{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB of {device}; use fewer "
            f"bins (registration uses 32-64; 256 resolves 8-bit images)"
        )


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
        check_triton_here(t)
        if t.dtype == torch.float64:
            raise ValueError("backend='triton' accumulates in float32; use backend='torch' for float64")
    return backend


def _check_weights(name: str, w, like: Tensor, group=None) -> Optional[Tensor]:
    """A per-sample weight/mask: bool or floating, broadcastable to ``like``; -> float, expanded.
    With ``group`` (a shard of the pixels), a float64 mask's largest values are those of the
    whole images (one all-reduce), so every rank decides alike."""
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
    acc = _acc_dtype(like.dtype)
    if w.dtype in (torch.float16, torch.bfloat16) and _grad_needed(w) and _checks_on():
        # its gradient is computed in acc and cast back to w's dtype, where it may overflow
        w = _FiniteGrad.call(w, name, f"{name} is tiny for {w.dtype}; pass it as float32")
    if (
        w.dtype == torch.float64
        and acc == torch.float32
        and (w.numel() or group is not None)
        and _checks_on()
    ):
        flat = w.detach().flatten(1)
        peaks = flat.amax(1) if flat.shape[1] else flat.new_full(flat.shape[:1], -math.inf)
        if group is not None:  # (a rank's tiny slab of an image whose largest weight is 1 is fine)
            peaks = all_reduce_minmax(group, [torch.stack([peaks, peaks], 1)])[0][:, 1]
        f32 = torch.finfo(torch.float32)
        lost = peaks[(peaks > f32.max) | ((peaks > 0) & (peaks < f32.tiny))]
        if lost.numel():  # (one host read)
            raise ValueError(
                f"{name} is float64 with values that float32, the images' dtype, cannot hold (largest "
                f"{host_values(lost[0]):.3g} in some image): rescale {name} (the result does not depend on "
                "its scale) or pass float64 images"
            )
    return w.to(acc)


def _unit_rows(w: Optional[Tensor], name: str, peak: Optional[Tensor] = None) -> Optional[Tensor]:
    """Weights (R, N) times the power of two that brings each row's largest (or ``peak``
    (R, 1): a sharded image's, over all ranks) into [0.5, 1) (``pow2_scale``; exact): the
    normalised histograms and the scores do not depend on the weights' scale, but the sums
    of huge weights overflow (256 of 3e38 in float32, of 1e306 in float64) and subnormal
    ones (1e-45) keep no bits. A constant to autograd: the result being scale-free, its
    derivative with respect to w is s times the one at s w, which overflows for tiny weights
    (1e-45: about 1e42): with the value checks on, the backward refuses that
    (``_FiniteGrad``)."""
    if w is None or (w.shape[-1] == 0 and peak is None):
        return w
    scale = pow2_scale(w.detach().amax(-1, keepdim=True) if peak is None else peak.to(w.dtype))
    if _grad_needed(w) and _checks_on():
        why = f"{name} is tiny, and the result does not depend on its scale: the gradient scales "
        w = _FiniteGrad.call(w, name, why + f"as 1 / {name}; rescale it")
    return w * scale


_VALUE_CHECKS = True
_VALUE_CHECKS_HERE = contextvars.ContextVar("mi_value_checks", default=None)


def _check_flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def set_value_checks(enabled: bool) -> bool:
    """Turn the checks that read tensor data on or off for the whole process (the default
    of every thread); returns the previous setting. :func:`value_checks` does the same for a
    block of code in one thread.

    They are: NaN/Inf in the samples, negative or NaN weights/masks, ranges too narrow for
    a gradient, and the warnings about samples that miss the bins (by weight, with a mask:
    the samples a mask leaves out do not count). Together they cost one
    host read per call, a device synchronisation on a GPU. With the Triton backend a few
    numbers go to pinned memory right after the pass that computes them (behind an event)
    and the call reads them only after it has queued all its own kernels, so the host waits
    for none of those; with the torch backend the read comes first (its indexing needs
    sound bins). With float16 images that need a gradient, the backward checks that the
    gradient fits float16 (another read). On by default; turn them off in a tight GPU loop
    (or for CUDA graphs) once the data are known to be sound: bad data then give
    meaningless numbers, not errors. Argument checks (shapes, dtypes, sigma, ...) always
    run. Skipped anyway while ``torch.compile`` traces (no graph break) and under
    ``torch.func.vmap`` (which cannot read data).
    """
    global _VALUE_CHECKS
    previous, _VALUE_CHECKS = _VALUE_CHECKS, _check_flag("enabled", enabled)
    return previous


@contextlib.contextmanager
def value_checks(enabled: bool):
    """``with mi.value_checks(False): ...``: the data checks of :func:`set_value_checks` on or
    off inside the block, for the current thread (and asyncio task) only: a
    ``contextvars.ContextVar``, so threads that call the library at the same time do not
    see each other's setting. Restored on exit, also on an exception."""
    token = _VALUE_CHECKS_HERE.set(_check_flag("enabled", enabled))
    try:
        yield
    finally:
        _VALUE_CHECKS_HERE.reset(token)


def _under_vmap() -> bool:
    stack = torch._C._functorch.get_interpreter_stack()
    return bool(stack) and any(i.key() == torch._C._functorch.TransformType.Vmap for i in stack)


def _checks_on() -> bool:
    if _compiling():
        return False
    here = _VALUE_CHECKS_HERE.get()
    return (_VALUE_CHECKS if here is None else here) and not _under_vmap()


def _extremes(x: Tensor) -> Tensor:
    """(R, 2) [min, max] of each row of x (R, N), in one pass (zeros for N = 0). NaN propagates
    through min and max, so a row holding a NaN or an Inf has a non-finite extreme."""
    if x.shape[-1] == 0:
        return x.new_zeros((x.shape[0], 2))
    return torch.stack(torch.aminmax(x.detach(), dim=-1), -1)


def _no_checks():
    pass


class _Binned(NamedTuple):
    """A fixed range of one image (or of ``histogram``'s bins, ``data_units``): lo..hi map onto
    bin coordinates first..first + length of K bins; samples that miss them get a warning."""

    name: str
    samples: Tensor  # (R, N)
    lo: float
    hi: float
    first: float
    length: float
    num_bins: int
    data_units: bool
    weights: Optional[Tensor] = None  # the samples' weights (mask): the missed mass is weighed


class _GradRange(NamedTuple):
    """The per-row ranges (R, 2) [lo, hi] of an image whose gradient is asked for: the bin map's
    slope length / (hi - lo) must leave the gradient room below ``dtype``'s largest number."""

    name: str
    ranges: Tensor
    length: float
    dtype: torch.dtype


#: Largest bin-map slope (bins per unit of intensity) that a gradient may be scaled by: the
#: rest of the chain (dL/du, per pixel) then has 2**28 of room before float32 overflows.
_MAX_SLOPE = {torch.float32: 2.0**100, torch.float64: 2.0**1000}


def _slope_text(limit: float) -> str:
    return f"2**{math.frexp(limit)[1] - 1} bins per unit"


def _check_slope(name: str, lo, hi, length: float, dtype, given=None):
    """Refuse a range so narrow that the gradient with respect to the samples could overflow
    (a slope beyond ``_MAX_SLOPE``; the refusal is conservative: the gradient of a given pair
    may still have fitted).
    lo, hi: floats or lists of floats (per row): the samples' own ("auto"), or the range the
    caller ``given`` ("bins", "value_range")."""
    limit = _MAX_SLOPE[_acc_dtype(dtype)]
    for a, b in zip(lo if isinstance(lo, list) else [lo], hi if isinstance(hi, list) else [hi]):
        span = b - a
        if span > 0 and length > limit * span:
            fix = (
                f"Rescale {name} (e.g. {name} / {name}.abs().amax(); MI over the samples' own "
                "range does not change)"
                if given is None
                else f"Widen {given}, or rescale {name} and {given} together"
            )
            raise ValueError(
                f"{given or name} spans only {span:.3g} (from {a:.6g} to {b:.6g}): the gradient "
                f"with respect to {name} scales with {length:.3g} / {span:.3g} bins per unit, beyond "
                f"the {_slope_text(limit)} that leave {_acc_dtype(dtype)} room for the rest of its "
                f"chain: it could overflow. {fix}, or pass float64"
            )


def _queue_checks(backend: str, extremes: dict, weights=None, wname="weights", binned=(), grads=()):
    """All data checks of one call behind one host read; returns ``finish()``, which runs them.

    extremes: {name: (R, 2) per-row [min, max] of the samples} (``_extremes``), which must
    be finite; weights: must be >= 0 (and not NaN); binned: ``_Binned`` records, whose
    samples that miss the K bins get a warning; grads: ``_GradRange`` records, refused
    when too narrow (``_check_slope``).

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
    parts = [e.reshape(-1) for e in extremes.values()] + [g.ranges.reshape(-1) for g in grads]
    if weights is not None:  # [min, max]
        parts.append(torch.stack(torch.aminmax(weights)) if weights.numel() else weights.new_zeros(2))
    stats = torch.cat(parts)  # in the widest of their dtypes: float64 samples stay finite
    if not (stats.is_cuda and backend == "triton"):
        _run_checks(host_values(stats), extremes, weights is not None, wname, binned, grads)
        return _no_checks
    host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
    host.copy_(stats, non_blocking=True)
    event = torch.cuda.Event()
    event.record()

    def finish():
        event.synchronize()
        _run_checks(host.tolist(), extremes, weights is not None, wname, binned, grads)

    return finish


def _to_bins_host(value: float, lo: float, hi: float, first: float, length: float) -> float:
    """A value's bin coordinate on the host (float64), scaled so that nothing overflows."""
    e = max(math.frexp(abs(lo))[1], math.frexp(abs(hi))[1])
    s = math.ldexp(1.0, max(-1022, min(1022, -e)))  # a normal float64 (1e-310: e < -1022)
    return (value * s - lo * s) * (length / (hi * s - lo * s)) + first


def _run_checks(stats, extremes, has_weights, wname, binned, grads):
    """The host side of ``_queue_checks``: ``stats`` are its numbers, as floats."""
    found, at = {}, 0
    for name, e in extremes.items():
        found[name] = stats[at : at + e.numel()]
        at += e.numel()
        if not all(math.isfinite(t) for t in found[name]):
            raise ValueError(f"{name} contains NaN or Inf")
    for g in grads:
        r = stats[at : at + g.ranges.numel()]
        at += g.ranges.numel()
        _check_slope(g.name, r[0::2], r[1::2], g.length, g.dtype)
    if has_weights and not (stats[-2] >= 0 and math.isfinite(stats[-1])):
        raise ValueError(f"{wname} must be non-negative and finite (no NaN or Inf)")
    for b in binned:
        if b.samples.numel() == 0:
            continue
        u_lo = _to_bins_host(min(found[b.name][0::2]), b.lo, b.hi, b.first, b.length)
        u_hi = _to_bins_host(max(found[b.name][1::2]), b.lo, b.hi, b.first, b.length)
        outside = 0.0
        if u_lo < -1.0 or u_hi > b.num_bins:  # rare: a second look only when some sample misses the bins
            unit = (b.hi - b.lo) / b.length
            below, above = b.lo + (-1.0 - b.first) * unit, b.lo + (b.num_bins - b.first) * unit
            miss = (b.samples < below) | (b.samples > above)
            if b.weights is None:
                outside = host_values(miss.double().mean())
            else:  # the mass that misses: samples a mask leaves out do not count
                w = b.weights.detach().reshape(miss.shape).double()
                total = host_values(w.sum())
                outside = host_values((w * miss).sum()) / total if total > 0 else 0.0
        _warn_binning(b.num_bins, b.name, b.data_units, outside, u_lo, u_hi, b.weights is not None)


def _warn_binning(num_bins, name, data_units, outside, lo, hi, weighted=False):
    """Warn when the bins cannot be what the caller meant (u in bin coordinates; ``outside``:
    the fraction of the samples, or of their weight, more than one bin beyond them)."""
    hint = (
        " Are x and bins in the same units? (Unlike the seed repository, histogram() and "
        "histogram2d() do not scale x by 255: for images in [0, 1] use bins = torch.linspace(0, 1, K).)"
        if data_units
        else " Is value_range right for these images? (value_range='auto' uses each image's own range.)"
    )
    if not data_units:  # an image call: a module's caller knows them as fixed/moving, input1/input2
        name = {"x": "x (the first image)", "y": "y (the second image)"}.get(name, name)
    if outside > 0.5:  # (no number in the text: the default filter then says it once per line)
        warn(
            f"more than half of the samples of {name}{' (by weight)' if weighted else ''} "
            f"lie more than one bin beyond the first or last bin; their mass is lost.{hint}"
        )
    elif data_units and num_bins >= 16 and hi - lo <= 1.0 and hi > lo:
        warn(
            f"the samples of {name} all fall within one bin width of the {num_bins} bins' span: "
            f"the histogram will have 1-2 occupied bins.{hint}"
        )


# ---------------------------------------------------------------- histograms in data units


def _bin_layout(bins) -> tuple[float, float, int]:
    """(first centre, step, K) of equally spaced increasing bin centres, computed on the host
    in Python floats: for a list or tuple of numbers there is no tensor data to read, so
    ``torch.compile(fullgraph=True)`` traces it (a tensor's values are data to the compiler:
    reading them breaks the graph)."""
    rel = 1e-6  # linspace rounds each centre to its dtype (~1e-7 relative in float32): allow that
    _refuse_grad("bins", bins)
    if isinstance(bins, Tensor):
        if bins.is_complex() or bins.dtype == torch.bool:
            raise TypeError(f"bins must be a real tensor, got {bins.dtype}")
        if bins.ndim != 1:
            raise ValueError(f"bins must be 1-D (the bin centres), got shape {tuple(bins.shape)}")
        if bins.is_floating_point():
            rel = max(rel, torch.finfo(bins.dtype).eps)  # (float16: 1e-3)
        b = host_values(bins.detach().double())
    else:
        if getattr(getattr(bins, "dtype", None), "kind", None) == "c":  # (numpy dropped the imaginary part)
            raise TypeError(f"bins must be real, got {bins.dtype}")
        try:
            if isinstance(bins, (list, tuple)) and all(isinstance(v, numbers.Real) for v in bins):
                b = [float(v) for v in bins]  # (no tensor: nothing for a compiler to trace)
            else:
                t = torch.as_tensor(bins, dtype=torch.float64)
                if t.ndim != 1:
                    raise ValueError(f"bins must be 1-D (the bin centres), got shape {tuple(t.shape)}")
                b = t.tolist()
        except (TypeError, ValueError) as e:
            if isinstance(e, ValueError) and str(e).startswith("bins"):
                raise
            raise TypeError(f"bins must be a 1-D tensor of bin centres, got {type(bins).__name__}") from None
    if len(b) < 2:
        raise ValueError(f"bins must hold at least 2 bin centres, got {len(b)}")
    if not all(-math.inf < v < math.inf for v in b):  # (math.isfinite fails on compile's symbolic floats)
        raise ValueError("bins contains NaN or Inf")
    k = len(b)
    if not abs(b[-1] - b[0]) < math.inf:
        raise ValueError(
            f"bins span {b[0]:.6g}..{b[-1]:.6g}, wider than float64 can hold "
            f"({torch.finfo(torch.float64).max:.3g}); rescale the samples and the bins"
        )
    step = (b[-1] - b[0]) / (k - 1)
    if not step > 0:
        raise ValueError("bins must be increasing")
    dev = max(abs(v - (b[0] + step * i)) for i, v in enumerate(b))
    if dev > 1e-4 * step + rel * max(abs(v) for v in b):
        raise ValueError(
            f"bins must be equally spaced (centres of a uniform grid); the largest deviation "
            f"from a uniform grid is {dev:.3g} for a step of {step:.3g}"
        )
    return b[0], step, k


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
        is not scaled by 255: a warning is raised when most samples (most of the weight,
        with ``weights``) miss the bins.
        The kernel is truncated where it falls below 2**-24 of its peak (exact to float32).

    Args:
        x: samples (..., N), any floating dtype (half precision is computed in float32).
        bins: equally spaced bin centres (K,), K >= 2: a tensor or a sequence of numbers
            (under ``torch.compile(fullgraph=True)`` a list or tuple: the layout is read on
            the host, and a tensor's values are data to the compiler).
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
    sig = _sigma_in_bins(_check_sigma(sigma), step)
    xf, lead = _flatten_samples(x)
    w = _check_weights("weights", weights, x)
    be = _resolve_backend(backend, x)
    _check_histogram_size(xf.shape[0], k, 1, x.device)
    acc = _acc_dtype(x.dtype)
    span = _data_span(lo, step, k, acc)  # the first and last bin centres -> bin coordinates 0 and K - 1
    xf = _guard_grad("x", xf, span, k - 1.0, "bins")
    check = _no_checks
    if _checks_on():
        check = _queue_checks(
            be, {"x": _extremes(xf)}, w, binned=[_Binned("x", xf, *span, 0.0, k - 1.0, k, True, w)]
        )
    wf = None if w is None else _unit_rows(w.reshape(xf.shape), "weights")
    r = _pair_row(*span, acc, x.device)
    h = _autograd.hist(xf, wf, Binning(k, sig, ("gaussian",), be, length=k - 1.0), r)
    _check_peaks(h[..., None], be, "histogram", _FAR_FROM_BINS, occupied=lambda: _occupied(wf, xf))
    h = _safe_normalize(h, -1).reshape(*lead, k).to(x.dtype)
    check()
    return h


def _sigma_in_bins(sigma: float, step: Optional[float] = None) -> float:
    """A kernel width in bin widths for the op (``sigma / step`` when ``step``, the bin width in
    data units, is given): refused below 2**-40 bin widths (a spike finer than float32 can
    place a sample, and 1 / sigma^2 would overflow), capped at 2**64 (flat over any number of
    bins; exact to float64 rounding)."""
    sig = sigma if step is None else sigma / step
    if sig < 2.0**-40:
        if step is None:
            raise ValueError(
                f"sigma is {sig:.3g} bin widths; it must be at least 2**-40 (9.1e-13) bin widths"
            )
        raise ValueError(
            f"sigma is {sigma:.3g} in data units, {sig:.3g} bin widths (bins {step:.3g} apart); it must"
            f" be at least 2**-40 (9.1e-13) bin widths: {step * 2.0**-40:.3g} here"
        )
    return min(sig, 2.0**64)


def _data_span(lo: float, step: float, k: int, acc) -> tuple[float, float]:
    """(first, last bin centre), which must be finite in the accumulation dtype."""
    span = (lo, lo + step * (k - 1))
    big = torch.finfo(acc).max
    if not all(abs(t) <= big for t in span):
        raise ValueError(f"bins span {span[0]:.6g}..{span[1]:.6g}, beyond the range of {acc} ({big:.3g})")
    if not _rounded(span[1], acc) > _rounded(span[0], acc):
        raise ValueError(f"bins span {span[0]!r}..{span[1]!r}, a single value in {acc}")
    return span


def _rounded(value: float, dtype) -> float:
    """value rounded to float32 (or kept, for float64), on the host; |value| must fit. Kept
    while torch.compile traces (its floats may be symbolic, which struct cannot pack)."""
    if dtype == torch.float64 or _compiling():
        return value
    return struct.unpack("f", struct.pack("f", value))[0]


def _grad_needed(t: Tensor) -> bool:
    return torch.is_grad_enabled() and t.requires_grad


@_autograd.fast_apply
class _FiniteGrad(torch.autograd.Function):
    """The identity, whose backward refuses a gradient that overflowed: ``why`` says why."""

    @staticmethod
    def forward(x, name, why):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.name, ctx.why = inputs[1], inputs[2]

    @staticmethod
    def backward(ctx, g):
        if not _under_vmap() and not torch.isfinite(g).all():  # (a vmapped backward, jacrev's: no check)
            dtype, largest = str(g.dtype).removeprefix("torch."), torch.finfo(g.dtype).max
            raise ValueError(
                f"the gradient with respect to {ctx.name} overflows {dtype} (largest {largest:.6g}): "
                f"{ctx.why}"
            )
        return g, None, None


def _guard_grad(name: str, x: Tensor, span, length: float, given="value_range") -> Tensor:
    """Refuse a fixed range (``span``, from the argument ``given``) too narrow for x's gradient
    now (``_check_slope``); with the value checks on, guard a float16 gradient against
    overflow (one host read in the backward). Returns x, or an identity view of it that
    carries the float16 guard."""
    if not _grad_needed(x):
        return x
    if span is not None:
        _check_slope(name, span[0], span[1], length, x.dtype, given)
    if x.dtype == torch.float16 and _checks_on():
        why = f"its range is narrow for its number of pixels; pass {name} as float32"
        return _FiniteGrad.call(x, name, why)
    return x


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
        bins: equally spaced bin centres (K,), shared by both axes, as in :func:`histogram`.
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
    sig = _sigma_in_bins(_check_sigma(sigma), step)
    xf1, lead = _flatten_samples(x1)
    xf2 = x2.reshape(xf1.shape)
    w = _check_weights("weights", weights, x1)
    dtype = torch.promote_types(x1.dtype, x2.dtype)
    acc = _acc_dtype(dtype)
    span = _data_span(lo, step, k, acc)
    # each gradient guarded in its own dtype (a float16 x1 beside a float32 x2), then promoted
    xf1, xf2 = (_guard_grad(n, t, span, k - 1.0, "bins") for n, t in (("x1", xf1), ("x2", xf2)))
    xf1, xf2 = xf1.to(dtype), xf2.to(dtype)  # no copy unless the dtypes differ
    be = _resolve_backend(backend, xf1)
    _check_histogram_size(xf1.shape[0], k, 2, x1.device)
    check = _no_checks
    if _checks_on():
        check = _queue_checks(
            be, {"x1": _extremes(xf1), "x2": _extremes(xf2)}, w,
            binned=[_Binned(n, t, *span, 0.0, k - 1.0, k, True, w) for n, t in (("x1", xf1), ("x2", xf2))],
        )  # fmt: skip
    wf = None if w is None else _unit_rows(w.reshape(xf1.shape), "weights")
    r = _pair_row(*span, acc, x1.device)
    j = _autograd.joint_hist(xf1, xf2, wf, Binning(k, sig, ("gaussian",) * 2, be, length=k - 1.0), r, r)
    _check_peaks(j, be, cause=_FAR_FROM_BINS, occupied=lambda: _occupied(wf, xf1))
    j = _safe_normalize(j, (-2, -1)).reshape(*lead, k, k).to(dtype)
    check()
    return j


# ---------------------------------------------------------------- images -> joint histogram


def _refuse_grad(name: str, value) -> None:
    """A tensor that needs a gradient where the op takes numbers (value_range, bins): their
    values are read as floats, so autograd would silently not reach it."""
    parts = value if isinstance(value, (tuple, list)) else [value]
    if any(isinstance(t, Tensor) and t.requires_grad for t in parts) or (
        isinstance(value, Tensor) and value.requires_grad
    ):
        raise TypeError(
            f"{name} is read as numbers and is not differentiated: pass it without requires_grad "
            '(detached; value_range="auto" is each image\'s own min..max, and is differentiated; for '
            "a learnable intensity window, map the images instead, e.g. (x - lo) / (hi - lo), with "
            "value_range=(0, 1))"
        )


def _check_pair(value_range, name="value_range"):
    _refuse_grad(name, value_range)
    try:
        lo, hi = (float(t) for t in value_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be 'auto', a pair (lo, hi), or a pair of pairs ((lo_x, hi_x), (lo_y, hi_y)), "
            f"got {value_range!r}"
        ) from None
    # (not math.isfinite: under torch.compile(dynamic=True) lo and hi may be symbolic floats)
    if not (-math.inf < lo < hi < math.inf):
        raise ValueError(f"{name} must be finite with lo < hi, got {value_range!r}")
    return lo, hi


def _is_pair_like(p) -> bool:
    """One image's part of a pair of ranges: "auto", a tuple or list, or a 1-D array or tensor
    (the rows of a 2 x 2 array). A number is not (checked first: torch.compile(dynamic=True)
    makes a float symbolic, on which it cannot trace ``hasattr``)."""
    if isinstance(p, numbers.Number):
        return False
    return isinstance(p, (str, tuple, list)) or (hasattr(p, "ndim") and hasattr(p, "__len__") and p.ndim == 1)


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
    if parts is not None and len(parts) == 2 and all(_is_pair_like(p) for p in parts):
        return tuple(p if isinstance(p, str) and p == "auto" else _check_pair(p) for p in parts)
    pair = _check_pair(value_range)
    return pair, pair


def _row_range(x: Tensor, rng, m: Optional[Tensor], extremes: Optional[Tensor] = None):
    """(lo, hi) of each row: the given pair, or its own min/max over the pixels that count
    ((R, 1) tensors; ``extremes``, the rows' ``_extremes``, saves a pass without a mask)."""
    if rng != "auto":
        return rng
    xd = x.detach()  # (the range with autograd, where a gradient needs it: ``_live_range``)
    if m is None:
        e = _extremes(xd) if extremes is None else extremes
        return e[:, :1], e[:, 1:]
    e = _masked_extremes(xd, m)
    empty = torch.isinf(e[:, :1]) & (e[:, :1] > 0)  # no pixel kept: the range (0, 1)
    return torch.where(empty, 0.0, e[:, :1]), torch.where(empty, 1.0, e[:, 1:])


@_autograd.fast_apply
class _Live(torch.autograd.Function):
    """x (R, N) itself (a view), whose backward adds how x moves its rows' "auto" range r (R,
    2) [lo, hi] (over the mask m; with ``group``, the whole sharded images'): what the op
    computes from x with r held fixed then has x's full derivative. The op maps x through u =
    (x - lo) L / (hi - lo) + first, so with g = dL/dx at fixed r and t = (x - lo) / (hi - lo),

        dL/dhi = -sum g t,   dL/dlo = sum g t - sum g,

    given to the pixels at hi (at lo), shared among them when tied (as ``amax`` does). A
    constant row (hi = lo) has no such derivative and keeps g. With ``group`` the sums and
    the tie counts are all-reduced (one all-reduce in the backward). Under ``create_graph``
    the backward is the autograd of ``_live_composite``, so that it is differentiated again
    exactly (not with ``group``: refused)."""

    @staticmethod
    def forward(x, r, m, group):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, r, m, group = inputs
        ctx.save_for_backward(x, r, m)
        ctx.group = group

    @staticmethod
    def backward(ctx, g):
        x, r, m = ctx.saved_tensors
        if torch.is_grad_enabled():
            if ctx.group is not None:
                raise RuntimeError(
                    "second derivatives through value_range='auto' with group are not supported: "
                    "pass a fixed value_range"
                )
            with torch.enable_grad():
                (dx,) = torch.autograd.grad(_live_composite(x, r, m), x, g, create_graph=True)
            return dx, None, None, None
        lo, hi = r[:, :1], r[:, 1:]
        s = pow2_scale(r.abs().amax(1, keepdim=True))
        pos = hi > lo
        at_lo, at_hi = x == lo, x == hi
        if m is not None:
            keep = m > 0
            at_lo, at_hi = at_lo & keep, at_hi & keep
        d = (x * s).sub_(lo * s).mul_(g)  # g (x - lo) s, in one temporary
        sgt = d.sum(-1, keepdim=True) / torch.where(pos, hi * s - lo * s, 1.0)
        parts = torch.cat(
            [sgt, g.sum(-1, keepdim=True).to(sgt), at_lo.sum(-1, keepdim=True), at_hi.sum(-1, keepdim=True)],
            1,
        )
        sgt, sg, n_lo, n_hi = all_reduce_sum(parts, ctx.group).split(1, 1)
        d_lo = torch.where(pos, (sgt - sg) / n_lo.clamp(min=1), 0.0)
        d_hi = torch.where(pos, -sgt / n_hi.clamp(min=1), 0.0)
        # g plus the corrections, in d's memory (at_lo and at_hi meet only where hi = lo, and
        # both corrections are 0 there)
        torch.where(at_hi, d_hi.to(d.dtype), d.new_zeros(()), out=d)
        torch.where(at_lo, d_lo.to(d.dtype), d, out=d)
        return d.add_(g).to(g.dtype), None, None, None


def _live(x: Tensor, r: Tensor, m: Optional[Tensor], group) -> Tensor:
    """x carrying its "auto" range's derivative: ``_Live`` (one view, the correction in the
    backward: few ops), or under torch.func transforms and torch.compile, which take plain
    ops best, ``_live_composite``."""
    if group is None and (torch.compiler.is_compiling() or torch._C._functorch.get_interpreter_stack()):
        return _live_composite(x, r, m)
    return _Live.call(x, r, m, group)


def _live_composite(x: Tensor, r: Tensor, m: Optional[Tensor]) -> Tensor:
    """``_Live``'s function in differentiable ops (for its create_graph backward): x again in
    value, as x_eff = x + (x s - lo s) (ratio - 1) / s - (lo - lo_r) = lo_r + (x - lo) ratio,
    with lo, hi the range taken again with autograd (``_live_range``, equal to r = (lo_r,
    hi_r)), ratio = (hi_r - lo_r) / (hi - lo) and s the power of two that brings r near 1:
    the op's map of x_eff with r fixed, (x_eff - lo_r) L / (hi_r - lo_r) + first, is the live
    map (x - lo) L / (hi - lo) + first, to every order."""
    live = _live_range(x, m).to(r.dtype)
    lo, hi, lo_r, hi_r = live[:, :1], live[:, 1:], r[:, :1], r[:, 1:]
    s = pow2_scale(r.abs().amax(1, keepdim=True))
    pos = hi_r > lo_r
    q = torch.where(pos, ((hi_r - lo_r) / torch.where(pos, hi - lo, 1.0) - 1.0) / s, 0.0)
    dlo = torch.where(pos, lo - lo_r, 0.0)
    return torch.addcmul(x - dlo, torch.addcmul(-lo * s, x, s), q).to(x.dtype)


def _live_range(x: Tensor, m: Optional[Tensor]) -> Tensor:
    """(R, 2) [lo, hi] of each row of x (R, N > 0) over the pixels with m > 0, as
    ``_row_range`` but differentiable in x (amin/amax, whose backward shares a tied extreme's
    gradient among its pixels); (0, 1) for a row that keeps no pixel (or has none)."""
    if x.shape[-1] == 0:  # amin refuses empty rows
        return _pair_row(0.0, 1.0, x.dtype, x.device).expand(x.shape[0], 2)
    if m is None:
        return torch.stack([x.amin(-1), x.amax(-1)], -1)
    keep = m > 0
    lo, hi = torch.where(keep, x, math.inf).amin(-1), torch.where(keep, x, -math.inf).amax(-1)
    empty = ~keep.any(-1)
    return torch.stack([torch.where(empty, 0.0, lo), torch.where(empty, 1.0, hi)], -1)


def _masked_extremes(x: Tensor, m: Tensor) -> Tensor:
    """(R, 2) [min, max] of each row of x over the pixels with m > 0; [+inf, -inf] for a row
    that keeps none (the identities of min and max, which a reduction over shards needs)."""
    if x.numel() == 0:  # no rows or no pixels: amin refuses empty tensors
        return _pair_row(math.inf, -math.inf, x.dtype, x.device).expand(x.shape[0], 2)
    keep = m > 0
    lo = torch.where(keep, x, math.inf).amin(-1)
    return torch.stack([lo, torch.where(keep, x, -math.inf).amax(-1)], 1)


_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}


def _shard_stats(group, a, rng, ext, checks, same=None):
    """The rows' statistics of the whole (sharded) images, from one all-reduce over ``group``:
    (extremes of x and y (for the checks and "auto" ranges), masked "auto" ranges of x and y
    (None where not needed), the smallest and largest weight, (2,) (for the mask check), each
    row's largest weight (R, 1) (for ``_unit_rows``; None without a mask), which rows (R,) have
    a pixel of non-zero weight on some rank (None without the extremes: the checks off)).
    A rank's empty shard contributes nothing; rows with no pixel on any rank come back as the
    single-process call would make them."""
    inf = math.inf
    if checks:
        ranges = [v for r in rng for v in ((inf, inf) if r == "auto" else r)]
        check_same(group, {
            "rows (batch x channels)": a.x.shape[0], "num_bins": a.num_bins, "sigma": a.sigma,
            "kernel": PUBLIC_KERNELS.index(a.kernel), "value_range (lo of x)": ranges[0],
            "value_range (hi of x)": ranges[1], "value_range (lo of y)": ranges[2],
            "value_range (hi of y)": ranges[3], "dtype": _DTYPE_CODES.get(a.dtype, -1),
            "mask (given or not)": a.mask is not None, "x's requires_grad": _grad_needed(a.x),
            "y's requires_grad": _grad_needed(a.y), **(same or {}),
        }, a.x.device)  # fmt: skip

    def local_extremes(t, e):
        if e is None:
            return None
        return e if t.shape[1] else _pair_row(inf, -inf, e.dtype, e.device).expand(t.shape[0], 2)

    def local_masked(t, r):
        return None if r != "auto" or a.mask is None else _masked_extremes(t.detach(), a.mask)

    w = a.weights
    wext = peaks = None
    if a.mask is not None:  # each row's largest weight, [pk, pk] ([inf, -inf] for no pixel)
        pk = a.mask.detach().amax(-1) if a.mask.shape[1] else a.mask.new_full((a.mask.shape[0],), -inf)
        peaks = torch.stack([pk, pk], 1)
    if checks and w is not None:
        wext = (
            torch.stack(torch.aminmax(w.detach()))  # (detached: no autograd through the collective)
            if w.numel()
            else torch.tensor([inf, -inf], dtype=w.dtype, device=w.device)
        )
        wext = wext.reshape(1, 2)
    pairs = [local_extremes(t, e) for t, e in zip((a.x, a.y), ext)]
    pairs += [local_masked(t, r) for t, r in zip((a.x, a.y), rng)] + [wext, peaks]
    out = all_reduce_minmax(group, pairs)
    nothing = [None if p is None else torch.isinf(p[:, :1]) & (p[:, :1] > 0) for p in out]
    ext = [None if p is None else torch.where(n, 0.0, p) for p, n in zip(out[:2], nothing[:2])]
    masked = [None if p is None else torch.where(n, p.new_tensor([0.0, 1.0]), p)
              for p, n in zip(out[2:4], nothing[2:4])]  # fmt: skip
    weights = None if out[4] is None else torch.where(nothing[4], 0.0, out[4])[0]  # [min, max]
    peak = None if out[5] is None else out[5][:, 1:].clamp(min=0.0)  # (R, 1); 0: no pixel anywhere
    # which rows have pixels of non-zero weight on some rank (``_check_peaks``' ``occupied``)
    occupied = peak[:, 0] > 0 if peak is not None else None if nothing[0] is None else ~nothing[0][:, 0]
    return ext, masked, weights if checks else a.weights, peak, occupied


def _fixed_range(name: str, pair, acc) -> tuple[float, float]:
    """A fixed (lo, hi), which must be finite and distinct in the accumulation dtype."""
    big = torch.finfo(acc).max
    if not all(abs(t) <= big for t in pair):
        raise ValueError(
            f"{name} {pair!r} is beyond the range of {acc} ({big:.3g}), the images' accumulation dtype"
        )
    lo, hi = (_rounded(t, acc) for t in pair)
    if not hi > lo:
        raise ValueError(f"{name} {pair!r} is a single value in {acc}, the images' accumulation dtype")
    return pair


def _range_rows(x: Tensor, rng, m: Optional[Tensor], extremes: Optional[Tensor], dtype) -> Tensor:
    """The op's ranges: (R, 2) [lo, hi] per row, or (1, 2) for a fixed pair, in ``dtype``."""
    if rng == "auto" and m is None and extremes is not None:
        return extremes.to(dtype)
    lo, hi = _row_range(x, rng, m, extremes)
    if isinstance(lo, Tensor):
        return torch.cat([lo, hi], -1).to(dtype)
    return _pair_row(lo, hi, dtype, x.device)


def _pair_row(lo: float, hi: float, dtype, device) -> Tensor:
    """[[lo, hi]] (1, 2) on ``device`` by two fills: ``torch.tensor`` would copy from the host,
    which synchronises with the GPU and cannot be captured in a CUDA graph."""
    out = torch.full((1, 2), lo, dtype=dtype, device=device)
    out[:, 1:].fill_(hi)
    return out


# Where lo..hi land in bin coordinates, per kernel: (first, margin at the end). The B-spline's
# support is 2 bins: one bin of margin keeps every pixel's unit of mass inside the K bins.
# Mattes: 2 padding bins each side, bin width (max - min) / (K - 4).
_LAYOUT = {"gaussian": (0.0, 1.0), "bspline": (1.0, 2.0), "mattes": (2.0, 2.0)}


def _mattes_terms(x: Tensor, r: Tensor, num_bins: int) -> Tensor:
    """ITK's continuous Parzen window index of x (R, N) with ranges r ((R, 2) or (1, 2)
    float64), in float64 with ITK's own arithmetic: bin width (max - min) / (K - 4),
    ``term = x / width - (min / width - 2)``. Every value is scaled first by the power of two
    s that brings the range near 1 (``pow2_scale``): exact, so the terms are ITK's bit for
    bit, and nothing overflows for ranges near float64's limits. A constant row has width 1."""
    s = pow2_scale(r.abs().amax(1, keepdim=True))
    lo, hi = r[:, :1] * s, r[:, 1:] * s
    span = hi - lo
    width = torch.where(span > 0, span / (num_bins - 4), s)
    return (x.double() * s) / width - (lo / width - 2.0)


def check_pair(x, y, names=("x", "y"), min_ndim=3, layout="a batch of images (B, C, *spatial)") -> None:
    """Two images (or signals) of one call: tensors of a floating dtype, of at least
    ``min_ndim`` dimensions (``layout`` says which), of one shape, on one device (errors name
    them by ``names``: a module's or a drop-in's own argument names)."""
    a, b = names
    _check_tensor(a, x)
    _check_tensor(b, y)
    if x.ndim < min_ndim:
        raise ValueError(f"{a} must be {layout}, got shape {tuple(x.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"{a} and {b} must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.device != y.device:
        raise ValueError(f"{a} and {b} must be on the same device, got {x.device} and {y.device}")


class _Images(NamedTuple):
    """The checked arguments of an image call: rows (R, N) of x and y in the promoted dtype, the
    mask's rows, and what the result's shape and dtype will be."""

    x: Tensor
    y: Tensor
    mask: Optional[Tensor]
    weights: Optional[Tensor]  # the checked mask before reshaping (for the checks)
    lead: tuple
    dtype: torch.dtype
    dtypes: tuple  # of x and y as given (of their gradients)
    num_bins: int
    sigma: float
    ranges: tuple  # (range of x, range of y), each "auto" or (lo, hi)
    kernel: str
    backend: str
    first: float  # lo..hi of a range map onto bin coordinates first..first + length
    length: float


def _check_images(
    x, y, *, num_bins, sigma, value_range, mask, per_channel, kernel, backend, unit_mask=True, group=None
) -> _Images:
    """Argument checks (no data read) and the images as rows; the mask's rows scaled by
    ``_unit_rows`` unless ``unit_mask`` is False (a shard of an image: its scale would not be
    the other shards')."""
    check_pair(x, y)
    k = _check_num_bins(num_bins)
    sig = _sigma_in_bins(_check_sigma(sigma))
    kernel = _check_kernel(kernel)
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be a bool, got {type(per_channel).__name__}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    acc = torch.float64 if kernel == "mattes" else _acc_dtype(dtype)
    rng = tuple(r if r == "auto" else _fixed_range("value_range", r, acc) for r in _check_range(value_range))
    first, end = _LAYOUT[kernel]
    length = k - end - first
    if length < 1:  # the range would map onto one bin coordinate (or backwards)
        raise ValueError(
            f"kernel={kernel!r} needs num_bins >= {int(first + end) + 1} (it keeps {int(first + end)} "
            f"padding bins), got {k}"
        )
    dtypes = (x.dtype, y.dtype)  # of the gradients, before promotion
    x, y = (
        _guard_grad(n, t, None if r == "auto" else r, length)
        for n, t, r in (("x", x, rng[0]), ("y", y, rng[1]))
    )
    m = _check_weights("mask", mask, x, group)
    b, c = x.shape[:2]
    rows, lead = (b * c, (b, c)) if per_channel else (b, (b,))
    n = x.numel() // rows if rows else 0  # explicit: reshape(0, -1) is ambiguous
    xr, yr = x.reshape(rows, n).to(dtype), y.reshape(rows, n).to(dtype)  # no copy for equal dtypes
    be = _resolve_backend(backend, xr)
    _check_histogram_size(rows, k, 2, x.device)
    mr = None if m is None else m.reshape(rows, n)
    if unit_mask:
        mr = _unit_rows(mr, "mask")
    return _Images(xr, yr, mr, m, lead, dtype, dtypes, k, sig, rng, kernel, be, first, length)


def _image_joint(
    x, y, *, num_bins, sigma, value_range, mask, per_channel, kernel, backend, deterministic, group=None,
    same=None,
):  # fmt: skip
    """(soft joint histogram (R, K, K), leading shape of the result, result dtype, resolved
    backend, ``finish()`` of the data checks: the caller calls it after queuing the rest of
    its work). With ``group``, x, y and mask are this rank's shard of the pixels and the
    histogram is that of the whole images (``mi.distributed``); ``same``: more arguments (name
    -> number) that every rank must pass alike (the score's normalisation and base)."""
    group = check_group(group)
    a = _check_images(
        x, y, num_bins=num_bins, sigma=sigma, value_range=value_range, mask=mask,
        per_channel=per_channel, kernel=kernel, backend=backend, unit_mask=group is None, group=group,
    )  # fmt: skip
    u, v, m, binning, op_ranges, check, occupied = _binning(a, group, deterministic, same)
    j = all_reduce_sum(_autograd.joint_hist(u, v, m, binning, *op_ranges), group)
    _check_peaks(j, a.backend, occupied=(lambda: _occupied(m, u)) if group is None else occupied)
    return j, a.lead, a.dtype, a.backend, check


def _occupied(m: Optional[Tensor], u: Tensor):
    """Which rows (R, N) of samples have some weight: ``tails_only_peak``'s ``occupied``."""
    if m is None:
        return u.shape[-1] > 0
    return m.detach().amax(-1) > 0 if m.shape[-1] else False


def _check_peaks(j: Tensor, backend: str, what="joint histogram", cause=None, occupied=None) -> None:
    """Refuse joint histograms (R, K, K) (or (R, K, 1): a histogram's) that hold only window
    tails below the float's normal range: every sample far outside a fixed value_range (or
    far from every bin centre at a tiny sigma). Their value lost most of its bits (0.6336 for
    0.6365) and their gradient overflowed to Inf/NaN (the normalisation's too: NaN). With the
    value checks on, on the torch backend (one more host read; not on the Triton path, whose
    checks never wait for its kernels on a GPU). An all-zero histogram (an empty mask) stays
    allowed: it scores as independent variables; but not one whose samples had weight
    (``occupied``, see ``tails_only_peak``, or a function that gives it, called only when
    the check runs; MI's calls pass it): its windows underflowed to 0 (MI of 0 for a pair
    that is not independent). ``cause``: what the message says to do."""
    if not _checks_on() or backend == "triton" or j.numel() == 0:
        return
    low = tails_only_peak(j, occupied() if callable(occupied) else occupied)
    if low is not None:
        cause = cause or (
            "Every sample lies far outside value_range (or far from every bin centre at this small "
            "sigma): widen value_range, use 'auto', or raise sigma"
        )
        raise ValueError(
            f"the {what} holds only kernel tails: its largest cell is {low:.3g} (a pixel at a bin "
            f"centre adds 1), below {j.dtype}'s normal range, where its value loses its bits and its "
            f"gradient overflows. {cause}"
        )


#: _check_peaks' advice for histogram() and histogram2d(), whose bins are given.
_FAR_FROM_BINS = (
    "Every sample lies far from every bin centre (outside the bins, or between centres at this "
    "small sigma): check the bins, or raise sigma"
)


def _binning(a: _Images, group=None, deterministic=False, same=None):
    """What the op needs besides the rows: (u, v: the rows as the op takes them, the mask's
    rows, the op's ``Binning``, the two ranges (R or 1, 2) or None, ``finish()`` of the data
    checks, with ``group`` which rows have weight on some rank (``_shard_stats``; else None)).
    u and v are the samples themselves with their rows' ranges, or for ``kernel="mattes"``
    ITK's bin coordinates (ranges None). With ``group``, the ranges are those of the whole
    images, and the mask is scaled by each whole image's largest weight."""
    k, rng, first, length = a.num_bins, a.ranges, a.first, a.length
    mattes = a.kernel == "mattes"
    acc = torch.float64 if mattes else _acc_dtype(a.dtype)  # of the ranges
    checks = _checks_on()
    # One pass per image gives the rows' extremes: the NaN/Inf check and, for value_range="auto"
    # without a mask, the range itself.
    ext = [
        _extremes(t) if (checks or (r == "auto" and a.mask is None)) else None
        for t, r in zip((a.x, a.y), rng)
    ]
    masked, weights, mask, occupied = [None, None], a.weights, a.mask, None
    if group is not None:  # the whole images' extremes and ranges, from one all-reduce
        ext, masked, weights, peak, occupied = _shard_stats(group, a, rng, ext, checks, same)
        mask = _unit_rows(a.mask, "mask", peak)  # one scale per row on every rank
    r_x = masked[0].to(acc) if masked[0] is not None else _range_rows(a.x, rng[0], a.mask, ext[0], acc)
    same = rng[0] != "auto" and rng[1] == rng[0]  # one fixed range: one tensor for both
    r_y = r_x if same else _range_rows(a.y, rng[1], a.mask, ext[1], acc)
    if masked[1] is not None:
        r_y = masked[1].to(acc)
    # An "auto" range moves with its image: where that image needs a gradient, the image goes
    # to the op through ``_Live``, whose backward adds how the image moves its range.
    x_rows, y_rows = (
        _live(t, rows, a.mask, group) if r == "auto" and _grad_needed(t) else t
        for t, r, rows in ((a.x, rng[0], r_x), (a.y, rng[1], r_y))
    )
    named = (("x", a.x, rng[0], r_x, a.dtypes[0]), ("y", a.y, rng[1], r_y, a.dtypes[1]))
    grads = [
        _GradRange(n, rows, length, dt)
        for n, t, r, rows, dt in named
        if checks and r == "auto" and _grad_needed(t)
    ]
    if mattes:
        # ITK: the fixed image's bin is floor(term) clamped to [2, K-3] (a box window, at that
        # bin's centre here, so rounding cannot move it); the moving one a cubic B-spline at term.
        # A fixed sample beyond a given value_range is dropped (bin -2), as value_range says,
        # not clamped into an edge bin (ITK's clamp only ever moves the maximum, term K-2; an
        # "auto" range holds every sample of non-zero weight, so nothing to drop there).
        op_acc = _acc_dtype(a.dtype)
        u = _mattes_terms(x_rows, r_x, k).floor().clamp(2.0, k - 3.0)
        if rng[0] != "auto":
            xd = x_rows.detach().double()
            u = torch.where((xd >= r_x[:, :1]) & (xd <= r_x[:, 1:]), u, -2.0)
        u = u.to(op_acc)
        v = _mattes_terms(y_rows, r_y, k).to(op_acc)
        kernels, op_ranges = ("box", "bspline"), (None, None)
    else:
        u, v, kernels, op_ranges = x_rows, y_rows, (a.kernel, a.kernel), (r_x, r_y)
    check = _no_checks
    if checks:
        pairs = (("x", a.x, rng[0]), ("y", a.y, rng[1]))
        binned = [_Binned(n, t, *r, first, length, k, False, a.weights) for n, t, r in pairs if r != "auto"]
        check = _queue_checks(a.backend, {"x": ext[0], "y": ext[1]}, weights, "mask", binned, grads)
    binning = Binning(
        k, a.sigma, kernels, a.backend, _check_flag("deterministic", deterministic), a.first, a.length
    )
    return u, v, mask, binning, op_ranges, check, occupied


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
    group=None,
) -> Tensor:
    """Soft joint histogram of two images, normalised to sum to 1: (B, K, K) or (B, C, K, K).

    Rows index x's bins, columns y's bins. Arguments as in :func:`mutual_information`. A
    sample with no weight (an all-zero mask, or no pixels) gives all zeros.
    """
    j, lead, dtype, be, check = _image_joint(
        x, y, num_bins=num_bins, sigma=sigma, value_range=value_range, mask=mask,
        per_channel=per_channel, kernel=kernel, backend=backend, deterministic=deterministic, group=group,
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
    group=None,
):
    """Marginal and joint entropies ``(H(x), H(y), H(x, y))`` of two images, each (B,) or (B, C).

    Natural log (nats) unless ``base`` (``base=2``: bits). Marginals are the sums of the
    joint histogram. Other arguments as in :func:`mutual_information`.
    """
    base = check_base(base)
    j, lead, dtype, be, check = _image_joint(
        x, y, num_bins=num_bins, sigma=sigma, value_range=value_range, mask=mask,
        per_channel=per_channel, kernel=kernel, backend=backend, deterministic=deterministic, group=group,
        same={"base": base or 0.0},
    )  # fmt: skip
    h = tuple(t.reshape(lead).to(dtype) for t in _scaled_entropies(j, base, be))
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
    group=None,
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
        value of independent variables (0, or 1 for studholme), never NaN. A constant image
        (lo == hi) lands on the first bin. An empty batch (B = 0) gives an empty result.

        Edges: any finite values work, from subnormal (1e-40) to near the float limit
        (3e38); the bin map scales each range by a power of two first, which is exact. A
        gradient that could not be represented is refused with a ValueError instead: a
        range so narrow that its slope, ``(K - 1) / (hi - lo)`` bins per unit, exceeds 2**100
        (float32; 2**1000 in float64), and a float16 gradient beyond 65504 (checked in the
        backward). Differentiable twice:
        the second derivative is exact; a third is refused. Works under ``torch.func``
        (grad, vmap, jacrev) and ``torch.compile``; autocast does not change the float32
        accumulation.

    Args:
        x, y: images (B, C, *spatial) of the same shape: 2-D (B, C, H, W), 3-D (B, C, D, H, W)
            or any other number of spatial dimensions; any floating dtype (half precision
            is computed in float32).
        num_bins: K >= 2 bins per image (any integral type: ``operator.index``); refused when
            B x K x K histograms would not fit in the device's memory.
        sigma: the Gaussian kernel's standard deviation in *bin widths* (> 0; at least 2**-40,
            capped at 2**64). The kernel is truncated where it falls below 2**-24 of its
            peak, and it is not a partition of unity: a sample half-way between two centres
            weighs 2 exp(-1 / (8 sigma^2)) against about 1 at a centre (1.21 against 1.27 at
            sigma 0.5, 0.27 against 1 at 0.25, under 2**-24 below 0.085), so at small sigma
            the histogram counts mostly the samples near bin centres. Ignored by
            ``kernel="bspline"`` and ``"mattes"``.
        value_range: ``(lo, hi)``: intensities lo..hi map onto the bin centres 0..K-1 (the
            same for x and y; mass falling beyond the first/last bin is dropped); or
            ``"auto"``: each sample's (and image's; with ``per_channel``, each channel's)
            own min..max, over the pixels the mask keeps; it moves with the image, and the
            gradient includes that (a tied minimum or maximum shares its part among its
            pixels, as ``amin``/``amax`` do); or a pair of those, one for x and one for y,
            e.g. ``((0, 1), "auto")``. With ``kernel="bspline"`` lo..hi map onto 1..K-2 and
            with ``"mattes"`` onto 2..K-2 (padding bins that keep each pixel's whole unit of
            mass inside the histogram; x's samples beyond lo..hi, whose box window has no bin
            there, are dropped).
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
            metric value (K >= 5). With a mask (ITK's fixed mask), ITK takes the fixed
            image's range over the mask but the moving image's over the whole image:
            ``value_range=("auto", (m.min(), m.max()))`` gives ITK's value.
        backend: ``"auto"`` (Triton for CUDA tensors when available, else torch),
            ``"torch"`` or ``"triton"``.
        deterministic: bitwise-identical results run to run on the GPU (Triton backend;
            also on when ``torch.use_deterministic_algorithms(True)``). The torch backend
            on CPU is always bitwise reproducible run to run at one thread count (values
            whatever the count; an "auto" range's gradient can differ in the last bit
            between thread counts, as torch's own sums do).
        normalize: see above.
        base: logarithm base of the unnormalised MI (None: nats; 2: bits).
        group: None, or a ``torch.distributed`` process group whose ranks each pass their own
            shard of the pixels (x, y and mask: e.g. slabs of one volume, the same B and C
            and the same arguments on every rank): every rank gets the whole images' score,
            from one all-reduce of the extremes and one of the (B, K, K) histograms, and its
            backward gives the gradient of its own shard (with one small all-reduce where an
            "auto" range's derivative needs the whole images' sums; ``mi.distributed``).
            Eager mode only; second derivatives through an "auto" range are refused.

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
    same = {"normalize": NORMALIZATIONS.index(normalize), "base": base or 0.0}
    j, lead, dtype, be, check = _image_joint(
        x, y, num_bins=num_bins, sigma=sigma, value_range=value_range, mask=mask,
        per_channel=per_channel, kernel=kernel, backend=backend, deterministic=deterministic, group=group,
        same=same,
    )  # fmt: skip
    score = _score(j, normalize, base, be).reshape(lead).to(dtype)
    check()
    return score
