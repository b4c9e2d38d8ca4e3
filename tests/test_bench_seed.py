"""The benchmarks' baseline (bench/seed.py) is the seed repository's algorithm.

Checked in float64 against the seed's forward transcribed in tests/oracle.py (its own 0..255
scale) and against the formula written out here in bin coordinates with numpy.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from oracle import seed_mutual_information as oracle_seed

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_seed", ROOT / "bench" / "seed.py")
seed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seed)


def _pair(shape=(2, 1, 12, 10), seed_=0):
    gen = torch.Generator().manual_seed(seed_)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    y = (0.7 * x**2 + 0.3 * torch.rand(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    return x, y


def _numpy_formula(x, y, num_bins, sigma, lo, hi, normalize):
    """Dense Gaussian weights in bin coordinates, the seed's epsilons, log2; (B,)."""
    eps = 1e-10
    u = (x.reshape(len(x), -1) - lo) / (hi - lo) * (num_bins - 1)
    v = (y.reshape(len(y), -1) - lo) / (hi - lo) * (num_bins - 1)
    a = np.arange(num_bins)
    out = []
    for ub, vb in zip(u, v):
        w1 = np.exp(-((ub[:, None] - a) ** 2) / (2 * sigma**2))
        w2 = np.exp(-((vb[:, None] - a) ** 2) / (2 * sigma**2))
        p1, p2 = w1.mean(0), w2.mean(0)
        p1, p2 = p1 / (p1.sum() + eps), p2 / (p2.sum() + eps)
        j = w1.T @ w2
        p12 = j / (j.sum() + eps)
        h1, h2, h12 = (-(p * np.log2(p + eps)).sum() for p in (p1, p2, p12))
        out.append(2 * (h1 + h2 - h12) / (h1 + h2) if normalize else h1 + h2 - h12)
    return np.array(out)


def test_seed_readme_example_matches_transcribed_seed():
    """256 bins, sigma 0.4, normalised: the seed's own example, value for value."""
    x, y = _pair()
    ours = seed.seed_mutual_information(x, y, num_bins=256, sigma=0.4, normalize=True)
    torch.testing.assert_close(ours, oracle_seed(x, y, sigma=0.4, num_bins=256), rtol=1e-12, atol=0)


@pytest.mark.parametrize("num_bins, sigma", [(8, 0.5), (32, 1.3), (64, 0.5)])
def test_sigma_in_bin_widths_matches_seed_on_its_scale(num_bins, sigma):
    """sigma in bin widths = the seed's std sigma * 255 / (K - 1) on its 0..255 scale."""
    x, y = _pair(seed_=num_bins)
    ours = seed.seed_mutual_information(x, y, num_bins=num_bins, sigma=sigma)
    ref = oracle_seed(x, y, sigma=sigma * 255 / (num_bins - 1), num_bins=num_bins, normalize=False)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("normalize", [False, True])
def test_value_range_matches_numpy_formula(normalize):
    lo, hi, num_bins, sigma = -2.0, 3.0, 16, 0.7
    x, y = _pair((3, 1, 5, 4, 3))
    x, y = lo + (hi - lo) * x, lo + (hi - lo) * y
    ours = seed.seed_mutual_information(x, y, num_bins, sigma, (lo, hi), normalize)
    ref = _numpy_formula(x.numpy(), y.numpy(), num_bins, sigma, lo, hi, normalize)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_gradient_matches_transcribed_seed():
    x, y = _pair()
    y1, y2 = y.clone().requires_grad_(True), y.clone().requires_grad_(True)
    seed.seed_mutual_information(x, y1, num_bins=32, sigma=0.5).sum().backward()
    oracle_seed(x, y2, sigma=0.5 * 255 / 31, num_bins=32, normalize=False).sum().backward()
    torch.testing.assert_close(y1.grad, y2.grad, rtol=1e-9, atol=1e-12)


def test_float32_close_to_float64():
    x, y = _pair()
    ref = seed.seed_mutual_information(x, y, num_bins=64, sigma=0.5)
    got = seed.seed_mutual_information(x.float(), y.float(), num_bins=64, sigma=0.5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-5)
