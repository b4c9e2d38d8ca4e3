"""nn.Module wrappers: the seed's ``MutualInformation`` and a registration loss."""

from typing import Optional

from torch import Tensor, nn

from .functional import _check_num_bins, _check_range, _check_sigma, check_pair, mutual_information
from .information import check_base, check_normalize


class MutualInformation(nn.Module):
    """The seed's module: ``MutualInformation(num_bins=256, sigma=0.4, normalize=True)(a, b)``.

    Convention:
        Images (B, C, *spatial) with intensities in ``value_range`` (default [0, 1], mapped
        onto the K bin centres) -> (B,) scores. ``sigma`` is the Gaussian's standard
        deviation in bin widths: with 256 bins over [0, 1] this is the seed's sigma (its
        bins are ``linspace(0, 255, 256)`` on ``255 x``, one unit apart). ``normalize=True``
        is the seed's ``2 I / (H(a) + H(b))``; ``normalize=False`` gives I in bits
        (``base=2``, as the seed's ``log2``). So the arguments above give the seed's numbers
        to within 0.1 to 0.3 %: unlike the seed, marginals are taken from the joint
        histogram and there is no epsilon in the logarithms (README, "Differences from the
        seed").

    Args:
        num_bins: number of bins K >= 2.
        sigma: Gaussian standard deviation in bin widths.
        normalize: True / "arithmetic" (the seed's), False / "none", or "studholme".
        value_range: (lo, hi) mapped onto the bins, or "auto" (each image's min..max).
        base: log base of unnormalised MI (2: bits, as the seed).
        **kwargs: passed to :func:`mi.mutual_information` (per_channel, kernel, backend,
            deterministic, group).

    Example:
        >>> import torch
        >>> a = torch.rand(2, 1, 64, 64)
        >>> MutualInformation()(a, a).shape
        torch.Size([2])
    """

    def __init__(
        self,
        num_bins: int = 256,
        sigma: float = 0.4,
        normalize=True,
        *,
        value_range=(0.0, 1.0),
        base: Optional[float] = 2.0,
        **kwargs,
    ):
        super().__init__()
        check_args(num_bins, sigma, value_range, base)
        self.num_bins, self.sigma = num_bins, sigma
        self.normalize = check_normalize(normalize)
        self.value_range, self.base = value_range, base
        self.kwargs = check_kwargs("MutualInformation", kwargs, [k for k in MI_KWARGS if k != "base"])

    def forward(self, input1: Tensor, input2: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        check_pair(input1, input2, ("input1", "input2"))
        return mutual_information(
            input1, input2, num_bins=self.num_bins, sigma=self.sigma, value_range=self.value_range,
            normalize=self.normalize, mask=mask, base=self.base, **self.kwargs,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return settings(self, "num_bins", "sigma", "normalize", "value_range", "base")


#: The keyword arguments of :func:`mi.mutual_information` that the modules pass through.
MI_KWARGS = ("base", "per_channel", "kernel", "backend", "deterministic", "group")


def check_args(num_bins, sigma, value_range, base) -> None:
    """Refuse, when a module is built rather than on its first call, a bad ``num_bins``,
    ``sigma``, ``value_range`` or ``base`` (as :func:`mi.mutual_information` would; the
    module keeps them as given)."""
    _check_num_bins(num_bins)
    _check_sigma(sigma)
    _check_range(value_range)
    check_base(base)


def check_kwargs(owner: str, kwargs: dict, allowed=MI_KWARGS) -> dict:
    """Refuse, when a module is built rather than on its first call, a keyword it would pass
    to a function that does not take it."""
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"{owner} got unexpected keyword argument(s) {unknown}; it takes {list(allowed)}")
    return kwargs


def settings(module: nn.Module, *names: str) -> str:
    """``extra_repr`` of a loss module: ``names`` (its attributes) and the keywords it passes on
    (kernel, per_channel, ...), everything that changes its value."""
    items = [(n, getattr(module, n)) for n in names] + list(module.kwargs.items())
    return ", ".join(f"{n}={v!r}" for n, v in items)


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """A loss's per-image values reduced by ``reduction`` ("mean", "sum", "none"); the mean of
    an empty batch (NaN) is refused."""
    if reduction == "mean":
        if loss.numel() == 0:
            raise ValueError("reduction='mean' of an empty batch has no value; use reduction='sum' or 'none'")
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


class MutualInformationLoss(nn.Module):
    """Negative (normalised) mutual information, a loss for image registration.

    Defaults, and why:
        * ``normalize="studholme"``: ``(H(a) + H(b)) / H(a, b)`` does not reward shrinking
          the overlap of the images the way plain MI can (Studholme et al. 1999).
        * ``num_bins=32``: registration needs a well-populated joint histogram, not a fine
          one; 32-64 bins is what ITK, ANTs and elastix use.
        * ``sigma=1.0`` bin: a Gaussian of one bin width or more spreads each pixel's unit
          of mass evenly whatever its position within a bin, so the loss is smooth in the
          transform (smaller sigmas add ripple at the bin spacing).
        * ``value_range="auto"``: each image's own min..max (over the mask), so CT in HU and
          MR in arbitrary units both work without rescaling.

    Args:
        num_bins, sigma, normalize, value_range, base, per_channel, kernel, backend,
        deterministic, group: as in :func:`mi.mutual_information` (``group``: each rank
        passes its shard of the pixels; see ``mi.distributed``).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch (and channels).

    Shape:
        fixed, moving: (B, C, *spatial); mask: broadcastable to them. Output: a scalar, or
        (B,) / (B, C) with ``reduction="none"``.

    Example:
        >>> import torch
        >>> loss = MutualInformationLoss()
        >>> a = torch.rand(1, 1, 32, 32, requires_grad=True)
        >>> loss(a, a.detach()).backward()
    """

    def __init__(
        self,
        num_bins: int = 32,
        sigma: float = 1.0,
        normalize="studholme",
        *,
        value_range="auto",
        reduction: str = "mean",
        **kwargs,
    ):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        check_args(num_bins, sigma, value_range, kwargs.get("base"))
        self.num_bins, self.sigma = num_bins, sigma
        self.normalize = check_normalize(normalize)
        self.value_range, self.reduction = value_range, reduction
        self.kwargs = check_kwargs(type(self).__name__, kwargs, self._KWARGS)

    _KWARGS = MI_KWARGS

    def forward(self, fixed: Tensor, moving: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        check_pair(fixed, moving, ("fixed", "moving"))
        return reduce_loss(-self._score(fixed, moving, mask), self.reduction)

    def _score(self, fixed: Tensor, moving: Tensor, mask: Optional[Tensor]) -> Tensor:
        return mutual_information(
            fixed, moving, num_bins=self.num_bins, sigma=self.sigma, value_range=self.value_range,
            normalize=self.normalize, mask=mask, **self.kwargs,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return settings(self, "num_bins", "sigma", "normalize", "value_range", "reduction")


__all__ = ["MutualInformation", "MutualInformationLoss"]
