"""mi.compat against the real MONAI and kornia (test extras): values and gradients on real
images, in 2-D, 3-D and batches, both backends (Triton in the interpreter), and the inputs
where the originals give NaN.

Tolerances: 1e-5 relative (the issue's bar; a gradient relative to its largest entry).
MONAI builds its bin centres and Gaussian width in float32 even for float64 images; with
exact float64 constants the two agree to 1e-13 (``test_monai_gaussian_float64_exact``). In
float32, both MONAI's Gaussian gradients and ours carry float32 rounding of the bin
coordinate, amplified by 1 / sigma^2: measured against the exact float64 formula, MONAI's
error reaches 1.0e-5 and ours 6.6e-6 at 64 bins and sigma_ratio 0.3 (below 1e-6 at MONAI's
defaults), and MONAI's float32 constants alone put 1.0e-5 into its float64 gradients there.
So the bound is 1e-5 from the exact value, and 1e-5 plus MONAI's own measured error
(against the same exact value) from MONAI.
"""

import math

import kornia.losses as kl
import monai.losses as ml
import numpy as np
import pytest
import torch
from images import mri, photo, remap, rotated, to_tensor01

import mi
from mi import _autograd
from mi.compat import kornia as mk
from mi.compat import monai as mm

TOL = 1e-5


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _pair_2d(batch=2, size=(48, 40)):
    """Real photographs (rotated by a few degrees) against a remapped, rotated copy:
    (B, 1, H, W) in [0, 1]."""
    x = torch.cat([to_tensor01(rotated(photo(size), 4 * i)) for i in range(batch)])
    y = torch.cat([remap(to_tensor01(rotated(photo(size), 4 * i + 3))) for i in range(batch)])
    return x, y


def _volume(depth=10, size=24):
    """A small 3-D volume from the real MRI slice: each plane a rotated, resized copy."""
    m = mri()
    m8 = (255 * m / m.max()).astype(np.uint8)
    from PIL import Image

    planes = [
        np.asarray(Image.fromarray(rotated(m8, 3 * i)).resize((size, size), Image.BILINEAR))
        for i in range(depth)
    ]
    return torch.from_numpy(np.stack(planes).astype(np.float32) / 255.0)[None, None]


def _run(loss_fn, x, y):
    """(value, d/dx, d/dy) of loss_fn(x, y).sum(); a gradient is None when the loss gives none."""
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    out = loss_fn(a, b)
    if out.requires_grad:
        out.sum().backward()
    return out.detach(), a.grad, b.grad


def _compare(ours, theirs, x, y, tol=TOL, exact=None, sums=None):
    """ours against theirs on (x, y): value and gradients within ``tol``. With ``exact`` (a
    float64 evaluation of the same formula), ours must be within ``tol`` of it and within
    ``tol`` plus theirs' own measured error of theirs.

    ``sums``: (rows, space), for losses whose range (min and max of each row) is
    differentiated: the gradient of a row's argmin and argmax pixel is then a sum over all
    the row's pixels, with cancellation, and its float32 error scales with that sum's terms,
    about the L1 norm of the row's gradient: those two pixels are held to ``tol`` of it."""
    got, want = _run(ours, x, y), _run(theirs, x, y)
    assert got[0].shape == want[0].shape and got[0].dtype == want[0].dtype
    for i, (g, w, name) in enumerate(zip(got, want, ("value", "pred/input", "target"))):
        if w is None or w.abs().max() == 0:
            assert g is None or g.abs().max() == 0, f"{name}: a gradient where the original has none"
            continue
        bound = tol
        if exact is not None:
            assert _rel(g, exact[i]) < tol, (name, "from the exact value", _rel(g, exact[i]))
            bound = tol + _rel(w, exact[i])
        if i and sums is not None:
            rows, space = sums
            src = (x, y)[i - 1].detach()
            flat_g = g.reshape(-1, math.prod(src.shape[src.ndim - space :]))
            flat_w = w.reshape(flat_g.shape)
            ends = _range_pixels(src, rows[i - 1], space)
            err = (flat_g - flat_w).abs().double()
            l1 = flat_w.abs().double().sum(-1, keepdim=True).expand_as(err)
            assert (err[ends] <= tol * l1[ends]).all(), (name, "range pixels", (err[ends] / l1[ends]).max())
            g, w = flat_g[~ends], flat_w[~ends]
        assert _rel(g, w) < bound, (name, _rel(g, w), bound)
    return got


def _range_pixels(t, mask, space):
    """(rows, N) bool: each row's argmin and argmax over the mask, as ``Tensor.min(dim)`` picks them."""
    rows = t.reshape(-1, math.prod(t.shape[t.ndim - space :]))
    pos = torch.arange(rows.shape[-1]) if mask is None else mask.reshape(-1).nonzero()[:, 0]
    sel = rows[:, pos]
    ends = torch.zeros_like(rows, dtype=torch.bool)
    for idx in (sel.min(-1).indices, sel.max(-1).indices):
        ends[torch.arange(rows.shape[0]), pos[idx]] = True
    return ends


# ---------------------------------------------------------------- MONAI


MONAI_CASES = [
    # kernel_type, num_bins, sigma_ratio, data
    ("gaussian", 23, 0.5, "2d"),
    ("gaussian", 32, 1.0, "2d"),
    ("gaussian", 64, 0.3, "3d"),
    ("b-spline", 23, 0.5, "2d"),
    ("b-spline", 50, 0.5, "3d"),
    ("b-spline", 8, 0.5, "2d"),
]


def _monai_data(kind, dtype):
    if kind == "2d":
        x, y = _pair_2d(3)
    else:
        v = _volume()
        x, y = v, remap(torch.roll(v, 2, dims=-1))
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kernel_type,num_bins,sigma_ratio,data", MONAI_CASES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_monai_matches(kernel_type, num_bins, sigma_ratio, data, dtype, reduction):
    x, y = _monai_data(data, dtype)
    kw = dict(kernel_type=kernel_type, num_bins=num_bins, sigma_ratio=sigma_ratio, reduction=reduction)
    exact = None
    if kernel_type == "gaussian":  # (b-spline: the same float arithmetic as MONAI, bit for bit,
        # whose box window is discontinuous: a float64 evaluation would move pixels across bins)
        exact = _run(_monai_exact(**kw), x.double(), y.double())
        exact = tuple(None if t is None else t.to(dtype) for t in exact)
    _compare(mm.GlobalMutualInformationLoss(**kw), ml.GlobalMutualInformationLoss(**kw), x, y, exact=exact)


def _monai_exact(**kw):
    """MONAI's loss with its Gaussian bin centres and width in exact float64 (its b-spline
    mode has no float32 constants): on float64 inputs, the formula to float64 rounding."""
    loss = ml.GlobalMutualInformationLoss(**kw)
    if loss.kernel_type == "gaussian":
        k, s = loss.num_bins, kw.get("sigma_ratio", 0.5)
        loss.bin_centers = torch.linspace(0, 1, k, dtype=torch.float64)[None, None]
        loss.preterm = torch.tensor(1 / (2 * (s / (k - 1)) ** 2), dtype=torch.float64)
    return loss


def test_monai_multichannel_and_sum():
    """Channels are pooled into one histogram per sample (MONAI reshapes to (B, -1))."""
    x, y = _pair_2d(2)
    x, y = torch.cat([x, x.flip(-1)], 1), torch.cat([y, y.flip(-2)], 1)
    for kt in ("gaussian", "b-spline"):
        kw = dict(kernel_type=kt, reduction="sum")
        _compare(mm.GlobalMutualInformationLoss(**kw), ml.GlobalMutualInformationLoss(**kw), x, y)


def test_monai_gaussian_float64_exact():
    """With MONAI's bin centres and width in exact float64 the two agree to float64 rounding:
    the per-pixel normalisation through the op's mask is the same estimator, not an
    approximation of it."""
    x, y = _pair_2d(2)
    for k, s in [(23, 0.5), (64, 0.3)]:
        kw = dict(num_bins=k, sigma_ratio=s)
        _compare(mm.GlobalMutualInformationLoss(**kw), _monai_exact(**kw), x.double(), y.double(), tol=1e-12)


def test_monai_bspline_ties_split():
    """A target on exact half-bin points: MONAI's box gives each neighbour half (the op's
    'nearest' window), where a half-open box would move all of it one way."""
    k = 12
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, k - 5, (2, 1, 30, 30), generator=g).double() + 0.5  # terms at x.5
    target[:, :, 0, 0], target[:, :, 0, 1] = 0.0, k - 4.0  # min 0, max K - 4: bin size 1
    pred = torch.rand(2, 1, 30, 30, generator=g, dtype=torch.float64)
    kw = dict(kernel_type="b-spline", num_bins=k, reduction="none")
    # (MONAI's target marginal is a float32 mean: 1e-6 of this small MI)
    _compare(mm.GlobalMutualInformationLoss(**kw), ml.GlobalMutualInformationLoss(**kw), pred, target)
    theirs = ml.GlobalMutualInformationLoss(**kw)
    wa, _, wb, _ = theirs.parzen_windowing(pred, target)
    pab = torch.bmm(wa.permute(0, 2, 1), wb.to(wa)) / wa.shape[1]
    u, v = (mm._bspline_terms(t.reshape(2, -1), k) for t in (pred, target))
    joint = _autograd.joint_hist(u, v, None, _autograd.Binning(k, 1.0, ("bspline", "nearest"), "torch")) / 900
    assert (joint - pab).abs().max() < 1e-15


def test_monai_gaussian_clamps_like_monai():
    """Intensities outside [0, 1] (and +-inf) are clamped, with clamp's gradient, as in MONAI."""
    x, y = _pair_2d(2)
    x = x * 1.4 - 0.2
    x[0, 0, 0, :3] = torch.tensor([float("inf"), -float("inf"), 0.0])
    _compare(mm.GlobalMutualInformationLoss(), ml.GlobalMutualInformationLoss(), x, y)


def test_monai_second_derivative():
    """A Hessian-vector product through the loss against MONAI's autograd (float64, exact
    constants): the window sums' backward is itself differentiable, the op's is exact."""
    x, y = _pair_2d(1, (20, 16))
    x, y = x.double(), y.double()
    theirs = _monai_exact()
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = []
    for loss in (mm.GlobalMutualInformationLoss(), theirs):
        a = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(loss(a, y), a, create_graph=True)
        (h,) = torch.autograd.grad((g * direction).sum(), a)
        out.append(h)
    assert _rel(out[0], out[1]) < 1e-10


@pytest.mark.parametrize("kernel_type", ["gaussian", "b-spline"])
def test_monai_per_sample_gradients_with_torch_func(kernel_type):
    """vmap(grad(loss of one pair)): each pair's gradient, as MONAI's loss gives it by autograd
    (float64, its constants exact; the gaussian window sums were once an old-style autograd Function, which no
    torch.func transform takes)."""
    x, y = (t.double() for t in _pair_2d(3, (12, 10)))
    ours = mm.GlobalMutualInformationLoss(kernel_type=kernel_type)
    got = torch.func.vmap(torch.func.grad(lambda a, b: ours(a[None], b[None])))(x, y)
    theirs = _monai_exact(kernel_type=kernel_type)  # (its constants in float64)
    for i in range(3):
        a = x[i : i + 1].clone().requires_grad_()
        (want,) = torch.autograd.grad(theirs(a, y[i : i + 1]), a)
        # measured 8e-15 (gaussian) and 5e-12 (b-spline); bound 20x the larger
        assert _rel(got[i], want[0]) < 1e-10, (kernel_type, i, _rel(got[i], want[0]))


@pytest.mark.parametrize("kernel_type", ["gaussian", "b-spline"])
def test_monai_triton_matches(kernel_type):
    """The Triton kernels (in the interpreter) give MONAI's numbers too."""
    x, y = _pair_2d(2, (24, 20))
    ours = mm.GlobalMutualInformationLoss(kernel_type=kernel_type, backend="triton", reduction="none")
    _compare(ours, ml.GlobalMutualInformationLoss(kernel_type=kernel_type, reduction="none"), x, y)


def test_monai_where_monai_gives_nan():
    x, y = _pair_2d(2, (24, 20))
    bs = mm.GlobalMutualInformationLoss(kernel_type="b-spline", reduction="none")
    # a constant pred: MONAI divides by a zero bin size; here it lands on bin 2, MI ~ 0
    c = torch.full_like(x, 0.3).requires_grad_()
    loss = bs(c, y)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and loss.abs().max() < 1e-6 and torch.isfinite(c.grad).all()
    # near the float limit: the power-of-two scaling keeps MONAI's arithmetic exact
    ref = bs(x, y)
    for scale in (2.0**100, 2.0**-100, 2.0**127):
        assert torch.equal(bs(x * scale, y * scale), ref)
    big = (x * 2 - 1) * 3e38  # max - min overflows float32
    assert torch.isfinite(bs(big, y)).all()
    with pytest.raises(ValueError, match="pred contains NaN or Inf"):
        bs(torch.where(x > 0.5, float("nan"), x), y)
    with pytest.raises(ValueError, match="target contains NaN or Inf"):
        bs(x, torch.where(y > 0.5, float("inf"), y))
    with pytest.raises(ValueError, match="pred contains NaN"):
        mm.GlobalMutualInformationLoss()(torch.where(x > 0.5, float("nan"), x), y)


def test_monai_bad_arguments():
    x, y = _pair_2d(1, (8, 8))
    for kw, err in [
        (dict(kernel_type="bspline"), "kernel_type"),
        (dict(num_bins=1), "num_bins"),
        (dict(kernel_type="b-spline", num_bins=4), "num_bins >= 5"),
        (dict(sigma_ratio=0.1), "sigma_ratio"),
        (dict(sigma_ratio=-1.0), "sigma_ratio"),
        (dict(reduction="max"), "reduction"),
        (dict(smooth_dr=0.0), "smooth_dr"),
    ]:
        with pytest.raises(ValueError, match=err):
            mm.GlobalMutualInformationLoss(**kw)
    with pytest.raises(TypeError, match="smooth_nr"):
        mm.GlobalMutualInformationLoss(smooth_nr="1e-7")
    loss = mm.GlobalMutualInformationLoss()
    with pytest.raises(ValueError, match="differing shape"):
        loss(x, y[..., :4])
    with pytest.raises(TypeError, match="floating"):
        loss(x, (y * 255).long())
    with pytest.raises(ValueError, match="at least one pixel"):
        loss(x[..., :0], y[..., :0])
    assert loss.__class__(reduction="none")(x[:0], y[:0]).shape == (0,)


def test_monai_smooth_terms_as_numpy_scalars_and_tensors():
    """MONAI takes smooth_nr / smooth_dr through float(): a numpy float32 or a one-element
    tensor too (both were refused as not real numbers)."""
    x, y = _pair_2d(1, (16, 16))
    for v in (np.float32(1e-5), torch.tensor(1e-5, dtype=torch.float64)):
        got = mm.GlobalMutualInformationLoss(smooth_nr=v, smooth_dr=v)(x, y)
        want = ml.GlobalMutualInformationLoss(smooth_nr=v, smooth_dr=v)(x, y)
        assert _rel(got, want) < TOL
    with pytest.raises(TypeError, match="smooth_nr is read as a number and is not differentiated"):
        mm.GlobalMutualInformationLoss(smooth_nr=torch.tensor(1e-7, requires_grad=True))


def test_monai_half_and_module_behaviour():
    """float16 is computed in float32 (MONAI: in half) and returned in half; the module
    leaves the inputs untouched and has MONAI's reduction names (its LossReduction too)."""
    from monai.utils import LossReduction

    x, y = _pair_2d(2, (24, 20))
    x0, y0 = x.clone(), y.clone()
    loss = mm.GlobalMutualInformationLoss(reduction=LossReduction.NONE)
    ref = ml.GlobalMutualInformationLoss(reduction="none")(x, y)
    half = loss(x.half(), y.half())
    # the inputs' own half rounding: measured 2.2e-4 from the float32 value
    assert half.dtype == torch.float16 and _rel(half, ref) < 5e-4
    assert torch.equal(x, x0) and torch.equal(y, y0)


# ---------------------------------------------------------------- kornia


KORNIA_FUNCS = {
    (False, 1): (mk.mutual_information_loss, kl.mutual_information_loss),
    (False, 2): (mk.mutual_information_loss_2d, kl.mutual_information_loss_2d),
    (False, 3): (mk.mutual_information_loss_3d, kl.mutual_information_loss_3d),
    (True, 1): (mk.normalized_mutual_information_loss, kl.normalized_mutual_information_loss),
    (True, 2): (mk.normalized_mutual_information_loss_2d, kl.normalized_mutual_information_loss_2d),
    (True, 3): (mk.normalized_mutual_information_loss_3d, kl.normalized_mutual_information_loss_3d),
}


def _kornia_data(space, dtype):
    if space == 3:
        v = _volume()[0]  # (1, D, H, W): one batch dim
        x, y = v, remap(torch.roll(v, 3, dims=-2))
    else:
        x, y = _pair_2d(3)
        x, y = x[:, 0], y[:, 0]  # (3, H, W)
        if space == 1:
            x, y = x.flatten(-2), y.flatten(-2)
    return x.to(dtype) * 40 - 7, y.to(dtype) * 3  # kornia normalises each sample's range itself


def _both(space, normalized, **kw):
    ours, theirs = KORNIA_FUNCS[normalized, space]
    kernel = kw.pop("kernel", "xu")
    mine = dict(kw, kernel_function=getattr(mk.MIKernel, kernel))
    orig = dict(kw, kernel_function=getattr(kl.MIKernel, kernel))
    return (lambda a, b: ours(a, b, **mine)), (lambda a, b: theirs(a, b, **orig))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("space", [1, 2, 3])
@pytest.mark.parametrize(
    "kernel,num_bins,window_radius",
    [
        ("xu", 64, 1.0),
        ("xu", 32, 1.7),
        ("xu", 16, 0.6),
        ("truncated_gaussian", 32, 1.5),
        ("rectangular", 32, 1.0),
    ],
)
def test_kornia_matches(kernel, num_bins, window_radius, space, dtype):
    x, y = _kornia_data(space, dtype)
    for normalized in (False, True):
        ours, theirs = _both(space, normalized, kernel=kernel, num_bins=num_bins, window_radius=window_radius)
        _compare(ours, theirs, x, y, sums=((None, None), space))


def test_kornia_accepts_its_own_members_and_batch_shapes():
    x, y = _kornia_data(1, torch.float32)
    n = x.shape[-1]
    for shape in [(n,), (3, n), (1, 3, n)]:
        a, b = (
            x.reshape(-1)[: math.prod(shape)].reshape(shape),
            y.reshape(-1)[: math.prod(shape)].reshape(shape),
        )
        ours = lambda a, b: mk.mutual_information_loss(a, b, kernel_function=kl.MIKernel.xu)
        got = _compare(ours, kl.mutual_information_loss, a, b, sums=((None, None), 1))
        assert got[0].shape == shape[:-1]


@pytest.mark.parametrize("which", ["input", "target", "both", "one-true"])
def test_kornia_masks(which):
    """Each signal normalised over its own mask, the histogram over both; NaN outside the
    masks changes nothing (kornia ignores those positions too)."""
    x, y = _kornia_data(2, torch.float64)
    h, w = x.shape[-2:]
    g = torch.Generator().manual_seed(3)
    m_in = torch.rand(h, w, generator=g) > 0.3
    m_tg = torch.rand(h, w, generator=g) > 0.4
    masks = {
        "input": dict(input_mask=m_in),
        "target": dict(target_mask=m_tg),
        "both": dict(input_mask=m_in, target_mask=m_tg.to(torch.uint8)),
        "one-true": {},
    }[which]
    if which == "both":
        outside = ~(m_in | m_tg)
        x = torch.where(outside, float("nan"), x)
        y = torch.where(outside, float("nan"), y)
    ours, theirs = _both(2, False, **masks)
    got = _compare(ours, theirs, x, y, sums=((masks.get("input_mask"), masks.get("target_mask")), 2))
    if which == "both":
        assert not got[1][:, outside].any() and torch.isfinite(got[1]).all()


def test_kornia_constant_and_half():
    x, y = _kornia_data(1, torch.float32)
    c = torch.full_like(x, 2.5)  # a constant input: MI 0 (to float32 rounding) and no gradient
    (v, gx, gy), (w, hx, hy) = (
        _run(f, c, y) for f in (mk.mutual_information_loss, kl.mutual_information_loss)
    )
    assert v.abs().max() < 1e-6 and w.abs().max() < 1e-6
    assert gx.abs().max() == hx.abs().max() == 0
    assert gy.abs().max() < 1e-6 and hy.abs().max() < 1e-6  # float32 noise in both (MI is flat at 0)
    xh, yh = x.half(), y.half()
    got, want = mk.mutual_information_loss(xh, yh), kl.mutual_information_loss(xh, yh)
    # at most one float16 ulp (2**-10) apart: both compute in float32 (measured: equal)
    assert got.dtype == want.dtype == torch.float16 and _rel(got, want) <= 2.0**-10


def test_kornia_second_derivative():
    x, y = _kornia_data(1, torch.float64)
    x, y = x[:1, :300], y[:1, :300]
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = []
    for fn, kernels in ((mk.mutual_information_loss, mk.MIKernel), (kl.mutual_information_loss, kl.MIKernel)):
        a = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(
            fn(a, y, kernel_function=kernels.xu, num_bins=16).sum(), a, create_graph=True
        )
        (h,) = torch.autograd.grad((g * direction).sum(), a)
        out.append(h)
    assert _rel(out[0], out[1]) < 1e-10


@pytest.mark.parametrize("kernel", ["xu", "truncated_gaussian"])
def test_kornia_triton_matches(kernel):
    x, y = _kornia_data(2, torch.float32)
    ours = lambda a, b: mk.mutual_information_loss_2d(
        a, b, kernel_function=getattr(mk.MIKernel, kernel), backend="triton"
    )
    theirs = lambda a, b: kl.mutual_information_loss_2d(a, b, kernel_function=getattr(kl.MIKernel, kernel))
    _compare(ours, theirs, x, y, sums=((None, None), 2))


def test_kornia_where_kornia_gives_nan_and_bad_arguments():
    x, y = _kornia_data(1, torch.float32)
    ref = mk.mutual_information_loss(x, y)
    # (kornia's constant threshold is absolute, the target dtype's epsilon: ranges stay above it)
    assert torch.equal(mk.mutual_information_loss(x * 2.0**120, y * 2.0**-20), ref)
    big = torch.stack([x[0] / x[0].abs().max() * 3e38, y[0]])
    assert torch.isfinite(mk.mutual_information_loss(big, y[:2])).all()  # kornia: inf / inf = NaN
    with pytest.raises(ValueError, match="input contains NaN or Inf"):
        mk.mutual_information_loss(torch.where(x > 10, float("inf"), x), y)
    for kw, exc, err in [
        (dict(kernel_function="xu"), ValueError, "MIKernel"),
        (dict(num_bins=1), ValueError, "num_bins"),
        (dict(window_radius=0.0), ValueError, "window_radius"),
        (dict(input_mask=torch.ones(5, dtype=torch.bool)), ValueError, "one-sample shape"),
        (dict(input_mask=torch.ones(x.shape[-1])), TypeError, "boolean"),
        (dict(input_mask=torch.zeros(x.shape[-1], dtype=torch.bool)), ValueError, "at least one"),
    ]:
        with pytest.raises(exc, match=err):
            mk.mutual_information_loss(x, y, **kw)
    half = x.shape[-1] // 2
    m1 = torch.arange(x.shape[-1]) < half
    with pytest.raises(ValueError, match="no position in common"):
        mk.mutual_information_loss(x, y, input_mask=m1, target_mask=~m1)
    with pytest.raises(ValueError, match="same shape"):
        mk.mutual_information_loss(x, y[:, :-1])


def test_compat_is_one_import():
    """The drop-ins are reachable as mi.compat.* and are what the README's one-line change names."""
    assert mi.compat.monai.GlobalMutualInformationLoss is mm.GlobalMutualInformationLoss
    assert mi.compat.kornia.mutual_information_loss is mk.mutual_information_loss
