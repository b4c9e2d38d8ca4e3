"""Joint histograms sharded over ``torch.distributed``: each rank holds some of the pixels.

MI is a function of the joint histogram, and the joint histogram is a sum over pixels, so
a volume split into slabs (or any partition of its pixels) across ranks needs two
collectives per call:

* one all-reduce of the per-row extremes (``value_range="auto"``, masked ranges, and what
  the value checks read), as a MAX of ``[-min, max]`` in float64, so that every rank bins
  with the whole image's range and raises (or not) on the same data;
* one all-reduce (SUM) of the unnormalised joint histograms ``(B, K, K)``;
* with the value checks on, first one all-reduce of a few numbers that must agree across
  the ranks (batch rows, bins, kernel, ranges, normalisation and base, which images need a
  gradient, ...: ``check_same``), so that a mismatched call raises on every rank instead of
  pairing collectives of different sizes; and, for a float64 mask on float32 images, one
  all-reduce of its largest weights. (Which rows have pixels of non-zero weight on some
  rank, for the refusal of a histogram whose windows all underflowed, comes from the
  extremes' all-reduce.) The value checks (:func:`mi.value_checks`) must be on or off on every
  rank alike: they decide which collectives a call makes.

Every rank then computes the same entropies and score. The histogram's backward needs no
communication: every rank's loss is the same function of the summed histogram, so the
gradient of its local histogram is the gradient of the sum (the all-reduce's backward is
the identity), and each rank's op backward gives the gradient of its own pixels. An
"auto" range that needs a gradient adds one all-reduce (SUM) in the backward: its
derivative is a sum over all pixels, given to the pixels at the extremes
(``functional._Live``).
Works with any backend that has MAX and SUM all-reduces (gloo on CPU, NCCL on GPU).
"""

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["check_group", "check_same", "all_reduce_minmax", "all_reduce_sum"]


def check_group(group):
    """None (not distributed), or a process group of an initialised ``torch.distributed``."""
    if group is None:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "group= needs torch.distributed initialised first (torch.distributed.init_process_group)"
        )
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            f"group must be a torch.distributed process group or None, got {type(group).__name__}"
        )
    if torch.compiler.is_compiling():
        raise ValueError("group= is not supported under torch.compile; call the function eagerly")
    return group


def all_reduce_minmax(group, pairs: list) -> list:
    """Per-row ``[lo, hi]`` pairs (each (R, 2), +inf / -inf where a rank has nothing) reduced
    over the group in one all-reduce: lo by MIN, hi by MAX. A row with a NaN on any rank
    comes back NaN on every rank (MAX itself is not NaN-safe). None entries pass through."""
    import torch.distributed as dist

    present = [p for p in pairs if p is not None]
    if not present:
        return pairs
    flat = [torch.stack([-p[:, 0].double(), p[:, 1].double()], 1) for p in present]
    nan = [p.isnan().any(1, keepdim=True).double() for p in present]
    buf = torch.cat([torch.cat([f.nan_to_num(nan=-math.inf), n], 1) for f, n in zip(flat, nan)])
    dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=group)
    out, at = [], 0
    for p in pairs:
        if p is None:
            out.append(None)
            continue
        part = buf[at : at + p.shape[0]]
        at += p.shape[0]
        pair = torch.stack([-part[:, 0], part[:, 1]], 1)
        out.append(torch.where(part[:, 2:] > 0, math.nan, pair).to(p.dtype))
    return out


def check_same(group, values: dict, device) -> None:
    """Refuse, on every rank alike, arguments that differ between the ranks (``values``: name
    -> a number; one all-reduce of them). Mismatched calls would pair collectives of
    different sizes (gloo aborts the process, NCCL hangs) or silently mix two histograms."""
    import torch.distributed as dist

    v = torch.tensor([float(t) for t in values.values()], dtype=torch.float64, device=device)
    both = torch.stack([-v, v], 1)  # MAX of -v: the smallest, MAX of v: the largest
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    lo, hi = (-both[:, 0]).tolist(), both[:, 1].tolist()
    differ = [f"{name} ({a:g} to {b:g})" for name, a, b in zip(values, lo, hi) if a != b]
    if differ:
        raise ValueError(
            f"group: the ranks passed different {', '.join(differ)}; every rank must make the same "
            "call (the same batch, arguments and gradients needed), with only its own pixels"
        )


class _AllReduceSum(torch.autograd.Function):
    """Sum over the group; the backward is the identity (every rank's loss is the same
    function of the sum, so d loss / d local = d loss / d sum, with no communication)."""

    @staticmethod
    def forward(ctx, t, group):
        import torch.distributed as dist

        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, g):
        return g, None


def all_reduce_sum(t: Tensor, group: Optional[object]) -> Tensor:
    """t summed over the group (differentiable, identity backward); t itself without one."""
    return t if group is None else _AllReduceSum.apply(t, group)
