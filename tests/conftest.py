import pytest
import torch

_empty, _empty_like = torch.empty, torch.empty_like


def _nan_filled(t):
    if t.is_floating_point() and not t.requires_grad:  # (torch's own placeholder leaves stay as they are)
        t.fill_(float("nan"))
    return t


@pytest.fixture(autouse=True)
def nan_filled_empty(monkeypatch):
    """Fresh outputs start as NaN, so code that forgets to write part of one fails loudly."""
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _nan_filled(_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _nan_filled(_empty_like(*a, **k)))


def _uses_triton(item) -> bool:
    """A test of the Triton backend: "triton" in its name or among its parameters."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return "triton" in item.name.lower() or any(v == "triton" for v in params.values() if isinstance(v, str))


def pytest_collection_modifyitems(config, items):
    from mi.kernels import unavailable_reason

    reason = unavailable_reason()  # Triton missing or too old: its tests are skipped, with why
    for item in items:
        if reason is not None and _uses_triton(item):
            item.add_marker(pytest.mark.skip(reason=reason))
        if not torch.cuda.is_available() and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
