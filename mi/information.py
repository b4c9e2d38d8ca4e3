"""Entropies, mutual information and its normalisations from a joint histogram.

The entropies are one autograd Function on the small (..., K, K) histogram, with the
backward written out (a handful of kernels each way, instead of the ~30 autograd nodes
the composed ops take: on a GPU, launches, not arithmetic, are what they cost). The
scores on top are ordinary autograd on (...,) tensors. Conventions:

* ``P = J / sum(J)``; the marginals are the row and column sums of ``P`` (taken from
  the joint, so ``MI >= 0`` and ``H(a, b) >= max(H(a), H(b))`` hold by construction, up
  to rounding).
* ``H(p) = -sum p log p`` with ``0 log 0 = 0`` and no epsilon: a bin with zero mass adds
  nothing and gets a zero (sub)gradient instead of ``-inf``.
* Natural logarithm (nats) unless ``base`` is given (``base=2``: bits). Normalised
  scores are ratios of entropies and do not depend on the base.
* An all-zero histogram (for example an all-zero mask) has zero entropies; scores
  whose denominator is zero take the value they have for independent variables
  (0 for ``"none"`` and ``"arithmetic"``, 1 for ``"studholme"``), never NaN.
"""

import math
import numbers
import os
from typing import Optional, Union

import torch
from torch import Tensor

from . import kernels
from ._autograd import fast_apply
from ._torch import pow2_scale

NORMALIZATIONS = ("none", "arithmetic", "studholme")
BACKENDS = ("auto", "torch", "triton")
Normalize = Union[bool, str, None]


def _safe_div(num: Tensor, den: Tensor, fallback: float) -> Tensor:
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), fallback)


def joint_pdf(joint: Tensor) -> Tensor:
    """Normalise a joint histogram (..., K, K) to sum to 1 (all zeros stays all zeros)."""
    total = joint.sum((-2, -1), keepdim=True)
    return joint / torch.where(total > 0, total, 1.0)


def _wide(joint: Tensor) -> Tensor:
    """The histogram in float64 for the entropy arithmetic, where the device has float64 (not
    MPS). MI is a difference of entropies: in float32 it keeps only the entropies' absolute
    rounding (about 5e-7 nats at 32 bins), 2e-4 to 1e-3 relative for a nearly independent
    pair whose MI is 1e-3 nats; in float64 the float32 histogram's own rounding is what is
    left (1e-7 relative there). K x K numbers per histogram: the cost is nothing."""
    if joint.dtype in (torch.float16, torch.bfloat16, torch.float32) and joint.device.type != "mps":
        return joint.double()
    return joint


def _entropy_terms(joint: Tensor):
    """q = [P (K*K), p_a (K), p_b (K)] side by side, log q (0 where q = 0), q > 0, S = sum J
    (1 for an all-zero histogram; a subnormal total is kept, so that P still sums to 1):
    plain differentiable ops."""
    total = joint.sum((-2, -1), keepdim=True)
    total = torch.where(total > 0, total, 1.0)
    p = joint / total
    q = torch.cat([p.flatten(-2), p.sum(-1), p.sum(-2)], -1)
    pos = q > 0
    return q, torch.where(pos, q, 1.0).log(), pos, total


#: A distribution's largest probability above this has its term from the sum of the others
#: (``_entropies_of``; the Triton kernels' ``TOP``: at most one entry is above it, after
#: rounding too).
TOP = 0.75


def _top() -> float:
    """``TOP``, a constant to torch.compile. A module-level float that dynamo reads while it
    traces an autograd.Function becomes a symbolic input under ``dynamic=True``, and a
    second application of the Function in the same graph (two MI calls in one loss) then
    failed inside dynamo (torch 2.13: "lift_tracked_freevar_to_input should not be called
    on root SubgraphTracer"); a literal, or this, is not lifted."""
    return TOP


# What torch.compiler.assume_constant_result(_top) does, without its import of torch._dynamo
# (0.8 s, an environment variable and a warnings filter) when mi is imported; a test checks
# that the decorator still marks a function this way.
_top._dynamo_marked_constant = True


def _entropies_of(q: Tensor, log_q: Tensor, k: int):
    """(H(a), H(b), H(a, b)) from ``_entropy_terms``: -sum q log q per segment, but for a
    largest probability above ``TOP``, whose term is ``-q log1p(-(sum of the others))``.

    Near a one-bin histogram (a constant image at a small sigma) the entropies are tiny
    (3e-14 nats for one pixel on a bin centre at sigma 0.12), and the log of the rounded
    ``1 - r`` keeps only about 1e-16 / r of its relative precision: MI and the normalised
    scores, differences of such entropies, came out up to 7e-3 off. The others are small and
    their sum is exact to rounding. The plain term is taken out again exactly as it went in
    (its rounding cancels to that of the sum). Not with symbolic shapes
    (``torch.compile(dynamic=True)``): there the twelve more ops sent inductor's shape
    arithmetic (sympy) into minutes of work per compile (local MI: 20 s -> 10 min); the
    plain sums are the same numbers unless one probability is above ``TOP``."""
    e = -(q * log_q)
    if not isinstance(q.shape[-1], int):
        return e[..., k * k : k * k + k].sum(-1), e[..., k * k + k :].sum(-1), e[..., : k * k].sum(-1)
    top_p = _top()
    big = q > top_p
    out = []
    for lo, hi in ((k * k, k * k + k), (k * k + k, k * k + 2 * k), (0, k * k)):  # H(a), H(b), H(a, b)
        seg, e_seg, big_seg = q[..., lo:hi], e[..., lo:hi], big[..., lo:hi]
        top = torch.where(big_seg, seg, 0.0).sum(-1)
        rest = torch.where(big_seg, 0.0, seg).sum(-1)
        plain = torch.where(big_seg, e_seg, 0.0).sum(-1)
        out.append(e_seg.sum(-1) - plain - top * torch.log1p(-torch.clamp(rest, max=1 - top_p)))
    return tuple(out)


def _entropies_vjp(q, log_q, pos, total, k, g_ha, g_hb, g_hab):
    """dL/dJ from dL/dH(a), dL/dH(b), dL/dH(a, b) (each (...,)): dH/dq = -(log q + 1), 0 where
    q = 0 (the subgradient of 0 log 0 = 0); the marginals' terms broadcast back to
    dL/dP[a, c] = g_ab[a, c] + g_a[a] + g_b[c]; then dL/dJ = (sum(g P) - g) / S. Out of place
    and made of differentiable ops, so that it can itself be differentiated."""
    sizes = (k * k, k, k)
    g = torch.cat([t[..., None].expand(*t.shape, n) for t, n in zip((g_hab, g_ha, g_hb), sizes)], -1)
    g = torch.where(pos, (log_q + 1.0) * g, 0.0)  # -dL/dq
    p = q[..., : k * k].unflatten(-1, (k, k))
    g = g[..., : k * k].unflatten(-1, (k, k)) + g[..., k * k : k * k + k, None] + g[..., None, k * k + k :]
    return ((g * p).sum((-2, -1), keepdim=True) - g) / total


def _score_partials(h_a, h_b, h_ab, normalize: str, scale: float):
    """(score, dscore/dH(a), dscore/dH(b), dscore/dH(a, b)) of the entropies, as the Triton
    kernels' ``_score``; a zero denominator gives the independent value and no gradient.
    The torch path's score is its first element (autograd differentiates it)."""
    if normalize == "none":
        one = torch.full_like(h_a, scale)
        return (h_a + h_b - h_ab) * scale, one, one, -one
    if normalize == "arithmetic":
        d = h_a + h_b
        ok = d > 0
        d1 = torch.where(ok, d, 1.0)
        d_ab = torch.where(ok, 2.0 * h_ab / (d1 * d1), 0.0)
        return torch.where(ok, 2.0 * (d - h_ab) / d1, 0.0), d_ab, d_ab, torch.where(ok, -2.0 / d1, 0.0)
    ok = h_ab > 0
    h1 = torch.where(ok, h_ab, 1.0)
    d_ab = torch.where(ok, 1.0 / h1, 0.0)
    return torch.where(ok, (h_a + h_b) / h1, 1.0), d_ab, d_ab, torch.where(ok, -(h_a + h_b) / (h1 * h1), 0.0)


def _vmap_leading(fn, info, in_dims, joint, *rest):
    """vmap rule of a Function on (..., K, K) histograms: the vmapped dim as one more leading dim."""
    joint = joint.movedim(in_dims[0], 0)
    out = fn.apply(joint, *rest)
    return out, tuple(0 for _ in out) if isinstance(out, tuple) else 0


@fast_apply
class _Entropies(torch.autograd.Function):
    """(H(a), H(b), H(a, b)) in nats of a joint histogram J (..., K, K), with P = J / S.

    The three distributions are laid side by side in one tensor q = [P (K*K), p_a (K),
    p_b (K)] (``_entropy_terms``), so that each step is one kernel for all three (on a GPU
    every op is a launch of a few microseconds; the arithmetic on K*K numbers is
    negligible). The backward is ``_entropies_vjp``; under ``create_graph`` it recomputes the
    terms from the saved histogram, so that the second derivative is exact. ``log`` only
    ever sees q > 0 (it is ten times slower on zeros on a CPU).
    """

    @staticmethod
    def forward(joint):
        q, log_q, pos, total = _entropy_terms(_wide(joint))
        return _entropies_of(q, log_q, joint.shape[-1])

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g_ha, g_hb, g_hab):
        (joint,) = ctx.saved_tensors
        return _torch_vjp(joint, g_ha, g_hb, g_hab)

    @staticmethod
    def vmap(info, in_dims, joint):
        return _vmap_leading(_Entropies, info, in_dims, joint)


@fast_apply
class _TritonEntropies(torch.autograd.Function):
    """_Entropies in two Triton launches (``mi.kernels.entropy``): float32 (B, K, K) only. A
    backward under ``create_graph`` runs the torch formula, which is differentiable."""

    @staticmethod
    def forward(joint):
        h, pa, pb, s, h64 = kernels.entropies_forward(joint)
        return h[0], h[1], h[2], pa, pb, s, h64

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], *output[3:])
        ctx.mark_non_differentiable(*output[3:])
        ctx.set_materialize_grads(False)  # no zeros for the saved outputs nobody differentiates

    @staticmethod
    def backward(ctx, g_ha, g_hb, g_hab, *_):
        joint, *saved = ctx.saved_tensors
        zero = joint.new_zeros(joint.shape[:1])
        g_ha, g_hb, g_hab = (zero if g is None else g for g in (g_ha, g_hb, g_hab))
        if torch.is_grad_enabled():
            return _torch_vjp(joint, g_ha, g_hb, g_hab)
        return kernels.entropies_backward(joint, *saved, (g_ha, g_hb, g_hab))

    @staticmethod
    def vmap(info, in_dims, joint):
        return _vmap_triton(_TritonEntropies, in_dims, joint)


@fast_apply
class _TritonScore(torch.autograd.Function):
    """A score of the entropies (``normalize``, times ``scale``) fused into the same two
    launches: the scalar math and its chain rule run inside the kernels. A backward under
    ``create_graph`` runs the torch formula (``_score_partials``, ``_entropies_vjp``)."""

    @staticmethod
    def forward(joint, normalize, scale):
        h, pa, pb, s, h64 = kernels.entropies_forward(joint, normalize, scale)
        return h[4], pa, pb, s, h64

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], *output[1:])
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)
        ctx.normalize, ctx.scale = inputs[1:]

    @staticmethod
    def backward(ctx, g, *_):
        joint, *saved = ctx.saved_tensors
        if torch.is_grad_enabled():
            terms = _entropy_terms(_wide(joint))
            k = joint.shape[-1]
            _, d_a, d_b, d_ab = _score_partials(*_entropies_of(*terms[:2], k), ctx.normalize, ctx.scale)
            g = g.to(terms[0].dtype)
            return _entropies_vjp(*terms, k, g * d_a, g * d_b, g * d_ab).to(joint.dtype), None, None
        return kernels.entropies_backward(joint, *saved, (g,), ctx.normalize, ctx.scale), None, None

    @staticmethod
    def vmap(info, in_dims, joint, normalize, scale):
        return _vmap_triton(_TritonScore, in_dims, joint, normalize, scale)


def _vmap_triton(fn, in_dims, joint, *rest):
    """vmap rule of the Triton Functions on (B, K, K): the vmapped dim folded into B. Their
    outputs are per histogram (B,) and (B, K), but for the entropies' (5, B) last."""
    j = joint.movedim(in_dims[0], 0)
    lead, k = j.shape[:2], j.shape[-1]
    out = fn.apply(j.reshape(-1, k, k), *rest)
    shaped = [t.reshape(*lead, *t.shape[1:]) for t in out[:-1]] + [out[-1].reshape(5, *lead)]
    return tuple(shaped), (0,) * (len(out) - 1) + (1,)


def _use_triton(joint: Tensor, backend: str) -> bool:
    """Triton for float32 histograms: on CUDA with backend "auto", anywhere with "triton"
    (the interpreter on CPU); never while torch.compile traces (inductor fuses the torch ops)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or joint.dtype != torch.float32 or joint.dim() < 2 or torch.compiler.is_compiling():
        return False
    if joint.shape[-1] == 0:  # no bins: nothing to launch (the torch path's zeros)
        return False
    if backend == "triton":
        check_triton_here(joint)
        return True
    return joint.is_cuda and kernels.is_available()


def check_triton_here(t: Tensor) -> None:
    """``backend="triton"`` needs the package, and CUDA tensors (or the interpreter)."""
    reason = kernels.unavailable_reason()
    if reason is not None:
        raise ValueError(f"backend='triton': {reason}")
    if not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1), got device {t.device}"
        )


def _torch_vjp(joint: Tensor, g_ha, g_hb, g_hab) -> Tensor:
    """dL/dJ by ``_entropies_vjp`` in ``_wide``'s precision, in J's dtype."""
    terms = _entropy_terms(_wide(joint))
    g = [t.to(terms[0].dtype) for t in (g_ha, g_hb, g_hab)]
    return _entropies_vjp(*terms, joint.shape[-1], *g).to(joint.dtype)


def _entropies(joint: Tensor, backend: str):
    """(H(a), H(b), H(a, b)) in nats, float64 on the torch path (``_wide``) for the scores'
    differences, float32 from the Triton kernels (which sum in float64 themselves)."""
    if _use_triton(joint, backend):
        k = joint.shape[-1]
        out = _TritonEntropies.call(joint.reshape(-1, k, k))
        return tuple(h.reshape(joint.shape[:-2]) for h in out[:3])
    return _Entropies.call(joint)


#: Below this largest entry a joint histogram's entries 2**-24 below its peak are subnormal
#: (float32: 2**-126; float64: 2**-1022), so they keep few bits, and MI's gradient, about
#: 1 / (total mass), overflows.
MIN_PEAK = {torch.float32: 2.0**-102, torch.float64: 2.0**-998}


def host_values(t: Tensor):
    """``t.tolist()`` (a Python number for a 0-d t), also inside ``torch.func``'s gradient
    transforms: torch 2.8 and earlier cannot read the data of the ``GradTrackingTensor`` that
    ``torch.func.grad``/``jacrev`` wrap values in ("Cannot access data pointer of Tensor that
    doesn't have storage"), so the wrappers are taken off and the read is made with
    functorch's dispatch off; the values are the same. (Under ``vmap``, whose batched values
    are not one tensor's, the data checks that read values are off.)"""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        t = functorch.get_unwrapped(t)
    with torch._C._DisableFuncTorch():
        return t.tolist()


def tails_only_peak(joint: Tensor, occupied=None) -> Optional[float]:
    """The largest entry of the histogram (..., K, K) with the smallest non-zero one, when it
    is below ``MIN_PEAK`` for joint's dtype; else None. All-zero histograms do not count,
    but for those that ``occupied`` ((...,) bool, or True for all) marks as having had
    samples of non-zero weight: their windows underflowed, and their largest entry is 0.
    One host read."""
    peaks = joint.detach().flatten(-2).amax(-1)
    counted = peaks > 0 if occupied is None else (peaks > 0) | occupied
    low = host_values(torch.where(counted, peaks, math.inf).amin())
    return low if low < MIN_PEAK.get(joint.dtype, 0.0) else None


def check_joint(joint) -> Tensor:
    """The ``joint`` argument of the public ``*_from_joint`` functions: a real square (..., K,
    K) tensor (integer counts, say from ``numpy.histogram2d``, and bool occupancy are taken
    in float64), whose entries are non-negative and finite (a value check: one host read; see
    :func:`mi.set_value_checks`), and, when it needs a gradient, whose histograms' largest
    entries are not so small that the gradient would overflow (``MIN_PEAK``)."""
    from .functional import _checks_on  # (functional imports this module)

    if not isinstance(joint, Tensor):
        raise TypeError(f"joint must be a torch.Tensor, got {type(joint).__name__}")
    if joint.is_complex():
        raise TypeError(f"joint must be real (floating, or integer counts), got {joint.dtype}")
    if joint.ndim < 2 or joint.shape[-1] != joint.shape[-2]:
        raise ValueError(
            f"joint must be a square histogram (..., K, K), a's bins along the rows and b's along "
            f"the columns, got shape {tuple(joint.shape)}"
        )
    if not joint.is_floating_point():
        joint = joint.to(torch.float64)
    if _checks_on() and joint.numel():
        if not host_values(((joint >= 0) & (joint < math.inf)).all()):
            raise ValueError("joint must be non-negative and finite (no NaN or Inf)")
        low = tails_only_peak(joint) if joint.requires_grad and torch.is_grad_enabled() else None
        if low is not None:
            raise ValueError(
                f"joint's largest entry is only {low:.3g} in some histogram: the gradient, about "
                f"1 / its total, would overflow {joint.dtype}; rescale joint (the result does not "
                "depend on its scale)"
            )
        if joint.dtype in (torch.float16, torch.bfloat16) and joint.requires_grad and torch.is_grad_enabled():
            from .functional import _FiniteGrad  # its gradient, cast back to half, may overflow

            why = "the gradient is about 1 / the histogram's total; rescale joint or pass it as float32"
            joint = _FiniteGrad.call(joint, "joint", why)
    if joint.dtype == torch.float64 and joint.shape[-1]:
        # Each histogram times the power of two that brings its largest entry near 1 (exact; a
        # constant to autograd, the result being scale-free): finite entries of 1e308 summed
        # to Inf, which scored as an all-zero histogram (MI 0).
        joint = joint * pow2_scale(joint.detach().flatten(-2).amax(-1))[..., None, None]
    return joint


def _scaled_entropies(joint: Tensor, base: Optional[float], backend: str):
    """``entropies_from_joint`` on checked arguments."""
    ha, hb, hab = _entropies(joint, backend)
    if base is not None:
        scale = 1.0 / math.log(base)
        ha, hb, hab = ha * scale, hb * scale, hab * scale
    return tuple(h.to(joint.dtype) for h in (ha, hb, hab))


def entropies_from_joint(joint: Tensor, base: Optional[float] = None, backend: str = "auto"):
    """(H(a), H(b), H(a, b)) of a joint histogram ``joint`` (..., K, K); each of shape (...,),
    in ``joint``'s dtype (float64 for integer counts and bool; computed in float64 where the
    device has it). ``joint`` need not be normalised (its sum is divided out); it must be
    non-negative and finite (:func:`check_joint`).

    Rows of ``joint`` index a's bins, columns b's. Units: nats, or log ``base`` (> 1).
    ``backend``: "auto" (Triton for float32 CUDA histograms when it imports, else torch),
    "torch" or "triton" (float32 only; other dtypes use torch).
    """
    return _scaled_entropies(check_joint(joint), check_base(base), backend)


def check_normalize(normalize: Normalize) -> str:
    """Map the ``normalize`` argument to one of NORMALIZATIONS (True -> "arithmetic")."""
    if normalize is True:
        return "arithmetic"
    if normalize is False or normalize is None:
        return "none"
    if isinstance(normalize, str) and normalize in NORMALIZATIONS:
        return normalize
    raise ValueError(
        f"normalize must be one of {NORMALIZATIONS} (or True for 'arithmetic', False for "
        f"'none'), got {normalize!r}"
    )


def read_number(name: str, value, expected: str) -> float:
    """A number argument read on the host (sigma, base, MONAI's smooth terms): a real Python
    or numpy number, or a one-element real tensor -> float. A tensor that requires grad is
    refused (autograd would silently not reach it); anything else is a TypeError saying
    ``{name} must be {expected}``."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
        if value.requires_grad:
            raise TypeError(
                f"{name} is read as a number and is not differentiated: pass it without requires_grad"
            )
        value = host_values(value.reshape(()))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    return float(value)


def check_base(base) -> Optional[float]:
    """``base`` of the logarithms: None (nats), or a real number > 1 (2: bits; 10: bans), also
    a numpy scalar or a one-element tensor (read as a number: one that requires grad is
    refused). (Below 1 every information would come out
    negative.)"""
    if base is None:
        return None
    value = read_number("base", base, "a real number > 1 (or None for nats)")
    if not 1 < value < math.inf:
        raise ValueError(f"base must be a finite number > 1 (or None for nats), got {base!r}")
    return value


def mutual_information_from_joint(
    joint: Tensor, normalize: Normalize = "none", base: Optional[float] = None, backend: str = "auto"
) -> Tensor:
    """Mutual information of a joint histogram ``joint`` (..., K, K) -> (...,).

    normalize:
        ``"none"`` (or False): ``I = H(a) + H(b) - H(a, b)``, in nats (or log ``base``).
        ``"arithmetic"`` (or True): ``2 I / (H(a) + H(b))`` in [0, 1], the seed's
        normalisation; equal to scikit-learn's ``normalized_mutual_info_score`` with
        ``average_method="arithmetic"`` and to Maes' entropy correlation coefficient.
        ``"studholme"``: ``(H(a) + H(b)) / H(a, b)`` in [1, 2], Studholme's overlap-
        invariant normalised MI, the usual choice for registration.

    joint, base, backend: as in :func:`entropies_from_joint`.
    """
    return _score(check_joint(joint), check_normalize(normalize), check_base(base), backend)


def _score(joint: Tensor, normalize: str, base: Optional[float], backend: str) -> Tensor:
    """``mutual_information_from_joint`` on checked arguments."""
    scale = 1.0 if base is None or normalize != "none" else 1.0 / math.log(base)
    if _use_triton(joint, backend):
        k = joint.shape[-1]
        return _TritonScore.call(joint.reshape(-1, k, k), normalize, scale)[0].reshape(joint.shape[:-2])
    return _score_partials(*_entropies(joint, backend), normalize, scale)[0].to(joint.dtype)
