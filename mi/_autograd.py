"""The op: soft (joint) histogram forward/backward of either backend behind one autograd op.

Two doors to the same implementation. In eager mode a plain ``torch.autograd.Function``
(the cheapest call: a custom op costs ~170 us of Python per call on a small CPU). Under
``torch.compile`` the same functions registered with ``torch.library.custom_op`` (fake
implementations, ``register_autograd``), so ``fullgraph=True`` sees one opaque node on CPU
and CUDA alike; ``torch.library.opcheck`` checks that registration. Inputs are in bin
coordinates; ``backend`` is already resolved ("torch" or "triton"). The backward is
hand-written: autograd never sees a per-pixel-per-bin tensor.
"""

from typing import Optional

import torch
from torch import Tensor

from . import _torch


def _kernels():
    from . import kernels  # Triton; imported only when the triton backend is asked for

    return kernels


# ---------------------------------------------------------------- implementations


def _joint_forward(u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic):
    if backend == "triton":
        return _kernels().joint_hist_forward(
            u, v, m, num_bins, sigma, kernel_u, kernel_v, deterministic=deterministic
        )
    return _torch.joint_hist_forward(u, v, m, num_bins, sigma, kernel_u, kernel_v)


def _joint_backward(grad, u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, needs_m):
    if backend == "triton":
        return _kernels().joint_hist_backward(
            u, v, m, grad.float(), num_bins, sigma, kernel_u, kernel_v, needs_m=needs_m
        )
    return _torch.joint_hist_backward(grad, u, v, m, num_bins, sigma, kernel_u, kernel_v, needs_m=needs_m)


def _hist_forward(u, m, num_bins, sigma, kernel, backend, deterministic):
    if backend == "triton":
        return _kernels().hist_forward(u, m, num_bins, sigma, kernel, deterministic=deterministic)
    return _torch.hist_forward(u, m, num_bins, sigma, kernel)


def _hist_backward(grad, u, m, num_bins, sigma, kernel, backend, needs_m):
    if backend == "triton":
        return _kernels().hist_backward(u, m, grad.float(), num_bins, sigma, kernel, needs_m=needs_m)
    return _torch.hist_backward(grad, u, m, num_bins, sigma, kernel, needs_m=needs_m)


# ---------------------------------------------------------------- eager: autograd.Function


class _JointHist(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic):
        ctx.save_for_backward(u, v, m)
        ctx.args = (num_bins, sigma, kernel_u, kernel_v, backend)
        return _joint_forward(u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic)

    @staticmethod
    def backward(ctx, grad):
        u, v, m = ctx.saved_tensors
        needs_m = m is not None and ctx.needs_input_grad[2]
        du, dv, dm = _joint_backward(grad, u, v, m, *ctx.args, needs_m)
        return du, dv, dm, None, None, None, None, None, None


class _Hist(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, m, num_bins, sigma, kernel, backend, deterministic):
        ctx.save_for_backward(u, m)
        ctx.args = (num_bins, sigma, kernel, backend)
        return _hist_forward(u, m, num_bins, sigma, kernel, backend, deterministic)

    @staticmethod
    def backward(ctx, grad):
        u, m = ctx.saved_tensors
        needs_m = m is not None and ctx.needs_input_grad[1]
        du, dm = _hist_backward(grad, u, m, *ctx.args, needs_m)
        return du, dm, None, None, None, None, None


def joint_hist(u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic):
    """J[b, a, c] = sum_n m[b, n] w_u(u[b, n] - a) w_v(v[b, n] - c); u, v, m (B, N) -> (B, K, K)."""
    if torch.compiler.is_compiling():
        return joint_hist_op(u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic)
    return _JointHist.apply(u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic)


def hist(u, m, num_bins, sigma, kernel, backend, deterministic):
    """H[b, a] = sum_n m[b, n] w(u[b, n] - a); u, m (B, N) -> (B, K)."""
    if torch.compiler.is_compiling():
        return hist_op(u, m, num_bins, sigma, kernel, backend, deterministic)
    return _Hist.apply(u, m, num_bins, sigma, kernel, backend, deterministic)


# ---------------------------------------------------------------- torch.compile: custom ops


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
) -> Tensor:
    return _joint_forward(u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic)


@joint_hist_op.register_fake
def _(u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic):
    return u.new_empty((u.shape[0], num_bins, num_bins))


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
    needs_m: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(du, dv, dm); dm is an empty tensor when not asked for (custom ops return tensors)."""
    du, dv, dm = _joint_backward(grad, u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, needs_m)
    return du, dv, u.new_empty(0) if dm is None else dm


@joint_hist_backward_op.register_fake
def _(grad, u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, needs_m):
    dm = torch.empty_like(m) if (m is not None and needs_m) else u.new_empty(0)
    return torch.empty_like(u), torch.empty_like(v), dm


def _joint_op_setup(ctx, inputs, output):
    u, v, m, ctx.num_bins, ctx.sigma, ctx.kernel_u, ctx.kernel_v, ctx.backend, _ = inputs
    ctx.save_for_backward(u, v, m)


def _joint_op_backward(ctx, grad):
    u, v, m = ctx.saved_tensors
    needs_m = m is not None and ctx.needs_input_grad[2]
    du, dv, dm = joint_hist_backward_op(
        grad, u, v, m, ctx.num_bins, ctx.sigma, ctx.kernel_u, ctx.kernel_v, ctx.backend, needs_m
    )
    return du, dv, dm if needs_m else None, None, None, None, None, None, None


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
) -> Tensor:
    return _hist_forward(u, m, num_bins, sigma, kernel, backend, deterministic)


@hist_op.register_fake
def _(u, m, num_bins, sigma, kernel, backend, deterministic):
    return u.new_empty((u.shape[0], num_bins))


@torch.library.custom_op("mi::hist_backward", mutates_args=())
def hist_backward_op(
    grad: Tensor,
    u: Tensor,
    m: Optional[Tensor],
    num_bins: int,
    sigma: float,
    kernel: str,
    backend: str,
    needs_m: bool,
) -> tuple[Tensor, Tensor]:
    du, dm = _hist_backward(grad, u, m, num_bins, sigma, kernel, backend, needs_m)
    return du, u.new_empty(0) if dm is None else dm


@hist_backward_op.register_fake
def _(grad, u, m, num_bins, sigma, kernel, backend, needs_m):
    return torch.empty_like(u), torch.empty_like(m) if (m is not None and needs_m) else u.new_empty(0)


def _hist_op_setup(ctx, inputs, output):
    u, m, ctx.num_bins, ctx.sigma, ctx.kernel, ctx.backend, _ = inputs
    ctx.save_for_backward(u, m)


def _hist_op_backward(ctx, grad):
    u, m = ctx.saved_tensors
    needs_m = m is not None and ctx.needs_input_grad[1]
    du, dm = hist_backward_op(grad, u, m, ctx.num_bins, ctx.sigma, ctx.kernel, ctx.backend, needs_m)
    return du, dm if needs_m else None, None, None, None, None, None


hist_op.register_autograd(_hist_op_backward, setup_context=_hist_op_setup)
