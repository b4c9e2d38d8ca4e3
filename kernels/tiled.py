"""Tiled joint histogram: pixel x bin weight tiles in registers, reduced with ``tl.dot``.

The scatter kernels (``joint_hist.py``) add each pixel's W x W window into J with atomics:
about 100 atomics per pixel at the loss defaults (sigma 1 bin, W = 12), all of them into
few hot bins at 32-64 bins. Here a program holds the whole (KP, KP) histogram (KP: K padded
to a power of two, at least 16) in registers, builds for a block of P pixels the weight
tiles

    A^T[a, p] = m[p] w_u(u[p] - a)  (KP x P),   B[p, c] = w_v(v[p] - c)  (P x KP)

and accumulates ``J += A^T B`` on the tensor cores: no atomics, no contention, and a fixed
order (each program's partial histogram is written to its own slot and the launcher sums
the slots), so the result is the same bit for bit run to run. The backward is the same
shape: C = B G^T, D = A G (P x KP), du = m rowsum(A' * C), dv = m rowsum(B' * D),
dm = rowsum(A * C), with G = dL/dJ and G^T loaded once by each (persistent) program.

The weights are evaluated densely, KP per pixel and axis, straight from the window
formulas. Those are 0 outside their support (B-spline, box, kornia's and MONAI's
windows); the Gaussian is kept on each pixel's W-bin window, the bins the torch backend
holds (``_in_window``: two compares and a select per weight, on the distance, so that the
backward's w and w' share it; the window's start once per pixel): the same histogram up
to the order of its sums (the scatter kernels also drop the window's corner cells below
2**-24 of the pixel's largest one). (The tiled sum once kept the Gaussian beyond that window, below 2**-24
of its peak: float32 dust down to 1e-43 made a near-one-bin histogram's entropies 1e-41,
and the normalised scores' derivatives, about 1 / H, overflowed into NaN gradients where
the other paths give the one-bin histogram's exact 0.) Padded bins a >= K get weights
too; their rows and columns of J are never stored, and G is zero there. Work per pixel:
2 KP window evaluations (one exp2 each for the Gaussian) and 2 KP^2 multiply-adds per
product on the tensor cores; memory per pixel: reads u, v, m; the backward writes up to 3
floats.

Precision (``utils.TILED_PRECISION``, ``_dot``): "tf32x3" by default, the operands split
into tf32 parts and exact rests, three tf32 products. Measured on an H200 with the
previous form of this kernel (window masks, A transposed in registers, Triton 3.6's own
"tf32x3"), against the float64 oracle on R1 (160x192x224, K = 32, sigma 1): MI 4.3e-7
relative and gradient 9.5e-6 of its largest magnitude (R2: 9.1e-7, 6.8e-6; R3: 1.6e-7,
2.9e-6); plain "tf32", whose truncation of every weight towards zero does not average out:
MI 2.0e-5 and gradient 4.6e-4 (outside the targets, 1e-5 and 1e-4); "ieee" (fp32, no
tensor cores): 7.2e-7 and 1.1e-5 (``bench/results/bench_regime.csv``). This form cuts the
forward's static instruction count (SASS, sm_90, Triton 3.9, ``bench/sass_counts.py``) from
1264 to 712 at 32 bins and from 2664 to 1064 at 64 (registers 247 -> 140); it has not been
timed on a GPU yet. The
interpreter (CPU) computes ``tl.dot`` in full fp32 whatever is asked: only a GPU shows the
tensor cores' errors.

``_joint_span_fwd_kernel`` (``forced_method("span")``, an experiment for K beyond what a
program holds in registers, not yet timed): each block of pixels adds only the T x T
sub-tiles its pixels' windows cover into the program's own K x K slot in global memory.
On real images at K = 256 a block of 32 neighbouring pixels spans about 10 sub-tiles of 32
bins (``bench/span_tiles.py``), as much work as a dense evaluation: blocks would need
sorting by bin tile first (README).
"""

import torch
import triton
import triton.language as tl

from .. import _torch
from .utils import (
    TILED_EXP,
    TILED_PRECISION,
    kernel_id,
    row_ranges,
    span_config,
    tiled_config,
    window_param,
    window_size,
)
from .window import _load_bins, _window, _window_and_grad, _window_start


@triton.jit
def _exp2_fma(x):
    """2**x for x <= 0 on the FMA units (``TILED_EXP="fma"``), not the special-function
    unit that ``tl.exp2`` uses (16 results per cycle and multiprocessor against 128 FMAs):
    x = n + f with n = round(x), f in [-1/2, 1/2]; 2**f by a degree-5 polynomial (relative
    error 2.3e-7 in float32 arithmetic, about ``ex2.approx``'s); times 2**n by adding n to
    the exponent bits. 0 for x <= -125 (2**-125 is 2e-38) and for -inf and NaN."""
    keep = x > -125.0
    x = tl.where(keep, x, 0.0)
    n = tl.floor(x + 0.5)
    f = x - n
    p = 0.001327647129073739 * f + 0.009675541892647743
    p = p * f + 0.05550713092088699
    p = p * f + 0.24022120237350464
    p = p * f + 0.6931469440460205
    p = p * f + 1.0000001192092896
    bits = p.to(tl.int32, bitcast=True) + (n.to(tl.int32) << 23)
    return tl.where(keep, bits.to(tl.float32, bitcast=True), 0.0)


@triton.jit
def _weights(b_d, c_k, KIND: tl.constexpr, EXP: tl.constexpr):
    """w(d) on a tile of distances. The gaussian as one exp2 (no clamp: d = +-inf gives 0), on
    the special-function unit (EXP "mufu") or the FMA units ("fma", ``_exp2_fma``); the
    other kinds as ``window._window``, whose formulas are 0 outside their support."""
    if KIND == 0:
        b_e = (b_d * b_d) * (-1.4426950408889634 * c_k)
        if EXP == "fma":
            return _exp2_fma(b_e)
        else:
            return tl.exp2(b_e)
    else:
        return _window(b_d, c_k, KIND)


@triton.jit
def _weights_and_grad(b_d, c_k, KIND: tl.constexpr, EXP: tl.constexpr):
    """(w(d), w'(d)) as ``window._window_and_grad``, the gaussian's exp2 on the unit EXP says
    (``_weights``); d is clamped at 40 sigma first, where the Gaussian is exactly 0, so that
    w' = -2 c_k d w is 0, not NaN, at d = +-inf."""
    if KIND == 0:
        d_max = 40.0 * tl.sqrt(0.5 / c_k)
        b_d = tl.minimum(tl.maximum(b_d, -d_max), d_max)
        b_w = _weights(b_d, c_k, KIND, EXP)
        return b_w, -2.0 * c_k * b_d * b_w
    else:
        return _window_and_grad(b_d, c_k, KIND)


@triton.jit
def _in_window(b_d, b_s, f_k, W: tl.constexpr, KIND: tl.constexpr, BINS_FIRST: tl.constexpr):
    """The distance tile b_d, +inf (weight and derivative 0) where its bin lies outside the
    pixel's W-bin window [s, s + W) (``window._window_start``: b_s, (P,) int32): for the
    gaussian, the bins the scatter kernels and the torch backend hold (the other kinds'
    formulas are 0 outside their support already: b_d as it is). One select per weight,
    shared by w and w'. BINS_FIRST: the tile is (KP, P), else (P, KP)."""
    if KIND == 0:
        f_s = b_s.to(tl.float32)
        if BINS_FIRST:
            b_in = (f_k[:, None] >= f_s[None, :]) & (f_k[:, None] < f_s[None, :] + W)
        else:
            b_in = (f_k[None, :] >= f_s[:, None]) & (f_k[None, :] < f_s[:, None] + W)
        b_d = tl.where(b_in, b_d, float("inf"))
    return b_d


@triton.jit
def _tf32_high(x):
    """x with its low 13 mantissa bits cleared: exactly what the tensor cores use of x in a
    tf32 product, so x - _tf32_high(x) is exact."""
    # -8192 is 0xFFFFE000 as an int32: no literal beyond int32, whose typing Triton versions differ on
    return (x.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b (acc None: a @ b). PRECISION "tf32x3": each operand split into its tf32
    part and the exact rest, and a_lo b_hi + a_hi b_lo + a_hi b_hi accumulated, smallest
    first (the a_lo b_lo term, about 2**-22 of the product, is dropped, and the rests lose
    their own low bits in the product): Triton's "tf32x3" written out in two integer and
    two float operations per element, where Triton 3.6's own split took about 20 (static
    SASS counts) and, at 64 bins, ran 5-40x slower than plain tf32 on an H200. Otherwise
    a ``tl.dot`` input precision ("tf32", "ieee")."""
    if PRECISION == "tf32x3":
        a_hi, b_hi = _tf32_high(a), _tf32_high(b)
        acc = tl.dot(a - a_hi, b_hi, acc, input_precision="tf32")
        acc = tl.dot(a_hi, b - b_hi, acc, input_precision="tf32")
        return tl.dot(a_hi, b_hi, acc, input_precision="tf32")
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _block(i_blk, i_b, N, BLOCK_P: tl.constexpr):
    """(offsets (BLOCK_P,) int64 into the (B, N) inputs, in-range mask) of pixel block i_blk."""
    o_n = (tl.zeros((BLOCK_P,), dtype=tl.int64) + i_blk) * BLOCK_P + tl.arange(0, BLOCK_P)
    return i_b * N + o_n, o_n < N


@triton.jit
def _pixel_weights(p_m, o_x, m_n, HAS_M: tl.constexpr):
    """m of a block of pixels (HAS_M), or 1 for the pixels in range; 0 beyond N."""
    if HAS_M:
        return tl.load(p_m + o_x, mask=m_n, other=0.0)
    else:
        return tl.where(m_n, 1.0, 0.0)


@triton.jit
def _joint_tiled_fwd_kernel(
    p_u,  # (B, N) fp32/fp16/bf16 samples (bin coordinates unless MAP)
    p_v,
    p_m,  # (B, N) fp32 pixel weights (read only if HAS_M)
    p_out,  # (PROGRAMS, B, K, K) fp32: one partial histogram per program, every cell written
    p_ru,  # row ranges, as the scatter kernel (MAP only)
    p_rv,
    s_ru,
    s_rv,
    N,
    K,
    c_k,
    first,
    length,
    MAP: tl.constexpr,
    KIND_U: tl.constexpr,
    KIND_V: tl.constexpr,
    HAS_M: tl.constexpr,
    W_U: tl.constexpr,
    W_V: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr,
    EXP: tl.constexpr,
):
    """Partial J of the pixel blocks i, i + PROGRAMS, i + 2 PROGRAMS, ... of row b.

    Grid (PROGRAMS, B), persistent: each program keeps its (KP, KP) fp32 accumulator in
    registers over all its blocks, then stores its K x K part once.
    """
    i_p = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    n_p = tl.num_programs(0)
    o_k = tl.arange(0, KP)
    f_k = o_k.to(tl.float32)
    b_acc = tl.zeros((KP, KP), dtype=tl.float32)
    for i_blk in range(i_p, tl.cdiv(N, BLOCK_P), n_p):
        o_x, m_n = _block(i_blk, i_b, N, BLOCK_P)
        b_u, _, _ = _load_bins(p_u, o_x, m_n, p_ru, s_ru, i_b, first, length, MAP)
        b_v, _, _ = _load_bins(p_v, o_x, m_n, p_rv, s_rv, i_b, first, length, MAP)
        b_m = _pixel_weights(p_m, o_x, m_n, HAS_M)
        b_su = _window_start(b_u, K, c_k, W_U, KIND_U)
        b_sv = _window_start(b_v, K, c_k, W_V, KIND_V)
        b_du = _in_window(b_u[None, :] - f_k[:, None], b_su, f_k, W_U, KIND_U, True)
        b_dv = _in_window(b_v[:, None] - f_k[None, :], b_sv, f_k, W_V, KIND_V, False)
        b_at = _weights(b_du, c_k, KIND_U, EXP) * b_m[None, :]  # A^T (KP, P)
        b_c = _weights(b_dv, c_k, KIND_V, EXP)  # B (P, KP)
        b_acc = _dot(b_at, b_c, b_acc, PRECISION)
    p_o = p_out + (i_p * tl.num_programs(1) + i_b) * K * K
    m_k = o_k < K
    tl.store(p_o + o_k[:, None] * K + o_k[None, :], b_acc, mask=m_k[:, None] & m_k[None, :])


@triton.jit
def _joint_span_fwd_kernel(
    p_u,
    p_v,
    p_m,
    p_out,  # (PROGRAMS, B, K, K) fp32 zeros: one partial histogram per program
    p_ru,
    p_rv,
    s_ru,
    s_rv,
    N,
    K,
    c_k,
    first,
    length,
    MAP: tl.constexpr,
    KIND_U: tl.constexpr,
    KIND_V: tl.constexpr,
    HAS_M: tl.constexpr,
    W_U: tl.constexpr,
    W_V: tl.constexpr,
    T: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr,
    EXP: tl.constexpr,
):
    """Partial J of the pixel blocks i, i + PROGRAMS, ... of row b, for any K ("span" path).

    For each block of P pixels: the bins its pixels' windows cover, [lo_u, hi_u) x [lo_v,
    hi_v) (first bin of the first window, last of the last, as the scatter kernel places
    them), in T x T sub-tiles from (lo_u, lo_v) on; each sub-tile J[a0:a0+T, c0:c0+T] +=
    A_t^T B_t with A_t, B_t the (P, T) weight tiles of those bins, added into the program's
    own slot in global memory (read, add, write: no atomics; a barrier orders one sub-tile's
    write before the next one's read). A pixel costs 2 T window evaluations and 2 T^2
    multiply-adds per sub-tile its block walks, whatever K is, and J need not fit in
    registers. On real pairs (``bench/span_tiles.py``) a block of 32 neighbouring pixels
    walks 1-2 sub-tiles of 32 bins at K = 32-64 but about 10 at K = 256, and 1-2.6 there
    once the pixels are sorted by tile ("span-sorted", ``_tile_order``). A block of noise
    walks up to (K / T)^2.
    """
    i_p = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    n_p = tl.num_programs(0)
    o_t = tl.arange(0, T)
    f_t = o_t.to(tl.float32)
    p_o = p_out + (i_p * tl.num_programs(1) + i_b) * K * K
    for i_blk in range(i_p, tl.cdiv(N, BLOCK_P), n_p):
        o_x, m_n = _block(i_blk, i_b, N, BLOCK_P)
        b_u, _, _ = _load_bins(p_u, o_x, m_n, p_ru, s_ru, i_b, first, length, MAP)
        b_v, _, _ = _load_bins(p_v, o_x, m_n, p_rv, s_rv, i_b, first, length, MAP)
        b_m = _pixel_weights(p_m, o_x, m_n, HAS_M)
        m_keep = b_m != 0.0
        b_su = _window_start(b_u, K, c_k, W_U, KIND_U)
        b_sv = _window_start(b_v, K, c_k, W_V, KIND_V)
        lo_u = tl.min(tl.where(m_keep, b_su, K), axis=0)  # K, 0 for a block with no weight: no tile
        hi_u = tl.max(tl.where(m_keep, b_su + W_U, 0), axis=0)
        lo_v = tl.min(tl.where(m_keep, b_sv, K), axis=0)
        hi_v = tl.max(tl.where(m_keep, b_sv + W_V, 0), axis=0)
        for a0 in range(lo_u, hi_u, T):
            b_du = _in_window(b_u[None, :] - (a0 + f_t)[:, None], b_su, a0 + f_t, W_U, KIND_U, True)
            b_at = _weights(b_du, c_k, KIND_U, EXP) * b_m[None, :]  # (T, P)
            m_a = (a0 + o_t) < K
            for c0 in range(lo_v, hi_v, T):
                b_dv = _in_window(b_v[:, None] - (c0 + f_t)[None, :], b_sv, c0 + f_t, W_V, KIND_V, False)
                b_c = _weights(b_dv, c_k, KIND_V, EXP)  # (P, T)
                m_ac = m_a[:, None] & ((c0 + o_t) < K)[None, :]
                p_t = p_o + (a0 + o_t)[:, None] * K + (c0 + o_t)[None, :]
                b_j = _dot(b_at, b_c, tl.load(p_t, mask=m_ac, other=0.0), PRECISION)
                tl.store(p_t, b_j, mask=m_ac)
                tl.debug_barrier()  # this sub-tile's write before any thread reads the next


@triton.jit
def _joint_tiled_bwd_kernel(
    p_u,
    p_v,
    p_m,
    p_g,  # (B, K, K) fp32: G = dL/dJ
    p_du,  # (B, N) outputs (dtype of u, v, m), written only if NEEDS_*
    p_dv,
    p_dm,
    p_ru,
    p_rv,
    s_ru,
    s_rv,
    N,
    K,
    c_k,
    first,
    length,
    MAP: tl.constexpr,
    KIND_U: tl.constexpr,
    KIND_V: tl.constexpr,
    HAS_M: tl.constexpr,
    NEEDS_U: tl.constexpr,
    NEEDS_V: tl.constexpr,
    NEEDS_M: tl.constexpr,
    W_U: tl.constexpr,
    W_V: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr,
    EXP: tl.constexpr,
):
    """du, dv, dm of the pixel blocks i, i + PROGRAMS, ... of row b (grid (PROGRAMS, B)):

        du[n] = m[n] sum_a w_u'(u[n] - a) C[n, a],   C = B G^T  (C[n, a] = sum_c G[a, c] w_v(v[n] - c))
        dv[n] = m[n] sum_c w_v'(v[n] - c) D[n, c],   D = A G    (A without m)
        dm[n] =      sum_a w_u(u[n] - a) C[n, a]

    G is loaded once per program (padded with zeros to KP x KP). No atomics: deterministic.
    """
    i_p = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    n_p = tl.num_programs(0)
    o_k = tl.arange(0, KP)
    f_k = o_k.to(tl.float32)
    m_k = o_k < K
    m_g = m_k[:, None] & m_k[None, :]
    p_gb = p_g + i_b * K * K
    if NEEDS_U or NEEDS_M:  # G^T[c, a] = G[a, c], loaded transposed
        b_gt = tl.load(p_gb + o_k[None, :] * K + o_k[:, None], mask=m_g, other=0.0)
    if NEEDS_V:
        b_g = tl.load(p_gb + o_k[:, None] * K + o_k[None, :], mask=m_g, other=0.0)
    for i_blk in range(i_p, tl.cdiv(N, BLOCK_P), n_p):
        o_x, m_n = _block(i_blk, i_b, N, BLOCK_P)
        b_u, c_u, k_u = _load_bins(p_u, o_x, m_n, p_ru, s_ru, i_b, first, length, MAP)
        b_v, c_v, k_v = _load_bins(p_v, o_x, m_n, p_rv, s_rv, i_b, first, length, MAP)
        b_su = _window_start(b_u, K, c_k, W_U, KIND_U)
        b_sv = _window_start(b_v, K, c_k, W_V, KIND_V)
        b_du = _in_window(b_u[:, None] - f_k[None, :], b_su, f_k, W_U, KIND_U, False)
        b_dv = _in_window(b_v[:, None] - f_k[None, :], b_sv, f_k, W_V, KIND_V, False)
        b_wu, b_dwu = _weights_and_grad(b_du, c_k, KIND_U, EXP)
        b_wv, b_dwv = _weights_and_grad(b_dv, c_k, KIND_V, EXP)
        b_m = _pixel_weights(p_m, o_x, m_n, HAS_M)
        if NEEDS_U or NEEDS_M:
            b_cg = _dot(b_wv, b_gt, None, PRECISION)
            if NEEDS_U:
                b_du = tl.sum(b_dwu * b_cg, axis=1) * b_m * (c_u * k_u)
                tl.store(p_du + o_x, b_du.to(p_du.dtype.element_ty), mask=m_n)
            if NEEDS_M:
                b_dm = tl.sum(b_wu * b_cg, axis=1)
                tl.store(p_dm + o_x, b_dm.to(p_dm.dtype.element_ty), mask=m_n)
        if NEEDS_V:
            b_dg = _dot(b_wu, b_g, None, PRECISION)
            b_dv = tl.sum(b_dwv * b_dg, axis=1) * b_m * (c_v * k_v)
            tl.store(p_dv + o_x, b_dv.to(p_dv.dtype.element_ty), mask=m_n)


def _launch_args(direction, u, num_bins, sigma, kernel_u, kernel_v, ranges, rows_cols):
    K = int(num_bins)
    ku, kv = kernel_id(kernel_u), kernel_id(kernel_v)
    c_k = window_param(sigma, kernel_u, kernel_v)
    (r_u, s_u), (r_v, s_v) = row_ranges(ranges, u, 2)
    kp, block_p, num_warps, programs = tiled_config(direction, K, *rows_cols, u.device)
    w_u, w_v = window_size(kernel_u, K, sigma), window_size(kernel_v, K, sigma)
    const = dict(MAP=ranges is not None, KIND_U=ku, KIND_V=kv, W_U=w_u, W_V=w_v, KP=kp, BLOCK_P=block_p)
    return (r_u, r_v, s_u, s_v), c_k, const, num_warps, programs


def forward_tiled(u, v, m, K, sigma, kernel_u, kernel_v, ranges, first, length):
    """J (B, K, K) float32 as ``joint_hist.joint_hist_forward`` (which checks the inputs, makes
    them contiguous and answers empty ones before it calls this), by the tiled kernel.
    Deterministic whatever ``deterministic`` says: a fixed partition of the pixels and a
    fixed order of the partial sums."""
    B, N = u.shape
    rng, c_k, const, num_warps, programs = _launch_args(
        "forward", u, K, sigma, kernel_u, kernel_v, ranges, (B, N)
    )
    out = torch.empty((programs, B, K, K), dtype=torch.float32, device=u.device)
    _joint_tiled_fwd_kernel[(programs, B)](
        u, v, u if m is None else m, out, *rng, N, K, c_k, float(first), float(length),
        HAS_M=m is not None, PRECISION=TILED_PRECISION["forward"], EXP=TILED_EXP["forward"],
        num_warps=num_warps, **const,
    )  # fmt: skip
    return out[0] if programs == 1 else out.sum(0)


def _tile_order(u, v, K, sigma, kernel_u, kernel_v, ranges, first, length, tile):
    """(B, N) int64: each row's pixels sorted (stably) by the T x T tile of J where their
    windows start, so that a block of P pixels spans few sub-tiles. Any permutation gives
    the same J up to the order of the sums: the keys need not match the kernel's float
    arithmetic, only come close."""
    maps = _torch.bin_maps(ranges, first, length, torch.float32) or [None, None]
    keys = []
    for x, bin_map, kernel in ((u, maps[0], kernel_u), (v, maps[1], kernel_v)):
        x = x.float()
        if bin_map is not None:
            lo_s, s, c, _ = bin_map
            x = (x * s[:, None] - lo_s[:, None]) * c[:, None] + first
        start = _torch.window_start(x, kernel, sigma, K, window_size(kernel, K, sigma))
        keys.append(start.to(torch.int32) // tile)
    return torch.argsort(keys[0] * (K // tile + 1) + keys[1], dim=1, stable=True)


def forward_span(u, v, m, K, sigma, kernel_u, kernel_v, ranges, first, length, sort=False):
    """J (B, K, K) float32 as ``forward_tiled``, by the span kernel (any K; deterministic).
    ``sort``: the pixels first sorted by tile (``_tile_order``; a sort and three gathers of
    the inputs: the keys, the permutation and the copies take a few tens of bytes a pixel)."""
    B, N = u.shape
    ku, kv = kernel_id(kernel_u), kernel_id(kernel_v)
    (r_u, s_u), (r_v, s_v) = row_ranges(ranges, u, 2)
    tile, block_p, num_warps, programs = span_config(K, B, N, u.device)
    if sort:
        order = _tile_order(u, v, K, sigma, kernel_u, kernel_v, ranges, first, length, tile)
        u, v, m = (None if t is None else t.gather(1, order) for t in (u, v, m))
    out = torch.zeros((programs, B, K, K), dtype=torch.float32, device=u.device)
    _joint_span_fwd_kernel[(programs, B)](
        u, v, u if m is None else m, out, r_u, r_v, s_u, s_v, N, K, window_param(sigma, kernel_u, kernel_v),
        float(first), float(length), MAP=ranges is not None, KIND_U=ku, KIND_V=kv, HAS_M=m is not None,
        W_U=window_size(kernel_u, K, sigma), W_V=window_size(kernel_v, K, sigma), T=tile, BLOCK_P=block_p,
        PRECISION=TILED_PRECISION["forward"], EXP=TILED_EXP["forward"], num_warps=num_warps,
    )  # fmt: skip
    return out[0] if programs == 1 else out.sum(0)


def backward_tiled(grad, u, v, m, du, dv, dm, K, sigma, kernel_u, kernel_v, ranges, first, length):
    """Writes du, dv, dm (those not None) as ``joint_hist.joint_hist_backward`` (which checks
    the inputs and allocates them before it calls this), by the tiled kernel."""
    B, N = u.shape
    rng, c_k, const, num_warps, programs = _launch_args(
        "backward", u, K, sigma, kernel_u, kernel_v, ranges, (B, N)
    )
    _joint_tiled_bwd_kernel[(programs, B)](
        u, v, u if m is None else m, grad,
        u if du is None else du, u if dv is None else dv, u if dm is None else dm,
        *rng, N, K, c_k, float(first), float(length), HAS_M=m is not None,
        NEEDS_U=du is not None, NEEDS_V=dv is not None, NEEDS_M=dm is not None,
        PRECISION=TILED_PRECISION["backward"], EXP=TILED_EXP["backward"], num_warps=num_warps, **const,
    )  # fmt: skip
