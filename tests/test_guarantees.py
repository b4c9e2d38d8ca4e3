"""What holds for any finite input (the README's "Guarantees"), case by case.

Empty batches, values near the float limits and subnormal ones, bin counts that cannot
fit, integral numbers of other types, torch.func transforms, second derivatives,
autocast, and the value-check switch. Oracles: the dense float64 formulas of ``oracle.py``
(and their autograd, to second order), plain autograd for the transforms, and the same
call on rescaled data for the scale cases (MI with value_range="auto" is invariant
under x -> a x + b).
"""

import math
import threading
import warnings

import numpy as np
import pytest
import torch
from images import photo, remap, to_tensor01
from oracle import dense_joint, entropies, to_bins
from oracle import mutual_information as oracle_mi

import mi

BACKENDS = [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(not mi.triton_available(), reason="no triton")),
]


def _pair(shape=(2, 1, 12, 10), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = remap(x) * 0.8 + 0.2 * torch.rand(shape, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


# ---------------------------------------------------------------- empty batches


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_gives_empty_results_and_gradients(backend):
    x = torch.rand(0, 2, 8, 8, requires_grad=True)
    y = torch.rand(0, 2, 8, 8)
    kw = dict(num_bins=16, backend=backend)
    for per_channel, lead in ((False, (0,)), (True, (0, 2))):
        for kernel in ("gaussian", "bspline", "mattes"):
            s = mi.mutual_information(x, y, per_channel=per_channel, kernel=kernel, **kw)
            assert s.shape == lead
            (g,) = torch.autograd.grad(s.sum(), x)
            assert g.shape == x.shape
    assert mi.joint_histogram(x, y, **kw).shape == (0, 16, 16)
    assert all(h.shape == (0,) for h in mi.entropies(x, y, **kw))
    assert mi.MutualInformationLoss(reduction="none")(x, y).shape == (0,)
    assert mi.MutualInformationLoss(reduction="sum")(x, y).item() == 0.0
    bins = torch.linspace(0, 1, 8)
    assert mi.histogram(torch.rand(0, 5), bins, 0.1, backend=backend).shape == (0, 8)
    assert mi.histogram2d(torch.rand(0, 3, 5), torch.rand(0, 3, 5), bins, 0.1, backend=backend).shape == (
        0, 3, 8, 8
    )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs_at_second_order(backend):
    """No images, or images with no pixels, and an "auto" range: zero-size first and second
    derivatives, also through torch.func (the differentiable range once reduced an empty row)."""
    for shape in ((0, 1, 4, 4), (2, 1, 0, 4)):
        x, y = torch.rand(shape, requires_grad=True), torch.rand(shape)

        def f(t, y=y):
            return mi.mutual_information(t, y, num_bins=8, backend=backend).sum()

        (g,) = torch.autograd.grad(f(x), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.sum(), x, allow_unused=True)
        assert g.shape == shape and (gg is None or gg.shape == shape)
        assert torch.func.grad(f)(x.detach()).shape == shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_of_any_layout_give_the_gradients_of_their_contiguous_copies(backend):
    """Images, masks and samples stored batch-last (the slices of an (H, W, D) volume taken as a
    batch, an (N, B) array transposed): the values and the first and second derivatives of
    their contiguous copies (the torch backend's backward once failed on their strides)."""
    dtype = torch.float64 if backend == "torch" else torch.float32  # (triton: float32 only)
    g = torch.Generator().manual_seed(3)
    vol = torch.rand(6, 7, 3, 1, generator=g, dtype=dtype)
    mask = torch.rand(6, 7, 3, 1, generator=g, dtype=dtype)
    y = remap(torch.rand(3, 1, 6, 7, generator=g, dtype=dtype))
    samples = torch.rand(20, 3, generator=g, dtype=dtype)
    views = (vol.permute(2, 3, 0, 1), mask.permute(2, 3, 0, 1), samples.t())
    results = []
    for x, m, s in (views, tuple(t.contiguous() for t in views)):
        x, m, s = (t.detach().requires_grad_() for t in (x, m, s))  # (detach keeps the strides)
        value = mi.mutual_information(x, y, num_bins=8, mask=m, backend=backend).sum()
        gx, gm = torch.autograd.grad(value, (x, m), create_graph=True)
        (ggx,) = torch.autograd.grad(gx.pow(2).sum(), x)
        h = mi.histogram(s, torch.linspace(0, 1, 8, dtype=dtype), 0.1, backend=backend)
        (gs,) = torch.autograd.grad(h.pow(2).sum(), s)
        results.append((value, gx, gm, ggx, h, gs))
    # the same arithmetic up to the order of sums: measured 2e-17 (float64) and 7e-8 (float32,
    # Triton) of each result's largest element; bounds 50x and 14x that
    bound = 1e-15 if dtype == torch.float64 else 1e-6
    for got, want in zip(*results):
        assert (got - want).abs().max() <= bound * want.abs().max(), (got, want)


# ---------------------------------------------------------------- extreme finite values


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", ["gaussian", "bspline", "mattes"])
@pytest.mark.parametrize(
    "scale,shift", [(1.5e38, -1.0), (2.9e38, -0.5), (2.0**-133, 0.0), (2.0**-146, 3.0), (1e30, 0.0)],
    ids=["near-max-signed", "near-max", "subnormal", "deep-subnormal", "1e30"],
)  # fmt: skip
def test_extreme_scales_give_the_unscaled_mi(scale, shift, kernel, backend):
    """float32 images at 1e-44 (a few subnormal steps) to 2.9e38: MI with value_range="auto" is
    that of the same images at unit scale. Subnormal numbers are few (multiples of 2**-149),
    so there the images are integers times a power of two, which float32 holds exactly."""
    x, y = _pair((2, 1, 12, 10), seed=1, dtype=torch.float64)
    if scale < 1e-30:
        x, y = (torch.round(t * 7) for t in (x, y))  # 0..7: exact multiples of the subnormal step
    xs, ys = ((t + shift) * scale for t in (x, y))
    xs, ys = xs.float(), ys.float()
    assert torch.isfinite(xs).all()
    kw = dict(num_bins=16, kernel=kernel, backend=backend)
    got = mi.mutual_information(xs, ys, **kw)
    want = mi.mutual_information(x.float() + shift, y.float() + shift, **kw)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=5e-6, atol=5e-7)  # measured 1.0e-6 relative at most


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_at_huge_scale_is_the_scaled_gradient(backend):
    """d MI / dx at x * a is d MI / dx / a: finite and exact at a = 1e38."""
    x, y = _pair(seed=2)
    a = 1e38
    xs = (x * a).requires_grad_()
    x1 = x.clone().requires_grad_()
    for t, other in ((xs, y), (x1, y)):
        mi.mutual_information(t, other, num_bins=16, backend=backend).sum().backward()
    assert torch.isfinite(xs.grad).all()
    scale = x1.grad.abs().max().item()
    torch.testing.assert_close(xs.grad.double() * a, x1.grad.double(), rtol=0, atol=1e-5 * scale)


def test_float64_near_its_limits():
    x, y = _pair(seed=3, dtype=torch.float64)
    want = mi.mutual_information(x, y, num_bins=16)
    for a in (1e307, 1e-310):
        for kernel in ("gaussian", "mattes"):
            got = mi.mutual_information((x - 0.5) * a, y * a, num_bins=16, kernel=kernel)
            ref = mi.mutual_information(x - 0.5, y, num_bins=16, kernel=kernel)
            torch.testing.assert_close(got, ref, rtol=2e-13, atol=1e-14)  # measured 2.2e-14
            # a fixed range of subnormals: the value checks' host arithmetic raised OverflowError
            # (measured 2.6e-14 at 1e-310)
            got = mi.mutual_information((x - 0.5) * a, y * a, num_bins=16, kernel=kernel, value_range=(-a, a))
            ref = mi.mutual_information(x - 0.5, y, num_bins=16, kernel=kernel, value_range=(-1.0, 1.0))
            torch.testing.assert_close(got, ref, rtol=2e-13, atol=1e-14)
    assert torch.isfinite(want).all()


def test_a_range_too_narrow_for_the_gradient_is_refused_and_the_value_still_works():
    x, y = _pair(seed=4)
    xs = (x * 1e-40).requires_grad_()  # 63 bins per 1e-40: a gradient of ~1e41 per pixel
    with pytest.raises(
        ValueError,
        match=r"x spans only .* beyond the 2\*\*100 bins per unit that leave torch.float32 room .* overflow",
    ):
        mi.mutual_information(xs, y, num_bins=64)
    with pytest.raises(ValueError, match="value_range spans only .* with respect to x"):
        mi.mutual_information(xs, y, num_bins=64, value_range=((0.0, 1e-40), "auto"))
    with pytest.raises(ValueError, match="bins spans only .* with respect to x .* Widen bins"):
        mi.histogram(xs.flatten(1), torch.linspace(0, 1e-40, 5), 1e-41)
    with torch.no_grad():
        value = mi.mutual_information(xs, y, num_bins=64)
    torch.testing.assert_close(value, mi.mutual_information(x, y, num_bins=64), rtol=2e-5, atol=2e-6)
    xd = (x.double() * 1e-40).requires_grad_()  # float64 has the room
    g = mi.mutual_information(xd, y.double(), num_bins=64)
    assert torch.isfinite(torch.autograd.grad(g.sum(), xd)[0]).all()
    # a float32 image promoted to float64 by the other one still gets a float32 gradient: refused
    with pytest.raises(ValueError, match="x spans only"):
        mi.mutual_information(xs, y.double(), num_bins=64)


def test_fixed_ranges_that_float32_cannot_hold_are_refused():
    x, y = _pair(seed=5)
    with pytest.raises(ValueError, match="beyond the range of torch.float32"):
        mi.mutual_information(x, y, value_range=(0.0, 1e39))
    with pytest.raises(ValueError, match="a single value in torch.float32"):
        mi.mutual_information(x, y, value_range=(1.0, 1.0 + 1e-9))
    # float64 images hold both
    assert torch.isfinite(mi.mutual_information(x.double(), y.double(), value_range=(0.0, 1e39))).all()
    with pytest.raises(ValueError, match="beyond the range"):
        mi.histogram(x.flatten(1), torch.linspace(0, 1e39, 8, dtype=torch.float64), 1e37)


def test_float16_gradient_that_overflows_is_refused():
    """A float16 image whose range (2e-5) is tiny for 16 pixels: the true gradient is ~3e5,
    beyond float16's 65504 (float32 holds it)."""
    x, y = _pair((1, 1, 4, 4), seed=6)
    xh = (x * 2e-5).half().requires_grad_()
    loss = mi.mutual_information(xh, y.half(), num_bins=64, sigma=0.3).sum()
    with pytest.raises(ValueError, match="overflows float16"):
        loss.backward()
    xf = (x * 2e-5).requires_grad_()
    mi.mutual_information(xf, y, num_bins=64, sigma=0.3).sum().backward()
    assert xf.grad.abs().max() > 4 * 65504
    # promoted to float32 by the other image: the gradient still comes back in float16
    xh = (x * 2e-5).half().requires_grad_()
    with pytest.raises(ValueError, match="overflows float16"):
        mi.mutual_information(xh, y, num_bins=64, sigma=0.3).sum().backward()


def test_gradients_and_masks_of_other_dtypes_are_exact_or_refused():
    """Where an argument's dtype differs from the one computed in, its values and its gradient
    are checked in its own dtype: a float16 x1 beside a float32 x2 (histogram2d), a float16
    mask or joint histogram whose true gradient (1e5) is beyond float16's 65504, and a
    float64 mask whose values float32 images cannot carry (1e-50 became 0: MI 0; 1e50 became
    Inf) are refused, naming the argument; ordinary ones give the float64 answer."""
    g = torch.Generator().manual_seed(0)
    bins = torch.linspace(0, 0.01, 16)
    s1, s2 = torch.rand(1, 64, generator=g) * 0.01, torch.rand(1, 64, generator=g) * 0.01
    x1 = s1.half().requires_grad_()
    h = mi.histogram2d(x1, s2, bins, 0.0003)
    with pytest.raises(ValueError, match="gradient with respect to x1 overflows float16"):
        torch.autograd.grad((h.float() * 1000).pow(2).sum(), x1)
    x, y = _pair((1, 1, 8, 8), seed=1)
    m16 = (torch.rand(1, 1, 8, 8, generator=g) * 1e-7 + 5e-8).half().requires_grad_()
    m64 = m16.detach().double().requires_grad_()
    (g64,) = torch.autograd.grad(
        mi.mutual_information(x.double(), y.double(), num_bins=8, mask=m64).sum(), m64
    )
    assert g64.abs().max() > 65504  # the true gradient: beyond float16
    with pytest.raises(ValueError, match="gradient with respect to mask overflows float16"):
        torch.autograd.grad(mi.mutual_information(x, y, num_bins=8, mask=m16).sum(), m16)
    joint = ((torch.rand(1, 4, 4, generator=g, dtype=torch.float64) + 0.5) * 1e-7).half().requires_grad_()
    with pytest.raises(ValueError, match="gradient with respect to joint overflows float16"):
        torch.autograd.grad(mi.mutual_information_from_joint(joint).sum(), joint)
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    want = mi.mutual_information(x.double(), y.double(), num_bins=8, mask=ones).item()
    for scale in (1e-50, 1e50):
        with pytest.raises(ValueError, match="mask is float64 with values that float32, .* cannot hold"):
            mi.mutual_information(x, y, num_bins=8, mask=ones * scale)
        assert mi.mutual_information(
            x.double(), y.double(), num_bins=8, mask=ones * scale
        ).item() == pytest.approx(want)
    assert mi.mutual_information(x, y, num_bins=8, mask=ones * 0.3).item() == pytest.approx(want, rel=1e-6)
    mh = torch.full((1, 1, 8, 8), 0.5, dtype=torch.float16, requires_grad=True)  # moderate: as float32
    (gh,) = torch.autograd.grad(mi.mutual_information(x, y, num_bins=8, mask=mh).sum(), mh)
    mf = mh.detach().float().requires_grad_()
    (gf,) = torch.autograd.grad(mi.mutual_information(x, y, num_bins=8, mask=mf).sum(), mf)
    assert gh.dtype == torch.float16 and torch.allclose(gh.float(), gf, rtol=1e-3, atol=1e-6)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's x * c -> inf
def test_far_away_samples_give_no_nan_in_any_window():
    """A fixed range with samples 3e38 away (inf in bin coordinates): zero weight, zero gradient."""
    x, y = _pair(seed=7)
    x = x.clone()
    x[0, 0, 0, :3] = torch.tensor([3e38, -3e38, 1e30])
    for kernel in ("gaussian", "bspline"):
        for backend in ("torch", "triton") if mi.triton_available() else ("torch",):
            xx = x.clone().requires_grad_()
            s = mi.mutual_information(xx, y, value_range=((0.0, 1.0), "auto"), num_bins=8, sigma=0.1,
                                      kernel=kernel, backend=backend)  # fmt: skip
            s.sum().backward()
            assert torch.isfinite(s).all() and torch.isfinite(xx.grad).all()
            assert (xx.grad[0, 0, 0, :3] == 0).all()


@pytest.mark.parametrize("backend", ["torch"])  # (the Triton path does not read its histograms)
def test_histograms_of_kernel_tails_alone_are_refused(backend):
    """When every sample lies far outside a fixed value_range (or far from every bin centre
    at a tiny sigma), the joint histogram holds only window tails below float32's normal
    range: MI lost its bits (0.6336 for 0.6365) and its gradient, about 1 / (total mass),
    came out NaN. Refused, by name; a histogram emptied by its mask still scores 0, and a
    tiny but normal one (1e-28: the gradient about 1e27) still works."""
    x, y = _pair()
    far = dict(num_bins=8, sigma=0.5, value_range=(0.0, 1.0), backend=backend)
    xx = (1.7 + 0.1 * x).requires_grad_()  # 4.9 bins and more beyond the last bin
    for call in (
        lambda: mi.mutual_information(xx, 1.7 + 0.1 * y, **far),
        lambda: mi.joint_histogram(xx, 1.7 + 0.1 * y, **far),
        lambda: mi.local_mutual_information(xx, 1.7 + 0.1 * y, patch_size=5, **far),
        lambda: mi.mutual_information(  # every sample half-way between centres, sigma 0.05
            (torch.floor(x * 7) + 0.5).requires_grad_(), torch.floor(y * 7) + 0.5,
            num_bins=8, sigma=0.05, value_range=(0.0, 7.0), backend=backend,
        ),
    ):  # fmt: skip
        # (0 for local MI: some patch's windows all underflowed)
        with pytest.raises(ValueError, match="holds only kernel tails: its largest cell is (0 |.*e-4)"):
            with warnings.catch_warnings():  # (the samples that miss the bins are warned about too)
                warnings.simplefilter("ignore")
                call()
    # histogram() and histogram2d() (bins given): samples half-way between centres at 0.037 bin
    # widths (13.5 sigma: 3e-40, subnormal) gave a finite histogram and NaN gradients
    half = torch.full((2, 4), 0.375, requires_grad=True)
    bins = torch.linspace(0, 1, 5)
    for call, what in (
        (lambda: mi.histogram(half, bins, sigma=0.0092, backend=backend), "histogram"),
        (  # float64: 0.35 at 0.0106 bin widths, 37.7 sigma from bin 1: 2.4e-309
            lambda: mi.histogram(
                torch.full((1, 3), 0.35, dtype=torch.float64), bins, 0.25 * 0.0106, backend=backend
            ),
            "histogram",
        ),
        (  # 1e-35 x 2.5e-6
            lambda: mi.histogram2d(half, torch.full((2, 4), 0.3), bins, sigma=0.25 * 0.0394, backend=backend),
            "joint histogram",
        ),
    ):
        with pytest.raises(ValueError, match=f"the {what} holds only kernel tails: .* raise sigma"):
            call()
    # Windows that underflow to exactly 0 for every sample that has weight: an all-zero histogram,
    # which scored as independent variables (Studholme 1 where the float64 images give 2).
    between = torch.floor(x * 7) + 0.5  # half-way between centres: 2e-61 at sigma 0.03
    for call in (
        lambda: mi.mutual_information(between, between, num_bins=8, sigma=0.03, value_range=(0.0, 7.0),
                                      normalize="studholme", backend=backend),
        lambda: mi.mutual_information(100 + x, 100 + y, **far),  # 700 bins beyond the range
        lambda: mi.local_mutual_information(100 + x, 100 + y, patch_size=5, **far),
        lambda: mi.mutual_information(x, y, mask=torch.ones_like(x), kernel="mattes",
                                      value_range=((2.0, 3.0), "auto"), backend=backend),
        # histogram() and histogram2d() of samples 1000 bin widths beyond their bins: all zeros
        # (their documented sum, 1, only when some sample has weight)
        lambda: mi.histogram(1000 + x.flatten(1), bins, sigma=0.1, backend=backend),
        lambda: mi.histogram2d(1000 + x.flatten(1), y.flatten(1), bins, sigma=0.1, backend=backend),
    ):  # fmt: skip
        with pytest.raises(ValueError, match="holds only kernel tails: its largest cell is 0 "):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                call()
    b64 = between.double()
    kw = dict(num_bins=8, sigma=0.03, value_range=(0.0, 7.0), normalize="studholme")
    assert mi.mutual_information(b64, b64, **kw).tolist() == [2.0, 2.0]
    half_empty = torch.ones_like(x)
    half_empty[0] = 0  # a histogram emptied by its mask, beside one that is not: allowed
    s = mi.mutual_information(x, y, mask=half_empty, num_bins=8, backend=backend)
    assert s[0] == 0 and s[1] > 0.1
    far_first = x.flatten(1) + torch.tensor([[1000.0], [0.0]])  # weightless and beyond the bins
    for h in (  # the same for the histograms of weightless samples (far beyond their bins or not)
        mi.histogram(far_first, bins, 0.1, weights=half_empty.flatten(1), backend=backend),
        mi.histogram2d(x.flatten(1), y.flatten(1), bins, 0.1, weights=half_empty.flatten(1), backend=backend),
    ):
        assert h[0].sum() == 0 and torch.isclose(h[1].sum(), torch.tensor(1.0))
    h = mi.histogram(half, bins, sigma=0.02, backend=backend)  # 6.25 sigma: 3.3e-9 per bin, normal
    (h * torch.arange(5.0)).sum().backward()
    assert torch.isfinite(half.grad).all()
    empty = mi.mutual_information(x, y, mask=torch.zeros_like(x), num_bins=8, backend=backend)
    assert (empty == 0).all()
    j = (mi.joint_histogram(x, y, num_bins=8, backend=backend) * 1e-28).requires_grad_()
    mi.mutual_information_from_joint(j).sum().backward()
    assert torch.isfinite(j.grad).all() and j.grad.abs().max() > 1e26
    with pytest.raises(ValueError, match="joint's largest entry is only .* the gradient"):
        mi.mutual_information_from_joint((j.detach() * 1e-10).requires_grad_())
    with torch.no_grad():  # no gradient: the value is exact from the entries given
        torch.testing.assert_close(
            mi.mutual_information_from_joint(j * 1e-10), mi.mutual_information_from_joint(j)
        )


# ---------------------------------------------------------------- sizes and argument types


def test_bins_that_cannot_fit_are_refused_before_allocating():
    x, y = _pair()
    with pytest.raises(
        ValueError, match=r"num_bins=200000: 2 histogram\(s\) of 200000 x 200000 bins need about .* GiB"
    ):
        mi.mutual_information(x, y, num_bins=200_000)
    with pytest.raises(ValueError, match="GiB"):
        mi.histogram2d(x.flatten(1), y.flatten(1), torch.linspace(0, 1, 300_000), 0.1)


def test_integral_and_real_numbers_of_other_types():
    x, y = _pair()
    want = mi.mutual_information(x, y, num_bins=32, sigma=0.5)
    for k in (np.int64(32), np.int32(32), torch.tensor(32)):
        torch.testing.assert_close(mi.mutual_information(x, y, num_bins=k, sigma=0.5), want, rtol=0, atol=0)
    for s in (np.float32(0.5), np.float64(0.5)):
        torch.testing.assert_close(mi.mutual_information(x, y, num_bins=32, sigma=s), want, rtol=0, atol=0)
    with pytest.raises(TypeError, match="num_bins must be an integer .* operator.index"):
        mi.mutual_information(x, y, num_bins=np.float64(32))
    # (a one-element float tensor is a number too, as num_bins' and value_range's tensors)
    torch.testing.assert_close(
        mi.mutual_information(x, y, num_bins=32, sigma=torch.tensor(0.5)), want, rtol=0, atol=0
    )
    with pytest.raises(TypeError, match="sigma must be a positive real number"):
        mi.mutual_information(x, y, sigma="0.5")
    with pytest.raises(ValueError, match="sigma is .* bin widths; it must be at least 2\\*\\*-40"):
        mi.mutual_information(x, y, sigma=1e-20)
    # histogram()/histogram2d() take sigma in data units: the message names what was passed
    bins = torch.linspace(0, 1000, 3)
    for call in (lambda: mi.histogram(x, bins, 1e-10), lambda: mi.histogram2d(x, y, bins, 1e-10)):
        with pytest.raises(
            ValueError, match=r"sigma is 1e-10 in data units, 2e-13 bin widths .* 4.55e-10 here"
        ):
            call()


# ---------------------------------------------------------------- torch.func


def _mi(x, y, backend="torch", **kw):
    return mi.mutual_information(x, y, num_bins=16, sigma=0.7, backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kw",
    [dict(), dict(kernel="mattes"), dict(normalize="studholme", value_range=(0, 1))],
    ids=["gaussian", "mattes", "studholme-fixed"],
)
def test_torch_func_grad_vmap_jacrev_match_autograd(kw, backend):
    x, y = _pair((3, 1, 9, 8), seed=8)
    # grad
    got = torch.func.grad(lambda a: _mi(a, y, backend, **kw).sum())(x)
    xx = x.clone().requires_grad_()
    _mi(xx, y, backend, **kw).sum().backward()
    torch.testing.assert_close(got, xx.grad, rtol=1e-6, atol=1e-7)
    # vmap over an extra leading dim: each slice is a batch of 3
    xs, ys = torch.stack([x, x.flip(-1)]), torch.stack([y, y])
    got = torch.func.vmap(lambda a, b: _mi(a, b, backend, **kw))(xs, ys)
    want = torch.stack([_mi(a, b, backend, **kw) for a, b in zip(xs, ys)])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    # jacrev: rows of the Jacobian are the per-sample gradients
    jac = torch.func.jacrev(lambda a: _mi(a, y, backend, **kw))(x)
    assert jac.shape == (3, *x.shape)
    for b in range(3):
        xx = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(_mi(xx, y, backend, **kw)[b], xx)
        torch.testing.assert_close(jac[b], g, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jacrev_with_respect_to_masks_weights_and_float16_images(backend):
    """jacrev of the scores with respect to a mask, of a histogram with respect to its weights,
    and of a float16 image's score: autograd's Jacobians (the float16 and mask gradient
    guards once checked values inside jacrev's vmapped backward, which torch.func refuses)."""
    x, y = _pair((2, 1, 5, 4), seed=4)
    m = torch.rand(2, 1, 5, 4, generator=torch.Generator().manual_seed(5))
    cases = [  # float32: autograd's numbers (measured 0); float16: 2e-4 of the largest
        (lambda t: _mi(x, y, backend, mask=t), m, 1e-12),
        (
            lambda t: mi.histogram(
                t[:, 0].flatten(1), torch.linspace(0, 1, 5), 0.2, weights=m[:, 0].flatten(1)
            ),
            x,
            1e-12,
        ),
        (
            lambda t: mi.histogram(x[:, 0].flatten(1), torch.linspace(0, 1, 5), 0.2, weights=t),
            m[:, 0].flatten(1),
            1e-12,
        ),
        (lambda t: _mi(t, y.half(), backend), x.half(), 1e-3),
    ]
    for f, arg, tol in cases:
        got = torch.func.jacrev(f)(arg)
        want = torch.autograd.functional.jacobian(f, arg)
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * want.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_sample_gradients_with_vmap_of_grad(backend):
    """The usual per-sample recipe: vmap(grad(loss of one sample)) over the batch, with a mask."""
    x, y = _pair((4, 1, 10, 9), seed=9)
    m = (torch.rand(4, 1, 10, 9, generator=torch.Generator().manual_seed(1)) > 0.2).float()
    loss = mi.MutualInformationLoss(num_bins=16, backend=backend)

    def one(a, b, w):
        return loss(a[None], b[None], w[None])

    got = torch.func.vmap(torch.func.grad(one))(x, y, m)
    for i in range(4):
        xx = x[i : i + 1].clone().requires_grad_()
        loss(xx, y[i : i + 1], m[i : i + 1]).backward()
        torch.testing.assert_close(got[i], xx.grad[0], rtol=1e-5, atol=1e-7)


def test_histograms_under_vmap():
    x = torch.rand(3, 2, 50)
    bins = torch.linspace(0, 1, 8)
    got = torch.func.vmap(lambda t: mi.histogram2d(t, t.flip(-1), bins, 0.1))(x)
    want = torch.stack([mi.histogram2d(t, t.flip(-1), bins, 0.1) for t in x])
    torch.testing.assert_close(got, want)
    got = torch.func.vmap(lambda t: mi.histogram(t, bins, 0.1))(x)
    torch.testing.assert_close(got, torch.stack([mi.histogram(t, bins, 0.1) for t in x]))


# ---------------------------------------------------------------- second derivatives


def _dense_mi(x, y, k, sigma, normalize, kernel="gaussian", m=None):
    """The dense float64 estimator on data in [0, 1] with value_range (0, 1), autograd all the way."""
    b = x.shape[0]
    if kernel == "gaussian":
        u, v = to_bins(x, 0.0, 1.0, k), to_bins(y, 0.0, 1.0, k)
        j = dense_joint(u.reshape(b, -1), v.reshape(b, -1), m, k, sigma)
    else:  # bspline: lo..hi onto 1..K-2
        u, v = (1.0 + t * (k - 3) for t in (x, y))
        j = dense_joint(u.reshape(b, -1), v.reshape(b, -1), m, k, sigma, "bspline", "bspline")
    return oracle_mi(j, normalize)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", ["none", "arithmetic", "studholme"])
@pytest.mark.parametrize("kernel", ["gaussian", "bspline"])
def test_second_derivatives_match_the_dense_oracle(kernel, normalize, backend):
    """grad(create_graph=True) then a second backward: the Hessian-vector product of the dense
    float64 estimator. float32 on the Triton path (interpreter), float64 on the torch path;
    bounds relative to the largest element, about 10x the errors measured."""
    dtype = torch.float32 if backend == "triton" else torch.float64
    x, y = _pair((2, 1, 7, 6), seed=10, dtype=torch.float64)
    m = torch.rand(2, 42, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    v = torch.randn(2, 1, 7, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    k, sigma = 8, 0.8
    out = {}
    for name in ("ours", "oracle"):
        xx = x.clone().to(dtype if name == "ours" else torch.float64).requires_grad_()
        yy = y.clone().to(xx.dtype).requires_grad_()
        mm = m.clone().to(xx.dtype).requires_grad_()
        if name == "ours":
            s = mi.mutual_information(
                xx, yy, num_bins=k, sigma=sigma, value_range=(0, 1), normalize=normalize,
                kernel=kernel, mask=mm.view(2, 1, 7, 6), backend=backend,
            )  # fmt: skip
        else:
            s = _dense_mi(xx, yy, k, sigma, normalize, kernel, mm)
        gx, gy, gm = torch.autograd.grad(s.sum(), (xx, yy, mm), create_graph=True)
        hvp = torch.autograd.grad((gx * v.to(xx.dtype)).sum(), (xx, yy, mm))
        out[name] = [t.double() for t in (gx, gy, gm, *hvp)]
    tol = 2e-14 if dtype == torch.float64 else 5e-6  # measured 1.3e-15 and 8.9e-7 of the largest
    for a, b, what in zip(out["ours"], out["oracle"], ["gx", "gy", "gm", "Hxx v", "Hyx v", "Hmx v"]):
        scale = b.abs().max().item()
        err = (a - b).abs().max().item()
        assert err <= tol * scale, f"{what}: {err:.3g} > {tol} * {scale:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_hessians_through_torch_func(backend):
    """torch.func's reverse-over-reverse Hessian, jacrev(grad(f)), and vmapped Hessian-vector
    products with respect to x and the mask, and of a histogram's weights: the dense float64
    estimator's Hessian (the double backward once wrote vmapped values into unbatched
    buffers: an internal vmap error). Bounds as in the Hessian-vector test above."""
    dtype = torch.float32 if backend == "triton" else torch.float64
    tol = 2e-14 if dtype == torch.float64 else 5e-6
    x, y = _pair((1, 1, 4, 3), seed=14, dtype=torch.float64)
    m = torch.rand(1, 12, generator=torch.Generator().manual_seed(6), dtype=torch.float64) + 0.1
    k, sigma = 8, 0.8

    def ours(a, w):
        kw = dict(num_bins=k, sigma=sigma, value_range=(0, 1), mask=w.view(1, 1, 4, 3), backend=backend)
        return mi.mutual_information(a, y.to(dtype), **kw).sum()

    want = torch.autograd.functional.hessian(
        lambda a, w: _dense_mi(a, y, k, sigma, "none", m=w).sum(), (x, m)
    )
    got = torch.func.jacrev(torch.func.grad(ours, argnums=(0, 1)), argnums=(0, 1))(x.to(dtype), m.to(dtype))
    for i in range(2):
        for j in range(2):
            a, b = got[i][j].double().reshape(want[i][j].shape), want[i][j]
            assert (a - b).abs().max() <= tol * b.abs().max(), (i, j, (a - b).abs().max().item())
    vs = torch.randn(3, *x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    hvps = torch.func.vmap(
        lambda v: torch.func.grad(lambda a: (torch.func.grad(ours)(a, m.to(dtype)) * v).sum())(x.to(dtype))
    )(vs.to(dtype))
    want_hvps = want[0][0].reshape(12, 12) @ vs.reshape(3, 12).T
    assert (hvps.double().reshape(3, 12) - want_hvps.T).abs().max() <= tol * want_hvps.abs().max()
    if backend == "torch":  # the 1-D histogram's double backward: jacobian of its gradient in the weights
        bins = torch.linspace(0, 1, 6, dtype=torch.float64)
        s = x.flatten(1)

        def h(w):
            return mi.histogram(s, bins, 0.2, weights=w).pow(2).sum()

        got = torch.func.jacrev(torch.func.grad(h))(m)
        torch.testing.assert_close(got, torch.autograd.functional.hessian(h, m), rtol=1e-12, atol=1e-14)


def test_gradgradcheck_of_the_public_functions():
    x, y = _pair((1, 1, 5, 4), seed=11, dtype=torch.float64)
    m = torch.rand(1, 1, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    inputs = tuple(t.clone().requires_grad_() for t in (x, y, m))
    for kw in (dict(), dict(kernel="bspline"), dict(kernel="mattes"), dict(normalize="studholme")):

        def f(a, b, w, kw=kw):
            return mi.mutual_information(a, b, num_bins=8, sigma=0.8, value_range=(0, 1), mask=w, **kw)

        assert torch.autograd.gradgradcheck(f, inputs)
    bins = torch.linspace(0, 1, 6, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda a, w: mi.histogram(a, bins, 0.2, weights=w),
                                        (inputs[0].flatten(1), inputs[2].flatten(1)))  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_range_is_differentiated(backend):
    """With value_range="auto" each image's range is its own min..max (over the mask), which
    moves with the image: the derivative includes that (it once held the range fixed, and
    gradcheck failed at the extreme pixels by about 0.5). float64 gradcheck and
    gradgradcheck with every kernel, a mask and per-channel rows (torch backend); MI with an
    "auto" range is invariant under x -> a x + b, so the gradient sums to 0 and is
    orthogonal to x (measured 1e-16 in float64; in float32 at most 9e-9 of |g|_1 max|x| on
    either backend: bound 1e-7; the fixed-range gradient fails it); and
    the two backends agree (measured 5.7e-6 of the largest element, bound 2e-5)."""
    x, y = _pair((2, 1, 5, 4), seed=12, dtype=torch.float64)
    m = (
        torch.rand(2, 1, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) > 0.2
    ).double()
    if backend == "torch":
        inputs = tuple(t.clone().requires_grad_() for t in (x, y))
        for kw in (
            dict(),
            dict(kernel="bspline"),
            dict(kernel="mattes"),
            dict(mask=m),
            dict(per_channel=True),
        ):

            def f(a, b, kw=kw):
                return mi.mutual_information(a, b, num_bins=8, sigma=0.8, **kw)

            assert torch.autograd.gradcheck(f, inputs)
            assert torch.autograd.gradgradcheck(f, inputs)
    xf, yf = _pair((2, 1, 12, 10), seed=13)
    xf.requires_grad_()
    g = torch.autograd.grad(mi.mutual_information(xf, yf, num_bins=16, backend=backend).sum(), xf)[0]
    scale = (g.abs().sum((1, 2, 3)) * xf.detach().abs().amax((1, 2, 3))).double()
    assert (g.double().sum((1, 2, 3)).abs() <= 1e-7 * scale).all()
    assert ((g * xf.detach()).double().sum((1, 2, 3)).abs() <= 1e-7 * scale).all()
    if backend == "triton":
        ref = torch.autograd.grad(mi.mutual_information(xf, yf, num_bins=16, backend="torch").sum(), xf)[0]
        torch.testing.assert_close(g, ref, rtol=0, atol=2e-5 * ref.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_zeros_outside_an_auto_range_hold_the_range(backend):
    """With value_range="auto" the range is taken over the mask's positive weights, so a pixel
    of weight 0 outside it jumps MI when its weight turns positive (here 0.755 at 0, 0.129
    from 1e-12 on): no derivative exists there, and the gradient given is that of the range
    held (the README's convention, as for 0 log 0). It is what a registration needs: a
    weight that is 0 on an open set of the parameters (an overlap mask beyond the moving
    image's edge) contributes exactly nothing to the composite derivative, which is exact:
    here the mask moves with a shift t whose ramp stays beyond the outlier, and dMI/dt
    matches a central difference. (Refusing the mask's gradient there, tried, broke local MI
    as a deformable registration's loss.)"""
    dtype = torch.float64 if backend == "torch" else torch.float32
    x, y = (t.to(dtype) for t in _pair((1, 1, 4, 4), seed=2, dtype=torch.float64))
    x[0, 0, 0, 0] = 3.0  # an outlier that the mask leaves out
    ramp = torch.arange(16, dtype=dtype).reshape(1, 1, 4, 4)

    def f(t):  # weight 0 for the first two pixels while |t| < 0.5, then a ramp to 1
        return mi.mutual_information(
            x, y, num_bins=8, mask=((ramp - 1.5 + t) / 4.0).clamp(0, 1), backend=backend
        )

    m = torch.ones_like(x)
    m[0, 0, 0, 0] = 0.0
    nudged = m.clone()
    nudged[0, 0, 0, 0] = 1e-9
    jump = f_mask = mi.mutual_information(x, y, num_bins=8, mask=m, backend=backend).item()
    jump -= mi.mutual_information(x, y, num_bins=8, mask=nudged, backend=backend).item()
    assert jump > 0.1 and math.isfinite(f_mask)
    t = torch.zeros((), dtype=dtype, requires_grad=True)
    (g,) = torch.autograd.grad(f(t).sum(), t)
    h = 1e-4 if dtype == torch.float64 else 1e-2
    central = (f(torch.tensor(h, dtype=dtype)).item() - f(torch.tensor(-h, dtype=dtype)).item()) / (2 * h)
    # measured 8e-10 (float64, h 1e-4) and 2.9e-4 (float32, h 1e-2) relative
    assert g.item() == pytest.approx(central, rel=1e-8 if dtype == torch.float64 else 2e-3)
    local = mi.local_mutual_information(
        x, y, patch_size=2, num_bins=8, mask=m.requires_grad_(), backend=backend
    )
    assert torch.isfinite(torch.autograd.grad(local.sum(), m)[0]).all()


def test_tensors_that_need_a_gradient_where_numbers_are_read_are_refused():
    """value_range and bins are read as numbers: a tensor there that requires grad would be
    silently cut from autograd (dMI/dhi is -0.38 here), so it is a TypeError naming it;
    tensors without requires_grad are numbers as before."""
    x, y = _pair((1, 1, 6, 5), seed=3)
    hi = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(TypeError, match="value_range is read as numbers and is not differentiated"):
        mi.mutual_information(x, y, value_range=(0.0, hi))
    with pytest.raises(TypeError, match="value_range is read as numbers"):
        mi.MutualInformationLoss(value_range=((0.0, 1.0), (torch.tensor(0.0, requires_grad=True), 1.0)))(x, y)
    with pytest.raises(TypeError, match="bins is read as numbers"):
        mi.histogram(x.flatten(1), torch.linspace(0, 1, 8).requires_grad_(), 0.1)
    plain = mi.mutual_information(x, y, value_range=(torch.tensor(0.0), torch.tensor(1.0)))
    assert plain.item() == mi.mutual_information(x, y, value_range=(0.0, 1.0)).item()
    with pytest.raises(TypeError, match="sigma is read as a number and is not differentiated"):
        mi.mutual_information(x, y, sigma=torch.tensor(0.5, requires_grad=True))
    for sigma in (torch.tensor(0.5), torch.tensor([0.5], dtype=torch.float64)):  # numbers, as 0.5
        assert (
            mi.mutual_information(x, y, sigma=sigma).item() == mi.mutual_information(x, y, sigma=0.5).item()
        )
    with pytest.raises(TypeError, match="sigma must be a positive real number"):
        mi.mutual_information(x, y, sigma=torch.tensor([0.5, 0.5]))


def test_third_derivative_is_refused():
    x, y = _pair((1, 1, 5, 4), seed=12, dtype=torch.float64)
    x.requires_grad_()
    s = mi.mutual_information(x, y, num_bins=8, value_range=(0, 1))
    (g,) = torch.autograd.grad(s, x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="third derivatives of the histogram op are not implemented"):
        torch.autograd.grad(h.sum(), x)


# ---------------------------------------------------------------- autocast


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_cpu_bfloat16_changes_nothing(backend):
    """Under autocast the op and the entropies run in float32 as declared: the same numbers."""
    x, y = _pair((2, 1, 16, 16), seed=13)
    loss = mi.MutualInformationLoss(backend=backend, reduction="none")
    xx = x.clone().requires_grad_()
    want = loss(xx, y)
    (g_want,) = torch.autograd.grad(want.sum(), xx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(xx, y)
        assert got.dtype == torch.float32
        (g_got,) = torch.autograd.grad(got.sum(), xx)  # a backward inside the region, too
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for f in (mi.mutual_information, mi.joint_histogram):
            assert f(x, y).dtype == torch.float32
            assert f(x.bfloat16(), y.bfloat16()).dtype == torch.bfloat16


# ---------------------------------------------------------------- the value-check switch


def test_value_checks_context_manager_restores_and_is_per_thread():
    bad = torch.rand(1, 1, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    y = torch.rand(1, 1, 8, 8)
    with mi.value_checks(False):
        assert torch.isnan(mi.mutual_information(bad, y)).all()  # no error inside
        entered, release, seen = threading.Event(), threading.Event(), []

        def other():  # another thread keeps the process default: checks on
            entered.set()
            try:
                mi.mutual_information(bad, y)
                seen.append("no error")
            except ValueError as e:
                seen.append(str(e))
            release.wait(5)

        t = threading.Thread(target=other)
        t.start()
        entered.wait(5)
        t.join(10)
        release.set()
        assert seen == ["x contains NaN or Inf"]
    with pytest.raises(ValueError, match="x contains NaN"):
        mi.mutual_information(bad, y)
    with pytest.raises(KeyError):  # restored on an exception, too
        with mi.value_checks(False):
            raise KeyError
    with pytest.raises(ValueError, match="x contains NaN"):
        mi.mutual_information(bad, y)
    previous = mi.set_value_checks(False)  # the process default ...
    try:
        with mi.value_checks(True):  # ... under a block that turns them back on
            with pytest.raises(ValueError, match="x contains NaN"):
                mi.mutual_information(bad, y)
    finally:
        mi.set_value_checks(previous)


def test_real_photo_at_many_scales():
    """A real photograph and its remap at scales 1e-35 to 1e35: one MI, float32, both windows."""
    a = to_tensor01(photo((64, 48))).double()
    b = remap(a)
    want = {
        k: mi.mutual_information(a.float(), b.float(), num_bins=32, kernel=k) for k in ("gaussian", "mattes")
    }
    for e in range(-35, 36, 10):
        s = 10.0**e
        for k, w in want.items():
            got = mi.mutual_information((a * s).float(), (b * s).float(), num_bins=32, kernel=k)
            torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-6, msg=f"scale 1e{e} {k}")
    assert math.isfinite(want["gaussian"].item())


def test_torch_compile_under_autocast_and_its_double_backward():
    """The compiled call (one custom op) under CPU autocast gives the eager numbers; a second
    derivative through a compiled call is refused by torch (AOTAutograd has no double backward)
    with an error, never a number."""
    x, y = _pair((2, 1, 16, 16), seed=14)

    def loss(a, b):
        return mi.mutual_information(a, b, num_bins=16, sigma=0.8).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    yy = y.clone().requires_grad_()
    want = loss(x, yy)
    (g_want,) = torch.autograd.grad(want, yy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = compiled(x, yy)
    (g_got,) = torch.autograd.grad(got, yy)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-6 * g_want.abs().max().item())
    (g,) = torch.autograd.grad(compiled(x, yy), yy, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), yy)


def test_a_float64_joint_whose_total_overflows_is_scored_at_its_scale():
    """Finite float64 entries of 1e307 sum to Inf: the total was taken as that of an empty
    histogram (MI 0, Studholme 1, zero entropies and gradient). Each histogram is now brought
    near 1 by a power of two first (exact): the oracle's values, and the gradient of the
    unit-scale joint divided by the scale (subnormal here: to the subnormals' spacing)."""
    x, y = _pair()
    u, v = to_bins(x.flatten(1), 0.0, 1.0, 8), to_bins(y.flatten(1), 0.0, 1.0, 8)
    j = dense_joint(u, v, None, 8, 0.5)
    j = j / j.amax((-2, -1), keepdim=True)  # largest 1, total above 2
    big = (j * 2.0**1022).requires_grad_()
    assert torch.isinf(big.sum((-2, -1))).all() and torch.isfinite(big).all()
    # measured: values 1.4e-15 relative at most, the gradient 5.7e-16 absolute (the subnormals'
    # spacing times 2**1022 is 2.2e-16); bounds about 7x those
    got = mi.mutual_information_from_joint(big)
    torch.testing.assert_close(got, oracle_mi(j), rtol=1e-14, atol=0)
    for h, want in zip(mi.entropies_from_joint(big), entropies(j)):
        torch.testing.assert_close(h, want, rtol=1e-14, atol=0)
    studholme = mi.mutual_information_from_joint(big, normalize="studholme")
    torch.testing.assert_close(studholme, oracle_mi(j, "studholme"), rtol=1e-14, atol=0)
    got.sum().backward()
    jj = j.clone().requires_grad_()
    oracle_mi(jj).sum().backward()
    torch.testing.assert_close(big.grad * 2.0**1022, jj.grad, rtol=0, atol=4e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_subnormal_total_mass_is_normalised(backend):
    """A mask of 1e-39 (subnormal in float32) makes the joint histogram's total subnormal. P
    must still sum to 1 and give the oracle's entropies (the normalisation once clamped the
    total to the smallest normal float, 1.2e-38, and returned a P summing to about 0.1: a
    hypothesis run found it with a window weight of 5e-20 squared). What remains is the
    precision of subnormal float32 values of 1e-39 to 1e-41 (1.4e-45 absolute): up to 4e-6
    measured in an entropy, bound 2e-5."""
    x = torch.tensor([[[0.0, 0.5, 1.0, 0.25]]])
    y = torch.tensor([[[1.0, 0.0, 0.75, 0.5]]])
    m = torch.full_like(x, 1e-39)
    kw = dict(num_bins=5, sigma=0.5, value_range=(0.0, 1.0), mask=m, backend=backend)
    p = mi.joint_histogram(x, y, **kw)
    assert abs(p.sum().item() - 1) < 1e-5
    u, v = to_bins(x.flatten(1), 0.0, 1.0, 5), to_bins(y.flatten(1), 0.0, 1.0, 5)
    want = entropies(dense_joint(u, v, m.flatten(1).double(), 5, 0.5))
    for got, w in zip(mi.entropies(x, y, **kw), want):
        torch.testing.assert_close(got.double(), w, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "scale, dtype",
    [(1e-45, torch.float32), (1e36, torch.float32), (3e38, torch.float32), (1e306, torch.float64)],
)
def test_masks_of_any_finite_scale(scale, dtype, backend):
    """A uniform mask changes nothing, whatever its scale: the sums of 3e38 (float32) or 1e306
    (float64) weights overflowed (NaN, an all-zero joint histogram, MI 0) and a mask of 1e-45
    (the smallest subnormal) gave another MI; the weights are now brought near 1 by a power
    of two per row first (exact). The gradient with respect to the mask is the unit mask's
    divided by the scale (MI does not depend on it): subnormal at 3e38 and 1e306 (compared
    to the subnormal spacing times the scale), about 1e42 at 1e-45, beyond float32, where
    the backward refuses it."""
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the Triton backend is float32")
    x, y = _pair(dtype=dtype)
    kw = dict(num_bins=8, sigma=0.5, backend=backend)
    ones = torch.ones_like(x, requires_grad=True)
    want = mi.mutual_information(x, y, mask=ones, **kw)
    (g1,) = torch.autograd.grad(want.sum(), ones)
    m = torch.full_like(x, scale, requires_grad=True)
    got = mi.mutual_information(x, y, mask=m, **kw)
    torch.testing.assert_close(got, want, rtol=5e-7, atol=0)  # measured up to 1.0e-7
    if scale == 1e-45:
        with pytest.raises(
            ValueError,
            match=r"with respect to mask overflows float32 \(largest 3.40282e\+38\): mask is tiny",
        ):
            torch.autograd.grad(got.sum(), m)
    else:
        (g,) = torch.autograd.grad(got.sum(), m)
        spacing = torch.finfo(dtype).tiny * torch.finfo(dtype).eps  # of the subnormals
        torch.testing.assert_close(g * scale, g1, rtol=0, atol=1e-6 * g1.abs().max().item() + spacing * scale)
    p = mi.joint_histogram(x, y, mask=m.detach(), **kw)
    torch.testing.assert_close(p.sum((-2, -1)), torch.ones(2, dtype=dtype), rtol=0, atol=5e-7)  # 1.2e-7
    h = mi.histogram(
        x.flatten(1),
        torch.linspace(0, 1, 8, dtype=dtype),
        0.1,
        weights=m.detach().flatten(1),
        backend=backend,
    )
    torch.testing.assert_close(
        h,
        mi.histogram(x.flatten(1), torch.linspace(0, 1, 8, dtype=dtype), 0.1, backend=backend),
        rtol=0,
        atol=2e-7,  # measured up to 4.5e-8
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_entropies_near_a_one_bin_histogram_keep_their_relative_precision(backend):
    """A constant image (one pixel's histogram) at a small sigma puts nearly all its mass in
    one bin: entropies of 1e-14 to 1e-3 nats, where the log of the rounded largest
    probability 1 - r keeps only about 1e-16 / r of its relative precision (the scores came
    out up to 7e-3 off, in float64 too). Oracles: such a joint histogram is an outer
    product, so MI = 0, the arithmetic NMI = 0 and Studholme's = 1 exactly; and the
    entropies of the returned joint histogram in 50-digit arithmetic (mpmath)."""
    import mpmath

    mpmath.mp.dps = 50

    def h(p):
        p = [mpmath.mpf(float(v)) for v in p]
        s = sum(p)
        return float(-sum(v / s * mpmath.log(v / s) for v in p if v > 0))

    dtypes = (torch.float32, torch.float64) if backend == "torch" else (torch.float32,)
    smallest = math.inf
    for dtype, k, sigma in [(d, k, s) for d in dtypes for k in (2, 3) for s in (0.09, 0.12, 0.15, 0.25)]:
        for xv, yv in ((0.0, 0.0), (0.05, 1.0), (0.35, 0.97), (1.0, 0.5), (0.5, 0.5)):
            x = torch.full((1, 1, 3, 2), xv, dtype=dtype)
            y = torch.full_like(x, yv)
            kw = dict(num_bins=k, sigma=sigma, value_range=(0.0, 1.0), backend=backend)
            p = mi.joint_histogram(x, y, **kw)[0].double()
            want = (h(p.sum(1)), h(p.sum(0)), h(p.flatten()))
            # measured: entropies 8.9e-8 (float32) and 3.8e-16 relative, NMI 6.4e-16, Studholme
            # 3.3e-16 from 1 (float64; exact in float32, whose step there is 6e-8)
            rtol = 1e-6 if dtype == torch.float32 else 1e-14
            for got, w in zip(mi.entropies(x, y, **kw), want):
                assert abs(got.item() - w) <= rtol * w, (dtype, k, sigma, xv, yv, got.item(), w)
            smallest = min(smallest, min(w for w in want if w > 0))
            assert abs(mi.mutual_information(x, y, **kw).item()) <= 1e-15
            assert abs(mi.mutual_information(x, y, normalize="arithmetic", **kw).item()) <= 1e-14
            step = 1.2e-7 if dtype == torch.float32 else 1e-14
            assert abs(mi.mutual_information(x, y, normalize="studholme", **kw).item() - 1) <= step
    assert smallest < 1e-12  # the cases reach the entropies where the precision was lost
