import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is defined (at import of mi.kernels): without a
# GPU, run every kernel in the interpreter on CPU tensors. Must happen before mi is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import mi  # noqa: E402

_empty, _empty_like = torch.empty, torch.empty_like


def _nan_filled(t):
    if t.is_floating_point():
        t.fill_(float("nan"))
    return t


@pytest.fixture(autouse=True)
def nan_filled_empty(monkeypatch):
    """Fresh outputs start as NaN, so code that forgets to write part of one fails loudly."""
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _nan_filled(_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _nan_filled(_empty_like(*a, **k)))


@pytest.fixture(autouse=True)
def doctest_namespace_torch(doctest_namespace):
    doctest_namespace["torch"] = torch
    doctest_namespace["mi"] = mi
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
