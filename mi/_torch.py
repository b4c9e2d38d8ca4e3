"""The CPU backend: the soft (joint) histogram op and its backward in plain torch ops.

Works in *bin coordinates* (bin centres at 0..K-1). For every pixel only the W bins
of its window are touched, per axis (W = 2R+1 with R = ceil(5.77 sigma) for the
Gaussian, 4 for the cubic B-spline, 1 for the box, 2-3 for kornia's windows of radius
1 and MONAI's tie-splitting box), so the work is O(N W^2) and,
since pixels are processed in chunks, the memory is O(K^2 + chunk * W) whatever
N is: no N x K tensor is ever built. Sums are accumulated in float64, so the
result is the dense formula to float32 rounding.

The same functions run on CUDA tensors (the fallback when Triton is missing, and
the path for float64 on a GPU); the Triton kernels in `mi.kernels` compute the
same thing, fused. The second derivatives (the backward's own backward) are here
only, for both backends.
"""

import math

import torch

# The Gaussian is below float32 resolution (2**-24 of its peak) beyond this many sigmas,
# and below float64 resolution (2**-53) beyond the second.
GAUSS_SUPPORT = math.sqrt(48.0 * math.log(2.0))
GAUSS_SUPPORT_F64 = math.sqrt(106.0 * math.log(2.0))
#: Window kinds. The compatibility kinds (``mi.compat``): "xu", "tgauss" and "rect" are
#: kornia's Xu et al. (2008) quadratic, truncated Gaussian and rectangular kernels of radius
#: R = ``sigma`` bin widths (closed support |d| <= R: at |d| = R the Xu kernel's value is 0
#: up to rounding, but its slope is not, and kornia's autograd takes it; the truncated
#: Gaussian is exp(-d^2 / (2 R^2)), peak 1: kornia's 1 / (R sqrt(2 pi)) is the caller's
#: constant factor); "nearest" is
#: MONAI's zero-order B-spline, the box with a tie (|d| = 1/2) split half and half.
KERNELS = ("gaussian", "bspline", "box", "xu", "tgauss", "rect", "nearest")
#: Bins beyond each end of an axis of the cubic B-spline's 4-bin windows (``_bspline_weights``):
#: its samples, clamped to [-2, K + 1], touch bins -3..K + 3.
BSPLINE_PAD = 4
#: Budget for the per-chunk temporaries (O(W) per pixel: ``_joint_chunks``). Smaller chunks
#: pay more per-op overhead, and below 2**15 elements an op runs on one thread; larger ones
#: are freed back to the system by glibc's default malloc and return as fresh pages. A rigid
#: registration of the 2 mm MNI pair (98x116x94): 7.3-7.9 s and 1.3-1.4 M page faults with
#: 32 MB, 6.6-6.8 s and 0.3-0.5 M with 8 MB; the 256-bin loss on a 160x192x224 volume 1.30 s
#: against 1.40 s (one-off runs, 2026-12-02).
CHUNK_BYTES = 8 * 2**20
#: ``_Gathered``: rows of u's window gathered at once, at most this many per pixel of a chunk.
GATHER_BLOCK = 2**16
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
    if kernel in ("xu", "tgauss", "rect"):  # closed support |d| <= R: half a bin of margin
        return sigma + 0.5
    if kernel == "nearest":  # |d| <= 1/2 with ties: the two bins around u
        return 1.0
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def window_size(kernel: str, sigma: float, num_bins: int, double: bool = False) -> int:
    """W = ceil(2 r) bins per axis that one pixel touches, at most ``num_bins``.

    The bins a with |u - a| < r are at most ceil(2 r) consecutive integers starting at
    floor(u - r) + 1 (for sigma = 0.4, 5 bins where a window of round(u) +- ceil(5.77 sigma)
    would take 7).
    """
    return min(math.ceil(2.0 * support(kernel, sigma, double)), num_bins)


def window_start(u, kernel: str, sigma: float, num_bins: int, width: int):
    """clamp(floor(u - r) + 1, 0, K - W) per sample (u's dtype): the first bin of its W-bin
    window (r: ``support``; u clamped first so that floor() stays finite-sized). A one-bin
    window (r <= 1/2: the box, a Gaussian below sigma 0.087) is the nearest bin, floor(u +
    1/2): where no bin lies within r (a sample between centres) that is the bin with the
    larger weight, which floor(u - r) + 1 is not when u sits below the half-way point."""
    # (NaN: bin 0, with NaN weights: meaningless numbers, not an index out of range, when the
    # value checks that refuse it are off)
    uc = u.clamp(-width - 1.0, num_bins + width + 1.0).nan_to_num_(nan=0.0)
    if width == 1:
        return torch.floor(uc + 0.5).clamp_(0, num_bins - 1)
    r = support(kernel, sigma, u.dtype == torch.float64)
    return (torch.floor(uc - r) + 1.0).clamp_(0, num_bins - width)


def _weights(u, kernel, sigma, num_bins, width, order):
    """Bins (W, M) int32 and [w, w', ..., w^(order)] (W, M) each: the window's bin indices and
    its weights and derivatives with respect to u, order <= 2, window-major (row j: the j-th
    bin of each sample's window), so that every product and broadcast below runs along M,
    contiguous (an inner dimension of W = 4 is many times slower on CPU).

    The window is W consecutive bins starting at clamp(floor(u - r) + 1, 0, K - W): every
    bin within the kernel's support that exists is in the window, and no index is out of
    range. A sample far outside the bins (even +-inf, which an extreme bin map can give) gets
    weight 0 and derivatives 0, never NaN. (The cubic B-spline: ``_bspline_weights``.)
    """
    if kernel == "bspline" and width == 4:
        return _bspline_weights(u, num_bins, order)
    start = window_start(u, kernel, sigma, num_bins, width)
    d = u[None, :] - (start[None, :] + torch.arange(width, dtype=u.dtype, device=u.device)[:, None])
    bins = start.to(torch.int32)[None, :] + torch.arange(width, dtype=torch.int32, device=u.device)[:, None]
    if kernel == "gaussian":
        # Beyond 40 sigma the Gaussian underflows to exactly 0 (float32 and float64): clamping
        # there changes no weight and keeps d w and d^2 w finite for a sample at +-inf.
        d.clamp_(-40.0 * sigma, 40.0 * sigma)
        w = torch.exp(d * d * (-0.5 / sigma**2))
        out = [w]
        if order >= 1:  # w' = -d w / s^2, w'' = (d^2 / s^2 - 1) w / s^2
            out.append(d * w * (-1.0 / sigma**2))
        if order >= 2:
            out.append((d * d / sigma**2 - 1.0) * w / sigma**2)
        return bins, out
    if kernel == "bspline":  # fewer than 4 bins: |d| < 2 on some bins, beyond on others
        # In truncated powers, p = (2 - |d|)+ and q = (1 - |d|)+: w = (p^3 - 4 q^3) / 6,
        # w' = -sign(d) (p^2 - 4 q^2) / 2, w'' = p - 4 q (C2, 0 beyond the support |d| >= 2).
        sign = torch.sign(d) if order >= 1 else None
        a = d.abs_()
        p = (2.0 - a).clamp_(min=0.0)  # +-inf: 0
        q = (1.0 - a).clamp_(min=0.0)
        p2, q2 = p * p, q * q
        out = [(p2 * p - 4.0 * (q2 * q)).mul_(1.0 / 6.0)]
        if order >= 1:
            out.append((p2 - 4.0 * q2).mul_(sign).mul_(-0.5))
        if order >= 2:
            out.append(p - 4.0 * q)
        return bins, out
    if kernel == "xu":  # kornia's arithmetic: a = |d| * (1 / R), the polynomials in Horner form
        d.clamp_(-2.0 * sigma, 2.0 * sigma)  # beyond the support every term is 0; keeps them finite
        a = d.abs() * (1.0 / sigma)
        inner, outer = a < 0.5, a <= 1.0
        w = torch.where(inner, a * (-1.8 * a - 0.1) + 1.0, torch.where(outer, a * (1.8 * a - 3.7) + 1.9, 0.0))
        out = [w]
        # At d = 0 the kernel has a kink (its -0.1 |a| term): there w' = w'' = 0, autograd's
        # convention for |d| (d|d|/dd = sign(d), whose own derivative is 0), as kornia gets.
        sign = torch.sign(d)
        if order >= 1:
            slope = torch.where(inner, -3.6 * a - 0.1, torch.where(outer, 3.6 * a - 3.7, 0.0))
            out.append(slope * sign * (1.0 / sigma))
        if order >= 2:
            curve = torch.where(inner, -3.6, torch.where(outer, 3.6, torch.zeros_like(a)))
            out.append(curve * (sign * sign) / sigma**2)
        return bins, out
    if kernel == "tgauss":
        d.clamp_(-2.0 * sigma - 1.0, 2.0 * sigma + 1.0)
        inside = d.abs() <= sigma
        t = d / sigma
        w = torch.where(inside, torch.exp(-0.5 * (t * t)), 0.0)
        out = [w]
        if order >= 1:
            out.append(-t / sigma * w)
        if order >= 2:
            out.append((t * t - 1.0) / sigma**2 * w)
        return bins, out
    if kernel == "rect":  # 1 on the closed support: flat, every derivative is 0
        w = (d.abs() <= sigma).to(u.dtype)
    elif kernel == "nearest":  # the nearest bin; a tie at |d| = 1/2 gives each bin 1/2
        a = d.abs()
        w = torch.where(a < 0.5, 1.0, torch.where(a == 0.5, 0.5, 0.0)).to(u.dtype)
    else:  # box: the nearest bin, [c - 0.5, c + 0.5); flat, so every derivative is 0
        w = ((d >= -0.5) & (d < 0.5)).to(u.dtype)
    return bins, [w] + [torch.zeros_like(d)] * order


def _bspline_weights(u, num_bins, order):
    """``_weights`` of the cubic B-spline (4 bins), from the fractional part t of u: the bins
    floor(u) - 1 + j, j = 0..3, are those within its support (|u - a| < 2), with weights

        (1 - t)^3 / 6,  2/3 - t^2 + t^3 / 2,  2/3 - (1 - t)^2 + (1 - t)^3 / 2,  t^3 / 6

    (ITK's closed form, on (M,) rows: a fraction of the work of the kernel on (4, M)
    distances). The bins are those of an axis padded with ``BSPLINE_PAD`` bins beyond each
    end (``_Grid``), which take what falls outside 0..K-1 and are then dropped: the same sums
    as the clamped window of ``_weights``, without a comparison per bin. u is clamped to
    [-2, K + 1] first (where the bins in range get weight 0 and slope 0), so that +-inf
    gives zeros; NaN gives NaN weights (on the bins around 0).
    """
    uc = u.clamp(-2.0, num_bins + 1.0)
    fl = torch.floor(uc)
    t = uc - fl  # exact, in [0, 1)
    s = 1.0 - t
    first = fl.nan_to_num_(nan=0.0).to(torch.int32).add_(BSPLINE_PAD - 1)
    bins = first + torch.arange(4, dtype=torch.int32, device=u.device)[:, None]  # (4, M)
    t2, s2 = t * t, s * s
    t3, s3 = t2 * t, s2 * s
    rows = [(s3 / 6.0, 2.0 / 3.0 - t2 + 0.5 * t3, 2.0 / 3.0 - s2 + 0.5 * s3, t3 / 6.0)]
    if order >= 1:  # d/du = d/dt; the middle two: t (1.5 t - 2) and its mirror
        rows.append((-0.5 * s2, t * (1.5 * t - 2.0), s * (2.0 - 1.5 * s), 0.5 * t2))
    if order >= 2:
        rows.append((s, 3.0 * t - 2.0, 3.0 * s - 2.0, t))
    return bins, [torch.stack(r) for r in rows]


class _Chunk:
    """Pixels lo..hi of the flattened (B*N,) rows: whole rows r0..r1, or a piece of row r0."""

    def __init__(self, lo, hi, n, device):
        self.lo, self.hi = lo, hi
        self.r0, self.rows = lo // n, (hi - 1) // n + 1 - lo // n
        # each pixel's row: a number within one row, else (M,)
        self.batch = self.r0 if self.rows == 1 else torch.arange(lo, hi, device=device) // n

    def offset(self, stride: int):
        """Each pixel's row times ``stride`` (an int, or (M,) int64): where its row's
        histogram starts in a flat (rows, stride) buffer."""
        return self.batch * stride

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


def pow2_scale(big):
    """2**-e per element, with ``big * 2**-e`` in [0.5, 1) (``frexp``), e clamped so that the
    scale is a normal number of big's dtype (float32 or float64). Multiplying by it is exact."""
    lim = 1022 if big.dtype == torch.float64 else 126
    _, e = torch.frexp(big)
    return torch.ldexp(torch.ones_like(big), (-e).clamp(-lim, lim))


def bin_maps(ranges, first: float, length: float, dtype):
    """Per-row maps (lo * s, s, c, first) that send each row's [lo, hi] onto bin coordinates
    first..first + length: u = (x s - lo s) c + first, du/dx = c s.

    s = ``pow2_scale(max(|lo|, |hi|))`` is a power of two that brings the range near 1, so
    that nothing overflows or loses its bits however large (3e38) or small (1e-40, subnormal)
    the values are; c = length / (hi s - lo s), or 1 / s for a constant row (hi == lo lands
    on ``first``, at a slope of one bin per unit). The same formula as the Triton kernels'
    ``_load_bins``. None for ``ranges=None`` (x already is in bin coordinates).
    """
    if ranges is None:
        return None
    out = []
    for r in ranges:
        if out and r is ranges[0]:  # one shared range (the same tensor): the same map
            out.append(out[0])
            continue
        r = r.to(dtype)
        s = pow2_scale(r.abs().amax(1))
        r_s = r * s[:, None]  # exact
        span = r_s[:, 1] - r_s[:, 0]
        pos = span > 0
        c = torch.where(pos, length / torch.where(pos, span, 1.0), s.reciprocal())
        out.append((r_s[:, 0], s, c, first))
    return out


def _pad(kernel: str, width: int) -> int:
    """The bins beyond each end of an axis whose windows ``_weights`` computes (0: clamped)."""
    return BSPLINE_PAD if kernel == "bspline" and width == 4 else 0


class _Grid:
    """The op's accumulator: (B, K + 2 p, ...) float64, flat, p bins beyond each end of each
    axis (``_pad``: where the B-spline's windows drop what falls outside 0..K-1)."""

    def __init__(self, batch, num_bins, kernels, sigma, double):
        self.B, self.K = batch, num_bins
        self.pads = [_pad(k, window_size(k, sigma, num_bins, double)) for k in kernels]
        self.sizes = [num_bins + 2 * p for p in self.pads]

    def zeros(self, device):
        return torch.zeros(self.B * math.prod(self.sizes), dtype=torch.float64, device=device)

    def crop(self, flat, dtype):
        """The (B, K, ...) histogram in ``dtype`` from the flat accumulator."""
        h = flat.view(self.B, *self.sizes)
        if any(self.pads):
            h = h[(slice(None), *(slice(p, p + self.K) for p in self.pads))]
        return h.to(dtype).contiguous()

    def pad(self, grad, dtype):
        """A (B, K, ...) gradient as the flat accumulator's: zero on the padding."""
        g = grad.reshape(self.B, *[self.K] * len(self.sizes)).to(dtype)
        if any(self.pads):
            g = torch.nn.functional.pad(g, [q for p in reversed(self.pads) for q in (p, p)])
        return g.reshape(-1)


class _Windows:
    """Window bins and [w, w', ...] of one chunk of pixels for one axis, with the bin map of
    its rows (None when x is in bin coordinates) for the chain rule to the raw samples."""

    def __init__(self, x, chunk, bin_map, kernel, sigma, num_bins, order):
        if bin_map is not None:
            lo_s, s, c, first = bin_map
            u = chunk.rowwise(chunk.rowwise(x, s, torch.mul), lo_s, torch.sub)
            x = chunk.rowwise(u, c, torch.mul).add_(first)
        self.chunk, self.bin_map = chunk, bin_map
        self.width = window_size(kernel, sigma, num_bins, x.dtype == torch.float64)
        self.bins, self.ws = _weights(x, kernel, sigma, num_bins, self.width, order)  # of grid's axis
        self.w = self.ws[0]

    def chain(self, d):
        """d/du (M,) -> d/dx through the rows' bin map: times c, then s (identity without one)."""
        if self.bin_map is None:
            return d
        _, s, c, _ = self.bin_map
        return self.chunk.rowwise(self.chunk.rowwise(d, c, torch.mul), s, torch.mul)


def _joint_grid(u, num_bins, sigma, kernel_u, kernel_v):
    return _Grid(u.shape[0], num_bins, (kernel_u, kernel_v), sigma, u.dtype == torch.float64)


def _joint_chunks(u, v, m, grid, sigma, kernel_u, kernel_v, order, maps):
    """Yield (chunk, flat index (Wv, M) into ``grid``, windows of u, windows of v, m).

    The index is that of each pixel's v window in the joint's row of its u window's first
    bin; the u window's a-th bin is ``a * grid.sizes[1]`` further (a window is W consecutive
    bins: no (Wu, Wv, M) index is built; ``_scatter_joint``, ``_Gathered``). u, v are bin
    coordinates, or raw samples mapped chunk by chunk by ``maps`` (from ``bin_maps``): either
    way no full-size bin-coordinate copy is made. The windows carry derivatives up to
    ``order`` and the maps for the chain rule.
    """
    B, N = u.shape
    K = grid.K
    acc = _acc_dtype(u.dtype)
    dbl = acc == torch.float64
    wu_n, wv_n = window_size(kernel_u, sigma, K, dbl), window_size(kernel_v, sigma, K, dbl)
    # the index, the values of one row (forward) or G at it (backward), the backward's rows
    per_pixel = 16 * wv_n + 24 * wu_n
    uf, vf = u.reshape(-1), v.reshape(-1)
    mf = None if m is None else m.reshape(-1)
    su, sv = grid.sizes
    map_u, map_v = (None, None) if maps is None else maps
    for c in _chunks(B, N, per_pixel, u.device):
        wu = _Windows(uf[c.lo : c.hi].to(acc), c, map_u, kernel_u, sigma, K, order)
        wv = _Windows(vf[c.lo : c.hi].to(acc), c, map_v, kernel_v, sigma, K, order)
        row = (wu.bins[0].long() + c.offset(su)) * sv  # J[b, a, 0], flat, (M,)
        yield c, row + wv.bins.long(), wu, wv, None if mf is None else mf[c.lo : c.hi]


def _scatter_joint(out, idx, stride, wu, wv, terms):
    """out[idx + a stride] += sum over terms (weight (M,) or None, i, j) of weight w_u^(i)[a]
    w_v^(j), for each bin a of u's window (``stride``: the joint's row length). Per bin a, one
    ``scatter_add_`` along a 1-D index, which adds in order: deterministic, and the same sums
    in the same order as one ``index_add_`` of the whole (Wu, Wv, M) block (the bits it gave),
    which took about twice as long (2**17 samples, B-spline windows; one-off timings)."""
    flat = idx.view(-1)
    pairs = []  # (weight w_u^(i) (Wu, M), w_v^(j) (Wv, M)) in float64, per term
    for weight, i, j in terms:
        wa = wu.ws[i].double()
        pairs.append((wa if weight is None else wa * weight.double(), wv.ws[j].double()))
    vals = torch.empty_like(pairs[0][1])  # one buffer for every row: no allocation per row
    for a in range(wu.width):
        torch.mul(pairs[0][0][a], pairs[0][1], out=vals)
        for wa, wb in pairs[1:]:
            vals += wa[a] * wb
        out[a * stride :].scatter_add_(0, flat, vals.view(-1))


def joint_hist_forward(
    u, v, m, num_bins, sigma, kernel_u="gaussian", kernel_v="gaussian", *, ranges=None, first=0.0,
    length=1.0, deterministic=False,
):  # fmt: skip
    """J[b, a, c] = sum_n m[b, n] w_u(u[b, n] - a) w_v(v[b, n] - c); u, v, m (B, N) -> (B, K, K).

    The Triton backend's signature (``mi.kernels.joint_hist_forward``); always deterministic.

    ``ranges=(r_u, r_v)``, each (B, 2) or (1, 2) [lo, hi] per row: u and v are raw samples
    whose lo..hi map onto bin coordinates first..first + length (``bin_maps``); None: u and v
    are bin coordinates. Accumulates in float64; returns float32 (float64 for float64 u).
    """
    grid = _joint_grid(u, num_bins, sigma, kernel_u, kernel_v)
    out = grid.zeros(u.device)
    maps = bin_maps(ranges, first, length, _acc_dtype(u.dtype))
    for _, idx, wu, wv, mc in _joint_chunks(u, v, m, grid, sigma, kernel_u, kernel_v, 0, maps):
        _scatter_joint(out, idx, grid.sizes[1], wu, wv, [(mc, 0, 0)])
    return grid.crop(out, _acc_dtype(u.dtype))


class _Gathered:
    """T_ij = sum_{a, c} w_u^(i)(u - a) G[a, c] w_v^(j)(v - c) per pixel of a chunk, on demand.

    A few rows a of u's window at a time (``_scatter_joint``; as many as keep the block under
    ``GATHER_BLOCK`` entries per v-window bin: all of a small chunk's, to amortise the per-op
    overhead, one of a large chunk's, to keep it in cache): G at the pixels' v window in those
    rows, (r, Wv, M), contracted with every w_v^(j) the windows carry into rows[j][a] = sum_c
    G[a, c] w_v^(j)(v - c), in the same order whatever r."""

    def __init__(self, g, idx, stride, wu, wv):
        flat = idx.view(-1)
        wv_n, m = idx.shape
        r = max(1, min(wu.width, GATHER_BLOCK // m))
        block = g.new_empty((r, wv_n * m))  # reused for every block of rows
        self.rows = [g.new_empty((wu.width, m)) for _ in wv.ws]  # (Wu, M) per j
        for a0 in range(0, wu.width, r):
            a1 = min(wu.width, a0 + r)
            for k in range(a1 - a0):
                torch.index_select(g[(a0 + k) * stride :], 0, flat, out=block[k])
            ga = block[: a1 - a0].view(a1 - a0, wv_n, m).transpose(0, 1)  # (Wv, r, M)
            for j, w in enumerate(wv.ws):
                _dot(ga, w[:, None, :], out=self.rows[j][a0:a1])
        self.wu = wu

    def __call__(self, i, j):
        return _dot(self.wu.ws[i], self.rows[j])


def _dot(a, b, out=None):
    """sum_i a[i] * b[i] over the first (window) dimension, row by row in a fixed order: the
    same bits for a pixel whatever the chunk (torch's sum reorders its terms with the layout).
    Into ``out`` when given."""
    out = torch.mul(a[0], b[0], out=out)
    for i in range(1, a.shape[0]):
        out += a[i] * b[i]
    return out


def _flat(t: torch.Tensor, zero: bool = False) -> torch.Tensor:
    """A new flat buffer of ``t``'s size, dtype and device, contiguous whatever ``t``'s strides
    (a batch-last view: ``empty_like`` would keep them, and ``view(-1)`` then fails)."""
    return (torch.zeros if zero else torch.empty)(t.numel(), dtype=t.dtype, device=t.device)


def joint_hist_backward(
    grad, u, v, m, num_bins, sigma, kernel_u="gaussian", kernel_v="gaussian", *, needs_u=True,
    needs_v=True, needs_m=False, ranges=None, first=0.0, length=1.0,
):  # fmt: skip
    """Gradients (du, dv, dm) of sum(grad * J), gathered from grad (B, K, K); dm is None without
    m or when not needed; du and dv are computed together, and None when not needed.

    du = m T_10 du/dx, dv = m T_01 dv/dy, dm = T_00 (``_Gathered``). With ``ranges`` (as in
    the forward), du and dv are with respect to the raw samples. Each has the dtype of its input.
    """
    acc = _acc_dtype(u.dtype)
    grid = _joint_grid(u, num_bins, sigma, kernel_u, kernel_v)
    g = grid.pad(grad, acc)
    du, dv = _flat(u), _flat(v)
    dm = _flat(m) if (m is not None and needs_m) else None
    maps = bin_maps(ranges, first, length, acc)
    for c, idx, wu, wv, mc in _joint_chunks(u, v, m, grid, sigma, kernel_u, kernel_v, 1, maps):
        t = _Gathered(g, idx, grid.sizes[1], wu, wv)
        su, sv = wu.chain(t(1, 0)), wv.chain(t(0, 1))
        if mc is not None:
            su, sv = su * mc, sv * mc
            if dm is not None:
                dm[c.lo : c.hi] = t(0, 0)
        du[c.lo : c.hi], dv[c.lo : c.hi] = su, sv
    du, dv = (t.view(x.shape) if need else None for t, x, need in ((du, u, needs_u), (dv, v, needs_v)))
    return du, dv, None if dm is None else dm.view(m.shape)


def joint_hist_double_backward(
    hu, hv, hm, grad, u, v, m, num_bins, sigma, kernel_u, kernel_v, needs, ranges=None, first=0.0,
    length=1.0,
):  # fmt: skip
    """The derivatives of L2 = sum(hu du + hv dv + hm dm), (du, dv, dm) the backward's outputs
    from grad = G, with respect to (G, u, v, m): the backward's own backward.

    With a = du/dx and b = dv/dy the rows' map slopes (1 in bin coordinates) and T_ij as in
    ``_Gathered``: du = a m T_10, dv = b m T_01, dm = T_00, so

        dL2/dG[a, c] = sum_n (hu a m w_u' w_v + hv b m w_u w_v' + hm w_u w_v)  (a scatter)
        dL2/dx = a (hu a m T_20 + hv b m T_11 + hm T_10)
        dL2/dy = b (hu a m T_11 + hv b m T_02 + hm T_01)
        dL2/dm = hu a T_10 + hv b T_01

    hu, hv, hm (B, N) or None (zero); ``needs``: which of the four to compute (None for the
    others). Exact over the window, like the forward: w'' of the Gaussian, the cubic
    B-spline (C2), the truncated Gaussian and the Xu kernel (piecewise), 0 for the flat
    windows (box, rect, nearest). The ranges are held fixed (an "auto" range's own
    derivative: ``functional._live``).
    """
    acc = _acc_dtype(u.dtype)
    grid = _joint_grid(u, num_bins, sigma, kernel_u, kernel_v)
    g = grid.pad(grad, acc)
    flat = [None if t is None else t.reshape(-1).to(acc) for t in (hu, hv, hm)]
    need_g, need_u, need_v, need_m = needs
    need_m = need_m and m is not None
    dg = grid.zeros(u.device) if need_g else None
    du = _flat(u, zero=True) if need_u else None
    dv = _flat(v, zero=True) if need_v else None
    dm = _flat(m, zero=True) if need_m else None
    maps = bin_maps(ranges, first, length, acc)
    for c, idx, wu, wv, mc in _joint_chunks(u, v, m, grid, sigma, kernel_u, kernel_v, 2, maps):
        one = torch.ones(c.hi - c.lo, dtype=acc, device=u.device)
        a, b = wu.chain(one), wv.chain(one)  # the slopes, per pixel
        mm = one if mc is None else mc.to(acc)
        h_u, h_v, h_m = (torch.zeros_like(one) if f is None else f[c.lo : c.hi] for f in flat)
        if dg is not None:
            _scatter_joint(
                dg, idx, grid.sizes[1], wu, wv, [(h_u * a * mm, 1, 0), (h_v * b * mm, 0, 1), (h_m, 0, 0)]
            )
        t = _Gathered(g, idx, grid.sizes[1], wu, wv)
        if du is not None:
            du[c.lo : c.hi] = a * (h_u * a * mm * t(2, 0) + h_v * b * mm * t(1, 1) + h_m * t(1, 0))
        if dv is not None:
            dv[c.lo : c.hi] = b * (h_u * a * mm * t(1, 1) + h_v * b * mm * t(0, 2) + h_m * t(0, 1))
        if dm is not None:
            dm[c.lo : c.hi] = h_u * a * t(1, 0) + h_v * b * t(0, 1)
    out_g = None if dg is None else grid.crop(dg, grad.dtype)
    return (out_g, *(None if d is None else d.view(src.shape) for d, src in ((du, u), (dv, v), (dm, m))))


def _hist_grid(u, num_bins, sigma, kernel):
    return _Grid(u.shape[0], num_bins, (kernel,), sigma, u.dtype == torch.float64)


def _hist_chunks(u, m, grid, sigma, kernel, order, bin_map):
    """Yield (chunk, flat index (W, M) into ``grid``, windows of u, m)."""
    B, N = u.shape
    K = grid.K
    acc = _acc_dtype(u.dtype)
    uf = u.reshape(-1)
    mf = None if m is None else m.reshape(-1)
    for c in _chunks(B, N, 16 * window_size(kernel, sigma, K, acc == torch.float64), u.device):
        wu = _Windows(uf[c.lo : c.hi].to(acc), c, bin_map, kernel, sigma, K, order)
        idx = wu.bins.long() + c.offset(grid.sizes[0])  # (W, M)
        yield c, idx, wu, None if mf is None else mf[c.lo : c.hi]


def _first_map(ranges, first, length, dtype):
    maps = bin_maps(ranges, first, length, dtype)
    return None if maps is None else maps[0]


def hist_forward(
    u, m, num_bins, sigma, kernel="gaussian", *, ranges=None, first=0.0, length=1.0, deterministic=False
):
    """H[b, a] = sum_n m[b, n] w(u[b, n] - a); u, m (B, N) -> (B, K). ``ranges=(r,)``: u is
    raw samples, as in :func:`joint_hist_forward`."""
    grid = _hist_grid(u, num_bins, sigma, kernel)
    out = grid.zeros(u.device)
    bin_map = _first_map(ranges, first, length, _acc_dtype(u.dtype))
    for _, idx, wu, mc in _hist_chunks(u, m, grid, sigma, kernel, 0, bin_map):
        w = wu.w.double()
        if mc is not None:
            w = w * mc
        out.scatter_add_(0, idx.view(-1), w.reshape(-1))  # in order (``_scatter_joint``)
    return grid.crop(out, _acc_dtype(u.dtype))


def hist_backward(
    grad, u, m, num_bins, sigma, kernel="gaussian", *, needs_u=True, needs_m=False, ranges=None, first=0.0,
    length=1.0,
):  # fmt: skip
    """Gradients (du, dm) of sum(grad * H), gathered from grad (B, K); dm is None without m or
    when not needed, du None when not needed."""
    acc = _acc_dtype(u.dtype)
    grid = _hist_grid(u, num_bins, sigma, kernel)
    g = grid.pad(grad, acc)
    du = _flat(u)
    dm = _flat(m) if (m is not None and needs_m) else None
    bin_map = _first_map(ranges, first, length, acc)
    for c, idx, wu, mc in _hist_chunks(u, m, grid, sigma, kernel, 1, bin_map):
        gw = g.index_select(0, idx.view(-1)).view(idx.shape)
        d = wu.chain(_dot(wu.ws[1], gw))
        if mc is not None:
            d = d * mc
            if dm is not None:
                dm[c.lo : c.hi] = _dot(wu.w, gw)
        du[c.lo : c.hi] = d
    return du.view(u.shape) if needs_u else None, None if dm is None else dm.view(m.shape)


def hist_double_backward(hu, hm, grad, u, m, num_bins, sigma, kernel, needs, ranges=None, first=0.0,
                         length=1.0):  # fmt: skip
    """The backward's own backward for the 1-D histogram (see ``joint_hist_double_backward``):
    with du = a m T_1, dm = T_0 and T_i = sum_k w^(i)(u - k) g[k],

        dL2/dg[k] = sum_n (hu a m w' + hm w),  dL2/dx = a (hu a m T_2 + hm T_1),  dL2/dm = hu a T_1.
    """
    acc = _acc_dtype(u.dtype)
    grid = _hist_grid(u, num_bins, sigma, kernel)
    g = grid.pad(grad, acc)
    flat = [None if t is None else t.reshape(-1).to(acc) for t in (hu, hm)]
    need_g, need_u, need_m = needs
    need_m = need_m and m is not None
    dg = grid.zeros(u.device) if need_g else None
    du = _flat(u, zero=True) if need_u else None
    dm = _flat(m, zero=True) if need_m else None
    for c, idx, wu, mc in _hist_chunks(u, m, grid, sigma, kernel, 2, _first_map(ranges, first, length, acc)):
        one = torch.ones(c.hi - c.lo, dtype=acc, device=u.device)
        a = wu.chain(one)
        mm = one if mc is None else mc.to(acc)
        h_u, h_m = (torch.zeros_like(one) if f is None else f[c.lo : c.hi] for f in flat)
        if dg is not None:
            vals = (h_u * a * mm) * wu.ws[1] + h_m * wu.ws[0]
            dg.scatter_add_(0, idx.view(-1), vals.double().reshape(-1))
        gw = g.index_select(0, idx.view(-1)).view(idx.shape)
        t1 = _dot(wu.ws[1], gw)
        if du is not None:
            du[c.lo : c.hi] = a * (h_u * a * mm * _dot(wu.ws[2], gw) + h_m * t1)
        if dm is not None:
            dm[c.lo : c.hi] = h_u * a * t1
    out_g = None if dg is None else grid.crop(dg, grad.dtype)
    return out_g, None if du is None else du.view(u.shape), None if dm is None else dm.view(m.shape)
