"""Triton kernels of the soft (joint) histogram op, installed as ``mi.kernels``.

Inputs are in bin coordinates (bin centres 0..K-1), or raw samples with a range per row
that the kernels map to bin coordinates in registers; shape (B, N); see
``joint_hist.py`` and ``hist.py`` for the formulas. The launchers run on CUDA tensors, or
on CPU tensors under ``TRITON_INTERPRET=1``.

The kernel modules are imported on first use, not with this package: ``@triton.jit``
decides between compiled and interpreted mode when a kernel is *defined*, so deferring
that lets ``TRITON_INTERPRET`` be set any time before the first launch, and keeps
``import mi`` working where Triton is not installed.
"""

import functools
import importlib

from .utils import forced_method

__all__ = [
    "is_available",
    "forced_method",
    "joint_hist_forward",
    "joint_hist_backward",
    "hist_forward",
    "hist_backward",
    "entropies_forward",
    "entropies_backward",
]


@functools.cache
def is_available():
    """True when Triton can be imported (a GPU is not needed: see TRITON_INTERPRET)."""
    try:
        importlib.import_module("triton")
        importlib.import_module("triton.language")
    except Exception:  # ImportError, or a broken install (missing driver libraries)
        return False
    return True


def _module(name):
    if not is_available():
        raise RuntimeError("mi.kernels needs Triton (pip install triton); it is not importable")
    return importlib.import_module(f".{name}", __name__)


def joint_hist_forward(*args, **kwargs):
    """J (B, K, K) float32; see ``mi.kernels.joint_hist.joint_hist_forward``."""
    return _module("joint_hist").joint_hist_forward(*args, **kwargs)


def joint_hist_backward(*args, **kwargs):
    """(du, dv, dm); see ``mi.kernels.joint_hist.joint_hist_backward``."""
    return _module("joint_hist").joint_hist_backward(*args, **kwargs)


def hist_forward(*args, **kwargs):
    """H (B, K) float32; see ``mi.kernels.hist.hist_forward``."""
    return _module("hist").hist_forward(*args, **kwargs)


def hist_backward(*args, **kwargs):
    """(du, dm); see ``mi.kernels.hist.hist_backward``."""
    return _module("hist").hist_backward(*args, **kwargs)


def entropies_forward(*args, **kwargs):
    """Entropies of J (B, K, K); see ``mi.kernels.entropy.entropies_forward``."""
    return _module("entropy").entropies_forward(*args, **kwargs)


def entropies_backward(*args, **kwargs):
    """dL/dJ; see ``mi.kernels.entropy.entropies_backward``."""
    return _module("entropy").entropies_backward(*args, **kwargs)
