"""The brain MRI pair with a known rigid transform (mi.registration.brain).

Oracles: the template's NIfTI header parsed here from its bytes (dims, pixdim, sform),
independent of SimpleITK; rotation matrices written out here; sitk.BinShrink and numpy
block means of contrast2 for the moving grids with no motion; SimpleITK's own
``TransformPoint`` for the transforms. The correlation bounds come from measured values
(stated at each bound) with a margin.
"""

import gzip
import importlib.util
import math
import struct
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
if importlib.util.find_spec("nilearn") is None:
    pytest.skip("the brain template ships with nilearn (pip install nilearn)", allow_module_level=True)

from mi.registration import brain  # noqa: E402

DATA = Path(importlib.util.find_spec("nilearn").submodule_search_locations[0]) / "datasets" / "data"


def _arr(image):
    return sitk.GetArrayFromImage(image).astype(np.float64)


def _pearson_in_brain(a, b, fixed):
    """Pearson r of two images on the fixed grid, over the voxels where the fixed T1 is
    above 10 % of its maximum (the brain)."""
    f = _arr(fixed)
    m = f > 0.1 * f.max()
    return float(np.corrcoef(_arr(a)[m], _arr(b)[m])[0, 1])


@pytest.fixture(scope="module")
def contrast2():
    return brain.brain_contrast2()


@pytest.fixture(scope="module")
def pair2():
    """The default pair at 2 mm."""
    return brain.brain_pair(shrink=2)


# ---------------------------------------------------------------- the template


def test_template_geometry_matches_the_nifti_header():
    t1 = brain.brain_t1()
    assert t1.GetPixelID() == sitk.sitkFloat32
    assert t1.GetSize() == (197, 233, 189)
    assert t1.GetSpacing() == (1.0, 1.0, 1.0)
    assert t1.GetOrigin() == (98.0, 134.0, -72.0)
    assert t1.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    # the same from the file's bytes: RAS sform -> ITK's LPS (x and y negated)
    head = gzip.open(DATA / brain._FILES["t1"]).read(352)
    dims = struct.unpack("<8h", head[40:56])
    pixdim = struct.unpack("<8f", head[76:108])
    srow = np.array([struct.unpack("<4f", head[o : o + 16]) for o in (280, 296, 312)])
    assert dims[: dims[0] + 1] == (3, *t1.GetSize())
    assert pixdim[1:4] == t1.GetSpacing()
    lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_array_equal(lps @ srow[:, :3], np.reshape(t1.GetDirection(), (3, 3)))
    np.testing.assert_array_equal(lps @ srow[:, 3], t1.GetOrigin())
    a = _arr(t1)
    assert a.min() == 0.0 and a.max() == 255.0
    assert 0.15 < (a > 0).mean() < 0.3  # skull-stripped: the brain fills about a fifth of the grid


def test_contrast2_formula_and_non_monotonic_contrast(contrast2):
    t1 = brain.brain_t1()
    for key in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(contrast2, key)() == getattr(t1, key)()
    assert contrast2.GetPixelID() == sitk.sitkFloat32
    c, a = _arr(contrast2), _arr(t1)
    gm = _arr(sitk.ReadImage(str(DATA / brain._FILES["gm"]))) / 255
    wm = _arr(sitk.ReadImage(str(DATA / brain._FILES["wm"]))) / 255
    want = (1.0 * np.clip(1 - gm - wm, 0, 1) + 0.55 * gm + 0.25 * wm) * (a > 0)
    np.testing.assert_allclose(c, want, atol=1e-6)
    assert c.min() == 0.0 and c.max() <= 1.0 and np.all(c[a == 0] == 0)
    # T2-like: CSF > GM > WM, while the T1 has CSF < GM < WM
    csf, pure_gm, pure_wm = (a > 0) & (gm + wm < 0.05), gm > 0.9, wm > 0.9
    assert c[csf].mean() > c[pure_gm].mean() > c[pure_wm].mean()
    assert a[csf].mean() < a[pure_gm].mean() < a[pure_wm].mean()
    # anti-correlated inside the brain, positively correlated over the grid (measured -0.984, +0.820)
    brain_voxels = a > 0
    assert np.corrcoef(a[brain_voxels], c[brain_voxels])[0, 1] < -0.95
    assert 0.7 < np.corrcoef(a.ravel(), c.ravel())[0, 1] < 0.9


def test_missing_nilearn_says_how_to_install(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "nilearn" else find_spec(n, *a)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install nilearn"):
        brain.brain_t1()


# ---------------------------------------------------------------- the transform


def _rx(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def test_rigid_transform_maps_the_centre_to_centre_plus_shift_and_is_a_rotation():
    t = brain.rigid_transform((4.0, -3.0, 5.0), (6.0, -4.0, 3.0))
    center = np.array([0.0, 18.0, 22.0])  # the T1 grid's centre: origin + D (size - 1) / 2
    np.testing.assert_allclose(t.GetCenter(), center, atol=1e-12)
    np.testing.assert_allclose(t.TransformPoint(tuple(center)), center + [6.0, -4.0, 3.0], atol=1e-12)
    r = np.reshape(t.GetMatrix(), (3, 3))
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-12)
    ax, ay, az = np.radians([4.0, -3.0, 5.0])
    np.testing.assert_allclose(r, _rz(az) @ _rx(ax) @ _ry(ay), atol=1e-12)  # y first, then x, then z
    p = np.array([10.0, -20.0, 30.0])
    np.testing.assert_allclose(t.TransformPoint(tuple(p)), r @ (p - center) + center + [6, -4, 3], atol=1e-12)
    other = brain.rigid_transform((0, 0, 90), (0, 0, 0), center=(1.0, 0.0, 0.0))
    np.testing.assert_allclose(other.TransformPoint((2.0, 0.0, 0.0)), (1.0, 1.0, 0.0), atol=1e-12)


# ---------------------------------------------------------------- the error


def test_mean_error_zero_for_the_truth_and_norm_of_an_extra_translation(pair2):
    fixed, _, true = pair2
    assert brain.mean_error_mm(true, true, fixed) == 0.0
    extra = np.array([1.5, -2.0, 0.5])
    shifted = sitk.Euler3DTransform(true)
    shifted.SetTranslation(tuple(np.add(true.GetTranslation(), extra)))
    composite = sitk.CompositeTransform([sitk.TranslationTransform(3, tuple(extra)), true])
    p = (10.0, -20.0, 30.0)
    np.testing.assert_allclose(composite.TransformPoint(p), np.add(true.TransformPoint(p), extra), atol=1e-12)
    for found in (shifted, composite):
        assert brain.mean_error_mm(found, true, fixed) == pytest.approx(np.linalg.norm(extra), abs=1e-9)
        assert brain.mean_error_mm(true, found, fixed) == pytest.approx(np.linalg.norm(extra), abs=1e-9)


def test_mean_error_of_a_rotation_against_an_explicit_average(pair2):
    """A rotation by 2 degrees about z through the grid's centre, against SimpleITK's dense
    evaluation of the same transform on the grid (averaged over the same voxels), and against
    the geometry: the error is 2 sin(1 deg) times the distance from that axis."""
    fixed = pair2[0]
    identity = sitk.Euler3DTransform()
    rot = brain.rigid_transform((0.0, 0.0, 2.0), (0.0, 0.0, 0.0))
    field = sitk.TransformToDisplacementField(
        rot,
        sitk.sitkVectorFloat64,
        fixed.GetSize(),
        fixed.GetOrigin(),
        fixed.GetSpacing(),
        fixed.GetDirection(),
    )
    dense = np.linalg.norm(sitk.GetArrayFromImage(field), axis=-1)
    a = _arr(fixed)
    for mask in (None, a > 200, sitk.GetImageFromArray((a > 200).astype(np.uint8))):
        sel = a > 0.1 * a.max() if mask is None else (a > 200)
        got = brain.mean_error_mm(rot, identity, fixed, mask=mask)
        assert got == pytest.approx(dense[sel].mean(), rel=1e-9)
        k, j, i = np.nonzero(sel)
        idx = zip(i[::97].tolist(), j[::97].tolist(), k[::97].tolist())
        pts = np.array([fixed.TransformContinuousIndexToPhysicalPoint(q) for q in idx])
        dist_xy = np.linalg.norm(pts[:, :2] - np.array(rot.GetCenter())[:2], axis=1)
        assert got == pytest.approx(2 * math.sin(math.radians(1.0)) * dist_xy.mean(), rel=0.02)
    with pytest.raises(ValueError, match="shape"):
        brain.mean_error_mm(rot, identity, fixed, mask=np.ones((3, 3, 3)))


def test_mean_error_of_a_non_affine_transform(pair2):
    """A displacement field (not affine: it moves half of the grid) goes through SimpleITK's
    dense evaluation; at voxel centres the field is exact."""
    fixed = pair2[0]
    a = _arr(fixed)
    disp = np.zeros((*a.shape, 3))
    top = np.arange(a.shape[0]) >= a.shape[0] // 2
    disp[top] = (3.0, 0.0, 4.0)
    field = sitk.GetImageFromArray(disp, isVector=True)
    field.CopyInformation(fixed)
    warp = sitk.DisplacementFieldTransform(field)
    brain_voxels = a > 0.1 * a.max()
    expected = 5.0 * (brain_voxels & top[:, None, None]).sum() / brain_voxels.sum()
    assert brain.mean_error_mm(warp, sitk.Euler3DTransform(), fixed) == pytest.approx(expected, rel=1e-9)
    assert brain._affine_map(warp, fixed) is None


# ---------------------------------------------------------------- the pair


def test_pair_without_motion_is_the_block_mean_of_contrast2(contrast2):
    fixed, moving, true = brain.brain_pair((0, 0, 0), (0, 0, 0), shrink=2)
    shrunk = sitk.BinShrink(contrast2, [2, 2, 2])
    assert fixed.GetSize() == moving.GetSize() == (98, 116, 94)
    assert fixed.GetSpacing() == moving.GetSpacing() == (2.0, 2.0, 2.0)
    assert fixed.GetOrigin() == moving.GetOrigin() == shrunk.GetOrigin() == (97.5, 133.5, -71.5)
    np.testing.assert_allclose(_arr(moving), _arr(shrunk), atol=1e-6)
    np.testing.assert_allclose(_arr(fixed), _arr(sitk.BinShrink(brain.brain_t1(), [2, 2, 2])), atol=1e-4)
    # thick slices without motion: each slice is the mean of three 1 mm slices
    _, thick, _ = brain.brain_pair((0, 0, 0), (0, 0, 0), slice_mm=3.0)
    assert thick.GetSize() == (197, 233, 63) and thick.GetSpacing() == (1.0, 1.0, 3.0)
    assert thick.GetOrigin() == (98.0, 134.0, -71.0)  # the centre of the first 3 mm slab
    assert thick.GetDirection() == contrast2.GetDirection()
    want = _arr(contrast2).reshape(63, 3, 233, 197).mean(axis=1)
    np.testing.assert_allclose(_arr(thick), want, atol=1e-6)


def test_pair_geometry_and_types(pair2):
    fixed, moving, true = pair2
    assert isinstance(true, sitk.Euler3DTransform)
    assert fixed.GetPixelID() == moving.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(true.GetTranslation(), (6.0, -4.0, 3.0))
    np.testing.assert_allclose(true.GetCenter(), (0.0, 18.0, 22.0))
    # the same physical box as the 1 mm template (BinShrink drops the odd last voxel)
    np.testing.assert_allclose(fixed.TransformIndexToPhysicalPoint((0, 0, 0)), (97.5, 133.5, -71.5))


def test_moving_brought_back_with_the_truth_matches_contrast2(pair2, contrast2):
    """moving(true(p)) ~ contrast2(p): Resample(moving, fixed, true) against contrast2 on the
    fixed grid. Measured r = 0.972 (identity: 0.100); it is not 1 because two linear
    interpolations blur the sharp outline of the skull-stripped brain (bright CSF next to 0):
    2 voxels inside the outline r is 0.997."""
    fixed, moving, true = pair2
    reference = sitk.BinShrink(contrast2, [2, 2, 2])
    back = sitk.Resample(moving, fixed, true, sitk.sitkLinear, 0.0)
    unregistered = sitk.Resample(moving, fixed, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0)
    r_true = _pearson_in_brain(back, reference, fixed)
    r_identity = _pearson_in_brain(unregistered, reference, fixed)
    assert r_true > 0.95
    assert r_identity < 0.3
    # the inverse direction does not bring it back
    wrong = sitk.Resample(moving, fixed, true.GetInverse(), sitk.sitkLinear, 0.0)
    assert _pearson_in_brain(wrong, reference, fixed) < 0.3


def test_thick_slices_brought_back_with_the_truth(contrast2):
    """3 mm slices at 1 mm in-plane. Measured r = 0.908 (identity 0.041): lower than at 1 mm
    because each slice integrates 3 mm of contrast2 (the reference is not smoothed); bound
    0.88, a margin of 0.03."""
    fixed, moving, true = brain.brain_pair(slice_mm=3.0)
    assert moving.GetSpacing() == (1.0, 1.0, 3.0)
    assert moving.GetSize() == (197, 233, 63)
    back = sitk.Resample(moving, fixed, true, sitk.sitkLinear, 0.0)
    unregistered = sitk.Resample(moving, fixed, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0)
    assert _pearson_in_brain(back, contrast2, fixed) > 0.88
    assert _pearson_in_brain(unregistered, contrast2, fixed) < 0.3


def test_noise_is_seeded_and_scaled(pair2):
    _, clean, _ = pair2
    _, a, _ = brain.brain_pair(shrink=2, noise=0.05, seed=3)
    _, b, _ = brain.brain_pair(shrink=2, noise=0.05, seed=3)
    _, c, _ = brain.brain_pair(shrink=2, noise=0.05, seed=4)
    assert a.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(_arr(a), _arr(b))
    assert not np.array_equal(_arr(a), _arr(c))
    residual = _arr(a) - _arr(clean)
    assert residual.std() == pytest.approx(0.05 * _arr(clean).max(), rel=0.01)
    assert abs(residual.mean()) < 1e-3


def test_bad_arguments():
    with pytest.raises(ValueError, match="shrink"):
        brain.brain_pair(shrink=0)
    with pytest.raises(ValueError, match="slice_mm"):
        brain.brain_pair(slice_mm=0.0)
    with pytest.raises(ValueError, match="noise"):
        brain.brain_pair(noise=-1.0)
    with pytest.raises(ValueError, match="3 angles"):
        brain.rigid_transform((1.0, 2.0))
