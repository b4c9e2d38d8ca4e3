"""Shared by the tests and the doctests in mi/."""

import os

import torch

# Triton decides between compiled and interpreted kernels when a kernel is defined (on the
# first launch in mi.kernels): without a GPU, run every kernel in the interpreter on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import mi  # noqa: E402


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["torch"] = torch
    doctest_namespace["mi"] = mi
    torch.manual_seed(0)
