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
from typing import Optional, Union

import torch
from torch import Tensor

from . import kernels

NORMALIZATIONS = ("none", "arithmetic", "studholme")
BACKENDS = ("auto", "torch", "triton")
Normalize = Union[bool, str, None]


def _safe_div(num: Tensor, den: Tensor, fallback: float) -> Tensor:
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), fallback)


def joint_pdf(joint: Tensor) -> Tensor:
    """Normalise a joint histogram (..., K, K) to sum to 1 (all zeros stays all zeros)."""
    total = joint.sum((-2, -1), keepdim=True)
    return joint / total.clamp_min(torch.finfo(joint.dtype).tiny)


class _Entropies(torch.autograd.Function):
    """(H(a), H(b), H(a, b)) in nats of a joint histogram J (..., K, K), with P = J / S.

    The three distributions are laid side by side in one tensor q = [P (K*K), p_a (K),
    p_b (K)], so that each step is one kernel for all three (on a GPU every op is a launch
    of a few microseconds; the arithmetic on K*K numbers is negligible): forward
    ``H = -sum q log q`` per segment; backward dH/dq = -(log q + 1), 0 where q = 0 (the
    subgradient convention of 0 log 0 = 0), the marginals' terms broadcast back to
    dL/dP[a, c] = g_ab[a, c] + g_a[a] + g_b[c], then dL/dJ = (g - sum(g P)) / S.
    ``log`` only ever sees q > 0 (it is ten times slower on zeros on a CPU).
    """

    @staticmethod
    def forward(ctx, joint):
        k = joint.shape[-1]
        total = joint.sum((-2, -1), keepdim=True).clamp_min(torch.finfo(joint.dtype).tiny)
        p = joint / total
        q = torch.cat([p.flatten(-2), p.sum(-1), p.sum(-2)], -1)
        pos = q > 0
        log_q = torch.where(pos, q, 1.0).log_()
        e = (q * log_q).neg_()  # -q log q, 0 where q = 0
        ctx.save_for_backward(q, log_q, pos, total)
        ctx.k = k
        return e[..., k * k : k * k + k].sum(-1), e[..., k * k + k :].sum(-1), e[..., : k * k].sum(-1)

    @staticmethod
    def backward(ctx, g_ha, g_hb, g_hab):
        q, log_q, pos, total = ctx.saved_tensors
        k = ctx.k
        sizes = (k * k, k, k)
        g = torch.cat([t[..., None].expand(*t.shape, n) for t, n in zip((g_hab, g_ha, g_hb), sizes)], -1)
        g = (log_q + 1.0).mul_(g).mul_(pos)  # -dL/dq
        p = q[..., : k * k].unflatten(-1, (k, k))
        g = (
            g[..., : k * k].unflatten(-1, (k, k))
            + g[..., k * k : k * k + k, None]
            + g[..., None, k * k + k :]
        )
        return ((g * p).sum((-2, -1), keepdim=True) - g) / total


class _TritonEntropies(torch.autograd.Function):
    """_Entropies in two Triton launches (``mi.kernels.entropy``): float32 (B, K, K) only."""

    @staticmethod
    def forward(ctx, joint):
        h, pa, pb, s = kernels.entropies_forward(joint)
        ctx.save_for_backward(joint, pa, pb, s, h)
        return h[0], h[1], h[2]

    @staticmethod
    def backward(ctx, g_ha, g_hb, g_hab):
        return kernels.entropies_backward(*ctx.saved_tensors, (g_ha, g_hb, g_hab))


class _TritonScore(torch.autograd.Function):
    """A score of the entropies (``normalize``, times ``scale``) fused into the same two
    launches: the scalar math and its chain rule run inside the kernels."""

    @staticmethod
    def forward(ctx, joint, normalize, scale):
        h, pa, pb, s = kernels.entropies_forward(joint, normalize, scale)
        ctx.save_for_backward(joint, pa, pb, s, h)
        ctx.normalize, ctx.scale = normalize, scale
        return h[4]

    @staticmethod
    def backward(ctx, g):
        return kernels.entropies_backward(*ctx.saved_tensors, (g,), ctx.normalize, ctx.scale), None, None


def _use_triton(joint: Tensor, backend: str) -> bool:
    """Triton for float32 histograms: on CUDA with backend "auto", anywhere with "triton"
    (the interpreter on CPU); never while torch.compile traces (inductor fuses the torch ops)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or joint.dtype != torch.float32 or joint.dim() < 2 or torch.compiler.is_compiling():
        return False
    return (backend == "triton" or joint.is_cuda) and kernels.is_available()


def entropies_from_joint(joint: Tensor, base: Optional[float] = None, backend: str = "auto"):
    """(H(a), H(b), H(a, b)) of a joint histogram ``joint`` (..., K, K); each of shape (...,).

    Rows of ``joint`` index a's bins, columns b's. Units: nats, or log ``base``.
    ``backend``: "auto" (Triton for float32 CUDA histograms when it imports, else torch),
    "torch" or "triton" (float32 only; other dtypes use torch).
    """
    if _use_triton(joint, backend):
        k = joint.shape[-1]
        ha, hb, hab = (h.reshape(joint.shape[:-2]) for h in _TritonEntropies.apply(joint.reshape(-1, k, k)))
    else:
        ha, hb, hab = _Entropies.apply(joint)
    if base is not None:
        scale = 1.0 / math.log(base)
        ha, hb, hab = ha * scale, hb * scale, hab * scale
    return ha, hb, hab


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


def check_base(base) -> Optional[float]:
    if base is None:
        return None
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 0 or base == 1:
        raise ValueError(f"base must be a positive number other than 1 (or None for nats), got {base!r}")
    return float(base)


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

    backend: as in :func:`entropies_from_joint`.
    """
    normalize = check_normalize(normalize)
    base = check_base(base)
    if _use_triton(joint, backend):
        k = joint.shape[-1]
        scale = 1.0 if base is None or normalize != "none" else 1.0 / math.log(base)
        return _TritonScore.apply(joint.reshape(-1, k, k), normalize, scale).reshape(joint.shape[:-2])
    ha, hb, hab = entropies_from_joint(joint)
    mi = ha + hb - hab
    if normalize == "arithmetic":
        return _safe_div(2.0 * mi, ha + hb, 0.0)
    if normalize == "studholme":
        return _safe_div(ha + hb, hab, 1.0)
    return mi if base is None else mi / math.log(base)
