"""The B-spline and ITK Mattes Parzen windows: SimpleITK, partition of unity, exact gradients."""

import numpy as np
import pytest
import torch
from images import mri, photo, remap, rotated
from oracle import dense_joint
from oracle import mutual_information as oracle_mi

import mi


def _pairs():
    p = photo((160, 128)).astype(np.float32) / 255
    m = mri()
    return {
        "photo-vs-rotated-remapped": (
            p,
            remap(torch.from_numpy(rotated(photo((160, 128)), 5) / 255.0)).numpy(),
        ),
        "mri-vs-flipped-sqrt": (m, np.sqrt(m[::-1].copy())),
        "photo-vs-mri": (photo((256, 256)).astype(np.float32), m),
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(_pairs()))
@pytest.mark.parametrize("bins", [50, 32, 30])
def test_mattes_equals_simpleitk(name, bins, dtype):
    sitk = pytest.importorskip("SimpleITK")
    fixed, moving = _pairs()[name]
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(bins)
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetInitialTransform(sitk.TranslationTransform(2))
    want = reg.MetricEvaluate(
        sitk.GetImageFromArray(fixed.astype(np.float64)), sitk.GetImageFromArray(moving.astype(np.float64))
    )
    x = torch.tensor(fixed, dtype=dtype)[None, None]
    y = torch.tensor(moving, dtype=dtype)[None, None]
    got = -mi.mutual_information(x, y, kernel="mattes", num_bins=bins).item()
    # The issue asks for 1e-3; float64 agrees to rounding, float32 to its accumulation error.
    assert got == pytest.approx(want, rel=1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("bins", [50, 32])
def test_mattes_with_a_mask_equals_simpleitk_fixed_mask(bins):
    """SimpleITK's fixed mask keeps the fixed image's samples inside it; ITK then takes the
    fixed image's range over the mask and the moving image's over the whole image. The mask
    here leaves out both images' extremes, so another choice of range would show."""
    sitk = pytest.importorskip("SimpleITK")
    fixed = mri().astype(np.float64)
    moving = np.sqrt(fixed[::-1].copy())
    mask = np.zeros(fixed.shape, np.uint8)
    mask[100:140, 90:150] = 1
    assert fixed[mask > 0].max() < fixed.max() and moving[mask > 0].max() < moving.max()
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(bins)
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetInitialTransform(sitk.TranslationTransform(2))
    reg.SetMetricFixedMask(sitk.GetImageFromArray(mask))
    want = reg.MetricEvaluate(sitk.GetImageFromArray(fixed), sitk.GetImageFromArray(moving))
    x, y = torch.tensor(fixed)[None, None], torch.tensor(moving)[None, None]
    rng = ("auto", (moving.min(), moving.max()))
    got = -mi.mutual_information(
        x, y, kernel="mattes", num_bins=bins, mask=torch.tensor(mask > 0), value_range=rng
    )
    assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-14)


def test_bspline_is_a_partition_of_unity():
    """Every pixel adds exactly one unit of mass, wherever it falls (lo..hi -> bins 1..K-2)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 40, 40, generator=gen, dtype=torch.float64)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0.0, 1.0  # exactly at the ends of the range
    j = mi.joint_histogram(x, x.flip(-1), num_bins=7, kernel="bspline", value_range=(0, 1))
    assert j.shape == (3, 7, 7)
    ones = torch.ones(1, 1, 1600, dtype=torch.float64)
    from mi import _autograd  # the raw (unnormalised) op: total mass = number of pixels

    u = x.reshape(3, -1) * 4 + 1
    raw = _autograd.joint_hist(u, u.flip(-1), None, _autograd.Binning(7, 1.0, ("bspline",) * 2, "torch"))
    torch.testing.assert_close(raw.sum((-2, -1)), ones.sum().expand(3), rtol=1e-14, atol=0)


@pytest.mark.parametrize("kernel", ["bspline", "mattes"])
def test_parzen_mi_and_gradient_match_dense(kernel):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 12, 10, generator=gen)
    y = (remap(x) + 0.2 * torch.rand(2, 1, 12, 10, generator=gen)).requires_grad_()
    k = 12
    got = mi.mutual_information(x, y, num_bins=k, kernel=kernel, value_range=((0, 1), (0, 1.2)))
    yd = y.detach().double().requires_grad_()
    if kernel == "bspline":
        u, v = x.double() * (k - 3) + 1, yd * (k - 3) / 1.2 + 1
        ref = oracle_mi(dense_joint(u.flatten(1), v.flatten(1), None, k, 1.0, "bspline", "bspline"))
    else:  # ITK: fixed bin floor(term) clamped to [2, K-3]; moving B-spline at term
        u = (x.double() * (k - 4) + 2).floor().clamp(2, k - 3)
        v = yd * (k - 4) / 1.2 + 2
        ref = oracle_mi(dense_joint(u.flatten(1), v.flatten(1), None, k, 1.0, "box", "bspline"))
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-7)
    got.sum().backward()
    ref.sum().backward()
    # measured at most 9e-7 of max|grad|, bound at 5e-6 of it
    torch.testing.assert_close(y.grad.double(), yd.grad, rtol=0, atol=5e-6 * yd.grad.abs().max().item())


@pytest.mark.filterwarnings("ignore:.* of the samples of x .*lie more than one bin beyond")
def test_mattes_drops_fixed_samples_beyond_value_range():
    """value_range: mass beyond the bins is dropped. With kernel="mattes" the fixed image's
    samples beyond lo..hi were clamped into the edge bins 2 and K-3 instead (ITK's clamp of
    the bin index, which with ITK's own ranges only ever moves the maximum): here the 54 %
    of the samples outside 0.3..0.7 went into those two bins."""
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 12, 10, generator=gen, dtype=torch.float64)
    y = (remap(x) + 0.2 * torch.rand(2, 1, 12, 10, generator=gen, dtype=torch.float64)).requires_grad_()
    k, lo, hi = 12, 0.3, 0.7
    got = mi.mutual_information(x, y, num_bins=k, kernel="mattes", value_range=((lo, hi), (0, 1.2)))
    yd = y.detach().clone().requires_grad_()
    u = ((x - lo) * ((k - 4) / (hi - lo)) + 2).floor().clamp(2, k - 3)
    inside = ((x >= lo) & (x <= hi)).double()
    j = dense_joint(
        u.flatten(1), (yd * ((k - 4) / 1.2) + 2).flatten(1), inside.flatten(1), k, 1.0, "box", "bspline"
    )
    ref = oracle_mi(j)
    # measured 1.5e-15 relative (values) and 1.4e-16 absolute (gradients, largest 0.24); ~7x
    torch.testing.assert_close(got, ref, rtol=1e-14, atol=0)
    got.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(y.grad, yd.grad, rtol=0, atol=1e-15)


def test_mattes_needs_five_bins():
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="kernel='mattes' needs num_bins >= 5"):
        mi.mutual_information(x, x, kernel="mattes", num_bins=4)


def test_per_image_value_ranges():
    x = torch.rand(1, 1, 16, 16)
    y = x * 1000 + 50
    a = mi.mutual_information(x, y, num_bins=16, value_range=((0, 1), (50, 1050)))
    b = mi.mutual_information(x, (y - 50) / 1000, num_bins=16, value_range=(0, 1))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="value_range must be finite with lo < hi"):
        mi.mutual_information(x, y, value_range=((0, 1), (2, 1)))
