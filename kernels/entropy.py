"""Entropies of a joint histogram, forward and backward, each in one Triton launch.

The information math on top of the histogram is a handful of small tensors (B, K, K),
whose arithmetic is nothing on a GPU; composed of torch ops it is ~20 launches, each a few
microseconds of host time, which is what a registration loop waits for. These two kernels
do the same math (``mi.information._Entropies``, the reference) in two launches.

Conventions: ``P = J / S`` with ``S = sum J`` (1 for an all-zero J; a subnormal sum is kept,
so that P sums to 1 however small J is); marginals ``p_a = sum_c P``,
``p_b = sum_a P``; ``H(p) = -sum p log p`` with ``0 log 0 = 0``; natural log.

Precision: J is float32; everything after it is float64 (P, the logs, the sums, the score,
dL/dJ before its float32 store). MI is a difference of entropies: in float32 their rounding
(about 5e-7 nats at 32 bins) is 2e-4 to 1e-3 of the MI of a nearly independent pair (1e-3
nats); in float64 the float32 histogram's own rounding is what is left (1e-7 relative).
A distribution's largest probability above 3/4 takes its log from the sum of the others
(``_split``), so that entropies near a one-bin histogram (1e-14 nats, say) keep their
relative precision too. The K x K float64 logs cost nothing next to the histogram, also at
consumer GPUs' float64 rate.
"""

import torch
import triton
import triton.language as tl

from .utils import ensure_contiguous, on_device
from .window import _patch_interpreter_index  # noqa: F401 (run on import: Triton 3.6's interpreter)

#: The forward's tile (FWD_BLOCK x FWD_BLOCK bins, fewer for K < 64) and the backward's
#: block and warps. One program per histogram; the forward's warps: ``fwd_warps``.
FWD_BLOCK, BWD_BLOCK, BWD_WARPS = 64, 1024, 4


def fwd_warps(block):
    """The forward's warps for a (block x block) tile: block / 8 (8 at 64 bins, 4 at 32, 2 at
    16, 1 up to 8), 16 bins per thread at 64. 8 warps at every block spilled 40 bytes at 32
    bins (the loss default) under Triton 3.5 and 3.6 (80 registers), and at 8-16 bins for
    sm_80 under 3.5; this rule compiles without spills under Triton 3.4, 3.5, 3.6 and 3.9 for
    sm_80 and sm_90 (``make kernels-report``, which builds every block from 2 to 64)."""
    return max(1, block // 8)


#: What the kernels compute (their MODE is the index): the three entropies, or one score.
SCORES = ("entropies", "none", "arithmetic", "studholme")
#: A distribution's largest probability above this gets its log from the sum of the others
#: (``mi.information.TOP``).
TOP = tl.constexpr(0.75)


@triton.jit
def _neg_p_log_p(b_p):
    """-p log p elementwise, 0 where p <= 0 (log never sees a zero)."""
    b_pos = b_p > 0.0
    return tl.where(b_pos, -b_p * tl.log(tl.where(b_pos, b_p, 1.0)), 0.0)


@triton.jit
def _log1p_neg(r):
    """log(1 - r) for 0 <= r <= 1/4 to a few ulps (Goldberg's log1p: the rounding of 1 - r is
    divided out); used for a distribution's largest probability 1 - r, with r the exact sum
    of the others (``mi.information._entropies_of``)."""
    u = 1.0 - r
    return tl.where(u == 1.0, -r, tl.log(u) * (-r) / tl.where(u == 1.0, 0.5, u - 1.0))


@triton.jit
def _split(b_p, h, r, top):
    """The running (entropy but its top term, sum of the others, top) of a distribution,
    given more of its entries: its largest entry, when above ``TOP`` (at most one is, also
    after rounding: two halves may both round above 1/2), is left out of the first two
    and kept apart. Its term is ``-top log1p(-(sum of the others))`` (``_top_term``): from
    the rounded top, log keeps only about 1e-16 / (1 - top) of its precision, and near a
    one-bin histogram the entropies are of that size. Scalar sums, for the registers."""
    b_top = b_p > TOP
    h += tl.sum(tl.where(b_top, 0.0, _neg_p_log_p(b_p)))
    r += tl.sum(tl.where(b_top, 0.0, b_p))
    return h, r, tl.maximum(top, tl.max(tl.where(b_top, b_p, 0.0)))


@triton.jit
def _top_term(top, rest):
    """-top log(1 - rest): the largest probability's term (0 when none is above 3/4)."""
    return tl.where(top > 0.0, -top * _log1p_neg(tl.minimum(rest, 0.25)), 0.0)


@triton.jit
def _tile(p_jb, a0, c0, K, o_a, o_c):
    """The (BLOCK_A, BLOCK_C) tile of a K x K histogram at rows a0.., columns c0.. (0 outside),
    in float64."""
    m_t = ((a0 + o_a) < K)[:, None] & ((c0 + o_c) < K)[None, :]
    b_t = tl.load(p_jb + (a0 + o_a)[:, None] * K + (c0 + o_c)[None, :], mask=m_t, other=0.0)
    return b_t.to(tl.float64)


@triton.jit
def _score(h_a, h_b, h_ab, scale, MODE: tl.constexpr):
    """The score of the entropies (MODE: ``SCORES``), and its partial derivatives."""
    if MODE == 1:  # I = H(a) + H(b) - H(a, b), times 1 / log(base)
        return (h_a + h_b - h_ab) * scale, scale, scale, -scale
    elif MODE == 2:  # arithmetic: 2 I / (H(a) + H(b)); 0 (and no gradient) when that is 0
        d = h_a + h_b
        ok = d > 0.0
        d1 = tl.where(ok, d, 1.0)
        d_ab = tl.where(ok, 2.0 * h_ab / (d1 * d1), 0.0)
        return tl.where(ok, 2.0 * (d - h_ab) / d1, 0.0), d_ab, d_ab, tl.where(ok, -2.0 / d1, 0.0)
    else:  # studholme: (H(a) + H(b)) / H(a, b); 1 (and no gradient) when H(a, b) is 0
        ok = h_ab > 0.0
        h1 = tl.where(ok, h_ab, 1.0)
        d_ab = tl.where(ok, 1.0 / h1, 0.0)
        return tl.where(ok, (h_a + h_b) / h1, 1.0), d_ab, d_ab, tl.where(ok, -(h_a + h_b) / (h1 * h1), 0.0)


@triton.jit
def _entropies_fwd_kernel(
    p_j,  # (B, K, K) fp32
    p_h,  # (5, B) fp32 out: H(a), H(b), H(a, b), m = sum P (1, or 0 if J is all zero), score
    p_h64,  # (5, B) fp64 out: the same in float64 (for the backward)
    p_pa,  # (B, K) fp64 out: p_a
    p_pb,  # (B, K) fp64 out: p_b
    p_s,  # (B,) fp64 out: S = sum J, or 1 if it is 0
    K,
    scale,  # MODE 1: 1 / log(base)
    MODE: tl.constexpr,  # index in SCORES: 0 the entropies only, else also the score (row 4)
    BLOCK_A: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program per histogram (grid (B,)), three passes over its K x K bins.

    Pass 1 sums J (S); pass 2, column tiles outer, gives p_b and H(a, b) = -sum P log P;
    pass 3, row tiles outer, gives p_a. Each pass reads the K*K floats once (from L2
    after the first: 256 KB at K = 256); every value the program writes it never reads
    back, so no barrier is needed. Work per bin: a log and a few multiply-adds.
    """
    i_b = tl.program_id(0).to(tl.int64)
    p_jb = p_j + i_b * K * K
    o_a = tl.arange(0, BLOCK_A)
    o_c = tl.arange(0, BLOCK_C)

    b_s = tl.zeros([BLOCK_A, BLOCK_C], dtype=tl.float64)
    for a0 in range(0, K, BLOCK_A):
        for c0 in range(0, K, BLOCK_C):
            b_s += _tile(p_jb, a0, c0, K, o_a, o_c)
    tot = tl.sum(b_s)
    s = tl.where(tot > 0.0, tot, 1.0)

    # each distribution's entropy but its top term, the sum of the others, and the top (if any)
    zero = tl.full([], 0.0, tl.float64)
    h_ab, r_ab, t_ab, h_b, r_b, t_b, h_a, r_a, t_a = zero, zero, zero, zero, zero, zero, zero, zero, zero
    for c0 in range(0, K, BLOCK_C):
        m_c = (c0 + o_c) < K
        b_col = tl.zeros([BLOCK_C], dtype=tl.float64)
        for a0 in range(0, K, BLOCK_A):
            b_t = _tile(p_jb, a0, c0, K, o_a, o_c) / s
            b_col += tl.sum(b_t, axis=0)
            h_ab, r_ab, t_ab = _split(b_t, h_ab, r_ab, t_ab)
        tl.store(p_pb + i_b * K + c0 + o_c, b_col, mask=m_c)
        h_b, r_b, t_b = _split(b_col, h_b, r_b, t_b)

    b_m = tl.zeros([BLOCK_A], dtype=tl.float64)
    for a0 in range(0, K, BLOCK_A):
        m_a = (a0 + o_a) < K
        b_row = tl.zeros([BLOCK_A], dtype=tl.float64)
        for c0 in range(0, K, BLOCK_C):
            b_row += tl.sum(_tile(p_jb, a0, c0, K, o_a, o_c) / s, axis=1)
        tl.store(p_pa + i_b * K + a0 + o_a, b_row, mask=m_a)
        h_a, r_a, t_a = _split(b_row, h_a, r_a, t_a)
        b_m += b_row

    B = tl.num_programs(0)
    h_a += _top_term(t_a, r_a)
    h_b += _top_term(t_b, r_b)
    h_ab += _top_term(t_ab, r_ab)
    _store_both(p_h, p_h64, i_b, h_a)
    _store_both(p_h, p_h64, B + i_b, h_b)
    _store_both(p_h, p_h64, 2 * B + i_b, h_ab)
    _store_both(p_h, p_h64, 3 * B + i_b, tl.sum(b_m))
    if MODE != 0:
        score, _, _, _ = _score(h_a, h_b, h_ab, scale, MODE)
        _store_both(p_h, p_h64, 4 * B + i_b, score)
    tl.store(p_s + i_b, s)


@triton.jit
def _store_both(p_32, p_64, offset, value):
    """A float64 value at ``offset`` of a float64 output and, rounded, of its float32 twin."""
    tl.store(p_64 + offset, value)
    tl.store(p_32 + offset, value.to(tl.float32))


@triton.jit
def _log_term(b_p):
    """log p + 1 where p > 0, else 0: -dH/dp under the 0 log 0 = 0 convention."""
    b_pos = b_p > 0.0
    return tl.where(b_pos, tl.log(tl.where(b_pos, b_p, 1.0)) + 1.0, 0.0)


@triton.jit
def _entropies_bwd_kernel(
    p_j,  # (B, K, K) fp32
    p_pa,  # (B, K), p_pb (B, K), p_s (B,), p_h64 (5, B): the forward's float64 outputs
    p_pb,
    p_s,
    p_h64,
    p_ga,  # (B,) fp32 each, element strides s_ga, ...: dL/dH(a), dL/dH(b), dL/dH(a, b);
    p_gb,  # with MODE != 0 only p_ga is read: dL/dscore
    p_gab,
    s_ga,
    s_gb,
    s_gab,
    p_dj,  # (B, K, K) fp32 out
    K,
    scale,
    MODE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """dL/dJ[a, c] = (C - t[a, c]) / S, elementwise; grid (cdiv(K*K, BLOCK), B).

    t[a, c] = g_ab (log P + 1) + g_a (log p_a[a] + 1) + g_b (log p_b[c] + 1), each term 0
    where its probability is 0 (the subgradient of 0 log 0 = 0), is -dL/dP; the chain rule
    through P = J / S adds C = sum P t = g_ab (m - H(a, b)) + g_a (m - H(a)) + g_b (m - H(b))
    with m = sum P (1, or 0 for an all-zero histogram, from the forward), so C needs no
    reduction here.
    """
    i_b = tl.program_id(1).to(tl.int64)
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m_o = o < K * K
    o_a = o // K
    o_c = o % K
    s = tl.load(p_s + i_b)
    B = tl.num_programs(1)
    h_a = tl.load(p_h64 + i_b)
    h_b = tl.load(p_h64 + B + i_b)
    h_ab = tl.load(p_h64 + 2 * B + i_b)
    mass = tl.load(p_h64 + 3 * B + i_b)
    if MODE == 0:
        g_a = tl.load(p_ga + i_b * s_ga).to(tl.float64)
        g_b = tl.load(p_gb + i_b * s_gb).to(tl.float64)
        g_ab = tl.load(p_gab + i_b * s_gab).to(tl.float64)
    else:  # the chain rule through the score
        g = tl.load(p_ga + i_b * s_ga).to(tl.float64)
        _, d_a, d_b, d_ab = _score(h_a, h_b, h_ab, scale, MODE)
        g_a, g_b, g_ab = g * d_a, g * d_b, g * d_ab
    b_j = tl.load(p_j + i_b * K * K + o, mask=m_o, other=0.0).to(tl.float64)
    b_pa = tl.load(p_pa + i_b * K + o_a, mask=m_o, other=0.0)
    b_pb = tl.load(p_pb + i_b * K + o_c, mask=m_o, other=0.0)
    b_t = g_ab * _log_term(b_j / s) + g_a * _log_term(b_pa) + g_b * _log_term(b_pb)
    c = g_ab * (mass - h_ab) + g_a * (mass - h_a) + g_b * (mass - h_b)
    tl.store(p_dj + i_b * K * K + o, ((c - b_t) / s).to(tl.float32), mask=m_o)


def _check(joint):
    if joint.dtype != torch.float32 or joint.dim() != 3 or joint.shape[1] != joint.shape[2]:
        raise ValueError(f"joint must be float32 of shape (B, K, K), got {joint.dtype} {tuple(joint.shape)}")


def _mode(score):
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    return SCORES.index(score)


@ensure_contiguous
def entropies_forward(joint, score="entropies", scale=1.0):
    """(h (5, B) float32; p_a (B, K), p_b (B, K), S (B,), h64 (5, B), float64) of J (B, K, K)
    float32.

    h rows: H(a), H(b), H(a, b) in nats; sum P (1 to rounding, or 0 for an all-zero J);
    the ``score`` (one of ``SCORES`` but "entropies": mutual information times ``scale``,
    e.g. 1 / log(base), or a normalised MI as in ``mi.information``), unset for
    "entropies". S = sum J, or 1 if it is 0. h64 is h before its rounding to float32. The
    last four are what ``entropies_backward`` needs.
    """
    _check(joint)
    mode = _mode(score)
    B, K, _ = joint.shape
    f64 = dict(dtype=torch.float64, device=joint.device)
    h = torch.empty((5, B), dtype=torch.float32, device=joint.device)
    h64 = torch.empty((5, B), **f64)
    pa, pb, s = torch.empty((B, K), **f64), torch.empty((B, K), **f64), torch.empty((B,), **f64)
    if B:
        block = min(FWD_BLOCK, triton.next_power_of_2(K))
        _entropies_fwd_kernel[(B,)](
            joint, h, h64, pa, pb, s, K, float(scale), MODE=mode, BLOCK_A=block, BLOCK_C=block,
            num_warps=fwd_warps(block),
        )  # fmt: skip
    return h, pa, pb, s, h64


def entropies_backward(joint, pa, pb, s, h64, grads, score="entropies", scale=1.0):
    """dL/dJ (B, K, K) float32 from the forward's outputs and ``grads``: (dL/dH(a), dL/dH(b),
    dL/dH(a, b)) for "entropies", else (dL/dscore,); each (B,), any strides (autograd often
    hands over an expanded scalar, which ``ensure_contiguous`` would copy: the kernel reads
    it by stride instead). Elementwise: no reduction, no atomics."""
    _check(joint)
    mode = _mode(score)
    B, K, _ = joint.shape
    joint, pa, pb, s, h64 = (t.contiguous() for t in (joint, pa, pb, s, h64))
    g = [t.to(torch.float32) for t in grads]
    g = g * 3 if len(g) == 1 else g
    dj = torch.empty_like(joint)
    if B and K:
        with on_device(joint):
            _entropies_bwd_kernel[(triton.cdiv(K * K, BWD_BLOCK), B)](
                joint, pa, pb, s, h64, *g, *(t.stride(0) for t in g), dj, K, float(scale), MODE=mode,
                BLOCK=BWD_BLOCK, num_warps=BWD_WARPS,
            )  # fmt: skip
    return dj
