"""kornia's mutual-information losses on this library's op: ``from mi.compat.kornia import
mutual_information_loss`` in place of ``from kornia.losses import ...``.

kornia 0.9 evaluates its kernel for every (bin, pixel) pair of both signals and joins them
with an einsum: two (K, N) weight tensors per sample. These functions compute the same
numbers from the fused joint histogram, with each pixel touching only the bins its window
covers, in O(B K^2 + N) memory.
"""

import enum
import math
from typing import Optional

import torch
from torch import Tensor

from .. import _autograd, _torch
from ..functional import (
    _check_histogram_size,
    _check_num_bins,
    _check_sigma,
    _checks_on,
    _guard_grad,
    _no_checks,
    _queue_checks,
    _resolve_backend,
    check_pair,
)


class MIKernel(enum.Enum):
    """kornia's ``MIKernel`` members, by name (kornia's own members are accepted too).

    With ``d`` a sample's distance from a bin centre in bin widths and ``a = |d| / R``
    (R = ``window_radius``), each 0 beyond ``|d| = R``:

    * ``xu`` (Xu et al. 2008, the default): ``1 - 0.1 a - 1.8 a^2`` for ``a < 1/2``,
      ``1.9 - 3.7 a + 1.8 a^2`` up to ``a = 1``.
    * ``rectangular``: 1 on ``|d| <= R``; piecewise constant, so the loss has no gradient.
    * ``truncated_gaussian``: the normal density of standard deviation R on ``|d| <= R``.
    """

    xu = "xu"
    rectangular = "rect"
    truncated_gaussian = "tgauss"


def _kernel_kind(kernel_function) -> str:
    """The op's window kind of an ``MIKernel`` member, ours or kornia's (matched by name)."""
    name = getattr(kernel_function, "name", None)
    if type(kernel_function).__name__ != "MIKernel" or name not in MIKernel.__members__:
        raise ValueError(
            f"kernel_function must be an MIKernel member ({', '.join(MIKernel.__members__)}), "
            f"got {kernel_function!r}"
        )
    return MIKernel[name].value


def _check_mask(name: str, mask, shape) -> Optional[Tensor]:
    """A boolean (or uint8) mask of the one-sample shape, common to the batch -> bool (N,), or
    None when it selects everything structurally (None, or one True element, as kornia)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a boolean tensor or None, got {type(mask).__name__}")
    if mask.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"{name} must have boolean dtype (torch.bool or uint8), got {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have the one-sample shape {tuple(shape)}, common to the batch, "
            f"got {tuple(mask.shape)}"
        )
    flat = mask.reshape(-1).bool()
    return None if (flat.numel() == 1 and bool(flat[0])) else flat


def _normalized(sig: Tensor, mask: Optional[Tensor], num_bins: int, eps: float) -> Tensor:
    """kornia's ``_normalize_signal`` over the mask, evaluated at every position: each row's
    min..max (over the mask; min and max differentiated, as ``Tensor.min(dim)``) onto
    0..K-1, a row whose range is at most ``eps`` to 0. The values are first scaled by the
    power of two that brings the row's largest magnitude near 1: exact, so the arithmetic
    is kornia's bit for bit, and a range near the float limit does not overflow to NaN."""
    if mask is not None:  # what lies outside the mask (NaN, Inf, anything) must reach no sum
        sig = torch.where(mask, sig, 0.0)
    sel = sig if mask is None else sig[..., mask]
    s = _torch.pow2_scale(sel.detach().abs().amax(-1, keepdim=True))
    sel_s = sel * s
    lo = sel_s.min(dim=-1).values.unsqueeze(-1)
    hi = sel_s.max(dim=-1).values.unsqueeze(-1)
    diff = hi - lo
    nontrivial = diff > eps * s
    safe = torch.where(nontrivial, diff, torch.ones_like(diff))
    return torch.where(nontrivial, (sig * s - lo) / safe * (num_bins - 1), 0)


def _entropies(
    input, target, input_mask, target_mask, kernel_function, num_bins, window_radius, backend, space
):
    """(H(input), H(target), H(input, target)) and the reference dtype, kornia's way, for
    signals whose last ``space`` dims are one sample."""
    check_pair(input, target, ("input", "target"), space, f"a tensor of at least {space} dimension(s)")
    kind = _kernel_kind(kernel_function)
    k = _check_num_bins(num_bins)
    radius = _check_sigma(window_radius, "window_radius")
    sample = input.shape[input.ndim - space :]
    lead = input.shape[: input.ndim - space]
    n, rows = math.prod(sample), math.prod(lead)
    if n == 0:
        raise ValueError(f"input must hold at least one sample per signal, got shape {tuple(input.shape)}")
    m_in, m_tg = (
        _check_mask("input_mask", input_mask, sample),
        _check_mask("target_mask", target_mask, sample),
    )
    for m in (m_in, m_tg):
        if m is not None and m.device != input.device:
            raise ValueError(f"a mask is on {m.device} but the signals are on {input.device}")
    acc = torch.float64 if torch.float64 in (input.dtype, target.dtype) else torch.float32
    input, target = _guard_grad("input", input, None, 0.0), _guard_grad("target", target, None, 0.0)
    x, y = input.reshape(rows, n).to(acc), target.reshape(rows, n).to(acc)
    backend = _resolve_backend(backend, x)
    _check_histogram_size(rows, k, 2, x.device)
    common = m_in if m_tg is None else (m_tg if m_in is None else m_in & m_tg)
    check = _no_checks
    if _checks_on():  # one host read: finite signals over their masks, a common position
        sel = [t if m is None else t[..., m] for t, m in ((x, m_in), (y, m_tg))]
        ext = {
            name: torch.stack(torch.aminmax(t.detach(), dim=-1), -1) if t.numel() else t.new_zeros(rows, 2)
            for name, t in zip(("input", "target"), sel)
        }
        check = _queue_checks(backend, ext)
    if (m_in is not None and not bool(m_in.any())) or (m_tg is not None and not bool(m_tg.any())):
        raise ValueError("each mask must select at least one sample")
    if common is not None and not bool(common.any()):
        raise ValueError("the masks have no position in common: the histogram would be empty")
    eps = torch.finfo(target.dtype).eps  # kornia: the reference's, for both signals
    u = _normalized(y, m_tg, k, eps)  # target: the histogram's first axis, as kornia's einsum
    v = _normalized(x, m_in, k, eps)
    weights = None
    if common is not None:  # positions outside the common mask add nothing (whatever they hold)
        u, v = (torch.where(common, t, 0.0) for t in (u, v))
        weights = common.to(acc).expand(rows, n)
    if kind == "rect":  # kornia's rectangular kernel has no gradient: the loss does not require one
        u, v = u.detach(), v.detach()
    joint = _autograd.joint_hist(u, v, weights, _autograd.Binning(k, radius, (kind, kind), backend))
    if kind == "tgauss":  # kornia's normal density: 1 / (R sqrt(2 pi)) per window, the op's peaks at 1
        joint = joint * (1.0 / (radius * (2 * math.pi) ** 0.5)) ** 2
    check()
    return (*_entropies_of(joint), target.dtype)


def _entropies_of(joint: Tensor):
    """kornia's ``_joint_histogram_to_entropies``: the joint histogram clamped below at its
    dtype's epsilon, normalised; marginals from it; natural log."""
    p = joint.clamp(torch.finfo(joint.dtype).eps)
    p = p / p.sum(dim=(-1, -2), keepdim=True)
    p_x, p_y = p.sum(dim=-2), p.sum(dim=-1)
    h_xy = torch.sum(-p * torch.log(p), dim=(-1, -2))
    return torch.sum(-p_x * torch.log(p_x), dim=-1), torch.sum(-p_y * torch.log(p_y), dim=-1), h_xy


def _loss(
    normalized,
    space,
    input,
    target,
    input_mask,
    target_mask,
    kernel_function,
    num_bins,
    window_radius,
    backend,
):
    h_x, h_y, h_xy, dtype = _entropies(
        input, target, input_mask, target_mask, kernel_function, num_bins, window_radius, backend, space
    )
    score = (h_x + h_y) / h_xy if normalized else h_x + h_y - h_xy
    return (-score).reshape(input.shape[: input.ndim - space]).to(dtype)


_CONVENTION = """

    kornia 0.9's function of the same name, with its arguments, defaults and numbers,
    on the fused joint histogram. Convention (kornia's): each signal is min-max normalised
    per sample over its own mask onto the bin centres 0..K-1 (a range at most the target
    dtype's epsilon counts as constant); every value spreads over the bins within
    ``window_radius`` bin widths, weighted by ``kernel_function`` (:class:`MIKernel`); the
    joint histogram counts the positions inside both masks; it is clamped below at its
    dtype's epsilon, normalised, and the entropies are in nats. Masks are boolean, of one
    sample's shape, common to the batch. Half precision is computed in float32; the loss
    has the target's dtype. ``rectangular`` has no gradient (the loss does not require one).

    Differences from kornia, where kornia gives NaN: NaN or Inf in the signals (over their
    masks) raise a ValueError when value checks are on (``mi.value_checks``); ranges near the
    float limit work. Extra keyword: ``backend`` (``"auto"``: Triton for CUDA tensors).

    Args:
        input, target: signals ``(*, {shape})``, any leading batch dims (possibly none).
        input_mask, target_mask: boolean ``({shape})`` masks, or None.
        kernel_function: an :class:`MIKernel` member (or kornia's).
        num_bins: K >= 2.
        window_radius: the kernel's radius R > 0, in bin widths.

    Returns:
        the loss, of shape ``*`` (the batch dims).
"""


def _define(name, normalized, space, shape, summary):
    def fn(
        input: Tensor,
        target: Tensor,
        input_mask: Optional[Tensor] = None,
        target_mask: Optional[Tensor] = None,
        kernel_function=MIKernel.xu,
        num_bins: int = 64,
        window_radius: float = 1.0,
        *,
        backend: str = "auto",
    ) -> Tensor:
        return _loss(
            normalized, space, input, target, input_mask, target_mask, kernel_function, num_bins,
            window_radius, backend,
        )  # fmt: skip

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = summary + _CONVENTION.format(shape=shape)
    return fn


_MI = "The mutual-information loss ``-(H(input) + H(target) - H(input, target))``"
_NMI = "The normalised mutual-information loss ``-(H(input) + H(target)) / H(input, target)`` (Studholme's)"
mutual_information_loss = _define("mutual_information_loss", False, 1, "N", _MI + " of flat signals.")
mutual_information_loss_2d = _define("mutual_information_loss_2d", False, 2, "H, W", _MI + " of 2-D images.")
mutual_information_loss_3d = _define("mutual_information_loss_3d", False, 3, "D, H, W", _MI + " of volumes.")
normalized_mutual_information_loss = _define(
    "normalized_mutual_information_loss", True, 1, "N", _NMI + " of flat signals."
)
normalized_mutual_information_loss_2d = _define(
    "normalized_mutual_information_loss_2d", True, 2, "H, W", _NMI + " of 2-D images."
)
normalized_mutual_information_loss_3d = _define(
    "normalized_mutual_information_loss_3d", True, 3, "D, H, W", _NMI + " of volumes."
)

__all__ = [
    "MIKernel",
    "mutual_information_loss",
    "mutual_information_loss_2d",
    "mutual_information_loss_3d",
    "normalized_mutual_information_loss",
    "normalized_mutual_information_loss_2d",
    "normalized_mutual_information_loss_3d",
]
