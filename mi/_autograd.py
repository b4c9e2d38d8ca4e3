"""The op: soft (joint) histogram forward/backward of either backend behind one autograd op.

Two doors to the same implementation. In eager mode a plain ``torch.autograd.Function``
(the cheapest call: a custom op costs ~170 us of Python per call on a small CPU). Under
``torch.compile`` the same functions registered with ``torch.library.custom_op`` (fake
implementations, ``register_autograd``), so ``fullgraph=True`` sees one opaque node on CPU
and CUDA alike; ``torch.library.opcheck`` checks that registration. Inputs are in bin
coordinates, or raw with a range per row (below); ``backend`` is already resolved ("torch"
or "triton"). The backward is hand-written: autograd never sees a per-pixel-per-bin tensor.
"""

from typing import Optional

import torch
from torch import Tensor

from . import _torch


def _kernels():
    from . import kernels  # Triton; imported only when the triton backend is asked for

    return kernels


# ---------------------------------------------------------------- implementations
#
# Every op takes the samples either in bin coordinates (rx = ry = None) or raw, with one
# range [lo, hi] per row (rx, ry: (B, 2) or (1, 2)) that maps onto bin coordinates
# first..first + length inside the backend, chunk by chunk or in registers: the caller
# never writes a bin-coordinate copy of the images, and the gradients are with respect
# to the raw samples. The ranges are not differentiated (a binning choice).


def _ranges(*rs):
    return None if rs[0] is None else rs


def _joint_forward(
    u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic, rx, ry, first, length
):
    bins = dict(ranges=_ranges(rx, ry), first=first, length=length)
    if backend == "triton":
        return _kernels().joint_hist_forward(
            u, v, m, num_bins, sigma, kernel_u, kernel_v, deterministic=deterministic, **bins
        )
    return _torch.joint_hist_forward(u, v, m, num_bins, sigma, kernel_u, kernel_v, **bins)


def _joint_backward(
    grad, u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, rx, ry, first, length, needs_m
):
    bins = dict(ranges=_ranges(rx, ry), first=first, length=length)
    if backend == "triton":
        return _kernels().joint_hist_backward(
            u, v, m, grad.float(), num_bins, sigma, kernel_u, kernel_v, needs_m=needs_m, **bins
        )
    return _torch.joint_hist_backward(
        grad, u, v, m, num_bins, sigma, kernel_u, kernel_v, needs_m=needs_m, **bins
    )


def _hist_forward(u, m, num_bins, sigma, kernel, backend, deterministic, r, first, length):
    bins = dict(ranges=_ranges(r), first=first, length=length)
    if backend == "triton":
        return _kernels().hist_forward(u, m, num_bins, sigma, kernel, deterministic=deterministic, **bins)
    return _torch.hist_forward(u, m, num_bins, sigma, kernel, **bins)


def _hist_backward(grad, u, m, num_bins, sigma, kernel, backend, r, first, length, needs_m):
    bins = dict(ranges=_ranges(r), first=first, length=length)
    if backend == "triton":
        return _kernels().hist_backward(u, m, grad.float(), num_bins, sigma, kernel, needs_m=needs_m, **bins)
    return _torch.hist_backward(grad, u, m, num_bins, sigma, kernel, needs_m=needs_m, **bins)


# ---------------------------------------------------------------- eager: autograd.Function


class _JointHist(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic, rx, ry, first, length
    ):
        ctx.save_for_backward(u, v, m, rx, ry)
        ctx.args = (num_bins, sigma, kernel_u, kernel_v, backend)
        ctx.map = (first, length)
        return _joint_forward(
            u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic, rx, ry, first, length
        )

    @staticmethod
    def backward(ctx, grad):
        u, v, m, rx, ry = ctx.saved_tensors
        needs_m = m is not None and ctx.needs_input_grad[2]
        du, dv, dm = _joint_backward(grad, u, v, m, *ctx.args, rx, ry, *ctx.map, needs_m)
        return du, dv, dm, *[None] * 10


class _Hist(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, m, num_bins, sigma, kernel, backend, deterministic, r, first, length):
        ctx.save_for_backward(u, m, r)
        ctx.args = (num_bins, sigma, kernel, backend)
        ctx.map = (first, length)
        return _hist_forward(u, m, num_bins, sigma, kernel, backend, deterministic, r, first, length)

    @staticmethod
    def backward(ctx, grad):
        u, m, r = ctx.saved_tensors
        needs_m = m is not None and ctx.needs_input_grad[1]
        du, dm = _hist_backward(grad, u, m, *ctx.args, r, *ctx.map, needs_m)
        return du, dm, *[None] * 8


def joint_hist(
    u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic,
    rx=None, ry=None, first=0.0, length=1.0,
):  # fmt: skip
    """J[b, a, c] = sum_n m[b, n] w_u(u[b, n] - a) w_v(v[b, n] - c); u, v, m (B, N) -> (B, K, K).

    u, v in bin coordinates, or raw samples (any float dtype) with row ranges rx, ry (see
    above). J is float32 (float64 for float64 samples).
    """
    args = (u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic, rx, ry)
    args += (float(first), float(length))
    if torch.compiler.is_compiling():
        return joint_hist_op(*args)
    return _JointHist.apply(*args)


def hist(u, m, num_bins, sigma, kernel, backend, deterministic, r=None, first=0.0, length=1.0):
    """H[b, a] = sum_n m[b, n] w(u[b, n] - a); u, m (B, N) -> (B, K); r as rx above."""
    args = (u, m, num_bins, sigma, kernel, backend, deterministic, r, float(first), float(length))
    if torch.compiler.is_compiling():
        return hist_op(*args)
    return _Hist.apply(*args)


# ---------------------------------------------------------------- torch.compile: custom ops


def _acc(u):
    return torch.float64 if u.dtype == torch.float64 else torch.float32


@torch.library.custom_op("mi::joint_hist", mutates_args=())
def joint_hist_op(
    u: Tensor,
    v: Tensor,
    m: Optional[Tensor],
    num_bins: int,
    sigma: float,
    kernel_u: str,
    kernel_v: str,
    backend: str,
    deterministic: bool,
    rx: Optional[Tensor] = None,
    ry: Optional[Tensor] = None,
    first: float = 0.0,
    length: float = 1.0,
) -> Tensor:
    return _joint_forward(
        u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic, rx, ry, first, length
    )


@joint_hist_op.register_fake
def _(u, v, m, num_bins, *args):
    return u.new_empty((u.shape[0], num_bins, num_bins), dtype=_acc(u))


@torch.library.custom_op("mi::joint_hist_backward", mutates_args=())
def joint_hist_backward_op(
    grad: Tensor,
    u: Tensor,
    v: Tensor,
    m: Optional[Tensor],
    num_bins: int,
    sigma: float,
    kernel_u: str,
    kernel_v: str,
    backend: str,
    rx: Optional[Tensor],
    ry: Optional[Tensor],
    first: float,
    length: float,
    needs_m: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(du, dv, dm); dm is an empty tensor when not asked for (custom ops return tensors)."""
    du, dv, dm = _joint_backward(
        grad, u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, rx, ry, first, length, needs_m
    )
    return du, dv, u.new_empty(0) if dm is None else dm


@joint_hist_backward_op.register_fake
def _(grad, u, v, m, *args):
    needs_m = args[-1]
    dm = torch.empty_like(m) if (m is not None and needs_m) else u.new_empty(0)
    return torch.empty_like(u), torch.empty_like(v), dm


def _joint_op_setup(ctx, inputs, output):
    u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, _, rx, ry, first, length = inputs
    ctx.args = (num_bins, sigma, kernel_u, kernel_v, backend)
    ctx.map = (first, length)
    ctx.save_for_backward(u, v, m, rx, ry)


def _joint_op_backward(ctx, grad):
    u, v, m, rx, ry = ctx.saved_tensors
    needs_m = m is not None and ctx.needs_input_grad[2]
    du, dv, dm = joint_hist_backward_op(grad, u, v, m, *ctx.args, rx, ry, *ctx.map, needs_m)
    return du, dv, dm if needs_m else None, *[None] * 10


joint_hist_op.register_autograd(_joint_op_backward, setup_context=_joint_op_setup)


@torch.library.custom_op("mi::hist", mutates_args=())
def hist_op(
    u: Tensor,
    m: Optional[Tensor],
    num_bins: int,
    sigma: float,
    kernel: str,
    backend: str,
    deterministic: bool,
    r: Optional[Tensor] = None,
    first: float = 0.0,
    length: float = 1.0,
) -> Tensor:
    return _hist_forward(u, m, num_bins, sigma, kernel, backend, deterministic, r, first, length)


@hist_op.register_fake
def _(u, m, num_bins, *args):
    return u.new_empty((u.shape[0], num_bins), dtype=_acc(u))


@torch.library.custom_op("mi::hist_backward", mutates_args=())
def hist_backward_op(
    grad: Tensor,
    u: Tensor,
    m: Optional[Tensor],
    num_bins: int,
    sigma: float,
    kernel: str,
    backend: str,
    r: Optional[Tensor],
    first: float,
    length: float,
    needs_m: bool,
) -> tuple[Tensor, Tensor]:
    du, dm = _hist_backward(grad, u, m, num_bins, sigma, kernel, backend, r, first, length, needs_m)
    return du, u.new_empty(0) if dm is None else dm


@hist_backward_op.register_fake
def _(grad, u, m, *args):
    needs_m = args[-1]
    return torch.empty_like(u), torch.empty_like(m) if (m is not None and needs_m) else u.new_empty(0)


def _hist_op_setup(ctx, inputs, output):
    u, m, num_bins, sigma, kernel, backend, _, r, first, length = inputs
    ctx.args = (num_bins, sigma, kernel, backend)
    ctx.map = (first, length)
    ctx.save_for_backward(u, m, r)


def _hist_op_backward(ctx, grad):
    u, m, r = ctx.saved_tensors
    needs_m = m is not None and ctx.needs_input_grad[1]
    du, dm = hist_backward_op(grad, u, m, *ctx.args, r, *ctx.map, needs_m)
    return du, dm if needs_m else None, *[None] * 8


hist_op.register_autograd(_hist_op_backward, setup_context=_hist_op_setup)
