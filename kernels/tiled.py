"""Tiled joint histogram: pixel x bin weight tiles in registers, reduced with ``tl.dot``.

The scatter kernels (``joint_hist.py``) add each pixel's W x W window into J with atomics:
about 100 atomics per pixel at the loss defaults (sigma 1 bin, W = 12), all of them into
few hot bins at 32-64 bins. Here a program holds the whole (KP, KP) histogram (KP: K padded
to a power of two, at least 16) in registers, builds for a block of P pixels the weight
tiles

    A[p, a] = m[p] w_u(u[p] - a),   B[p, c] = w_v(v[p] - c)    (P x KP, zero outside the window)

and accumulates ``J += A^T B`` on the tensor cores: no atomics, no contention, and a fixed
order (each program's partial histogram is written to its own slot and the launcher sums
the slots), so the result is the same bit for bit run to run. The backward is the same
shape: C = B G^T, D = A G (P x KP), du = m rowsum(A' * C), dv = m rowsum(B' * D),
dm = rowsum(A * C), with G = dL/dJ held in registers by each (persistent) program.

The weights are evaluated densely, KP per pixel and axis, masked to the pixel's window
(the same W bins from ``_window_start`` as the scatter kernels and the torch backend, so
the two paths compute the same sum; the scatter kernel additionally drops the corners of
two Gaussian windows that are below 2**-24 of the peak). Work per pixel: 2 KP window
evaluations (exponentials for the Gaussian) and 2 KP^2 multiply-adds on the tensor cores
per dot; memory per pixel: reads u, v, m; the backward writes up to 3 floats.

Precision (``tl.dot``'s ``input_precision``, ``utils.TILED_PRECISION``), measured on an
H200 (Triton 3.6) against the float64 oracle, R1 (160x192x224, K = 32, sigma 1), MI error
relative to MI and gradient error relative to its largest magnitude
(``bench/results/bench_regime.csv``):

* "tf32": the tensor cores drop each operand's low 13 mantissa bits, an error always
  towards zero that does not average out: MI 2.0e-5, gradient 4.6e-4 (R2 7.8e-6 and 6.1e-4,
  R3 5.7e-6 and 3.7e-4): outside the targets (1e-5 and 1e-4).
* "tf32x3" (the default): each operand split into two tf32 numbers, three of the four
  products kept: MI 4.3e-7, gradient 9.5e-6 (R2 9.1e-7, 6.8e-6; R3 1.6e-7, 2.9e-6).
* "ieee": fp32 multiply-adds, no tensor cores: MI 7.2e-7, gradient 1.1e-5, slower.

The interpreter (CPU) computes ``tl.dot`` in full fp32 whatever is asked: only a GPU shows
these errors.
"""

import torch
import triton
import triton.language as tl

from .utils import (
    check_inputs,
    ensure_contiguous,
    kernel_id,
    row_ranges,
    tiled_config,
    window_param,
    window_size,
)
from .window import _load_bins, _window, _window_and_grad, _window_start


@triton.jit
def _tile(b_x, o_k, K, c_k, W: tl.constexpr, KIND: tl.constexpr):
    """(P, KP) weights w(x[p] - a) of bins a = o_k, zero outside each pixel's W-bin window."""
    b_s = _window_start(b_x, K, c_k, W, KIND)
    b_in = (o_k[None, :] >= b_s[:, None]) & (o_k[None, :] < b_s[:, None] + W)
    b_w = _window(b_x[:, None] - o_k[None, :].to(tl.float32), c_k, KIND)
    return tl.where(b_in, b_w, 0.0)


@triton.jit
def _tile_and_grad(b_x, o_k, K, c_k, W: tl.constexpr, KIND: tl.constexpr):
    """(w, w') tiles (P, KP) as ``_tile``."""
    b_s = _window_start(b_x, K, c_k, W, KIND)
    b_in = (o_k[None, :] >= b_s[:, None]) & (o_k[None, :] < b_s[:, None] + W)
    b_w, b_dw = _window_and_grad(b_x[:, None] - o_k[None, :].to(tl.float32), c_k, KIND)
    return tl.where(b_in, b_w, 0.0), tl.where(b_in, b_dw, 0.0)


@triton.jit
def _block(i_blk, i_b, N, BLOCK_P: tl.constexpr):
    """(offsets (BLOCK_P,) int64 into the (B, N) inputs, in-range mask) of pixel block i_blk."""
    o_n = (tl.zeros((BLOCK_P,), dtype=tl.int64) + i_blk) * BLOCK_P + tl.arange(0, BLOCK_P)
    return i_b * N + o_n, o_n < N


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
    W_U: tl.constexpr,
    W_V: tl.constexpr,
    KIND_U: tl.constexpr,
    KIND_V: tl.constexpr,
    HAS_M: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Partial J of the pixel blocks i, i + PROGRAMS, i + 2 PROGRAMS, ... of row b.

    Grid (PROGRAMS, B), persistent: each program keeps its (KP, KP) fp32 accumulator in
    registers over all its blocks, then stores its K x K part once.
    """
    i_p = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    n_p = tl.num_programs(0)
    o_k = tl.arange(0, KP)
    b_acc = tl.zeros((KP, KP), dtype=tl.float32)
    for i_blk in range(i_p, tl.cdiv(N, BLOCK_P), n_p):
        o_x, m_n = _block(i_blk, i_b, N, BLOCK_P)
        b_u, _, _ = _load_bins(p_u, o_x, m_n, p_ru, s_ru, i_b, first, length, MAP)
        b_v, _, _ = _load_bins(p_v, o_x, m_n, p_rv, s_rv, i_b, first, length, MAP)
        if HAS_M:
            b_m = tl.load(p_m + o_x, mask=m_n, other=0.0)
        else:
            b_m = tl.where(m_n, 1.0, 0.0)
        b_a = _tile(b_u, o_k, K, c_k, W_U, KIND_U) * b_m[:, None]
        b_c = _tile(b_v, o_k, K, c_k, W_V, KIND_V)
        b_acc = tl.dot(tl.trans(b_a), b_c, b_acc, input_precision=PRECISION)
    p_o = p_out + (i_p * tl.num_programs(1) + i_b) * K * K
    m_k = o_k < K
    tl.store(p_o + o_k[:, None] * K + o_k[None, :], b_acc, mask=m_k[:, None] & m_k[None, :])


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
    W_U: tl.constexpr,
    W_V: tl.constexpr,
    KIND_U: tl.constexpr,
    KIND_V: tl.constexpr,
    HAS_M: tl.constexpr,
    NEEDS_U: tl.constexpr,
    NEEDS_V: tl.constexpr,
    NEEDS_M: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr,
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
    m_k = o_k < K
    m_g = m_k[:, None] & m_k[None, :]
    b_g = tl.load(p_g + i_b * K * K + o_k[:, None] * K + o_k[None, :], mask=m_g, other=0.0)
    for i_blk in range(i_p, tl.cdiv(N, BLOCK_P), n_p):
        o_x, m_n = _block(i_blk, i_b, N, BLOCK_P)
        b_u, c_u, k_u = _load_bins(p_u, o_x, m_n, p_ru, s_ru, i_b, first, length, MAP)
        b_v, c_v, k_v = _load_bins(p_v, o_x, m_n, p_rv, s_rv, i_b, first, length, MAP)
        b_wu, b_dwu = _tile_and_grad(b_u, o_k, K, c_k, W_U, KIND_U)
        b_wv, b_dwv = _tile_and_grad(b_v, o_k, K, c_k, W_V, KIND_V)
        if HAS_M:
            b_m = tl.load(p_m + o_x, mask=m_n, other=0.0)
        else:
            b_m = tl.where(m_n, 1.0, 0.0)
        if NEEDS_U or NEEDS_M:
            b_cg = tl.dot(b_wv, tl.trans(b_g), input_precision=PRECISION)
            if NEEDS_U:
                b_du = tl.sum(b_dwu * b_cg, axis=1) * b_m * (c_u * k_u)
                tl.store(p_du + o_x, b_du.to(p_du.dtype.element_ty), mask=m_n)
            if NEEDS_M:
                b_dm = tl.sum(b_wu * b_cg, axis=1)
                tl.store(p_dm + o_x, b_dm.to(p_dm.dtype.element_ty), mask=m_n)
        if NEEDS_V:
            b_dg = tl.dot(b_wu, b_g, input_precision=PRECISION)
            b_dv = tl.sum(b_dwv * b_dg, axis=1) * b_m * (c_v * k_v)
            tl.store(p_dv + o_x, b_dv.to(p_dv.dtype.element_ty), mask=m_n)


def _launch_args(direction, u, num_bins, sigma, kernel_u, kernel_v, ranges, rows_cols):
    K = int(num_bins)
    ku, kv = kernel_id(kernel_u), kernel_id(kernel_v)
    w_u, w_v = window_size(kernel_u, K, sigma), window_size(kernel_v, K, sigma)
    c_k = window_param(sigma, kernel_u, kernel_v)
    (r_u, s_u), (r_v, s_v) = row_ranges(ranges, u, 2)
    kp, block_p, num_warps, programs = tiled_config(direction, K, *rows_cols, u.device)
    const = dict(MAP=ranges is not None, W_U=w_u, W_V=w_v, KIND_U=ku, KIND_V=kv, KP=kp, BLOCK_P=block_p)
    return (r_u, r_v, s_u, s_v), c_k, const, num_warps, programs


@ensure_contiguous
def joint_hist_forward_tiled(
    u, v, m, num_bins, sigma, kernel_u="gaussian", kernel_v="gaussian", ranges=None, first=0.0,
    length=1.0, precision=None,
):  # fmt: skip
    """J (B, K, K) float32 as ``joint_hist.joint_hist_forward``, by the tiled kernel.

    Deterministic whatever ``deterministic`` says (a fixed partition of the pixels and a
    fixed order of the partial sums). ``precision``: ``tl.dot``'s input precision, None for
    ``utils.TILED_PRECISION``.
    """
    from .utils import TILED_PRECISION

    check_inputs(u, m, num_bins, sigma, v=v)
    B, N = u.shape
    K = int(num_bins)
    if B == 0 or N == 0:
        return torch.zeros((B, K, K), dtype=torch.float32, device=u.device)
    rng, c_k, const, num_warps, programs = _launch_args(
        "forward", u, K, sigma, kernel_u, kernel_v, ranges, (B, N)
    )
    out = torch.empty((programs, B, K, K), dtype=torch.float32, device=u.device)
    _joint_tiled_fwd_kernel[(programs, B)](
        u, v, u if m is None else m, out, *rng, N, K, c_k, float(first), float(length),
        HAS_M=m is not None, PRECISION=precision or TILED_PRECISION["forward"], num_warps=num_warps, **const,
    )  # fmt: skip
    return out[0] if programs == 1 else out.sum(0)


@ensure_contiguous
def joint_hist_backward_tiled(
    grad, u, v, m, num_bins, sigma, kernel_u="gaussian", kernel_v="gaussian", needs_u=True, needs_v=True,
    needs_m=False, ranges=None, first=0.0, length=1.0, precision=None,
):  # fmt: skip
    """(du, dv, dm) as ``joint_hist.joint_hist_backward``, by the tiled kernel."""
    from .utils import TILED_PRECISION

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
    rng, c_k, const, num_warps, programs = _launch_args(
        "backward", u, K, sigma, kernel_u, kernel_v, ranges, (B, N)
    )
    _joint_tiled_bwd_kernel[(programs, B)](
        u, v, u if m is None else m, grad,
        u if du is None else du, u if dv is None else dv, u if dm is None else dm,
        *rng, N, K, c_k, float(first), float(length), HAS_M=m is not None,
        NEEDS_U=du is not None, NEEDS_V=dv is not None, NEEDS_M=dm is not None,
        PRECISION=precision or TILED_PRECISION["backward"], num_warps=num_warps, **const,
    )  # fmt: skip
    return du, dv, dm
