"""The op: soft (joint) histogram forward/backward of either backend behind one autograd op.

Two doors to the same implementation. In eager mode a plain ``torch.autograd.Function``
(the cheapest call: a custom op costs ~170 us of Python per call on a small CPU). Under
``torch.compile`` the same functions registered with ``torch.library.custom_op`` (fake
implementations, ``register_autograd``), so ``fullgraph=True`` sees one opaque node on CPU
and CUDA alike; ``torch.library.opcheck`` checks that registration. Inputs are in bin
coordinates, or raw with a range per row (below). What the op does with them (bins, windows,
backend, determinism, where raw samples land) is one frozen ``Binning``, from the public
functions to the two backends, whose functions have the same signatures; only the custom
ops' schema spells it out. The backward is hand-written: autograd never sees a
per-pixel-per-bin tensor.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from . import _torch


def _kernels():
    from . import kernels  # Triton; imported only when the triton backend is asked for

    return kernels


# ---------------------------------------------------------------- the op's contract


@dataclass(frozen=True)
class Binning:
    """How the op turns samples into a soft histogram: one record from the public functions to
    both backends (flattened only in the ``torch.compile`` custom ops' schema).

    Attributes:
        num_bins: K bins per axis, centres at bin coordinates 0..K-1.
        sigma: the window's width in bin widths: the Gaussian's standard deviation, the radius
            R of kornia's windows ("xu", "tgauss", "rect"); unused by the others.
        kernels: the window kind of each axis (``_torch.KERNELS``): one for ``hist``, two
            (u's, v's) for ``joint_hist``.
        backend: "torch" or "triton" (resolved).
        deterministic: bitwise-reproducible sums (the torch backend always is; Triton: integer
            fixed point, or the tiled path where it runs).
        first, length: where raw samples land: each row's range [lo, hi] maps onto bin
            coordinates first..first + length (used when the op is given ranges).
    """

    num_bins: int
    sigma: float
    kernels: tuple
    backend: str = "torch"
    deterministic: bool = False
    first: float = 0.0
    length: float = 1.0

    def __post_init__(self):
        put = object.__setattr__
        put(self, "num_bins", int(self.num_bins))
        put(self, "sigma", float(self.sigma))
        put(self, "kernels", tuple(self.kernels))
        put(self, "deterministic", bool(self.deterministic))
        put(self, "first", float(self.first))
        put(self, "length", float(self.length))
        if len(self.kernels) not in (1, 2) or any(k not in _torch.KERNELS for k in self.kernels):
            raise ValueError(f"kernels must be one or two of {_torch.KERNELS}, got {self.kernels!r}")
        if self.backend not in ("torch", "triton"):
            raise ValueError(f"backend must be 'torch' or 'triton' (resolved), got {self.backend!r}")

    def window(self, axis: int = 0) -> int:
        """W: the consecutive bins one sample touches along ``axis`` (``_torch.window_size``,
        which the Triton launchers use too)."""
        return _torch.window_size(self.kernels[axis], self.sigma, self.num_bins)

    def backend_args(self) -> tuple:
        """The positional arguments both backends' functions take after the tensors."""
        return (self.num_bins, self.sigma, *self.kernels)

    def backend_kwargs(self, ranges) -> dict:
        return dict(ranges=ranges, first=self.first, length=self.length)


# ---------------------------------------------------------------- implementations
#
# Every op takes the samples either in bin coordinates (no ranges) or raw, with one range
# [lo, hi] per row (rx, ry: (B, 2) or (1, 2)) that maps onto bin coordinates
# first..first + length inside the backend, chunk by chunk or in registers: the caller
# never writes a bin-coordinate copy of the images, and the gradients are with respect
# to the raw samples. The op holds the ranges fixed (an "auto" range's own derivative is
# the caller's: ``functional._live``). The two
# backends have the same signatures, so each op below is one call.


def _ranges(*rs):
    return None if rs[0] is None else rs


def _backend(b: Binning):
    return _kernels() if b.backend == "triton" else _torch


def _joint_forward(u, v, m, rx, ry, b: Binning):
    return _backend(b).joint_hist_forward(
        u, v, m, *b.backend_args(), deterministic=b.deterministic, **b.backend_kwargs(_ranges(rx, ry))
    )


def _joint_backward(grad, u, v, m, rx, ry, b: Binning, needs_u=True, needs_v=True, needs_m=False):
    """(du, dv, dm), None where not needed: the Triton kernels skip what is not asked for (a
    fixed image's gradient, in registration)."""
    return _backend(b).joint_hist_backward(
        grad, u, v, m, *b.backend_args(), needs_u=needs_u, needs_v=needs_v, needs_m=needs_m and m is not None,
        **b.backend_kwargs(_ranges(rx, ry)),
    )  # fmt: skip


def _hist_forward(u, m, r, b: Binning):
    return _backend(b).hist_forward(
        u, m, *b.backend_args(), deterministic=b.deterministic, **b.backend_kwargs(_ranges(r))
    )


def _hist_backward(grad, u, m, r, b: Binning, needs_u=True, needs_m=False):
    return _backend(b).hist_backward(
        grad, u, m, *b.backend_args(), needs_u=needs_u, needs_m=needs_m and m is not None,
        **b.backend_kwargs(_ranges(r)),
    )  # fmt: skip


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

    generate_vmap_rule = True  # (a view: torch.func batches it as it is)

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
            "is exact; differentiating it once more is refused rather than silently wrong). "
            "torch.autograd.functional.hvp differentiates a second derivative once more: use "
            "vhp (the same for a symmetric Hessian) or torch.func"
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
    def forward(u, v, m, rx, ry, binning):
        with _no_autocast(u):
            return _joint_forward(u, v, m, rx, ry, binning)

    @staticmethod
    def setup_context(ctx, inputs, output):
        u, v, m, rx, ry, binning = inputs
        ctx.save_for_backward(u, v, m, rx, ry)
        ctx.binning = binning

    @staticmethod
    def backward(ctx, grad):
        u, v, m, rx, ry = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        du, dv, dm = _JointHistBackward.call(grad, u, v, m, rx, ry, ctx.binning, *needs)
        return du, dv, dm, None, None, None

    @staticmethod
    def vmap(info, in_dims, u, v, m, rx, ry, binning):
        n = info.batch_size
        u, v, m = (_fold(t, d, n) for t, d in zip((u, v, m), in_dims[:3]))
        rows = u.shape[0] // n
        rx, ry = (_fold_range(r, d, n, rows) for r, d in zip((rx, ry), in_dims[3:5]))
        return _unfold(_JointHist.apply(u, v, m, rx, ry, binning), n), 0


@fast_apply
class _JointHistBackward(torch.autograd.Function):
    """(du, dv, dm) from grad = dL/dJ, each None where not needed; differentiable once more."""

    @staticmethod
    def forward(grad, u, v, m, rx, ry, binning, needs_u, needs_v, needs_m):
        with _no_autocast(u):
            return _joint_backward(grad, u, v, m, rx, ry, binning, needs_u, needs_v, needs_m)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, u, v, m, rx, ry, binning, *_ = inputs
        ctx.save_for_backward(grad, u, v, m, rx, ry)
        ctx.binning = binning

    @staticmethod
    def backward(ctx, hu, hv, hm):
        grad, u, v, m, rx, ry = ctx.saved_tensors
        with torch.no_grad():
            out = _JointHistDoubleBackward.apply(
                hu, hv, hm, grad, u, v, m, rx, ry, ctx.binning, ctx.needs_input_grad[:4]
            )
        return *_no_third_derivative(out, grad, u, v, m, hu, hv, hm), *[None] * 6

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
    def forward(u, m, r, binning):
        with _no_autocast(u):
            return _hist_forward(u, m, r, binning)

    @staticmethod
    def setup_context(ctx, inputs, output):
        u, m, r, binning = inputs
        ctx.save_for_backward(u, m, r)
        ctx.binning = binning

    @staticmethod
    def backward(ctx, grad):
        u, m, r = ctx.saved_tensors
        du, dm = _HistBackward.call(grad, u, m, r, ctx.binning, *ctx.needs_input_grad[:2])
        return du, dm, None, None

    @staticmethod
    def vmap(info, in_dims, u, m, r, binning):
        n = info.batch_size
        u, m = (_fold(t, d, n) for t, d in zip((u, m), in_dims[:2]))
        r = _fold_range(r, in_dims[2], n, u.shape[0] // n)
        return _unfold(_Hist.apply(u, m, r, binning), n), 0


@fast_apply
class _HistBackward(torch.autograd.Function):
    """(du, dm) from grad = dL/dH, each None where not needed; differentiable once more."""

    @staticmethod
    def forward(grad, u, m, r, binning, needs_u, needs_m):
        with _no_autocast(u):
            return _hist_backward(grad, u, m, r, binning, needs_u, needs_m)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, u, m, r, binning, *_ = inputs
        ctx.save_for_backward(grad, u, m, r)
        ctx.binning = binning

    @staticmethod
    def backward(ctx, hu, hm):
        grad, u, m, r = ctx.saved_tensors
        with torch.no_grad():
            out = _HistDoubleBackward.apply(hu, hm, grad, u, m, r, ctx.binning, ctx.needs_input_grad[:3])
        return *_no_third_derivative(out, grad, u, m, hu, hm), *[None] * 4

    @staticmethod
    def vmap(info, in_dims, grad, u, m, r, *rest):
        n = info.batch_size
        grad, u, m = (_fold(t, d, n) for t, d in zip((grad, u, m), in_dims[:3]))
        r = _fold_range(r, in_dims[3], n, u.shape[0] // n)
        out = _HistBackward.apply(grad, u, m, r, *rest)
        return tuple(_unfold(t, n) for t in out), tuple(None if t is None else 0 for t in out)


def _batched(apply, info, in_dims, tensors, ranges, rest):
    """The vmap rule of the ops below: the mapped dims of ``tensors`` (rows first) folded into
    their rows, the ``ranges`` ((1, 2) or (R, 2)) folded alike, one call of ``apply``, its
    outputs unfolded (None stays None)."""
    n = info.batch_size
    tensors = [_fold(t, d, n) for t, d in zip(tensors, in_dims)]
    rows = next(t for t in tensors if t is not None).shape[0] // n
    ranges = [_fold_range(r, d, n, rows) for r, d in zip(ranges, in_dims[len(tensors) :])]
    out = apply(*tensors, *ranges, *rest)
    return tuple(_unfold(t, n) for t in out), tuple(None if t is None else 0 for t in out)


class _JointHistDoubleBackward(torch.autograd.Function):
    """The joint op's backward's backward (``_torch.joint_hist_double_backward``), an op of its
    own so that torch.func can batch it (``jacrev`` of a gradient, vmapped Hessian-vector
    products: the batch folded into rows, not written into unbatched buffers). Applied under
    no_grad: a further derivative is refused by ``_no_third_derivative``."""

    @staticmethod
    def forward(hu, hv, hm, grad, u, v, m, rx, ry, binning, needs):
        with _no_autocast(u):
            return _torch.joint_hist_double_backward(
                hu, hv, hm, grad, u, v, m, *binning.backend_args(), needs, _ranges(rx, ry),
                binning.first, binning.length,
            )  # fmt: skip

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def vmap(info, in_dims, hu, hv, hm, grad, u, v, m, rx, ry, *rest):
        apply = _JointHistDoubleBackward.apply
        return _batched(apply, info, in_dims, (hu, hv, hm, grad, u, v, m), (rx, ry), rest)


class _HistDoubleBackward(torch.autograd.Function):
    """The 1-D histogram op's backward's backward, as ``_JointHistDoubleBackward``."""

    @staticmethod
    def forward(hu, hm, grad, u, m, r, binning, needs):
        with _no_autocast(u):
            return _torch.hist_double_backward(
                hu, hm, grad, u, m, *binning.backend_args(), needs, _ranges(r), binning.first, binning.length
            )

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def vmap(info, in_dims, hu, hm, grad, u, m, r, *rest):
        return _batched(_HistDoubleBackward.apply, info, in_dims, (hu, hm, grad, u, m), (r,), rest)


def joint_hist(u, v, m, binning: Binning, rx=None, ry=None):
    """J[b, a, c] = sum_n m[b, n] w_u(u[b, n] - a) w_v(v[b, n] - c); u, v, m (B, N) -> (B, K, K).

    u, v in bin coordinates, or raw samples (any float dtype) with row ranges rx, ry (see
    above). J is float32 (float64 for float64 samples).
    """
    if torch.compiler.is_compiling():
        b = binning
        return joint_hist_op(
            u, v, m, *b.backend_args(), b.backend, b.deterministic, rx, ry, b.first, b.length
        )
    return _JointHist.call(u, v, m, rx, ry, binning)


def hist(u, m, binning: Binning, r=None):
    """H[b, a] = sum_n m[b, n] w(u[b, n] - a); u, m (B, N) -> (B, K); r as rx above."""
    if torch.compiler.is_compiling():
        b = binning
        return hist_op(u, m, *b.backend_args(), b.backend, b.deterministic, r, b.first, b.length)
    return _Hist.call(u, m, r, binning)


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
    b = Binning(num_bins, sigma, (kernel_u, kernel_v), backend, deterministic, first, length)
    return _joint_forward(u, v, m, rx, ry, b)


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
    b = Binning(num_bins, sigma, (kernel_u, kernel_v), backend, first=first, length=length)
    du, dv, dm = _joint_backward(grad, u, v, m, rx, ry, b, needs_m=needs_m)
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
    return _hist_forward(u, m, r, Binning(num_bins, sigma, (kernel,), backend, deterministic, first, length))


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
    b = Binning(num_bins, sigma, (kernel,), backend, first=first, length=length)
    du, dm = _hist_backward(grad, u, m, r, b, needs_m=needs_m)
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
