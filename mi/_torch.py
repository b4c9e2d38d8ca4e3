"""The CPU backend: the soft (joint) histogram op and its backward in plain torch ops.

Works in *bin coordinates* (bin centres at 0..K-1). For every pixel only the W bins
of its window are touched, per axis (W = 2R+1 with R = ceil(5.77 sigma) for the
Gaussian, 4 for the cubic B-spline, 1 for the box), so the work is O(N W^2) and,
since pixels are processed in chunks, the memory is O(K^2 + chunk * W^2) whatever
N is: no N x K tensor is ever built. Sums are accumulated in float64, so the
result is the dense formula to float32 rounding.

The same functions run on CUDA tensors (the fallback when Triton is missing, and
the path for float64 on a GPU); the Triton kernels in `mi.kernels` compute the
same thing, fused.
"""

import math

import torch

# The Gaussian is below float32 resolution (2**-24 of its peak) beyond this many sigmas,
# and below float64 resolution (2**-53) beyond the second.
GAUSS_SUPPORT = math.sqrt(48.0 * math.log(2.0))
GAUSS_SUPPORT_F64 = math.sqrt(106.0 * math.log(2.0))
KERNELS = ("gaussian", "bspline", "box")
# Budget for the per-chunk temporaries (indices + values of chunk * W^2 entries).
CHUNK_BYTES = 32 * 2**20
# On a GPU (this backend is the fallback there: float64, or no Triton) each op is a launch:
# fewer, larger chunks.
CHUNK_BYTES_CUDA = 256 * 2**20


def support(kernel: str, sigma: float, double: bool = False) -> float:
    """Radius r (bin widths) beyond which the window is zero, or below the float32 (float64
    when ``double``) resolution of its peak."""
    if kernel == "gaussian":
        return (GAUSS_SUPPORT_F64 if double else GAUSS_SUPPORT) * sigma
    if kernel == "bspline":
        return 2.0
    if kernel == "box":
        return 0.5
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def window_size(kernel: str, sigma: float, num_bins: int, double: bool = False) -> int:
    """W = ceil(2 r) bins per axis that one pixel touches, at most ``num_bins``.

    The bins a with |u - a| < r are at most ceil(2 r) consecutive integers starting at
    floor(u - r) + 1 (for sigma = 0.4, 5 bins where a window of round(u) +- ceil(5.77 sigma)
    would take 7).
    """
    return min(math.ceil(2.0 * support(kernel, sigma, double)), num_bins)


def _weights(u, kernel, sigma, num_bins, width, need_grad):
    """Window start (M,) long, weights (M, W) and their derivatives d/du (or None).

    The window start is clamp(floor(u - r) + 1, 0, K - W): every bin within the
    kernel's support that exists is in the window, and no index is out of range.
    """
    r = support(kernel, sigma, u.dtype == torch.float64)
    uc = u.clamp(-width - 1.0, num_bins + width + 1.0)  # keeps floor() finite-sized
    start = (torch.floor(uc - r) + 1.0).clamp_(0, num_bins - width)
    d = u[:, None] - (start[:, None] + torch.arange(width, dtype=u.dtype, device=u.device))
    dw = None
    if kernel == "gaussian":
        w = torch.exp(d * d * (-0.5 / sigma**2))
        if need_grad:
            dw = d * w * (-1.0 / sigma**2)
    elif kernel == "bspline":
        a = d.abs()
        inner, outer = a < 1.0, a < 2.0
        t = (2.0 - a).clamp(min=0.0)
        w = torch.where(inner, 2.0 / 3.0 - a * a + 0.5 * a**3, t**3 / 6.0)
        if need_grad:
            slope = torch.where(inner, -2.0 * a + 1.5 * a * a, -0.5 * t * t)
            dw = torch.where(outer, slope * torch.sign(d), torch.zeros_like(d))
    else:  # box: the nearest bin, [c - 0.5, c + 0.5); flat, so no gradient
        w = ((d >= -0.5) & (d < 0.5)).to(u.dtype)
        if need_grad:
            dw = torch.zeros_like(d)
    return start.long(), w, dw


class _Chunk:
    """Pixels lo..hi of the flattened (B*N,) rows: whole rows r0..r1, or a piece of row r0."""

    def __init__(self, lo, hi, n, device):
        self.lo, self.hi = lo, hi
        self.r0, self.rows = lo // n, (hi - 1) // n + 1 - lo // n
        # each pixel's row: a number within one row, else (M,)
        self.batch = self.r0 if self.rows == 1 else torch.arange(lo, hi, device=device) // n

    def rowwise(self, x, t, fn):
        """fn(x, the pixels' entry of the per-row t (R,) or (1,)) for a chunk x (M,), as (M,)."""
        if t.numel() == 1:
            return fn(x, t[0])
        if self.rows == 1:
            return fn(x, t[self.r0])
        return fn(x.view(self.rows, -1), t[self.r0 : self.r0 + self.rows, None]).view(-1)


def _chunks(rows: int, n: int, per_item: int, device: torch.device):
    """Yield _Chunk pieces of the (rows * n,) flattened pixels: whole rows when a row fits the
    budget, else pieces of one row (so that a row's bin map is one number per chunk).

    Chunks of CHUNK_BYTES of temporaries: large enough to amortise the per-op overhead,
    bounded so that memory does not grow with N.
    """
    budget = CHUNK_BYTES_CUDA if device.type == "cuda" else CHUNK_BYTES
    step = max(1024, budget // max(per_item, 1))
    if n == 0:
        return
    if step >= n:
        per = step // n
        for r in range(0, rows, per):
            yield _Chunk(r * n, min(rows, r + per) * n, n, device)
        return
    step = -(-n // -(-n // step))  # equal pieces: no small leftover chunk at the end of a row
    for r in range(rows):
        for lo in range(r * n, (r + 1) * n, step):
            yield _Chunk(lo, min((r + 1) * n, lo + step), n, device)


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def bin_maps(ranges, first: float, length: float, dtype):
    """Per-row maps (lo (R,), bin width (R,), first) that send each row's [lo, hi] onto bin
    coordinates first..first + length: u = (x - lo) / width + first with width =
    (hi - lo) / length, or 1 for a constant row (hi == lo lands on ``first``). The same
    formula as the Triton kernels' ``_load_bins``. None for ``ranges=None`` (x already is in
    bin coordinates)."""
    if ranges is None:
        return None
    out = []
    for r in ranges:
        r = r.to(dtype)
        span = r[:, 1] - r[:, 0]
        out.append((r[:, 0], torch.where(span > 0, span / length, 1.0), first))
    return out


def _mapped(x, chunk, bin_map, dtype):
    """A chunk of samples x (M,) in bin coordinates, and the per-row bin widths (dx/du; None
    when x already is in bin coordinates)."""
    x = x.to(dtype)
    if bin_map is None:
        return x, None
    lo, width, first = bin_map
    u = chunk.rowwise(chunk.rowwise(x, lo, torch.sub), width, torch.div)
    return u.add_(first), width


class _Windows:
    """Window starts, weights and derivatives of one chunk of pixels for one axis (and
    ``width``, the rows' bin widths dx/du, None when x is in bin coordinates)."""

    def __init__(self, x, width, kernel, sigma, num_bins, need_grad):
        self.bin_width = width
        self.width = window_size(kernel, sigma, num_bins, x.dtype == torch.float64)
        self.start, self.w, self.dw = _weights(x, kernel, sigma, num_bins, self.width, need_grad)


def _joint_chunks(u, v, m, num_bins, sigma, kernel_u, kernel_v, need_grad, maps):
    """Yield (lo, hi, flat index (M, Wu, Wv) into (B*K*K,), windows of u, windows of v, m).

    u, v are bin coordinates, or raw samples mapped chunk by chunk by ``maps`` (from
    ``bin_maps``): either way no full-size bin-coordinate copy is made. The windows carry
    the rows' bin widths (None without maps) for ``_chain``.
    """
    B, N = u.shape
    K = num_bins
    acc = _acc_dtype(u.dtype)
    dbl = acc == torch.float64
    wu_n, wv_n = window_size(kernel_u, sigma, K, dbl), window_size(kernel_v, sigma, K, dbl)
    per_pixel = 16 * wu_n * wv_n
    uf, vf = u.reshape(-1), v.reshape(-1)
    mf = None if m is None else m.reshape(-1)
    # int32 indices when they fit: half the memory traffic of int64 for the (M, Wu, Wv) index.
    itype = torch.int32 if B * K * K < 2**31 else torch.int64
    offs = torch.arange(wu_n, device=u.device)[:, None] * K + torch.arange(wv_n, device=u.device)
    offs = offs.to(itype)
    map_u, map_v = (None, None) if maps is None else maps
    for c in _chunks(B, N, per_pixel, u.device):
        wu = _Windows(*_mapped(uf[c.lo : c.hi], c, map_u, acc), kernel_u, sigma, K, need_grad)
        wv = _Windows(*_mapped(vf[c.lo : c.hi], c, map_v, acc), kernel_v, sigma, K, need_grad)
        base = ((c.batch * K + wu.start) * K + wv.start).to(itype)  # J[b, su, sv], flat
        idx = base[:, None, None] + offs  # (M, Wu, Wv)
        yield c, idx, wu, wv, None if mf is None else mf[c.lo : c.hi]


def joint_hist_forward(
    u, v, m, num_bins, sigma, kernel_u="gaussian", kernel_v="gaussian", ranges=None, first=0.0, length=1.0
):
    """J[b, a, c] = sum_n m[b, n] w_u(u[b, n] - a) w_v(v[b, n] - c); u, v, m (B, N) -> (B, K, K).

    ``ranges=(r_u, r_v)``, each (B, 2) or (1, 2) [lo, hi] per row: u and v are raw samples
    whose lo..hi map onto bin coordinates first..first + length (``bin_maps``); None: u and v
    are bin coordinates. Accumulates in float64; returns float32 (float64 for float64 u).
    """
    B, K = u.shape[0], num_bins
    out = torch.zeros(B * K * K, dtype=torch.float64, device=u.device)
    maps = bin_maps(ranges, first, length, _acc_dtype(u.dtype))
    for _, idx, wu, wv, mc in _joint_chunks(u, v, m, K, sigma, kernel_u, kernel_v, False, maps):
        a = wu.w.double()
        if mc is not None:
            a = a * mc[:, None]
        out.index_add_(0, idx.reshape(-1), (a[:, :, None] * wv.w.double()[:, None, :]).reshape(-1))
    return out.view(B, K, K).to(_acc_dtype(u.dtype))


def joint_hist_backward(
    grad, u, v, m, num_bins, sigma, kernel_u="gaussian", kernel_v="gaussian", needs_m=True,
    ranges=None, first=0.0, length=1.0,
):  # fmt: skip
    """Gradients (du, dv, dm) of sum(grad * J), gathered from grad (B, K, K); dm is None without m.

    With ``ranges`` (as in the forward), du and dv are with respect to the raw samples.
    Each has the dtype of its input.
    """
    acc = _acc_dtype(u.dtype)
    g = grad.reshape(-1).to(acc)
    du, dv = torch.empty_like(u).view(-1), torch.empty_like(v).view(-1)
    dm = torch.empty_like(m).view(-1) if (m is not None and needs_m) else None
    maps = bin_maps(ranges, first, length, acc)
    for c, idx, wu, wv, mc in _joint_chunks(u, v, m, num_bins, sigma, kernel_u, kernel_v, True, maps):
        gw = g.index_select(0, idx.view(-1)).view(idx.shape)  # (M, Wu, Wv); faster than g[idx]
        gv = torch.einsum("mij,mj->mi", gw, wv.w)  # sum_c G[a, c] w_v(v - c), per window row a
        gu = torch.einsum("mij,mi->mj", gw, wu.w)
        su, sv = _chain(c, wu, (wu.dw * gv).sum(1)), _chain(c, wv, (wv.dw * gu).sum(1))
        if mc is not None:
            su, sv = su * mc, sv * mc
            if dm is not None:
                dm[c.lo : c.hi] = (wu.w * gv).sum(1)
        du[c.lo : c.hi], dv[c.lo : c.hi] = su, sv
    return du.view(u.shape), dv.view(v.shape), None if dm is None else dm.view(m.shape)


def _chain(chunk, windows, d):
    """d/du -> d/dx through the chunk's bin map (identity without one)."""
    return d if windows.bin_width is None else chunk.rowwise(d, windows.bin_width, torch.div)


def _hist_chunks(u, m, num_bins, sigma, kernel, need_grad, bin_map):
    B, N = u.shape
    K = num_bins
    acc = _acc_dtype(u.dtype)
    uf = u.reshape(-1)
    mf = None if m is None else m.reshape(-1)
    for c in _chunks(B, N, 16 * window_size(kernel, sigma, K, acc == torch.float64), u.device):
        wu = _Windows(*_mapped(uf[c.lo : c.hi], c, bin_map, acc), kernel, sigma, K, need_grad)
        idx = (c.batch * K + wu.start)[:, None] + torch.arange(wu.width, device=u.device)
        yield c, idx, wu, None if mf is None else mf[c.lo : c.hi]


def hist_forward(u, m, num_bins, sigma, kernel="gaussian", ranges=None, first=0.0, length=1.0):
    """H[b, a] = sum_n m[b, n] w(u[b, n] - a); u, m (B, N) -> (B, K). ``ranges=(r,)``: u is
    raw samples, as in :func:`joint_hist_forward`."""
    B, K = u.shape[0], num_bins
    out = torch.zeros(B * K, dtype=torch.float64, device=u.device)
    maps = bin_maps(ranges, first, length, _acc_dtype(u.dtype))
    bin_map = None if maps is None else maps[0]
    for _, idx, wu, mc in _hist_chunks(u, m, K, sigma, kernel, False, bin_map):
        w = wu.w.double()
        if mc is not None:
            w = w * mc[:, None]
        out.index_add_(0, idx.reshape(-1), w.reshape(-1))
    return out.view(B, K).to(_acc_dtype(u.dtype))


def hist_backward(grad, u, m, num_bins, sigma, kernel="gaussian", needs_m=True, ranges=None, first=0.0,
                  length=1.0):  # fmt: skip
    """Gradients (du, dm) of sum(grad * H), gathered from grad (B, K); dm is None without m."""
    acc = _acc_dtype(u.dtype)
    g = grad.reshape(-1).to(acc)
    du = torch.empty_like(u).view(-1)
    dm = torch.empty_like(m).view(-1) if (m is not None and needs_m) else None
    maps = bin_maps(ranges, first, length, acc)
    bin_map = None if maps is None else maps[0]
    for c, idx, wu, mc in _hist_chunks(u, m, num_bins, sigma, kernel, True, bin_map):
        gw = g.index_select(0, idx.view(-1)).view(idx.shape)
        d = _chain(c, wu, (wu.dw * gw).sum(1))
        if mc is not None:
            d = d * mc
            if dm is not None:
                dm[c.lo : c.hi] = (wu.w * gw).sum(1)
        du[c.lo : c.hi] = d
    return du.view(u.shape), None if dm is None else dm.view(m.shape)
