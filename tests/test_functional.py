"""Public functions against independent oracles: dense float64 formulas, scikit-learn, the seed."""

import math

import numpy as np
import pytest
import torch
from images import photo, remap, rotated, to_tensor01
from oracle import dense_hist, dense_joint, entropies, seed_mutual_information, to_bins
from oracle import mutual_information as oracle_mi

import mi
from mi.compat.monai import GlobalMutualInformationLoss

# ---------------------------------------------------------------- histograms in data units


@pytest.mark.parametrize("lead", [(), (3,), (2, 2)], ids=["1d", "B3", "B2x2"])
@pytest.mark.parametrize("k,sigma", [(8, 0.1), (21, 0.4), (64, 2.0)], ids=["K8", "K21", "K64"])
def test_histogram_matches_dense(lead, k, sigma):
    gen = torch.Generator().manual_seed(k)
    bins = torch.linspace(-3.0, 5.0, k)
    step = 8.0 / (k - 1)
    x = (torch.randn(*lead, 400, generator=gen) * 2 + 1).requires_grad_()
    w = torch.rand(*lead, 400, generator=gen)
    h = mi.histogram(x, bins, sigma, weights=w)
    xd = x.detach().double().requires_grad_()
    ref = dense_hist(((xd + 3.0) / step).reshape(-1, 400), w.reshape(-1, 400), k, sigma / step)
    ref = (ref / ref.sum(-1, keepdim=True)).reshape(*lead, k)
    assert h.shape == (*lead, k)
    torch.testing.assert_close(h.double(), ref, rtol=1e-5, atol=1e-7)
    g = torch.randn(*lead, k, generator=gen)
    (h * g).sum().backward()
    (ref * g.double()).sum().backward()
    # float32 gradients through the normalisation cancel terms of size max|grad|: bound relative to it
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-4, atol=1e-5 * xd.grad.abs().max().item())


def test_histogram2d_matches_dense():
    gen = torch.Generator().manual_seed(0)
    bins = torch.linspace(0, 255, 32)
    step = 255 / 31
    x1 = (torch.rand(2, 3, 500, generator=gen) * 255).requires_grad_()
    x2 = (x1.detach() * 0.5 + torch.rand(2, 3, 500, generator=gen) * 100).requires_grad_()
    j = mi.histogram2d(x1, x2, bins, sigma=6.0)
    a, b = (x1.detach().double() / step).requires_grad_(), (x2.detach().double() / step).requires_grad_()
    ref = dense_joint(a.reshape(6, 500), b.reshape(6, 500), None, 32, 6.0 / step)
    ref = (ref / ref.sum((-2, -1), keepdim=True)).reshape(2, 3, 32, 32)
    assert j.shape == (2, 3, 32, 32)
    torch.testing.assert_close(j.double(), ref, rtol=1e-5, atol=1e-8)
    g = torch.randn(2, 3, 32, 32, generator=gen)
    (j * g).sum().backward()
    (ref * g.double()).sum().backward()
    # float32 sums through the normalisation cancel terms of size max|grad| (as for histogram):
    # the error measured is 2e-6 to 4e-6 of max|grad| per element, bound at 1e-5 of it
    for got, want in ((x1.grad, a.grad / step), (x2.grad, b.grad / step)):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5 * want.abs().max().item())


def test_seed_readme_usage_and_the_x255_warning():
    """The seed's README calls histogram(x in [0, 1], linspace(0, 255, 256), sigma): it scaled x
    by 255 inside. Here that call warns (the mass misses the bins); x * 255 is the port."""
    x = to_tensor01(photo((64, 64))).view(1, -1)
    bins = torch.linspace(0, 255, 256)
    with pytest.warns(UserWarning, match="do not scale x by 255"):
        mi.histogram(x, bins, 0.4)
    h = mi.histogram(x * 255, bins, 0.4)
    ref = dense_hist(x.double() * 255, None, 256, 0.4)
    torch.testing.assert_close(h.double(), ref / ref.sum(), rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------- mutual information


SHAPES = [(2, 1, 24, 20), (1, 2, 6, 7, 8), (3, 1, 50)]


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d", "1d"])
@pytest.mark.parametrize("normalize", ["none", "arithmetic", "studholme"])
@pytest.mark.parametrize("k,sigma", [(16, 0.5), (40, 1.5)], ids=["K16", "K40"])
def test_mutual_information_matches_dense(shape, normalize, k, sigma):
    gen = torch.Generator().manual_seed(k)
    x = torch.rand(shape, generator=gen)
    y = (remap(x) + 0.1 * torch.rand(shape, generator=gen)).requires_grad_()
    x.requires_grad_()
    got = mi.mutual_information(x, y, num_bins=k, sigma=sigma, value_range=(0.0, 1.1), normalize=normalize)
    xd, yd = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    b = shape[0]
    ref = oracle_mi(
        dense_joint(
            to_bins(xd, 0.0, 1.1, k).reshape(b, -1), to_bins(yd, 0.0, 1.1, k).reshape(b, -1), None, k, sigma
        ),
        normalize,
    )
    assert got.shape == (b,)
    torch.testing.assert_close(got.double(), ref, rtol=2e-5, atol=1e-6)
    got.sum().backward()
    ref.sum().backward()
    # float32 gradients through the entropies cancel terms of size max|grad|: measured at most
    # 5e-6 of max|grad| over these cases, bound at 2e-5 of it
    for got_grad, want in ((y.grad, yd.grad), (x.grad, xd.grad)):
        torch.testing.assert_close(got_grad.double(), want, rtol=0, atol=2e-5 * want.abs().max().item())


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("n, k", [(96, 32), (160, 64)])
def test_nearly_independent_pair_keeps_relative_accuracy(n, k, backend):
    """MI of a nearly independent pair is a small difference of large entropies (5e-3 to 1e-2
    nats against about 3.5 each): within 1e-6 relative of the float64 formula (the
    entropies are computed in float64 on both backends; measured at most 1.1e-7, and 1e-4
    to 1e-3 on such pairs when they were float32; #9's target is 1e-5), and its gradient
    within 1e-5 of its largest magnitude (measured at most 1.3e-6)."""
    gen = torch.Generator().manual_seed(n)
    x = torch.rand(1, 1, n, n, generator=gen)
    y = (0.97 * torch.rand(1, 1, n, n, generator=gen) + 0.03 * x).requires_grad_()
    got = mi.mutual_information(x, y, num_bins=k, sigma=1.0, value_range=(0.0, 1.0), backend=backend)
    yd = y.detach().double().requires_grad_()
    u, v = (to_bins(t, 0.0, 1.0, k).reshape(1, -1) for t in (x.double(), yd))
    ref = oracle_mi(dense_joint(u, v, None, k, 1.0))
    assert ref.item() < 0.01
    assert abs(got.item() - ref.item()) <= 1e-6 * ref.item(), (got.item(), ref.item())
    got.sum().backward()
    ref.sum().backward()
    err = (y.grad.double() - yd.grad).abs().max().item() / yd.grad.abs().max().item()
    assert err <= 1e-5, err


def test_per_channel_and_auto_range():
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 20, 20, generator=gen) * 100 - 20
    y = x**2
    got = mi.mutual_information(x, y, num_bins=16, sigma=0.8, per_channel=True, value_range="auto")
    assert got.shape == (2, 3)
    for b in range(2):
        for c in range(3):
            u, v = x[b, c].double().flatten(), y[b, c].double().flatten()
            ju = to_bins(u, u.min(), u.max(), 16)
            jv = to_bins(v, v.min(), v.max(), 16)
            ref = oracle_mi(dense_joint(ju[None], jv[None], None, 16, 0.8))[0]
            assert got[b, c].item() == pytest.approx(ref.item(), rel=2e-5)


def _oracle_rows(x, y, m, k, sigma, rx, ry):
    """MI per row of the dense float64 estimator: x, y, m (R, N); rx, ry: "auto" (each row's
    min..max over the pixels with m > 0) or a (lo, hi) pair."""
    out = []
    for xr, yr, mr in zip(x.double(), y.double(), m.double()):
        keep = mr > 0
        bounds = [(t[keep].min(), t[keep].max()) if r == "auto" else r for t, r in ((xr, rx), (yr, ry))]
        u, v = (to_bins(t, lo, hi, k) for t, (lo, hi) in zip((xr, yr), bounds))
        out.append(oracle_mi(dense_joint(u[None], v[None], mr[None], k, sigma))[0])
    return torch.stack(out)


@pytest.mark.parametrize("mask_shape", ["full", "broadcast"])
def test_per_channel_with_a_mask(mask_shape):
    """One histogram per (sample, channel), each over the pixels its mask keeps, each with its
    own automatic range: against the dense oracle per row."""
    gen = torch.Generator().manual_seed(21)
    x = torch.rand(2, 3, 9, 11, generator=gen) * torch.tensor([1.0, 50.0, 0.01])[:, None, None]
    y = remap(x / x.amax((-2, -1), keepdim=True)) + 0.1 * torch.rand(2, 3, 9, 11, generator=gen)
    shape = (2, 3, 9, 11) if mask_shape == "full" else (2, 1, 9, 11)
    m = torch.rand(shape, generator=gen) * (torch.rand(shape, generator=gen) > 0.3)
    got = mi.mutual_information(x, y, num_bins=12, sigma=0.6, mask=m, per_channel=True)
    assert got.shape == (2, 3)
    mm = m.expand(2, 3, 9, 11).reshape(6, -1)
    want = _oracle_rows(x.reshape(6, -1), y.reshape(6, -1), mm, 12, 0.6, "auto", "auto").view(2, 3)
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(
    "value_range", [((-0.2, 1.3), (0.1, 0.9)), ("auto", (0.0, 1.2)), ((0.0, 1.0), "auto")], ids=str
)
def test_gaussian_with_a_range_per_image(value_range):
    gen = torch.Generator().manual_seed(22)
    x = torch.rand(3, 1, 10, 12, generator=gen)
    y = remap(x) * 0.9 + 0.1 * torch.rand(3, 1, 10, 12, generator=gen)
    got = mi.mutual_information(x, y, num_bins=20, sigma=0.8, value_range=value_range)
    want = _oracle_rows(x.view(3, -1), y.view(3, -1), torch.ones(3, 120), 20, 0.8, *value_range)
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6)


def test_entropies_in_bits():
    gen = torch.Generator().manual_seed(23)
    x = torch.rand(2, 1, 16, 16, generator=gen)
    y = remap(x)
    got = mi.entropies(x, y, num_bins=24, sigma=0.7, value_range=(0, 1), base=2)
    u, v = to_bins(x.flatten(1), 0, 1, 24), to_bins(y.flatten(1), 0, 1, 24)
    want = entropies(dense_joint(u, v, None, 24, 0.7))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w / math.log(2), rtol=1e-5, atol=1e-6)


def test_base_and_entropies():
    x = torch.rand(2, 1, 30, 30)
    y = remap(x)
    nats = mi.mutual_information(x, y, num_bins=32, sigma=1.0)
    bits = mi.mutual_information(x, y, num_bins=32, sigma=1.0, base=2)
    torch.testing.assert_close(bits, nats / math.log(2))
    ha, hb, hab = mi.entropies(x, y, num_bins=32, sigma=1.0)
    torch.testing.assert_close(ha + hb - hab, nats)
    xf, yf = x.flatten(1), y.flatten(1)
    ref = entropies(dense_joint(to_bins(xf, *_minmax(xf), 32), to_bins(yf, *_minmax(yf), 32), None, 32, 1.0))
    for got, want in zip((ha, hb, hab), ref):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    p = mi.joint_histogram(x, y, num_bins=32, sigma=1.0)
    assert p.shape == (2, 32, 32)
    torch.testing.assert_close(p.sum((-2, -1)), torch.ones(2))


def _minmax(x):
    return x.double().min(1, keepdim=True)[0], x.double().max(1, keepdim=True)[0]


@pytest.mark.parametrize("k", [4, 11])
def test_discrete_limit_matches_sklearn(k):
    """Integer data at the bin centres and a tiny sigma: the soft histogram is the hard one."""
    metrics = pytest.importorskip("sklearn.metrics")
    gen = np.random.default_rng(k)
    a = gen.integers(0, k, size=(1, 1, 40, 30))
    b = (a * 3 + gen.integers(0, 2, size=a.shape)) % k  # dependent, not a bijection
    x, y = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    kw = dict(num_bins=k, sigma=0.05, value_range=(0, k - 1))
    assert mi.mutual_information(x, y, **kw).item() == pytest.approx(
        metrics.mutual_info_score(a.ravel(), b.ravel()), rel=1e-5
    )
    assert mi.mutual_information(x, y, normalize="arithmetic", **kw).item() == pytest.approx(
        metrics.normalized_mutual_info_score(a.ravel(), b.ravel(), average_method="arithmetic"), rel=1e-5
    )


def test_from_joint_on_integer_counts_matches_sklearn():
    """A contingency table of integer counts (numpy.histogram2d's, say) is taken in float64:
    MI and NMI equal scikit-learn's on the same table (they were once cast back to the
    integer dtype: entropies of 1 and MI 0). Also numpy and tensor scalars as ``base``."""
    metrics = pytest.importorskip("sklearn.metrics")
    gen = np.random.default_rng(7)
    a = gen.integers(0, 6, 500)
    b = (a + gen.integers(0, 3, 500)) % 6
    counts, _, _ = np.histogram2d(a, b, bins=6)
    table = torch.from_numpy(counts.astype(np.int64))
    got = mi.mutual_information_from_joint(table)
    assert got.dtype == torch.float64
    want = metrics.mutual_info_score(None, None, contingency=counts)
    assert got.item() == pytest.approx(want, rel=1e-12)
    nmi = metrics.normalized_mutual_info_score(a, b, average_method="arithmetic")
    assert mi.mutual_information_from_joint(table, "arithmetic").item() == pytest.approx(nmi, rel=1e-12)
    for base in (np.float32(2.0), torch.tensor(2.0), 2):
        bits = mi.mutual_information_from_joint(table, base=base).item()
        assert bits == pytest.approx(want / np.log(2.0), rel=1e-12)
    h = mi.entropies_from_joint(table.to(torch.int32))
    assert all(t.dtype == torch.float64 for t in h) and h[2].item() > h[0].item() > 1.0


def test_value_range_and_bins_in_other_containers():
    """A 2 x 2 array of ranges is a pair of pairs, as a tuple of tuples is; float16 bin
    centres from linspace (rounded to 1e-3) are equally spaced to float16's resolution."""
    x, y = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    want = mi.mutual_information(x, y, value_range=((0.0, 1.0), (0.0, 2.0)))
    torch.testing.assert_close(
        mi.mutual_information(x, y, value_range=np.array([[0.0, 1.0], [0.0, 2.0]])), want
    )
    torch.testing.assert_close(
        mi.mutual_information(x, y, value_range=torch.tensor([[0.0, 1.0], [0.0, 2.0]])), want
    )
    bins16 = torch.linspace(0, 1, 8, dtype=torch.float16)
    got = mi.histogram2d(x.flatten(1), y.flatten(1), bins16, 0.1)
    # the layout is the first centre and the mean step: linspace's own
    torch.testing.assert_close(got, mi.histogram2d(x.flatten(1), y.flatten(1), torch.linspace(0, 1, 8), 0.1))
    with pytest.raises(ValueError, match="equally spaced"):  # the same centres in float32: too uneven
        mi.histogram2d(x.flatten(1), y.flatten(1), bins16.float(), 0.1)


@pytest.mark.parametrize("normalize", [True, False], ids=["normalized", "bits"])
def test_seed_module_reproduces_the_seed_on_a_real_pair(normalize):
    """The seed's example: a photograph against a rotated copy, and a pair of identical images
    (float64 oracle transcribed from the seed's code).

    The one deliberate difference is the marginals: here the sums of the joint, in the seed
    separately summed kernel values. They differ only for pixels whose kernel spills beyond the
    first or last bin (a pixel at 0 loses its w(-1) neighbour: 4% of its mass at sigma = 0.4).
    So: with the seed's marginals swapped for the joint's, the seed's formula is matched to float32
    rounding; as it stands, to 0.1% on the photo (few pixels at 0 or 255), and to 0.3% on the pair
    whose rotation filled its corners with black (11% of the pixels at 0).
    """
    img = photo((96, 80))
    a, b = to_tensor01(img), to_tensor01(rotated(img, 10))
    input1, input2 = torch.cat([a, a, b]), torch.cat([b, a, b])
    got = mi.MutualInformation(num_bins=256, sigma=0.4, normalize=normalize)(input1, input2).double()
    joint_marginals = seed_mutual_information(input1, input2, 0.4, 256, normalize, marginals="joint")
    # float32 entropies of ~7 bits, MI ~0.3 of them: cancellation amplifies 6e-8 about 60-fold
    torch.testing.assert_close(got, joint_marginals, rtol=1e-5, atol=0)
    seed = seed_mutual_information(input1, input2, 0.4, 256, normalize)
    torch.testing.assert_close(got[1], seed[1], rtol=1e-3, atol=0)
    torch.testing.assert_close(got, seed, rtol=3e-3, atol=0)
    assert got[1] > got[0] and got[2] > got[0]  # identical images share more information


# ---------------------------------------------------------------- masks, edges, dtypes


def test_bool_mask_equals_selecting_pixels():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 16, 16, generator=gen)
    y = remap(x) * 0.7 + 0.3 * torch.rand(2, 1, 16, 16, generator=gen)
    mask = torch.rand(2, 1, 16, 16, generator=gen) > 0.4
    got = mi.mutual_information(x, y, num_bins=12, sigma=0.7, value_range=(0, 1), mask=mask)
    for i in range(2):
        sel = mask[i, 0]
        xi, yi = x[i, 0][sel].reshape(1, 1, -1), y[i, 0][sel].reshape(1, 1, -1)
        ref = mi.mutual_information(xi, yi, num_bins=12, sigma=0.7, value_range=(0, 1))
        assert got[i].item() == pytest.approx(ref.item(), rel=1e-5)


def test_float_mask_weights_and_gradient():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(1, 1, 10, 10, generator=gen)
    y = remap(x)
    w = torch.rand(1, 1, 10, 10, generator=gen).requires_grad_()
    got = mi.mutual_information(x, y, num_bins=8, sigma=0.6, value_range=(0, 1), mask=w)
    wd = w.detach().double().requires_grad_()
    ref = oracle_mi(
        dense_joint(to_bins(x, 0, 1, 8).flatten(1), to_bins(y, 0, 1, 8).flatten(1), wd.flatten(1), 8, 0.6)
    )
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-7)
    got.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(w.grad.double(), wd.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("normalize", ["none", "arithmetic", "studholme"])
def test_degenerate_inputs_are_finite(normalize):
    """Constant images, an all-zero mask, tiny sigma: finite values and gradients, never NaN
    (or a ValueError: at sigma 1e-3 bins, samples half-way between two centres weigh 0)."""
    x = torch.full((2, 1, 8, 8), 0.3, requires_grad=True)
    y = torch.full((2, 1, 8, 8), 0.7, requires_grad=True)
    mask = torch.zeros(2, 1, 8, 8)
    mask[1] = 1.0
    mask.requires_grad_()
    with pytest.raises(ValueError, match="holds only kernel tails: its largest cell is 0 "):
        mi.mutual_information(x, y, num_bins=16, normalize=normalize, value_range=(0, 1), sigma=1e-3)
    for kw in [dict(value_range="auto"), dict(value_range=(0, 1.5), sigma=1e-3), dict(mask=mask)]:
        out = mi.mutual_information(x, y, num_bins=16, normalize=normalize, **kw)
        out.sum().backward()
        for t in (out, x.grad, y.grad) + ((mask.grad,) if "mask" in kw else ()):
            assert torch.isfinite(t).all()
    expected = {"none": 0.0, "arithmetic": 0.0, "studholme": 1.0}[normalize]
    zero = mi.mutual_information(x, y, num_bins=16, normalize=normalize, mask=torch.zeros(2, 1, 8, 8))
    assert zero.tolist() == [expected, expected]


def test_empty_inputs():
    """No pixels (an empty spatial axis, or N = 0 samples): empty histograms, the value of
    independent variables, zero-size gradients; never an error or a NaN."""
    x = torch.rand(2, 1, 0, 5, requires_grad=True)
    out = mi.mutual_information(x, x * 1.0, normalize="studholme")
    out.sum().backward()
    assert out.tolist() == [1.0, 1.0] and x.grad.shape == x.shape
    h = mi.histogram(torch.rand(3, 0), torch.linspace(0, 1, 8), 0.1)
    j = mi.histogram2d(torch.rand(3, 0), torch.rand(3, 0), torch.linspace(0, 1, 8), 0.1)
    assert h.shape == (3, 8) and j.shape == (3, 8, 8) and h.abs().sum() == 0 and j.abs().sum() == 0


def test_information_inequalities():
    gen = torch.Generator().manual_seed(8)
    x = torch.rand(4, 1, 20, 20, generator=gen)
    y = torch.rand(4, 1, 20, 20, generator=gen) * 0.2 + x * 0.8
    ha, hb, hab = mi.entropies(x, y, num_bins=32, sigma=0.3)
    assert (hab >= torch.maximum(ha, hb) - 1e-6).all()
    assert (ha + hb - hab >= -1e-6).all()
    nmi = mi.mutual_information(x, y, num_bins=32, sigma=0.3, normalize="arithmetic")
    assert ((nmi >= -1e-6) & (nmi <= 1 + 1e-6)).all()


@pytest.mark.parametrize(
    "dtype,rtol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2), (torch.float64, 1e-10)]
)
def test_dtypes(dtype, rtol):
    """Half inputs are computed in float32: the error is the input's own rounding (bf16: 8 bits)."""
    gen = torch.Generator().manual_seed(9)
    x = torch.rand(2, 1, 32, 32, generator=gen, dtype=torch.float64)
    y = remap(x)
    xh, yh = x.to(dtype), y.to(dtype)
    got = mi.mutual_information(xh, yh, num_bins=32, sigma=1.0, value_range=(0, 1))
    assert got.dtype == dtype
    # The oracle sees the same (rounded) inputs, so what is left is accumulation error.
    ref = oracle_mi(
        dense_joint(to_bins(xh, 0, 1, 32).flatten(1), to_bins(yh, 0, 1, 32).flatten(1), None, 32, 1.0)
    )
    torch.testing.assert_close(got.double(), ref, rtol=rtol, atol=0)


def test_inputs_are_not_modified():
    x = torch.rand(2, 1, 9, 9) * 3
    y = torch.rand(2, 1, 9, 9) - 1
    m = torch.rand(2, 1, 9, 9)
    copies = [t.clone() for t in (x, y, m)]
    mi.mutual_information(x, y, mask=m, num_bins=8, value_range="auto")
    mi.histogram2d(x.flatten(1), y.flatten(1), torch.linspace(-1, 3, 9), 0.3, weights=m.flatten(1))
    for t, c in zip((x, y, m), copies):
        assert torch.equal(t, c)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph_has_no_graph_break(dynamic):
    """Also with dynamic=True, where dynamo makes float arguments (sigma) symbolic: the
    argument checks must not call what symbolic floats lack (math.isfinite did)."""

    def loss(x, y, m):  # sigma: the default
        return mi.mutual_information(x, y, num_bins=16, mask=m, normalize="studholme").sum()

    x = torch.rand(2, 1, 16, 16)
    y = remap(x).requires_grad_()
    m = torch.rand(2, 1, 16, 16) > 0.2
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    got = compiled(x, y, m)
    got.backward()
    g = y.grad.clone()
    y.grad = None
    want = loss(x, y, m)
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g, y.grad)


@pytest.mark.parametrize("pairs", [False, True])
def test_several_scores_in_one_graph_with_symbolic_ranges(pairs):
    """torch.compile(fullgraph=True, dynamic=True) of a loss that calls the library several
    times, with a fixed value_range given as the compiled function's arguments. Two bugs:
    dynamic=True makes those floats symbolic, and the range checks called what they lack
    (``hasattr(p, "ndim")``, ``math.isfinite``): a graph break, so fullgraph raised; and
    any two MI calls in one graph failed inside dynamo (even without fullgraph, even with
    "auto" ranges), because the entropies' autograd.Function read a module-level float
    (``TOP``), which dynamo lifts to a symbolic input and then could not lift again (torch
    2.13). Values and gradients as eager for the global, Mattes and local scores, the
    entropies, and the MONAI drop-in."""

    def loss(x, y, lo, hi):
        rng = ((lo, hi), (lo - 0.5, hi)) if pairs else (lo, hi)
        a = mi.mutual_information(x, y, num_bins=16, value_range=rng, normalize="studholme")
        b = mi.mutual_information(x, y, num_bins=16, value_range=rng, kernel="mattes")
        c = mi.local_mutual_information(x, y, patch_size=8, num_bins=8, value_range=rng)
        h = mi.entropies(x, y, num_bins=8, value_range=rng)
        d = monai_loss(x, y)
        return a.sum() + b.sum() + c.sum() + sum(t.sum() for t in h) + d + mi.mutual_information(x, y).sum()

    monai_loss = GlobalMutualInformationLoss(num_bins=12)
    x = torch.rand(2, 1, 16, 12)
    y = remap(x).requires_grad_()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager", dynamic=True)
    got = compiled(x, y, -0.25, 1.5)
    (g,) = torch.autograd.grad(got, y)
    want = loss(x, y, -0.25, 1.5)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g, torch.autograd.grad(want, y)[0])


def test_importing_mi_leaves_dynamo_alone_and_marks_top_as_the_decorator_would():
    """``import mi`` does not import torch._dynamo (0.8 s, and it sets TORCHINDUCTOR_CACHE_DIR
    and a warnings filter in the importer's process); ``_top`` carries the mark that
    torch.compiler.assume_constant_result sets, which the test above needs."""
    import subprocess
    import sys

    code = "import sys, mi; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr

    def constant():
        return 0.75

    marked = torch.compiler.assume_constant_result(constant)
    assert vars(marked) == vars(mi.information._top) == {"_dynamo_marked_constant": True}


@pytest.mark.parametrize("dynamic", [False, True])
def test_histograms_compile_without_graph_breaks_given_bins_as_numbers(dynamic):
    """histogram / histogram2d read their bins' layout on the host: from a list of numbers
    that is Python arithmetic, which torch.compile(fullgraph=True) traces (once a data-
    dependent branch), also with dynamic=True's symbolic floats (once a struct.pack)."""
    bins = torch.linspace(-1.0, 1.0, 9).tolist()

    def f(x, y, w):
        return mi.histogram(x, bins, 0.3, weights=w).sum() + (mi.histogram2d(x, y, bins, 0.3) ** 2).sum()

    x = torch.rand(2, 50) * 2 - 1
    y = torch.sin(3 * x).requires_grad_()
    w = torch.rand(2, 50)
    got = torch.compile(f, fullgraph=True, backend="aot_eager", dynamic=dynamic)(x, y, w)
    (g,) = torch.autograd.grad(got, y)
    want = f(x, y, w)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g, torch.autograd.grad(want, y)[0])
