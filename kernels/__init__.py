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
import re

from .utils import forced_method

__all__ = [
    "is_available",
    "unavailable_reason",
    "forced_method",
    "joint_hist_forward",
    "joint_hist_backward",
    "hist_forward",
    "hist_backward",
    "entropies_forward",
    "entropies_backward",
]


#: The oldest Triton these kernels run under (2026-12-03, torch 2.13 CPU, no GPU): Triton
#: 3.4, 3.5, 3.6 and 3.9 build every kernel ahead of time for sm_80 and sm_90 without spills
#: (``make kernels-report``) and pass the kernel tests in the interpreter. Triton 3.3's
#: compiler refuses the window code (``UnsupportedLanguageConstruct`` in ``_window_start``:
#: on a GPU every launch would fail), 3.2's was not checked (its ``ASTSource`` differs), and
#: 3.1's interpreter gave wrong histograms (a sum of 7e22 for 9216 pixels). Below this,
#: ``backend="auto"`` takes the torch backend on CUDA too (torch 2.5-2.7 pin Triton 3.1-3.3).
MIN_TRITON = (3, 4)


def _version(text):
    """(major, minor) of a version string such as "3.6.0" or "3.2.0+git1234" ((0, 0) if none)."""
    found = re.match(r"(\d+)\.(\d+)", str(text))
    return (int(found[1]), int(found[2])) if found else (0, 0)


@functools.cache
def unavailable_reason():
    """None when the kernels can run (a GPU is not needed: see TRITON_INTERPRET), else why
    not: Triton missing, broken, or older than ``MIN_TRITON``."""
    try:
        triton = importlib.import_module("triton")
        importlib.import_module("triton.language")
    except Exception as e:  # ImportError, or a broken install (missing driver libraries)
        return f"Triton is not importable ({type(e).__name__}: {e}); pip install triton"
    found = getattr(triton, "__version__", "0")
    if _version(found) < MIN_TRITON:
        want = ".".join(map(str, MIN_TRITON))
        return f"the Triton kernels need Triton >= {want}, found {found}; the torch backend works without it"
    return None


def is_available():
    """True when Triton can be imported and is recent enough (``unavailable_reason``)."""
    return unavailable_reason() is None


def _module(name):
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"mi.kernels: {reason}")
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
