"""Soft 1-D histogram: fused Triton forward and backward, and their launchers.

Naming chain: ``_hist_fwd_kernel`` -> ``hist_forward`` (and ``_bwd``).
"""

import torch
import triton
import triton.language as tl

from .utils import (
    MAX_REPLICAS_HIST,
    block_sizes,
    check_inputs,
    ensure_contiguous,
    finish_forward,
    forward_scales,
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
def _hist_fwd_kernel(
    p_u,  # (B, N) fp32/fp16/bf16 samples (bin coordinates unless MAP)
    p_m,  # (B, N) fp32 pixel weights (read only if HAS_M)
    p_ms,  # (B,) fp32 multiplier of m per row, 1 / max|m| (read only if FIXED_POINT)
    p_out,  # (REPLICAS, B, K): fp32, or int64 if FIXED_POINT; zeroed by the launcher
    p_r,  # (B or 1, 2) ranges [lo, hi] of the rows, row stride s_r (read only if MAP)
    s_r,
    N,
    K,
    c_k,  # the window's parameter (utils.window_param): 1 / (2 sigma^2) for the gaussian
    fp_scale,  # 2**bits (FIXED_POINT only)
    first,  # MAP: lo..hi map onto bin coordinates first..first + length
    length,
    MAP: tl.constexpr,
    W: tl.constexpr,
    KIND: tl.constexpr,
    HAS_M: tl.constexpr,
    FIXED_POINT: tl.constexpr,
    REPLICAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """H[b, a] += sum_n m[b, n] w(u[b, n] - a) over a block of pixels; grid (cdiv(N, BLOCK_N), B).

    Each pixel touches its W-bin window only: W weights and at most W atomic adds per
    pixel (zero contributions masked out), reads u and m (8 bytes). Atomics go to
    REPLICAS private copies of H chosen by program id and summed by the launcher, because
    the K bins of a real image's histogram are few and hot. FIXED_POINT: int64 atomics of
    contributions rounded to multiples of 1 / fp_scale, order-independent (see
    ``_joint_hist_fwd_kernel``). MAP: u is raw samples mapped in registers (``_load_bins``).
    """
    i_n, i_b, o_x, m_n = _pixel_block(N, BLOCK_N)
    b_u, _, _ = _load_bins(p_u, o_x, m_n, p_r, s_r, i_b, first, length, MAP)
    if HAS_M:
        b_m = tl.load(p_m + o_x, mask=m_n, other=0.0)
    else:
        b_m = tl.where(m_n, 1.0, 0.0)
    if FIXED_POINT:
        b_m = b_m * tl.load(p_ms + i_b)
    b_s = _window_start(b_u, K, c_k, W, KIND)
    p_o = p_out + ((i_n % REPLICAS) * tl.num_programs(1) + i_b) * K

    for j0 in range(0, W, BLOCK_W):
        o_j = j0 + tl.arange(0, BLOCK_W)
        b_c = b_s[:, None] + o_j[None, :]
        b_val = _window(b_u[:, None] - b_c.to(tl.float32), c_k, KIND) * b_m[:, None]
        m_j = m_n[:, None] & (o_j[None, :] < W) & (b_val != 0.0)
        if FIXED_POINT:
            b_q = (b_val * fp_scale + 0.5).to(tl.int64)
            tl.atomic_add(p_o + b_c, b_q, mask=m_j, sem="relaxed")
        else:
            tl.atomic_add(p_o + b_c, b_val, mask=m_j, sem="relaxed")


@triton.jit
def _hist_bwd_kernel(
    p_u,
    p_m,
    p_g,  # (B, K) fp32: g = dL/dH
    p_du,
    p_dm,
    p_r,  # row ranges as in the forward (MAP only)
    s_r,
    N,
    K,
    c_k,
    first,
    length,
    MAP: tl.constexpr,
    W: tl.constexpr,
    KIND: tl.constexpr,
    HAS_M: tl.constexpr,
    NEEDS_U: tl.constexpr,
    NEEDS_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """du[n] = m[n] sum_a w'(u[n] - a) g[a] and dm[n] = sum_a w(u[n] - a) g[a], one pass.

    A gather over the pixel's W-bin window of g (no atomics, deterministic): W loads and
    2 multiply-adds per pixel; reads u, m, writes du, dm. MAP: du is with respect to the
    raw samples (times du/dx of the row's map).
    """
    i_n, i_b, o_x, m_n = _pixel_block(N, BLOCK_N)
    b_u, c_u, k_u = _load_bins(p_u, o_x, m_n, p_r, s_r, i_b, first, length, MAP)
    b_s = _window_start(b_u, K, c_k, W, KIND)
    p_gb = p_g + i_b * K

    b_du = tl.zeros([BLOCK_N], dtype=tl.float32)
    b_dm = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j0 in range(0, W, BLOCK_W):
        o_j = j0 + tl.arange(0, BLOCK_W)
        b_c = b_s[:, None] + o_j[None, :]
        m_c = m_n[:, None] & (o_j[None, :] < W)
        b_w, b_dw = _window_and_grad(b_u[:, None] - b_c.to(tl.float32), c_k, KIND)
        b_g = tl.load(p_gb + b_c, mask=m_c, other=0.0)
        if NEEDS_U:
            b_du += tl.sum(b_g * b_dw, axis=1)
        if NEEDS_M:
            b_dm += tl.sum(b_g * b_w, axis=1)

    if NEEDS_U:
        if HAS_M:
            b_du = b_du * tl.load(p_m + o_x, mask=m_n, other=0.0)
        tl.store(p_du + o_x, (b_du * c_u * k_u).to(p_du.dtype.element_ty), mask=m_n)
    if NEEDS_M:
        tl.store(p_dm + o_x, b_dm.to(p_dm.dtype.element_ty), mask=m_n)


@over_row_chunks
@ensure_contiguous
def hist_forward(
    u, m, num_bins, sigma, kernel="gaussian", *, ranges=None, first=0.0, length=1.0, deterministic=False
):
    """Unnormalised soft histogram H (B, K) float32: H[b, a] = sum_n m[b, n] w(u[b, n] - a).

    m None means all ones. ``deterministic`` (or torch's deterministic mode): int64 fixed
    point, bitwise reproducible, see ``joint_hist_forward`` for the error bound.
    ``ranges=(r,)``, ``first``, ``length``: u is raw samples, as in ``joint_hist_forward``.
    """
    check_inputs(u, m, num_bins, sigma)
    B, N = u.shape
    K = int(num_bins)
    w = window_size(kernel, K, sigma)
    block_n, block_w, num_warps = block_sizes(w)
    c_k = window_param(sigma, kernel)
    fixed = use_deterministic(deterministic)
    if B == 0 or N == 0:
        return torch.zeros((B, K), dtype=torch.float32, device=u.device)
    num_blocks = triton.cdiv(N, block_n)
    dtype = torch.int64 if fixed else torch.float32
    reps = num_replicas(num_blocks, B, K, 8 if fixed else 4, MAX_REPLICAS_HIST)
    out = torch.zeros((reps, B, K), dtype=dtype, device=u.device)
    m_mul, fp_scale, back = forward_scales(m, B, N, fixed, u.device)
    ((r, s_r),) = row_ranges(ranges, u, 1)
    _hist_fwd_kernel[(num_blocks, B)](
        u, u if m is None else m, u if m_mul is None else m_mul, out, r, s_r, N, K, c_k, fp_scale,
        float(first), float(length), MAP=ranges is not None, W=w, KIND=kernel_id(kernel),
        HAS_M=m is not None, FIXED_POINT=fixed, REPLICAS=reps, BLOCK_N=block_n, BLOCK_W=block_w,
        num_warps=num_warps,
    )  # fmt: skip
    return finish_forward(out, back)


@over_row_chunks
@ensure_contiguous
def hist_backward(
    grad, u, m, num_bins, sigma, kernel="gaussian", *, needs_u=True, needs_m=False,
    ranges=None, first=0.0, length=1.0,
):  # fmt: skip
    """(du, dm), each (B, N) in the dtype of u, m, or None, from grad = dL/dH (B, K).

    dm is None if m is None; ``ranges``, ``first``, ``length`` as in the forward.
    """
    check_inputs(u, m, num_bins, sigma)
    B, N = u.shape
    K = int(num_bins)
    needs_m = bool(needs_m) and m is not None
    grad = grad.to(torch.float32).contiguous()
    if tuple(grad.shape) != (B, K):
        raise ValueError(f"grad must have shape {(B, K)}, got {tuple(grad.shape)}")
    du = torch.empty_like(u) if needs_u else None
    dm = torch.empty_like(m) if needs_m else None
    if not (needs_u or needs_m) or B == 0 or N == 0:
        return du, dm
    w = window_size(kernel, K, sigma)
    block_n, block_w, num_warps = block_sizes(w)
    c_k = window_param(sigma, kernel)
    ((r, s_r),) = row_ranges(ranges, u, 1)
    _hist_bwd_kernel[(triton.cdiv(N, block_n), B)](
        u, u if m is None else m, grad, u if du is None else du, u if dm is None else dm, r, s_r,
        N, K, c_k, float(first), float(length), MAP=ranges is not None,
        W=w, KIND=kernel_id(kernel), HAS_M=m is not None, NEEDS_U=du is not None,
        NEEDS_M=dm is not None, BLOCK_N=block_n, BLOCK_W=block_w, num_warps=num_warps,
    )  # fmt: skip
    return du, dm
