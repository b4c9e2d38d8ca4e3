"""Entropies, mutual information and its normalisations from a joint histogram.

Everything here is ordinary autograd on small (..., K, K) tensors. Conventions:

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


def _entropy(p: Tensor, dims) -> Tensor:
    """-sum p log p over dims, 0 log 0 = 0, with a finite gradient everywhere (0 at p = 0)."""
    positive = p > 0
    return -(p * torch.where(positive, p, torch.ones_like(p)).log()).sum(dims)


def _safe_div(num: Tensor, den: Tensor, fallback: float) -> Tensor:
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), fallback)


def joint_pdf(joint: Tensor) -> Tensor:
    """Normalise a joint histogram (..., K, K) to sum to 1 (all zeros stays all zeros)."""
    total = joint.sum((-2, -1), keepdim=True)
    return _safe_div(joint, total, 0.0)


def entropies_from_joint(joint: Tensor, base: Optional[float] = None):
    """(H(a), H(b), H(a, b)) of a joint histogram ``joint`` (..., K, K); each of shape (...,).

    Rows of ``joint`` index a's bins, columns b's. Units: nats, or log ``base``.
    """
    p = joint_pdf(joint)
    ha, hb, hab = _entropy(p.sum(-1), -1), _entropy(p.sum(-2), -1), _entropy(p, (-2, -1))
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
