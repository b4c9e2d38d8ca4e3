"""The op in bin coordinates (torch backend) against the dense float64 oracle."""

import math

import numpy as np
import pytest
import torch
from oracle import dense_hist, dense_joint

from mi import _autograd, _torch

CASES = [
    # (B, N, K, sigma, kernel_u, kernel_v)
    (1, 1, 2, 0.4, "gaussian", "gaussian"),
    (2, 37, 5, 0.1, "gaussian", "gaussian"),
    (3, 500, 16, 0.4, "gaussian", "gaussian"),
    (2, 300, 64, 1.0, "gaussian", "gaussian"),
    (2, 200, 8, 2.5, "gaussian", "gaussian"),  # window wider than K: clamped to K
    (2, 300, 12, 0.5, "bspline", "bspline"),
    (2, 300, 12, 0.5, "box", "bspline"),  # ITK Mattes' pair of windows
    (2, 300, 12, 0.5, "bspline", "box"),  # the box on the second axis: dv must be 0 too
    # the compatibility windows (mi.compat): kornia's, of radius sigma, and MONAI's pair
    (2, 300, 16, 1.0, "xu", "xu"),
    (2, 300, 16, 1.7, "xu", "xu"),
    (2, 300, 16, 1.0, "tgauss", "tgauss"),
    (2, 300, 16, 2.5, "tgauss", "tgauss"),
    (2, 300, 16, 1.0, "rect", "rect"),
    (2, 300, 12, 0.5, "bspline", "nearest"),
    # the B-spline's 4-bin windows on as few bins (every window reaches past both ends), and on
    # fewer (a clamped window of 3)
    (2, 300, 4, 0.5, "bspline", "bspline"),
    (2, 300, 3, 0.5, "bspline", "gaussian"),
]
IDS = [f"B{b}-N{n}-K{k}-s{s}-{ku}-{kv}" for b, n, k, s, ku, kv in CASES]


def _data(b, n, k, gen, spread=3.0):
    """Samples over the bins and beyond their ends, plus a few far outliers."""
    u = torch.rand(b, n, generator=gen) * (k + 2 * spread) - spread
    v = torch.rand(b, n, generator=gen) * (k + 2 * spread) - spread
    if n > 4:
        u[:, 0], v[:, 1], u[:, 2] = -1000.0, 1e6, float(k - 1)  # far outliers, an exact centre
    return u, v, torch.rand(b, n, generator=gen)


def _rel(a, ref):
    return ((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("b,n,k,sigma,ku,kv", CASES, ids=IDS)
def test_joint_matches_dense_oracle(b, n, k, sigma, ku, kv, with_mask):
    gen = torch.Generator().manual_seed(n * k)
    u, v, m = _data(b, n, k, gen)
    m = m if with_mask else None
    j = _torch.joint_hist_forward(u, v, m, k, sigma, ku, kv)
    ud, vd = u.double().requires_grad_(), v.double().requires_grad_()
    md = None if m is None else m.double().requires_grad_()
    ref = dense_joint(ud, vd, md, k, sigma, ku, kv)
    assert j.dtype == torch.float32 and j.shape == (b, k, k)
    # Window truncation drops < 2**-24 of the peak and sums are float64: float32 rounding.
    assert _rel(j, ref) < 3e-7
    g = torch.randn(b, k, k, generator=gen)
    if ref.requires_grad:  # (not for two flat windows without a mask)
        ref.backward(g.double())
    du, dv, dm = _torch.joint_hist_backward(g, u, v, m, k, sigma, ku, kv, needs_m=True)
    for got, want, kind in [(du, ud.grad, ku), (dv, vd.grad, kv)] + (
        [(dm, md.grad, "")] if m is not None else []
    ):
        if kind in ("box", "rect", "nearest"):  # flat windows have no gradient, on either axis
            assert want is None or want.abs().max() == 0  # (the oracle agrees)
            assert torch.count_nonzero(got) == 0
        else:
            assert _rel(got, want) < 1e-5  # float32 weights and products: ~1e-7, with margin


HIST = [c for c in CASES if c[4] == "gaussian" or c[3:5] == (0.5, "bspline")]


@pytest.mark.parametrize("b,n,k,sigma,ku,kv", HIST, ids=[IDS[CASES.index(c)] for c in HIST])
def test_hist_matches_dense_oracle(b, n, k, sigma, ku, kv):
    gen = torch.Generator().manual_seed(k)
    u, _, m = _data(b, n, k, gen)
    h = _torch.hist_forward(u, m, k, sigma, ku)
    ud, md = u.double().requires_grad_(), m.double().requires_grad_()
    ref = dense_hist(ud, md, k, sigma, ku)
    assert _rel(h, ref) < 3e-7
    g = torch.randn(b, k, generator=gen)
    ref.backward(g.double())
    du, dm = _torch.hist_backward(g, u, m, k, sigma, ku, needs_m=True)
    assert _rel(du, ud.grad) < 1e-5 and _rel(dm, md.grad) < 1e-5


@pytest.mark.parametrize("kind", ["gaussian", "bspline"])
def test_infinite_samples_weigh_nothing(kind):
    """+-inf (which an extreme bin map can give with the value checks off) lands in no bin and
    gets a zero gradient, not NaN: the histograms equal those without these samples."""
    gen = torch.Generator().manual_seed(2)
    u, v, m = _data(2, 200, 8, gen)
    inf = torch.tensor([float("inf"), -float("inf")] * 5)
    ui, vi, mi_ = (
        torch.cat([t, x.expand(2, -1)], 1) for t, x in ((u, inf), (v, inf.flip(0)), (m, torch.ones(10)))
    )
    with_inf = _torch.joint_hist_forward(ui, vi, mi_, 8, 0.7, kind, kind)
    torch.testing.assert_close(
        with_inf, _torch.joint_hist_forward(u, v, m, 8, 0.7, kind, kind), rtol=1e-6, atol=0
    )
    torch.testing.assert_close(
        _torch.hist_forward(ui, mi_, 8, 0.7, kind), _torch.hist_forward(u, m, 8, 0.7, kind)
    )
    g = torch.randn(2, 8, 8, generator=gen)
    du, dv, dm = _torch.joint_hist_backward(g, ui, vi, mi_, 8, 0.7, kind, kind, needs_m=True)
    for d in (du, dv, dm):
        assert d[:, 200:].abs().max() == 0
    want = _torch.joint_hist_backward(g, u, v, m, 8, 0.7, kind, kind, needs_m=True)
    for got, ref in zip((du, dv, dm), want):
        torch.testing.assert_close(got[:, :200], ref)


def test_window_is_the_float32_support():
    """The Gaussian window covers every bin where the kernel exceeds 2**-24 of its peak."""
    for sigma in [0.05, 0.4, 0.5, 1.0, 3.3]:
        r = _torch.support("gaussian", sigma)
        assert math.exp(-(r**2) / (2 * sigma**2)) == pytest.approx(2.0**-24, rel=1e-9)
        assert _torch.window_size("gaussian", sigma, 10**6) == math.ceil(2 * r)


def test_chunking_does_not_change_the_result(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    u, v, m = _data(2, 5000, 32, gen)
    g = torch.randn(2, 32, 32, generator=gen)
    whole = (
        _torch.joint_hist_forward(u, v, m, 32, 0.7),
        _torch.joint_hist_backward(g, u, v, m, 32, 0.7, needs_m=True),
    )
    monkeypatch.setattr(_torch, "CHUNK_BYTES", 1)  # 1024 pixels a chunk
    parts = (
        _torch.joint_hist_forward(u, v, m, 32, 0.7),
        _torch.joint_hist_backward(g, u, v, m, 32, 0.7, needs_m=True),
    )
    torch.testing.assert_close(parts[0], whole[0], rtol=1e-6, atol=0)
    for a, b in zip(parts[1], whole[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the backward's gather one row of u's window at a time (what a large chunk does)
    monkeypatch.setattr(_torch, "GATHER_BLOCK", 1)
    rows = _torch.joint_hist_backward(g, u, v, m, 32, 0.7, needs_m=True)
    for a, b in zip(rows, whole[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_float64_accumulation_of_many_equal_samples():
    """A constant volume: 2**22 equal contributions to one bin stay exact (float32 sums drift)."""
    n = 2**22
    u = torch.full((1, n), 3.3)
    j = _torch.joint_hist_forward(u, u, None, 8, 0.5)
    w = math.exp(-(0.3**2) / (2 * 0.5**2))
    assert j[0, 3, 3].item() == pytest.approx(n * w * w, rel=1e-6)


def _eager_joint(u, v, m, k, sigma, ku, kv, backend, det, rx=None, ry=None, first=0.0, length=1.0):
    """The eager door with the custom op's flat arguments."""
    b = _autograd.Binning(k, sigma, (ku, kv), backend, det, first, length)
    return _autograd.joint_hist(u, v, m, b, rx, ry)


def _eager_hist(u, m, k, sigma, kind, backend, det, r=None, first=0.0, length=1.0):
    return _autograd.hist(u, m, _autograd.Binning(k, sigma, (kind,), backend, det, first, length), r)


DOORS = {
    "eager": (_eager_joint, _eager_hist),
    "custom_op": (_autograd.joint_hist_op, _autograd.hist_op),
}


@pytest.mark.parametrize("door", list(DOORS))  # the autograd.Function, and the op torch.compile sees
@pytest.mark.parametrize("ku,kv", [("gaussian", "gaussian"), ("bspline", "bspline")])
def test_gradcheck_float64(ku, kv, door):
    joint, hist = DOORS[door]
    gen = torch.Generator().manual_seed(3)
    u = (torch.rand(2, 30, generator=gen, dtype=torch.float64) * 8).requires_grad_()
    v = (torch.rand(2, 30, generator=gen, dtype=torch.float64) * 8).requires_grad_()
    m = torch.rand(2, 30, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda u, v, m: joint(u, v, m, 8, 0.7, ku, kv, "torch", False), (u, v, m))
    assert torch.autograd.gradcheck(lambda u, m: hist(u, m, 8, 0.7, ku, "torch", False), (u, m))


@pytest.mark.parametrize("k", [4, 8])
def test_bspline_second_derivative(k):
    """The B-spline window's backward and its own backward (w'', C2) against finite
    differences, float64, with samples over the bins and up to 3 bins beyond either end (where
    the windows drop bins): at 4 bins every window reaches past both ends."""
    gen = torch.Generator().manual_seed(k)
    u = (torch.rand(2, 40, generator=gen, dtype=torch.float64) * (k + 6) - 3).requires_grad_()
    v = (torch.rand(2, 40, generator=gen, dtype=torch.float64) * (k + 6) - 3).requires_grad_()
    m = torch.rand(2, 40, generator=gen, dtype=torch.float64).requires_grad_()
    joint = lambda u, v, m: _eager_joint(u, v, m, k, 1.0, "bspline", "bspline", "torch", False)
    hist = lambda u, m: _eager_hist(u, m, k, 1.0, "bspline", "torch", False)
    for fn, args in ((joint, (u, v, m)), (hist, (u, m))):
        assert torch.autograd.gradcheck(fn, args)
        assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("kind,radius", [("xu", 1.0), ("xu", 1.6), ("tgauss", 1.3)])
def test_compat_windows_gradcheck_and_second_derivative(kind, radius):
    """kornia's smooth windows (mi.compat): the op's backward and its own backward (exact, from
    w'') against finite differences, float64; the piecewise parts of these windows are met at
    random points, not at their joins."""
    gen = torch.Generator().manual_seed(5)
    u = (torch.rand(2, 40, generator=gen, dtype=torch.float64) * 8).requires_grad_()
    v = (torch.rand(2, 40, generator=gen, dtype=torch.float64) * 8).requires_grad_()
    m = torch.rand(2, 40, generator=gen, dtype=torch.float64).requires_grad_()
    fn = lambda u, v, m: _eager_joint(u, v, m, 8, radius, kind, kind, "torch", False)
    assert torch.autograd.gradcheck(fn, (u, v, m))
    assert torch.autograd.gradgradcheck(fn, (u, v, m))


def test_binning_record():
    """The op's contract: frozen, its fields normalised, bad wiring refused, its window the
    backends' one."""
    b = _autograd.Binning(np.int64(32), 1, ["gaussian", "bspline"], "triton", 1, 0, 31)
    assert (b.num_bins, b.sigma, b.kernels, b.deterministic, b.length) == (
        32,
        1.0,
        ("gaussian", "bspline"),
        True,
        31.0,
    )
    assert (b.window(0), b.window(1)) == (12, 4) and b.backend_args() == (32, 1.0, "gaussian", "bspline")
    with pytest.raises(AttributeError):
        b.num_bins = 8
    with pytest.raises(ValueError, match="kernels"):
        _autograd.Binning(8, 1.0, ("triangle",))
    with pytest.raises(ValueError, match="kernels"):
        _autograd.Binning(8, 1.0, ("box",) * 3)
    with pytest.raises(ValueError, match="backend"):
        _autograd.Binning(8, 1.0, ("box",), "auto")


def test_opcheck():
    gen = torch.Generator().manual_seed(4)
    u = (torch.rand(2, 50, generator=gen) * 8).requires_grad_()
    v = (torch.rand(2, 50, generator=gen) * 8).requires_grad_()
    m = torch.rand(2, 50, generator=gen).requires_grad_()
    torch.library.opcheck(_autograd.joint_hist_op, (u, v, m, 8, 0.5, "gaussian", "gaussian", "torch", False))
    torch.library.opcheck(
        _autograd.joint_hist_op, (u, v, None, 8, 0.5, "gaussian", "gaussian", "torch", False)
    )
    torch.library.opcheck(_autograd.hist_op, (u, m, 8, 0.5, "gaussian", "torch", False))
    # raw samples with row ranges (the public functions' path); gradients reach the samples
    rx, ry = torch.tensor([[0.0, 8.0], [1.0, 3.0]]), torch.tensor([[-1.0, 9.0]])
    args = (u, v, m, 8, 0.5, "gaussian", "gaussian", "torch", False, rx, ry, 0.0, 7.0)
    torch.library.opcheck(_autograd.joint_hist_op, args)
    torch.library.opcheck(_autograd.hist_op, (u, m, 8, 0.5, "gaussian", "torch", False, rx, 1.0, 5.0))


@pytest.mark.parametrize("door", list(DOORS))
def test_gradcheck_float64_mapped(door):
    """The row map u = (x - lo) * length / (hi - lo) + first inside the op: d/dx is chained."""
    joint, hist = DOORS[door]
    gen = torch.Generator().manual_seed(5)
    x = (torch.rand(2, 30, generator=gen, dtype=torch.float64) * 3 - 1).requires_grad_()
    y = (torch.rand(2, 30, generator=gen, dtype=torch.float64) * 50).requires_grad_()
    m = torch.rand(2, 30, generator=gen, dtype=torch.float64).requires_grad_()
    rx = torch.tensor([[-1.0, 2.0], [0.5, 0.5]], dtype=torch.float64)  # row 1 constant: scale 1
    ry = torch.tensor([[0.0, 50.0]], dtype=torch.float64)  # one range for both rows

    def f(x, y, m):
        return joint(x, y, m, 8, 0.7, "gaussian", "gaussian", "torch", False, rx, ry, 0.0, 7.0)

    assert torch.autograd.gradcheck(f, (x, y, m))
    assert torch.autograd.gradcheck(
        lambda x, m: hist(x, m, 8, 0.7, "bspline", "torch", False, rx, 1.0, 5.0), (x, m)
    )


def test_entropies_backward_against_autograd_and_gradcheck():
    """The hand-written backward of the entropies against autograd through the dense formula."""
    from oracle import entropies

    from mi.information import entropies_from_joint

    gen = torch.Generator().manual_seed(6)
    j = torch.rand(3, 7, 7, generator=gen, dtype=torch.float64)
    j[0, 2] = 0.0  # an empty row: p_a = 0 there
    j[1, :, 4] = 0.0  # an empty column
    j[2] = 0.0  # all empty
    j.requires_grad_()
    w = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    got = torch.stack(entropies_from_joint(j), -1)
    (got * w).sum().backward()
    g_got, j.grad = j.grad.clone(), None
    want = torch.stack(entropies(j), -1)
    torch.testing.assert_close(got[:2], want[:2])
    assert got[2].tolist() == [0.0, 0.0, 0.0]
    (want[:2] * w[:2]).sum().backward()
    torch.testing.assert_close(g_got[:2], j.grad[:2])
    assert torch.isfinite(g_got).all()
    jj = (torch.rand(2, 5, 5, generator=gen, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: entropies_from_joint(t), (jj,))
