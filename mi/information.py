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

NORMALIZATIONS = ("none", "arithmetic", "studholme")
Normalize = Union[bool, str, None]


def _safe_div(num: Tensor, den: Tensor, fallback: float) -> Tensor:
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), fallback)


def joint_pdf(joint: Tensor) -> Tensor:
    """Normalise a joint histogram (..., K, K) to sum to 1 (all zeros stays all zeros)."""
    total = joint.sum((-2, -1), keepdim=True)
    return joint / total.clamp_min(torch.finfo(joint.dtype).tiny)


def _log_or_zero(p: Tensor) -> Tensor:
    """log p where p > 0, else 0 (so that p log p = 0 and its gradient is finite)."""
    return torch.where(p > 0, p, 1.0).log()


class _Entropies(torch.autograd.Function):
    """(H(a), H(b), H(a, b)) in nats of a joint histogram J (..., K, K), with P = J / S.

    Backward: dH(a, b)/dP = -(log P + 1), dH(a)/dP[a, c] = -(log p_a[a] + 1), and likewise
    for b (each 0 where its probability is 0: the subgradient convention of 0 log 0 = 0);
    then dL/dJ = (g - sum(g P)) / S for g = dL/dP.
    """

    @staticmethod
    def forward(ctx, joint):
        total = joint.sum((-2, -1), keepdim=True).clamp_min(torch.finfo(joint.dtype).tiny)
        p = joint / total
        pa, pb = p.sum(-1), p.sum(-2)
        lp, la, lb = _log_or_zero(p), _log_or_zero(pa), _log_or_zero(pb)
        ctx.save_for_backward(p, pa, pb, lp, la, lb, total)
        return -(pa * la).sum(-1), -(pb * lb).sum(-1), -(p * lp).sum((-2, -1))

    @staticmethod
    def backward(ctx, g_ha, g_hb, g_hab):
        p, pa, pb, lp, la, lb, total = ctx.saved_tensors
        d_a = (g_ha[..., None] * (la + 1.0) * (pa > 0))[..., :, None]
        d_b = (g_hb[..., None] * (lb + 1.0) * (pb > 0))[..., None, :]
        g = -(g_hab[..., None, None] * (lp + 1.0) * (p > 0) + d_a + d_b)
        return (g - (g * p).sum((-2, -1), keepdim=True)) / total


def entropies_from_joint(joint: Tensor, base: Optional[float] = None):
    """(H(a), H(b), H(a, b)) of a joint histogram ``joint`` (..., K, K); each of shape (...,).

    Rows of ``joint`` index a's bins, columns b's. Units: nats, or log ``base``.
    """
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
    joint: Tensor, normalize: Normalize = "none", base: Optional[float] = None
) -> Tensor:
    """Mutual information of a joint histogram ``joint`` (..., K, K) -> (...,).

    normalize:
        ``"none"`` (or False): ``I = H(a) + H(b) - H(a, b)``, in nats (or log ``base``).
        ``"arithmetic"`` (or True): ``2 I / (H(a) + H(b))`` in [0, 1], the seed's
        normalisation; equal to scikit-learn's ``normalized_mutual_info_score`` with
        ``average_method="arithmetic"`` and to Maes' entropy correlation coefficient.
        ``"studholme"``: ``(H(a) + H(b)) / H(a, b)`` in [1, 2], Studholme's overlap-
        invariant normalised MI, the usual choice for registration.
    """
    normalize = check_normalize(normalize)
    ha, hb, hab = entropies_from_joint(joint)
    mi = ha + hb - hab
    if normalize == "arithmetic":
        return _safe_div(2.0 * mi, ha + hb, 0.0)
    if normalize == "studholme":
        return _safe_div(ha + hb, hab, 1.0)
    base = check_base(base)
    return mi if base is None else mi / math.log(base)
