"""Per-axis window functions shared by the histogram kernels (Triton device functions).

Window kinds are ``tl.constexpr`` ints (see ``utils.KERNEL_IDS``): 0 gaussian, 1 cubic
B-spline, 2 box, and the compatibility kinds of ``mi.compat`` (``mi._torch.KERNELS``): 3 xu,
4 tgauss, 5 rect (kornia's, radius R) and 6 nearest (MONAI's box, ties split). ``c_k`` is
the window's parameter: 1 / (2 sigma^2) for the gaussian, the radius R for 3-5, unused
by the others (``utils.window_param``).
"""

import triton
import triton.language as tl

from .utils import GAUSSIAN_TRUNCATION


def _patch_interpreter_index():
    """Let Triton 3.6's interpreter (``TRITON_INTERPRET=1``; torch 2.10-2.11 pin it) run these
    kernels under NumPy >= 2.4: it reads a scalar such as ``tl.program_id(0)`` in a Python
    ``range`` as ``int(array of shape (1,))``, which NumPy 2.4 refuses ("only 0-dimensional
    arrays can be converted to Python scalars"; every persistent kernel's loop failed). Its
    per-launch patch of ``tl.tensor.__index__`` is followed by the ``squeeze`` that Triton
    3.9's interpreter has. A no-op where the interpreter already squeezes or is laid out
    differently; compiled kernels never see it."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "_squeezes", False):
        return
    try:
        import inspect

        if "squeeze" in inspect.getsource(patch):
            return
    except (OSError, TypeError):
        return

    def patched(tensor, *args, **kwargs):
        patch(tensor, *args, **kwargs)
        index = lambda self: int(self.handle.data.squeeze())
        scope = args[0] if args else kwargs.get("scope")
        if hasattr(scope, "set_attr"):  # 3.6: undone after the launch, with the rest
            scope.set_attr(tensor, "__index__", index)
        else:  # earlier: set for good
            tensor.__index__ = index

    patched._squeezes = True
    interpreter._patch_lang_tensor = patched


_patch_interpreter_index()

#: r^2 c_k at the Gaussian's support radius r = GAUSSIAN_TRUNCATION sigma (c_k = 1 / (2 sigma^2)):
#: 24 ln 2, the exponent where the window is 2**-24 of its peak.
_GAUSS_R2_CK = tl.constexpr(GAUSSIAN_TRUNCATION**2 / 2.0)


@triton.jit
def _pixel_block(N, BLOCK_N: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N), B): (block index, row b, offsets (BLOCK_N,) into the (B, N)
    inputs, in-range mask). int64 before multiplying: a volume batch passes 2**31 elements."""
    i_n = tl.program_id(0).to(tl.int64)
    i_b = tl.program_id(1).to(tl.int64)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return i_n, i_b, i_b * N + o_n, o_n < N


@triton.jit
def _load_bins(p_x, o_x, m_n, p_r, s_r, i_b, first, length, MAP: tl.constexpr):
    """(bin coordinates u (BLOCK_N,) fp32, c, s) of a block of samples x; du/dx = c s.

    Without MAP, x already is in bin coordinates (c = s = 1). With MAP, row i_b's range
    lo = p_r[i_b * s_r], hi = p_r[i_b * s_r + 1] maps onto first..first + length:
    u = (x s - lo s) c + first, where s = 2**-e is the power of two that brings
    max(|lo|, |hi|) into [0.5, 1) (e from the float's exponent bits, clamped so that s is a
    normal float) and c = length / (hi s - lo s), or 1 / s for a constant row (hi == lo
    lands on ``first``). Scaling by s is exact, and it keeps every step finite and
    accurate for ranges near the float32 limit (3e38) and for subnormal ones (1e-40).
    The same formula as the torch backend's ``mi._torch.bin_maps``. s_r = 0 shares one
    range among all rows. The samples are read in their own dtype (fp16/bf16/fp32) and
    converted in registers: no bin-coordinate copy of the inputs is ever written.
    """
    b_x = tl.load(p_x + o_x, mask=m_n, other=0.0).to(tl.float32)
    if MAP:
        lo = tl.load(p_r + i_b * s_r).to(tl.float32)
        hi = tl.load(p_r + i_b * s_r + 1).to(tl.float32)
        big = tl.maximum(tl.abs(lo), tl.abs(hi))
        e_big = (big.to(tl.int32, bitcast=True) >> 23) & 0xFF  # biased exponent E: e = E - 126
        s = (tl.minimum(tl.maximum(253 - e_big, 1), 253) << 23).to(tl.float32, bitcast=True)
        lo_s = lo * s
        span = hi * s - lo_s
        c = tl.where(span > 0.0, length / tl.where(span > 0.0, span, 1.0), 1.0 / s)
        return (b_x * s - lo_s) * c + first, c, s
    else:
        return b_x, 1.0, 1.0


@triton.jit
def _window_start(b_x, K, c_k, W: tl.constexpr, KIND: tl.constexpr):
    """First bin s = clamp(floor(x - r) + 1, 0, K - W) of each pixel's W-bin window.

    r is the window's support radius: sqrt(48 ln 2) sigma for the gaussian (where it falls
    below 2**-24 of its peak; sigma from c_k = 1 / (2 sigma^2)), 2 for the cubic B-spline,
    1/2 for the box, R + 1/2 for xu, tgauss and rect (a margin around their closed support
    |d| <= R), 1 for nearest (the two bins around a tie). The bins with |x - a| < r are the
    ceil(2 r) = W integers from floor(x - r) + 1 on (``utils.window_size``). x is clamped to
    [-W-1, K+W+1] first so that huge values cannot overflow the integer conversion; the
    start is clamped again as an integer, so no bin index is ever outside [0, K) (even for
    NaN, whose conversion is unspecified). Weights are computed from the real x, so a
    far-away pixel gets weight 0 in every bin of its (edge) window. A one-bin window (W = 1:
    the box, a Gaussian below sigma 0.087) is the nearest bin, floor(x + 1/2), as the torch
    backend's ``window_start``.
    """
    if KIND == 0:
        # 24 ln 2 / c_k = 48 ln 2 sigma^2; capped (a window wider than every bin starts at 0
        # either way) so that b_c - r stays finite where c_k underflows (sigma near 2**64)
        r = tl.minimum(tl.sqrt(_GAUSS_R2_CK / c_k), K + 2.0 * W + 2.0)
    elif KIND == 1:
        r = 2.0
    elif KIND == 3 or KIND == 4 or KIND == 5:
        r = c_k + 0.5
    elif KIND == 6:
        r = 1.0
    else:
        r = 0.5
    b_c = tl.minimum(tl.maximum(b_x, -W - 1.0), K + W + 1.0)
    if W == 1:  # the nearest bin (r <= 1/2: where no bin lies within r, the heavier one)
        b_s = tl.floor(b_c + 0.5).to(tl.int32)
    else:
        b_s = tl.floor(b_c - r).to(tl.int32) + 1
    return tl.minimum(tl.maximum(b_s, 0), K - W)


@triton.jit
def _window(b_d, c_k, KIND: tl.constexpr):
    """w(d) of the distance d (bin widths) of a sample from a bin centre (the derivative that
    ``_window_and_grad`` also computes is dead code here, removed by the compiler)."""
    b_w, _ = _window_and_grad(b_d, c_k, KIND)
    return b_w


@triton.jit
def _window_and_grad(b_d, c_k, KIND: tl.constexpr):
    """(w(d), w'(d)); the flat windows' derivative (box, rect, nearest) is 0. Both are 0,
    never NaN, for |d| = inf (a sample mapped beyond the float range). The same formulas as
    the torch backend's ``_weights``."""
    if KIND == 0:
        # Beyond 40 sigma the Gaussian underflows to exactly 0: clamping there changes no weight
        # and keeps d w finite for a sample at +-inf (as the torch backend's _weights).
        d_max = 40.0 * tl.sqrt(0.5 / c_k)
        b_d = tl.minimum(tl.maximum(b_d, -d_max), d_max)
        b_w = tl.exp(-(b_d * b_d) * c_k)
        b_dw = -2.0 * c_k * b_d * b_w
    elif KIND == 1:
        b_d = tl.minimum(tl.maximum(b_d, -3.0), 3.0)  # beyond the support every term is 0
        b_a = tl.abs(b_d)
        b_t = 2.0 - b_a
        b_w = tl.where(
            b_a < 1.0,
            2.0 / 3.0 - b_a * b_a + 0.5 * b_a * b_a * b_a,
            tl.where(b_a < 2.0, b_t * b_t * b_t * (1.0 / 6.0), 0.0),
        )
        b_sign = tl.where(b_d < 0.0, -1.0, 1.0)
        b_dw = tl.where(
            b_a < 1.0,
            b_d * (1.5 * b_a - 2.0),
            tl.where(b_a < 2.0, -0.5 * b_t * b_t * b_sign, 0.0),
        )
    elif KIND == 3:  # xu (kornia): a = |d| (1 / R), the polynomials in Horner form
        inv = 1.0 / c_k
        b_d = tl.minimum(tl.maximum(b_d, -2.0 * c_k), 2.0 * c_k)
        b_a = tl.abs(b_d) * inv
        b_in = b_a < 0.5
        b_out = b_a <= 1.0
        b_w = tl.where(
            b_in, b_a * (-1.8 * b_a - 0.1) + 1.0, tl.where(b_out, b_a * (1.8 * b_a - 3.7) + 1.9, 0.0)
        )
        b_sign = tl.where(b_d < 0.0, -1.0, tl.where(b_d > 0.0, 1.0, 0.0))
        b_dw = tl.where(b_in, -3.6 * b_a - 0.1, tl.where(b_out, 3.6 * b_a - 3.7, 0.0)) * b_sign * inv
    elif KIND == 4:  # tgauss (kornia): exp(-d^2 / (2 R^2)) on |d| <= R, peak 1
        b_d = tl.minimum(tl.maximum(b_d, -2.0 * c_k - 1.0), 2.0 * c_k + 1.0)
        b_t = b_d / c_k
        b_w = tl.where(tl.abs(b_d) <= c_k, tl.exp(-0.5 * (b_t * b_t)), 0.0)
        b_dw = -b_t / c_k * b_w
    elif KIND == 5:  # rect (kornia): 1 on |d| <= R
        b_w = tl.where(tl.abs(b_d) <= c_k, 1.0, 0.0)
        b_dw = tl.zeros_like(b_d)
    elif KIND == 6:  # nearest (MONAI's box): a tie at |d| = 1/2 gives each bin 1/2
        b_a = tl.abs(b_d)
        b_w = tl.where(b_a < 0.5, 1.0, tl.where(b_a == 0.5, 0.5, 0.0))
        b_dw = tl.zeros_like(b_d)
    else:
        b_w = tl.where((b_d >= -0.5) & (b_d < 0.5), 1.0, 0.0)
        b_dw = tl.zeros_like(b_d)
    return b_w, b_dw
