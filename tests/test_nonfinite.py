"""NaN and Inf voxels are outside their image (SPM and resampling tools write NaN where there
is no data): NIfTI files keep them, registration and ``mi score`` leave them out.

Oracles: the NIfTI file's own bytes (``test_io._raw_nifti``), SimpleITK's linear Resample
(which propagates NaN through every corner it reads with a nonzero coefficient), numpy's
nanmean over the pyramid's blocks and an explicit neighbourhood loop, the known transforms
of the synthetic pairs, and ``mi.mutual_information`` on the finite voxels alone (no mask).
"""

import itertools

import numpy as np
import pytest
import torch
from test_io import _raw_nifti, _volume, _write

import mi
from mi.cli import main
from mi.io import ImageReadError, read_image, read_medical
from mi.registration import demo_volume_pair, register, transform_error
from mi.registration.optim import _setup, read_pair, shrink_factors
from mi.registration.space import Geometry, as_image, voxel_matrix, warp

sitk = pytest.importorskip("SimpleITK")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_nan_and_inf_are_read_from_the_file(tmp_path, suffix):
    """SimpleITK's NIfTI reader gives 0 for NaN and Inf; read_medical puts the file's values
    back; read_image refuses them unless allowed. An image whose zeros are real zeros reads
    as it is."""
    for bad, dtype in ((np.nan, np.float32), (np.inf, np.float64), (-np.inf, np.float32)):
        a = _volume().astype(dtype)
        a[0, :3] = bad
        a[3, 2, 1] = np.nan
        path = tmp_path / f"m{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(a), str(path))
        assert (sitk.GetArrayFromImage(sitk.ReadImage(str(path))) == 0).any()  # (why)
        raw = _raw_nifti(path)
        assert np.isnan(raw).sum() + np.isinf(raw).sum() == 28
        img = read_medical(path)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), raw)  # (NaN equals NaN here)
        assert img.GetSpacing() == sitk.ReadImage(str(path)).GetSpacing()
        np.testing.assert_array_equal(read_image(path, allow_nonfinite=True), raw)
        with pytest.raises(ImageReadError, match="NaN or Inf"):
            read_image(path)
    a = _volume()
    a[1] = 0.0
    path = _write(a, tmp_path / f"z{suffix}")
    np.testing.assert_array_equal(read_image(path), _raw_nifti(path))
    a[...] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / f"all{suffix}"))
    with pytest.raises(ImageReadError, match="every voxel is NaN or Inf"):
        read_image(tmp_path / f"all{suffix}", allow_nonfinite=True)


def _nan_blobs(shape, seed, count=6, radius=2.5):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    out = np.zeros(shape, bool)
    for c in rng.random((count, len(shape))) * np.array(shape):
        out |= np.linalg.norm(grid - c, axis=-1) < radius
    return out


@pytest.mark.parametrize("dim", [2, 3])
def test_resampled_weights_leave_out_what_simpleitk_gives_nan(dim):
    """warp(..., valid): wherever SimpleITK's linear Resample of the image with its NaN gives
    NaN, the weight is 0; where the weight is positive the value is SimpleITK's. The margin
    (weight 0 where SimpleITK is finite) stays within a voxel of the NaN."""
    rng = np.random.default_rng(dim)
    shape = (14, 17, 19)[3 - dim :]
    a = rng.random(shape).astype(np.float32)
    nan = _nan_blobs(shape, dim)
    a[nan] = np.nan
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((1.2, 0.9, 1.5)[:dim])
    img.SetOrigin((3.0, -2.0, 1.0)[:dim])
    angle = np.deg2rad(7.0)
    t = sitk.Euler2DTransform() if dim == 2 else sitk.Euler3DTransform()
    t.SetCenter((10.0, 5.0, 8.0)[:dim])
    t.SetTranslation((0.6, -0.35, 0.4)[:dim])
    t.SetAngle(angle) if dim == 2 else t.SetRotation(angle, -angle / 2, angle / 3)
    theirs = sitk.GetArrayFromImage(sitk.Resample(img, img, t, sitk.sitkLinear, 0.0))
    (m, g) = as_image("moving", img, nonfinite=True)
    valid = torch.isfinite(m).float()
    physical = torch.eye(dim + 1, dtype=torch.float64)
    physical[:dim, :dim] = torch.tensor(t.GetMatrix(), dtype=torch.float64).reshape(dim, dim)
    physical[:dim, dim] = torch.tensor(t.TransformPoint((0.0,) * dim))
    ours, weight = warp(torch.nan_to_num(m), voxel_matrix(physical, g, g), shape, valid)
    ours, weight = ours[0, 0].numpy(), weight[0, 0].numpy()
    kept = weight > 0
    assert not (kept & np.isnan(theirs)).any()  # never a sample SimpleITK has as NaN
    np.testing.assert_allclose(ours[kept], theirs[kept], rtol=0, atol=2e-6)
    # the margin: what is left out beyond SimpleITK's NaN lies within a voxel of them
    near = nan.copy()
    for shift in itertools.product((-1, 0, 1), repeat=dim):
        near |= np.roll(nan, shift, axis=tuple(range(dim)))
    inside = weight + np.isnan(theirs) > 0  # (SimpleITK's 0 beyond the image: both outside)
    margin = ~kept & np.isfinite(theirs) & (theirs != 0)
    assert kept.sum() > 0.4 * inside.size
    assert margin.sum() < 0.5 * np.isnan(theirs).sum() + 0.05 * inside.size


def _blocks(a, k):
    """(n0 // k0, k0, n1 // k1, k1, ...) view of ``a`` cropped to whole blocks."""
    a = a[tuple(slice(0, (n // f) * f) for n, f in zip(a.shape, k))]
    return a.reshape([x for n, f in zip(a.shape, k) for x in (n // f, f)])


def _finite_mean(blocks, axes):
    """The mean of each block's finite voxels (0 where it has none), and their share."""
    finite = np.isfinite(blocks)
    total = np.where(finite, blocks, 0.0).sum(axes)
    count = finite.sum(axes)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0), finite.mean(axes)


def test_pyramid_levels_pool_the_finite_voxels():
    """At each pyramid level the fixed voxel is the mean of its block's finite voxels,
    weighted by their share of the block; the moving voxel is the same mean, and weighs 0
    unless every block around it (3x3x3) holds a finite voxel (an explicit loop here), else
    the moving mask's mean over its block."""
    fixed, moving, _ = demo_volume_pair(size=24)
    f, m = fixed.clone(), moving.clone()
    f[_nan_blobs(f.shape, 1, count=10)] = float("nan")
    m[_nan_blobs(m.shape, 2, count=10)] = float("inf")
    m[:, :4] = float("nan")
    mask = torch.rand(m.shape, generator=torch.Generator().manual_seed(0)) + 0.5
    f0, gf, m0, gm, valid = read_pair(f, m, None, None, None)
    *_, pyramid, _ = _setup(f0, gf, m0, gm, None, mask, None, {}, 0, None, valid)
    for level in range(3):
        k = shrink_factors(gf, level)
        fl, wl, ml = pyramid(k, k)
        axes = tuple(range(1, 2 * len(k), 2))
        fixed_blocks = _blocks(f.numpy().astype(np.float64), k)
        mean, share = _finite_mean(fixed_blocks, axes)
        np.testing.assert_allclose(fl[0, 0].numpy(), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(wl[0, 0].numpy(), share, rtol=1e-6, atol=0)
        moving_blocks = _blocks(m.numpy().astype(np.float64), k)
        mean, share = _finite_mean(moving_blocks, axes)
        np.testing.assert_allclose(ml[0, 0].numpy(), mean, rtol=1e-5, atol=1e-6)
        has = np.pad(share > 0, 1, constant_values=True)  # (beyond the edge: no block, no NaN)
        ok = np.ones(share.shape, bool)
        for shift in itertools.product((0, 1, 2), repeat=3):
            ok &= has[tuple(slice(s, s + n) for s, n in zip(shift, share.shape))]
        assert 0.2 < ok.mean() < 0.9, (level, ok.mean())
        moving_mask = _blocks(mask.numpy().astype(np.float64), k).mean(axes)
        np.testing.assert_allclose(ml[0, 1].numpy(), np.where(ok, moving_mask, 0.0), rtol=1e-5, atol=0)
        assert torch.isfinite(fl).all() and torch.isfinite(ml).all()


def test_nan_over_junk_registers_as_a_mask_does():
    """Junk over a third of the moving volume, then NaN there: the registration is as close
    as with the junk masked out (tests/test_registration_space.py: 0.19 degree, 0.12 voxel),
    and NaN voxels in the fixed image too."""
    fixed, moving, true = demo_volume_pair()
    junk = moving.clone()
    junk[:, :, :14] = float("nan")
    junk[5, 5, 20] = float("inf")
    f = fixed.clone()
    f[:8, :8] = float("nan")
    r = register(f, junk, progress=False)
    angle, _, corner = transform_error(r.matrix, true, fixed.shape)
    print(f"NaN over a third of the moving volume: {angle:.3f} deg, {corner:.3f} vox at the worst corner")
    assert angle < 0.3 and corner < 0.25  # measured 0.144 deg, 0.118 voxel (0.179, 0.150 before winsorize)
    assert np.isfinite(r.mi_before) and np.isfinite(r.mi_after) and r.mi_after > r.mi_before + 0.1
    assert torch.isfinite(r.warped).all()
    assert torch.isnan(junk[:, :, :14]).all() and torch.isnan(f[:8, :8]).all()  # not modified


def test_nan_voxels_give_clear_errors():
    img = torch.rand(32, 32)
    with pytest.raises(ValueError, match="moving: every voxel is NaN or Inf"):
        register(img, torch.full((32, 32), float("nan")), progress=False, levels=1, iterations=1)
    checker = torch.rand(32, 32)
    checker[::2, ::2] = float("nan")  # every voxel has a NaN neighbour
    with pytest.raises(ValueError, match="moving: no voxel is finite with finite neighbours .256 of"):
        register(img, checker, progress=False, levels=1, iterations=1)
    with pytest.raises(ValueError, match="fixed: no voxel within its mask is finite"):
        register(checker, img, mask=torch.isnan(checker), progress=False, levels=1, iterations=1)
    with pytest.raises(ValueError, match="mask must be finite"):  # masks stay strict
        register(img, img, mask=checker, progress=False, levels=1, iterations=1)


def test_score_leaves_nan_voxels_out(tmp_path, capsys):
    """mi score on two NIfTI files of one grid with NaN and Inf: the numbers are
    mi.mutual_information's on the voxels finite in both (the arrays from the files' bytes,
    no mask); the pictures are drawn."""
    a = _volume((6, 8, 10), seed=3)
    b = np.sqrt(a.max() - a) + np.random.default_rng(4).random(a.shape).astype(np.float32)
    a[0] = np.nan
    b[2, 3] = np.inf
    b[4, :, 2] = np.nan
    pa, pb = _write(a, tmp_path / "a.nii.gz"), _write(b, tmp_path / "b.nii.gz")
    assert main(["score", str(pa), str(pb), "--bins", "16", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"{pa}: 80 of 480 voxels are NaN or Inf: outside the image, left out" in out
    assert f"{pb}: 18 of 480 voxels are NaN or Inf" in out
    x, y = _raw_nifti(pa), _raw_nifti(pb)
    both = np.isfinite(x) & np.isfinite(y)
    x, y = (torch.from_numpy(v[both])[None, None] for v in (x, y))
    want = mi.mutual_information(x, y, num_bins=16, sigma=0.4)
    score = float(next(ln for ln in out.splitlines() if ln.startswith("score (")).rsplit(":", 1)[1])
    assert score == pytest.approx(want.item(), abs=5.1e-7)
    assert (tmp_path / "out" / "hist.png").stat().st_size > 10_000


def test_cli_registers_nifti_files_with_nan(tmp_path, capsys):
    """mi register on NIfTI files with NaN where a resampling left no data: it says so,
    registers, and writes the outputs."""
    fixed, moving, true = demo_volume_pair(size=32)
    m = moving.numpy().copy()
    m[:, :, :6] = np.nan  # an SPM-style bounding box
    one = (1.0, 1.0, 1.0)  # (the known transform is a rotation in voxels)
    fp, mp = _write(fixed.numpy(), tmp_path / "f.nii", one), _write(m, tmp_path / "m.nii.gz", one)
    assert main(["register", str(fp), str(mp), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{mp}: 6144 of 32768 voxels are NaN or Inf: outside the image" in out
    warped = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "m_registered.nii.gz")))
    assert np.isfinite(warped).all()
    physical = torch.from_numpy(np.loadtxt(tmp_path / "out" / "m_matrix.txt"))
    g = Geometry.of_sitk(sitk.ReadImage(str(fp)), "f")
    angle, _, corner = transform_error(voxel_matrix(physical, g, g), true, fixed.shape)
    print(f"mi register with NaN: {angle:.3f} deg, {corner:.3f} voxel at the worst corner")
    assert angle < 0.65 and corner < 0.35  # measured 0.284 deg, 0.140 voxel (0.321, 0.159 before winsorize)


@pytest.mark.parametrize(
    "name, bound",
    [
        # measured 0.134 mm (0.191 before winsorize); SimpleITK (bench_register's settings) 1.03 mm
        ("reoriented_anat_moved.nii", 0.4),
        # measured 0.489 mm (0.506 before winsorize); SimpleITK one level without its gradient
        # filters (its pyramid and Mattes' gradient images need 4 slices): 0.39 with NaN as 0,
        # 0.56 with a moving mask
        ("resampled_anat_moved.nii", 1.0),
    ],
)
def test_nibabels_spm_images_register_to_the_transform_that_made_them(name, bound):
    """nibabel's test data: ``anatomical.nii`` (2 mm T1, 33x41x25) moved by a known affine
    (rotations 0.1, 0.2, 0.3 rad, shift (3, 4, 5) mm; its ``make_moved_anat.py``), then
    resliced by SPM to 4 mm (reoriented), or to a slab of 3 slices of 8 mm with NaN where
    it had no data (153 voxels; resampled). Registering each to the T1 recovers the affine
    (mean error over the T1's brain voxels, ``brain.mean_error_mm``)."""
    nib = pytest.importorskip("nibabel")
    from nibabel.affines import from_matvec
    from nibabel.eulerangles import euler2mat

    from mi.registration.brain import mean_error_mm
    from mi.registration.transforms import to_sitk

    data = __import__("pathlib").Path(nib.__file__).parent / "tests" / "data"
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # nibabel's RAS -> ITK's LPS
    true = flip @ from_matvec(euler2mat(0.1, 0.2, 0.3), [3, 4, 5]) @ flip
    moving = read_medical(data / name)
    assert np.isnan(sitk.GetArrayViewFromImage(moving)).sum() == (153 if name.startswith("resampled") else 0)
    r = register(data / "anatomical.nii", data / name, progress=False)
    fixed = sitk.ReadImage(str(data / "anatomical.nii"), sitk.sitkFloat32)
    err = mean_error_mm(to_sitk(r.physical), to_sitk(torch.from_numpy(true)), fixed)
    print(f"{name}: {err:.3f} mm mean error")
    assert err < bound


@pytest.mark.filterwarnings("ignore:the registration has not converged")  # (short schedules)
@pytest.mark.parametrize("transform", ["bspline", "diffeomorphic"])
def test_deformable_registration_leaves_nan_out(transform):
    """register_deformable with NaN in both images: wherever the result weighs a voxel
    (``overlap`` > 0, the fixed image finite there), SimpleITK's Resample of the moving image
    with its NaN (and two spikes) through the exported transform is finite and equals
    ``warped``."""
    from mi.registration import demo_pair, register_deformable

    f, m, _ = demo_pair((64, 56))
    m = m.clone()
    m[:, :12] = float("nan")
    m[30:34, 30:33] = float("nan")
    m[40:42, 20] = 20.0  # spikes: the loss sees them winsorized, ``warped`` as they are
    f = f.clone()
    f[:6] = float("nan")
    images = []
    for a in (f, m):
        img = sitk.GetImageFromArray(a.numpy())
        img.SetSpacing((0.9, 1.1))
        images.append(img)
    r = register_deformable(*images, transform=transform, grid_spacing=12.0, iterations=8, progress=False)
    assert np.isfinite(r.mi_before) and np.isfinite(r.mi_after)
    theirs = sitk.GetArrayFromImage(
        sitk.Resample(images[1], images[0], r.sitk_transform(), sitk.sitkLinear, 0.0)
    )
    weighed = (r.overlap > 0).numpy() & np.isfinite(f.numpy())
    assert 0.5 < weighed.mean() < 0.95
    assert np.isfinite(theirs[weighed]).all()
    np.testing.assert_allclose(r.warped.numpy()[weighed], theirs[weighed], rtol=0, atol=1e-4)
    assert torch.isfinite(r.warped).all()
