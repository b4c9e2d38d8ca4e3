"""Soft joint histogram: fused Triton forward and backward, and their launchers.

Naming chain: ``_joint_hist_fwd_kernel`` -> ``joint_hist_forward`` (and ``_bwd``); the
autograd op in ``mi`` calls the launchers.
"""

import torch
import triton
import triton.language as tl

from .tiled import backward_tiled, forward_span, forward_tiled
from .utils import (
    MAX_REPLICAS_JOINT,
    block_sizes,
    check_inputs,
    ensure_contiguous,
    finish_forward,
    forward_scales,
    joint_method,
    kernel_id,
    num_replicas,
    over_row_chunks,
    row_ranges,
    use_deterministic,
    window_param,
    window_size,
)
from .window import _load_bins, _pixel_block, _window, _window_and_grad, _window_start


@triton.jit
def _nearest_bin(b_x, K):
    """The bin centre nearest to each x (fp32), clamped to [0, K - 1]; 0 for NaN."""
    b_c = tl.minimum(tl.maximum(b_x, -1.0), K * 1.0)
    return tl.minimum(tl.maximum(tl.floor(b_c + 0.5), 0.0), K - 1.0)


@triton.jit
def _joint_hist_fwd_kernel(
    p_u,  # (B, N) fp32/fp16/bf16: samples along the first axis (bin coordinates unless MAP)
    p_v,  # (B, N) along the second axis
    p_m,  # (B, N) fp32 pixel weights (read only if HAS_M)
    p_ms,  # (B,) fp32, multiplier of m per row (read only if FIXED_POINT): 1 / max|m|
    p_out,  # (REPLICAS, B, K, K): fp32, or int64 if FIXED_POINT; zeroed by the launcher
    p_ru,  # (B or 1, 2) ranges [lo, hi] of u's rows, row stride s_ru (read only if MAP)
    p_rv,  # the same for v
    s_ru,
    s_rv,
    N,
    K,
    c_k,  # the window's parameter (utils.window_param): 1 / (2 sigma^2) for the gaussian
    fp_scale,  # 2**bits, the fixed-point unit (FIXED_POINT only)
    first,  # MAP: lo..hi map onto bin coordinates first..first + length
    length,
    MAP: tl.constexpr,
    W_U: tl.constexpr,
    W_V: tl.constexpr,
    KIND_U: tl.constexpr,
    KIND_V: tl.constexpr,
    HAS_M: tl.constexpr,
    FIXED_POINT: tl.constexpr,
    REPLICAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """J[b, a, c] += sum_n m[b, n] w_u(u[b, n] - a) w_v(v[b, n] - c) over a block of pixels.

    Grid (cdiv(N, BLOCK_N), B). Each pixel touches only its W_U x W_V window of bins
    (a in [s_u, s_u + W_U), c in [s_v, s_v + W_V), s from ``_window_start``), so the
    dense N x K weight matrices are never built.

    MAP: u and v are raw samples, mapped to bin coordinates in registers by each row's
    range (``_load_bins``), so the caller never writes a bin-coordinate copy of the images.

    Work per pixel: W_V window weights once, then per row i < W_U one weight and W_V
    multiply-adds, and at most W_U * W_V atomic adds: zero contributions are masked out
    (pixels with m = 0, or so far outside the range that their weights underflow, issue none),
    and for two Gaussian windows so are the cells below 2**-24 of the pixel's largest cell
    (for a pixel inside the range, the corners of the square outside a disk): on average
    pi r^2 of the (2 r)^2 cells remain, 26 atomics per pixel instead of 36 at sigma 0.5
    (bench/atomic_counts.py). The cost: a pixel's window is no longer an outer product, which
    MI's gradient sees in histograms of a handful of pixels (one pixel: 2.8e-4 per unit where
    the exact gradient is 0; README, "Precision"). The atomics are what bound this kernel on a GPU. Memory per
    pixel: reads u, v, m (12 bytes); registers hold a (BLOCK_N, BLOCK_W) tile of v-window
    weights. Windows wider than BLOCK_W loop over column chunks, so registers do not grow
    with W.

    Reduction: atomics into REPLICAS private copies of J, the copy chosen by program id
    (pid % REPLICAS) and summed by the launcher: real images have very peaked histograms
    (a black background sends most pixels to the same bins) and same-address atomics
    serialise; consecutive programs, which run at the same time, hit different copies.

    FIXED_POINT (deterministic mode): each contribution, at most 1 after m is multiplied by
    1 / max|m| of its row, is rounded to an integer multiple of 1 / fp_scale and added with
    int64 atomics. Integer addition is associative, so the sum is bitwise identical whatever
    the order; the launcher converts back, multiplying by max|m| / fp_scale.
    """
    i_n, i_b, o_x, m_n = _pixel_block(N, BLOCK_N)
    b_u, _, _ = _load_bins(p_u, o_x, m_n, p_ru, s_ru, i_b, first, length, MAP)
    b_v, _, _ = _load_bins(p_v, o_x, m_n, p_rv, s_rv, i_b, first, length, MAP)
    if HAS_M:
        b_m = tl.load(p_m + o_x, mask=m_n, other=0.0)
    else:
        b_m = tl.where(m_n, 1.0, 0.0)
    if FIXED_POINT:
        b_m = b_m * tl.load(p_ms + i_b)
    b_su = _window_start(b_u, K, c_k, W_U, KIND_U)
    b_sv = _window_start(b_v, K, c_k, W_V, KIND_V)
    if KIND_U == 0 and KIND_V == 0:
        # the pixel's largest cell: at its nearest bin on each axis (always in its window)
        b_top = (
            b_m * _window(b_u - _nearest_bin(b_u, K), c_k, 0) * _window(b_v - _nearest_bin(b_v, K), c_k, 0)
        )
        b_cut = b_top * 5.960464477539063e-08
    # bin offsets inside one K x K histogram stay int32 (the launcher checks K*K < 2**31)
    p_o = p_out + ((i_n % REPLICAS) * tl.num_programs(1) + i_b) * K * K

    for j0 in range(0, W_V, BLOCK_W):
        o_j = j0 + tl.arange(0, BLOCK_W)
        b_c = b_sv[:, None] + o_j[None, :]
        m_c = m_n[:, None] & (o_j[None, :] < W_V)
        b_wv = _window(b_v[:, None] - b_c.to(tl.float32), c_k, KIND_V) * b_m[:, None]
        for i in range(W_U):
            b_a = b_su + i
            b_wu = _window(b_u - b_a.to(tl.float32), c_k, KIND_U)
            b_val = b_wu[:, None] * b_wv
            p_j = p_o + (b_a[:, None] * K + b_c)
            if KIND_U == 0 and KIND_V == 0:
                # Skip the cells below 2**-24 of the pixel's own largest cell: for a pixel inside
                # the range, those outside the disk of radius r (about 26 of the square's 36 cells
                # at sigma 0.5 remain). Relative to the pixel's largest cell, not to m, so that a
                # pixel far outside the range still adds its (tiny) window: when most pixels lie
                # there, those tails are most of the histogram. Strict, so m = 0 adds nothing.
                m_j = m_c & (b_val > b_cut[:, None])
            else:
                m_j = m_c & (b_val != 0.0)
            if FIXED_POINT:
                # contributions are >= 0 (non-negative m), so +0.5 then truncation rounds
                b_q = (b_val * fp_scale + 0.5).to(tl.int64)
                tl.atomic_add(p_j, b_q, mask=m_j, sem="relaxed")
            else:
                tl.atomic_add(p_j, b_val, mask=m_j, sem="relaxed")


@triton.jit
def _joint_hist_bwd_kernel(
    p_u,
    p_v,
    p_m,
    p_g,  # (B, K, K) fp32: G = dL/dJ
    p_du,  # (B, N) outputs (dtype of u, v, m), written only if NEEDS_*
    p_dv,
    p_dm,
    p_ru,  # row ranges as in the forward (MAP only)
    p_rv,
    s_ru,
    s_rv,
    N,
    K,
    c_k,
    first,
    length,
    MAP: tl.constexpr,
    W_U: tl.constexpr,
    W_V: tl.constexpr,
    KIND_U: tl.constexpr,
    KIND_V: tl.constexpr,
    HAS_M: tl.constexpr,
    NEEDS_U: tl.constexpr,
    NEEDS_V: tl.constexpr,
    NEEDS_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """du, dv, dm of every pixel from G = dL/dJ, in one pass:

        du[n] = m[n] sum_{a, c} w_u'(u[n] - a) G[a, c] w_v(v[n] - c)
        dv[n] = m[n] sum_{a, c} w_u(u[n] - a) G[a, c] w_v'(v[n] - c)
        dm[n] =      sum_{a, c} w_u(u[n] - a) G[a, c] w_v(v[n] - c)

    over the pixel's W_U x W_V window (outside it every term is 0 to float32 rounding).
    With MAP, du and dv are with respect to the raw samples: times du/dx = c k of the row's map.
    A gather: each pixel reads its window of G (cached: G is K*K*4 bytes), no atomics, so
    the result is deterministic. Work per pixel: W_U * W_V loads of G and 2 to 3 multiply-
    adds each; memory per pixel: reads u, v, m, writes up to 3 floats.
    """
    i_n, i_b, o_x, m_n = _pixel_block(N, BLOCK_N)
    b_u, c_u, k_u = _load_bins(p_u, o_x, m_n, p_ru, s_ru, i_b, first, length, MAP)
    b_v, c_v, k_v = _load_bins(p_v, o_x, m_n, p_rv, s_rv, i_b, first, length, MAP)
    b_su = _window_start(b_u, K, c_k, W_U, KIND_U)
    b_sv = _window_start(b_v, K, c_k, W_V, KIND_V)
    p_gb = p_g + i_b * K * K

    b_du = tl.zeros([BLOCK_N], dtype=tl.float32)
    b_dv = tl.zeros([BLOCK_N], dtype=tl.float32)
    b_dm = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j0 in range(0, W_V, BLOCK_W):
        o_j = j0 + tl.arange(0, BLOCK_W)
        b_c = b_sv[:, None] + o_j[None, :]
        m_c = m_n[:, None] & (o_j[None, :] < W_V)
        b_wv, b_dwv = _window_and_grad(b_v[:, None] - b_c.to(tl.float32), c_k, KIND_V)
        for i in range(W_U):
            b_a = b_su + i
            b_wu, b_dwu = _window_and_grad(b_u - b_a.to(tl.float32), c_k, KIND_U)
            b_g = tl.load(p_gb + (b_a[:, None] * K + b_c), mask=m_c, other=0.0)
            if NEEDS_U or NEEDS_M:
                b_t = tl.sum(b_g * b_wv, axis=1)
                if NEEDS_U:
                    b_du += b_dwu * b_t
                if NEEDS_M:
                    b_dm += b_wu * b_t
            if NEEDS_V:
                b_dv += b_wu * tl.sum(b_g * b_dwv, axis=1)

    if HAS_M:
        b_m = tl.load(p_m + o_x, mask=m_n, other=0.0)
        b_du = b_du * b_m
        b_dv = b_dv * b_m
    if NEEDS_U:
        tl.store(p_du + o_x, (b_du * c_u * k_u).to(p_du.dtype.element_ty), mask=m_n)
    if NEEDS_V:
        tl.store(p_dv + o_x, (b_dv * c_v * k_v).to(p_dv.dtype.element_ty), mask=m_n)
    if NEEDS_M:
        tl.store(p_dm + o_x, b_dm.to(p_dm.dtype.element_ty), mask=m_n)


@over_row_chunks
@ensure_contiguous
def joint_hist_forward(
    u, v, m, num_bins, sigma, kernel_u="gaussian", kernel_v="gaussian", *, ranges=None, first=0.0,
    length=1.0, deterministic=False,
):  # fmt: skip
    """Unnormalised soft joint histogram J (B, K, K) float32 of bin coordinates u, v (B, N).

    J[b, a, c] = sum_n m[b, n] w_u(u[b, n] - a) w_v(v[b, n] - c); m None means all ones.
    Up to ``utils.AUTO_TILED_BINS`` bins (or as ``mi.kernels.forced_method`` says) the tiled
    kernel computes it (``tiled.py``: tensor cores, no atomics, deterministic by
    construction, ``deterministic`` then changes nothing); otherwise this scatter kernel.
    ``ranges=(r_u, r_v)``, each (B, 2) or (1, 2) [lo, hi] per row: u and v are raw samples
    (fp32/fp16/bf16) whose lo..hi map onto bin coordinates first..first + length (see
    ``window._load_bins``); None: u and v are bin coordinates already.
    ``deterministic`` (or torch's deterministic mode) accumulates in int64 fixed point:
    bitwise identical run to run, each bin within N * max|m| * 2**-bits of the exact sum of
    the float32 contributions (bits = ``utils.fixed_point_bits(N)``, 32 up to N = 2**30),
    before the float32 result's own rounding.
    """
    check_inputs(u, m, num_bins, sigma, v=v)
    B, N = u.shape
    K = int(num_bins)
    ku, kv = kernel_id(kernel_u), kernel_id(kernel_v)
    w_u, w_v = window_size(kernel_u, K, sigma), window_size(kernel_v, K, sigma)
    block_n, block_w, num_warps = block_sizes(w_v)
    c_k = window_param(sigma, kernel_u, kernel_v)
    (r_u, s_u), (r_v, s_v) = row_ranges(ranges, u, 2)  # (checked even for empty inputs)
    if B == 0 or N == 0:
        return torch.zeros((B, K, K), dtype=torch.float32, device=u.device)
    method = joint_method("forward", K)
    if method == "tiled":  # tiled and span: deterministic by construction
        return forward_tiled(u, v, m, K, sigma, kernel_u, kernel_v, ranges, first, length)
    if method.startswith("span"):
        sort = method == "span-sorted"
        return forward_span(u, v, m, K, sigma, kernel_u, kernel_v, ranges, first, length, sort=sort)
    fixed = use_deterministic(deterministic)
    num_blocks = triton.cdiv(N, block_n)
    dtype = torch.int64 if fixed else torch.float32
    reps = num_replicas(num_blocks, B, K * K, 8 if fixed else 4, MAX_REPLICAS_JOINT)
    out = torch.zeros((reps, B, K, K), dtype=dtype, device=u.device)
    m_mul, fp_scale, back = forward_scales(m, B, N, fixed, u.device)
    _joint_hist_fwd_kernel[(num_blocks, B)](
        u, v, u if m is None else m, u if m_mul is None else m_mul, out, r_u, r_v, s_u, s_v,
        N, K, c_k, fp_scale, float(first), float(length), MAP=ranges is not None, W_U=w_u, W_V=w_v,
        KIND_U=ku, KIND_V=kv, HAS_M=m is not None, FIXED_POINT=fixed, REPLICAS=reps,
        BLOCK_N=block_n, BLOCK_W=block_w, num_warps=num_warps,
    )  # fmt: skip
    return finish_forward(out, back)


@over_row_chunks
@ensure_contiguous
def joint_hist_backward(
    grad, u, v, m, num_bins, sigma, kernel_u="gaussian", kernel_v="gaussian", *, needs_u=True,
    needs_v=True, needs_m=False, ranges=None, first=0.0, length=1.0,
):  # fmt: skip
    """(du, dv, dm), each (B, N) in the dtype of u, v, m, or None, from grad = dL/dJ (B, K, K).

    None for what is not needed; dm is None when m is None. ``ranges``, ``first`` and
    ``length`` as in the forward (du and dv are then with respect to the raw samples).
    A gather, no atomics: deterministic. The tiled kernel where the forward would use it.
    """
    check_inputs(u, m, num_bins, sigma, v=v)
    B, N = u.shape
    K = int(num_bins)
    needs_m = bool(needs_m) and m is not None
    grad = grad.to(torch.float32).contiguous()
    if tuple(grad.shape) != (B, K, K):
        raise ValueError(f"grad must have shape {(B, K, K)}, got {tuple(grad.shape)}")
    du = torch.empty_like(u) if needs_u else None
    dv = torch.empty_like(v) if needs_v else None
    dm = torch.empty_like(m) if needs_m else None
    if not (needs_u or needs_v or needs_m) or B == 0 or N == 0:
        return du, dv, dm
    ku, kv = kernel_id(kernel_u), kernel_id(kernel_v)
    w_u, w_v = window_size(kernel_u, K, sigma), window_size(kernel_v, K, sigma)
    if joint_method("backward", K) == "tiled":
        backward_tiled(grad, u, v, m, du, dv, dm, K, sigma, kernel_u, kernel_v, ranges, first, length)
        return du, dv, dm
    block_n, block_w, num_warps = block_sizes(w_v)
    c_k = window_param(sigma, kernel_u, kernel_v)
    (r_u, s_u), (r_v, s_v) = row_ranges(ranges, u, 2)
    _joint_hist_bwd_kernel[(triton.cdiv(N, block_n), B)](
        u, v, u if m is None else m, grad,
        u if du is None else du, u if dv is None else dv, u if dm is None else dm,
        r_u, r_v, s_u, s_v, N, K, c_k, float(first), float(length),
        MAP=ranges is not None, W_U=w_u, W_V=w_v, KIND_U=ku, KIND_V=kv, HAS_M=m is not None,
        NEEDS_U=du is not None, NEEDS_V=dv is not None, NEEDS_M=dm is not None,
        BLOCK_N=block_n, BLOCK_W=block_w, num_warps=num_warps,
    )  # fmt: skip
    return du, dv, dm
