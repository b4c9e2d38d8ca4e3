"""Differentiable soft histograms, joint histograms and mutual information for PyTorch.

One op (the soft joint histogram, in O(K^2) memory) with two backends: plain torch
(CPU, exact, chunked) and fused Triton kernels (CUDA). Entropies and MI on top;
modules and a CLI on top of that. See the README for conventions and units.
"""

from . import _checkout  # noqa: F401  (first: mi.kernels in a source checkout)
from .functional import (
    entropies,
    histogram,
    histogram2d,
    joint_histogram,
    mutual_information,
    set_value_checks,
    triton_available,
    value_checks,
)
from .information import entropies_from_joint, mutual_information_from_joint
from .local import LocalMutualInformationLoss, local_mutual_information
from .modules import MutualInformation, MutualInformationLoss

__version__ = "0.1.0"

__all__ = [
    "histogram",
    "histogram2d",
    "joint_histogram",
    "mutual_information",
    "entropies",
    "entropies_from_joint",
    "mutual_information_from_joint",
    "local_mutual_information",
    "LocalMutualInformationLoss",
    "MutualInformation",
    "MutualInformationLoss",
    "set_value_checks",
    "value_checks",
    "triton_available",
]
