"""Shared by the tests and the doctests in mi/."""

import os

import torch

# Triton decides between compiled and interpreted kernels when a kernel is defined (on the
# first launch in mi.kernels): without a GPU, run every kernel in the interpreter on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# Under pytest-xdist (make test) the workers share the machine's cores: each gets an equal
# share of intra-op threads, so that together they do not oversubscribe it.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    torch.set_num_threads(max(1, torch.get_num_threads() // _workers))

import mi  # noqa: E402


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["torch"] = torch
    doctest_namespace["mi"] = mi
    torch.manual_seed(0)
