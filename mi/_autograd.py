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
    grad, u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, rx, ry, first, length, needs_m,
    needs_u=True, needs_v=True,
):  # fmt: skip
    bins = dict(ranges=_ranges(rx, ry), first=first, length=length)
    if backend == "triton":  # skips what is not needed (a fixed image's gradient, in registration)
        return _kernels().joint_hist_backward(
            u, v, m, grad.float(), num_bins, sigma, kernel_u, kernel_v, needs_u=needs_u, needs_v=needs_v,
            needs_m=needs_m, **bins,
        )  # fmt: skip
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
#
# Written in the setup_context style with a vmap rule, so that torch.func transforms (grad,
# vmap, jacrev, per-sample gradients) work. The backward is itself an autograd.Function
# whose backward (the op's second derivative) is exact: computed by the torch backend, on
# either backend's tensors; a third derivative is refused (``_ThirdDerivative``). Autocast is
# off inside: the op accumulates in float32/float64 whatever the surrounding region asks.


def fast_apply(fn):
    """Class decorator for a setup_context-style Function: ``fn.call(*args)`` is
    ``fn.apply(*args)``, but outside torch.func transforms it goes through an old-style twin
    with the same forward, setup_context and backward. torch binds a setup_context
    Function's arguments with ``inspect.signature`` on every apply (20-80 us of host time,
    more with more arguments); the twin skips that, and torch.func (and torch.compile, which
    traces Functions) still get ``fn``."""

    class Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            out = fn.forward(*args)
            fn.setup_context(ctx, args, out)
            return out

        @staticmethod
        def backward(ctx, *grads):
            return fn.backward(ctx, *grads)

    Eager.__name__ = Eager.__qualname__ = f"{fn.__name__}Eager"

    def call(*args):
        if torch.compiler.is_compiling() or torch._C._functorch.get_interpreter_stack():
            return fn.apply(*args)
        return Eager.apply(*args)

    fn.call = staticmethod(call)
    return fn


def _no_autocast(t):
    return torch.autocast(t.device.type, enabled=False)


def _fold(t, dim, size):
    """A vmapped tensor (its vmapped dim at ``dim``, None: not mapped) with that dim merged
    into its rows: logical (R, ...) -> (size * R, ...). None stays None."""
    if t is None:
        return None
    t = t.unsqueeze(0).expand(size, *t.shape) if dim is None else t.movedim(dim, 0)
    return t.reshape(size * t.shape[1], *t.shape[2:])


def _fold_range(r, dim, size, rows):
    """A row range (1, 2) or (R, 2), maybe vmapped, as the op's (1, 2) (shared, not mapped)
    or (size * R, 2)."""
    if r is None or (dim is None and r.shape[0] == 1):
        return r
    r = r.unsqueeze(0) if dim is None else r.movedim(dim, 0)
    return r.expand(size, rows, 2).reshape(size * rows, 2)


def _unfold(t, size):
    return None if t is None else t.reshape(size, t.shape[0] // size, *t.shape[1:])


@fast_apply
class _ThirdDerivative(torch.autograd.Function):
    """The identity on a second derivative, whose own backward refuses to go further."""

    @staticmethod
    def forward(out, *inputs):
        return out.view_as(out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "mi: third derivatives of the histogram op are not implemented (its second derivative "
            "is exact; differentiating it once more is refused rather than silently wrong)"
        )


def _no_third_derivative(out, *inputs):
    """The second derivatives ``out``, tied (under create_graph) to every input that needs a
    gradient by ``_ThirdDerivative``: a further backward raises instead of missing terms."""
    deps = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    if not (torch.is_grad_enabled() and deps):
        return out
    return tuple(None if t is None else _ThirdDerivative.call(t, *deps) for t in out)


@fast_apply
class _JointHist(torch.autograd.Function):
    @staticmethod
    def forward(u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic, rx, ry, first, length):
        with _no_autocast(u):
            return _joint_forward(
                u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, deterministic, rx, ry, first, length
            )

    @staticmethod
    def setup_context(ctx, inputs, output):
        u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, _, rx, ry, first, length = inputs
        ctx.save_for_backward(u, v, m, rx, ry)
        ctx.spec = (num_bins, sigma, kernel_u, kernel_v, backend, first, length)

    @staticmethod
    def backward(ctx, grad):
        u, v, m, rx, ry = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        du, dv, dm = _JointHistBackward.call(grad, u, v, m, rx, ry, *ctx.spec, *needs)
        return du, dv, dm, *[None] * 10

    @staticmethod
    def vmap(
        info, in_dims, u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, det, rx, ry, first, length
    ):
        n = info.batch_size
        u, v, m = (_fold(t, d, n) for t, d in zip((u, v, m), in_dims[:3]))
        rows = u.shape[0] // n
        rx, ry = (_fold_range(r, d, n, rows) for r, d in zip((rx, ry), in_dims[9:11]))
        j = _JointHist.apply(
            u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, det, rx, ry, first, length
        )
        return _unfold(j, n), 0


@fast_apply
class _JointHistBackward(torch.autograd.Function):
    """(du, dv, dm) from grad = dL/dJ, each None where not needed; differentiable once more."""

    @staticmethod
    def forward(grad, u, v, m, rx, ry, num_bins, sigma, kernel_u, kernel_v, backend, first, length,
                needs_u, needs_v, needs_m):  # fmt: skip
        with _no_autocast(u):
            du, dv, dm = _joint_backward(
                grad, u, v, m, num_bins, sigma, kernel_u, kernel_v, backend, rx, ry, first, length,
                m is not None and needs_m, needs_u, needs_v,
            )  # fmt: skip
        return du if needs_u else None, dv if needs_v else None, dm

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, u, v, m, rx, ry, num_bins, sigma, kernel_u, kernel_v, *_ = inputs
        ctx.save_for_backward(grad, u, v, m, rx, ry)
        ctx.spec = (num_bins, sigma, kernel_u, kernel_v)
        ctx.map = inputs[11:13]

    @staticmethod
    def backward(ctx, hu, hv, hm):
        grad, u, v, m, rx, ry = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        with _no_autocast(u), torch.no_grad():
            out = _torch.joint_hist_double_backward(
                hu, hv, hm, grad, u, v, m, *ctx.spec, needs, _ranges(rx, ry), *ctx.map
            )  # fmt: skip
        return *_no_third_derivative(out, grad, u, v, m, hu, hv, hm), *[None] * 12

    @staticmethod
    def vmap(info, in_dims, grad, u, v, m, rx, ry, *rest):
        n = info.batch_size
        grad, u, v, m = (_fold(t, d, n) for t, d in zip((grad, u, v, m), in_dims[:4]))
        rows = u.shape[0] // n
        rx, ry = (_fold_range(r, d, n, rows) for r, d in zip((rx, ry), in_dims[4:6]))
        out = _JointHistBackward.apply(grad, u, v, m, rx, ry, *rest)
        return tuple(_unfold(t, n) for t in out), tuple(None if t is None else 0 for t in out)


@fast_apply
class _Hist(torch.autograd.Function):
    @staticmethod
    def forward(u, m, num_bins, sigma, kernel, backend, deterministic, r, first, length):
        with _no_autocast(u):
            return _hist_forward(u, m, num_bins, sigma, kernel, backend, deterministic, r, first, length)

    @staticmethod
    def setup_context(ctx, inputs, output):
        u, m, num_bins, sigma, kernel, backend, _, r, first, length = inputs
        ctx.save_for_backward(u, m, r)
        ctx.spec = (num_bins, sigma, kernel, backend, first, length)

    @staticmethod
    def backward(ctx, grad):
        u, m, r = ctx.saved_tensors
        du, dm = _HistBackward.call(grad, u, m, r, *ctx.spec, *ctx.needs_input_grad[:2])
        return du, dm, *[None] * 8

    @staticmethod
    def vmap(info, in_dims, u, m, num_bins, sigma, kernel, backend, det, r, first, length):
        n = info.batch_size
        u, m = (_fold(t, d, n) for t, d in zip((u, m), in_dims[:2]))
        r = _fold_range(r, in_dims[7], n, u.shape[0] // n)
        return _unfold(_Hist.apply(u, m, num_bins, sigma, kernel, backend, det, r, first, length), n), 0


@fast_apply
class _HistBackward(torch.autograd.Function):
    """(du, dm) from grad = dL/dH, each None where not needed; differentiable once more."""

    @staticmethod
    def forward(grad, u, m, r, num_bins, sigma, kernel, backend, first, length, needs_u, needs_m):
        with _no_autocast(u):
            du, dm = _hist_backward(
                grad, u, m, num_bins, sigma, kernel, backend, r, first, length, m is not None and needs_m
            )
        return du if needs_u else None, dm

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, u, m, r, num_bins, sigma, kernel, _, first, length, *_ = inputs
        ctx.save_for_backward(grad, u, m, r)
        ctx.spec = (num_bins, sigma, kernel)
        ctx.map = (first, length)

    @staticmethod
    def backward(ctx, hu, hm):
        grad, u, m, r = ctx.saved_tensors
        with _no_autocast(u), torch.no_grad():
            out = _torch.hist_double_backward(
                hu, hm, grad, u, m, *ctx.spec, ctx.needs_input_grad[:3], _ranges(r), *ctx.map
            )
        return *_no_third_derivative(out, grad, u, m, hu, hm), *[None] * 9

    @staticmethod
    def vmap(info, in_dims, grad, u, m, r, *rest):
        n = info.batch_size
        grad, u, m = (_fold(t, d, n) for t, d in zip((grad, u, m), in_dims[:3]))
        r = _fold_range(r, in_dims[3], n, u.shape[0] // n)
        out = _HistBackward.apply(grad, u, m, r, *rest)
        return tuple(_unfold(t, n) for t in out), tuple(None if t is None else 0 for t in out)


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
    return _JointHist.call(*args)


def hist(u, m, num_bins, sigma, kernel, backend, deterministic, r=None, first=0.0, length=1.0):
    """H[b, a] = sum_n m[b, n] w(u[b, n] - a); u, m (B, N) -> (B, K); r as rx above."""
    args = (u, m, num_bins, sigma, kernel, backend, deterministic, r, float(first), float(length))
    if torch.compiler.is_compiling():
        return hist_op(*args)
    return _Hist.call(*args)


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
