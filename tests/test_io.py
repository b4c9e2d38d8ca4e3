"""The one image reader (mi.io.read_image) and the commands that use it, on medical files.

Oracles: the NIfTI file's own bytes parsed here from its header (dims, datatype,
vox_offset; voxel i fastest), independent of SimpleITK's reader; SimpleITK's array for
NRRD and MetaImage; and ``mi.mutual_information`` on the arrays decoded here for the
numbers ``mi score`` prints.
"""

import gzip
import re
import struct

import numpy as np
import oracle
import pytest
import torch

import mi
from mi.cli import main
from mi.io import ImageReadError, read_image
from mi.register import RegisterError, load_image, run_cli

sitk = pytest.importorskip("SimpleITK")

NIFTI_DTYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 512: np.uint16}


def _raw_nifti(path):
    """The voxel array of a NIfTI-1 file straight from its bytes: [k, j, i] (C order of the
    file's i-fastest data), float32, no reorientation; scl_slope/scl_inter applied."""
    data = gzip.open(path).read() if str(path).endswith(".gz") else open(path, "rb").read()
    endian = "<" if struct.unpack("<i", data[:4])[0] == 348 else ">"
    dims = struct.unpack(endian + "8h", data[40:56])
    code = struct.unpack(endian + "h", data[70:72])[0]
    offset = int(struct.unpack(endian + "f", data[108:112])[0])
    slope, inter = struct.unpack(endian + "2f", data[112:120])
    shape = tuple(reversed(dims[1 : dims[0] + 1]))
    a = np.frombuffer(data, np.dtype(NIFTI_DTYPES[code]).newbyteorder(endian), np.prod(shape), offset)
    a = a.reshape(shape).astype(np.float64)
    if slope not in (0.0, 1.0) or inter != 0.0:
        a = a * (slope or 1.0) + inter
    return a.astype(np.float32)


def _volume(shape=(5, 7, 9), seed=0):
    """An asymmetric volume: every axis distinguishable (a flip or transpose would show)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (100 * k + 10 * j + i + rng.random(shape)).astype(np.float32)


def _write(a, path, spacing=(1.0, 1.0, 3.0), direction=None):
    img = sitk.GetImageFromArray(a)
    img.SetSpacing(spacing)
    img.SetOrigin((-10.0, 4.0, 2.5))
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_voxels_in_the_files_own_order(tmp_path, suffix):
    a = _volume()
    for direction in (None, (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)):  # identity, then rotated
        path = _write(a, tmp_path / f"v{suffix}", direction=direction)
        got = read_image(path)
        raw = _raw_nifti(path)
        assert got.shape == (5, 7, 9) and got.dtype == np.float32
        np.testing.assert_array_equal(got, raw)  # the bytes, index [k, j, i], nothing flipped
        np.testing.assert_array_equal(got, a)
        np.testing.assert_array_equal(load_image(path), got)  # mi register reads the same


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_other_medical_formats(tmp_path, suffix):
    a = _volume((4, 6, 3), seed=1)
    path = _write(a, tmp_path / f"v{suffix}")
    np.testing.assert_array_equal(read_image(path), sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    np.testing.assert_array_equal(read_image(path), a)
    upper = path.rename(path.with_suffix(suffix.upper()))  # (ITK picks its reader by lower-case names)
    np.testing.assert_array_equal(read_image(upper), a)


def test_freesurfer_mgz_reads_as_the_nifti_of_its_voxels_and_affine(tmp_path, monkeypatch):
    """An .mgz written by nibabel (int16 voxels, an oblique anisotropic vox2ras) reads as
    SimpleITK reads a NIfTI of the same voxels and affine: the same array, spacing, origin
    and direction; ``mi register`` with an .mgz fixed image writes NIfTI with that geometry
    (SimpleITK writes no MGH); a series of frames, a missing nibabel and a damaged file are
    refused by name."""
    nib = pytest.importorskip("nibabel")
    from nibabel.affines import from_matvec
    from nibabel.eulerangles import euler2mat

    from mi.io import read_medical

    a = (_volume((6, 8, 10), seed=3) * 10).astype(np.int16)  # nibabel's (i, j, k) order
    affine = from_matvec(euler2mat(0.3, -0.2, 0.1) @ np.diag([1.2, 0.8, 2.5]), [-30.0, 12.0, 7.5])
    nib.MGHImage(a, affine).to_filename(tmp_path / "v.mgz")
    nib.save(nib.Nifti1Image(a, affine), tmp_path / "v.nii.gz")
    ours, theirs = read_medical(tmp_path / "v.mgz"), sitk.ReadImage(str(tmp_path / "v.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    for got, want in ((ours.GetSpacing(), theirs.GetSpacing()), (ours.GetOrigin(), theirs.GetOrigin())):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # (NIfTI holds float32)
    np.testing.assert_allclose(ours.GetDirection(), theirs.GetDirection(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(read_image(tmp_path / "v.mgz"), a.transpose().astype(np.float32))

    args = ["register", str(tmp_path / "v.mgz"), str(tmp_path / "v.nii.gz"), "-o", str(tmp_path / "out")]
    assert main(args + ["--quiet", "--levels", "1", "--iterations", "2"]) == 0
    written = sitk.ReadImage(str(tmp_path / "out" / "v_registered.nii.gz"))
    assert written.GetSize() == theirs.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), theirs.GetOrigin(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), theirs.GetDirection(), rtol=0, atol=1e-6)

    nib.MGHImage(np.stack([a, a], -1), affine).to_filename(tmp_path / "series.mgz")
    with pytest.raises(ImageReadError, match=r"series.mgz: expected a 2-D or 3-D image, got a series of 2"):
        read_image(tmp_path / "series.mgz")
    (tmp_path / "junk.mgh").write_bytes(b"not an mgh file at all")
    with pytest.raises(ImageReadError, match="cannot read .*junk.mgh"):
        read_image(tmp_path / "junk.mgh")
    monkeypatch.setitem(__import__("sys").modules, "nibabel", None)  # (as if not installed)
    with pytest.raises(ImageReadError, match=r"v.mgz: reading FreeSurfer's .mgz files needs nibabel"):
        read_image(tmp_path / "v.mgz")


def test_integer_nifti_and_2d(tmp_path):
    a = (np.arange(24, dtype=np.int16).reshape(2, 3, 4) * 7 - 50).astype(np.int16)
    path = tmp_path / "i.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(a), str(path))
    np.testing.assert_array_equal(read_image(path), _raw_nifti(path))
    img2 = np.random.default_rng(2).random((6, 5)).astype(np.float32)
    path = tmp_path / "p.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(img2), str(path))
    np.testing.assert_array_equal(read_image(path), img2)


def test_colour_dicom_is_read_as_its_luma(tmp_path, capsys):
    """An RGB DICOM file (SimpleITK writes a secondary capture) reads as grey: 0.299 R +
    0.587 G + 0.114 B per pixel in float32 (within 1e-4 of numpy's float64), PIL's "L" of
    the same pixels to its 8-bit rounding, the file's spacing kept; ``mi score`` takes it."""
    from PIL import Image

    from mi.io import read_medical

    rgb = np.random.default_rng(5).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    img = sitk.GetImageFromArray(rgb, isVector=True)
    img.SetSpacing((0.5, 0.7))
    sitk.WriteImage(img, str(tmp_path / "rgb.dcm"))
    grey = read_image(tmp_path / "rgb.dcm")
    assert grey.shape == (20, 30) and grey.dtype == np.float32
    np.testing.assert_allclose(grey, rgb @ np.array([0.299, 0.587, 0.114]), rtol=0, atol=1e-4)
    pil = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64)
    assert np.abs(grey - pil).max() <= 0.5 + 1e-3
    assert read_medical(tmp_path / "rgb.dcm").GetSpacing() == pytest.approx((0.5, 0.7))
    assert main(["score", str(tmp_path / "rgb.dcm"), str(tmp_path / "rgb.dcm"), "--no-plots"]) == 0


def test_a_dicom_cine_loop_is_not_a_volume(tmp_path):
    """A multi-frame DICOM file with a Frame Time (an ultrasound cine loop: SimpleITK writes
    it as Ultrasound Multi-frame Image Storage) is refused by name, not stacked into a volume
    whose third axis is time; the same frames without it (a multi-frame secondary capture)
    read as a volume, one slice per frame, as a multi-frame TIFF does."""
    a = (np.random.default_rng(1).random((5, 20, 30)) * 200).astype(np.uint8)
    for name, cine in (("cine.dcm", True), ("frames.dcm", False)):
        img = sitk.GetImageFromArray(a)
        if cine:
            img.SetMetaData("0018|1063", "33.3")  # Frame Time, ms
            img.SetMetaData("0008|0060", "US")
        sitk.WriteImage(img, str(tmp_path / name))
    with pytest.raises(
        ImageReadError, match=r"cine.dcm: a cine loop of 5 frames in time \(DICOM Frame Time\)"
    ):
        read_image(tmp_path / "cine.dcm")
    np.testing.assert_array_equal(read_image(tmp_path / "frames.dcm"), a)


def test_bad_medical_files(tmp_path):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"\0" * 400)
    with pytest.raises(ImageReadError, match="cannot read .*junk.nii.gz"):
        read_image(junk)
    with pytest.raises(RegisterError, match="cannot read"):
        load_image(junk)
    vec = sitk.GetImageFromArray(np.zeros((4, 5, 3), np.float32), isVector=True)
    sitk.WriteImage(vec, str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(ImageReadError, match="expected a grey image of real values, got .* 3 components"):
        read_image(tmp_path / "rgb.nii.gz")
    cplx = sitk.RealAndImaginaryToComplex(
        sitk.GetImageFromArray(_volume()), sitk.GetImageFromArray(_volume())
    )
    sitk.WriteImage(cplx, str(tmp_path / "complex.nii.gz"))  # its imaginary part was once dropped
    with pytest.raises(ImageReadError, match="real values, got complex"):
        read_image(tmp_path / "complex.nii.gz")
    huge = _volume().astype(np.float64) * 1e300
    with pytest.raises(
        ImageReadError, match=re.escape(f"beyond float32's range (largest magnitude {huge.max():.3g})")
    ):
        read_image(_write(huge, tmp_path / "huge.nii.gz"))
    np.save(tmp_path / "huge.npy", huge)
    with pytest.raises(ImageReadError, match="beyond float32's range"):
        read_image(tmp_path / "huge.npy")
    np.save(tmp_path / "tiny.npy", _volume().astype(np.float64) * 1e-300)  # once read as zeros
    with pytest.raises(ImageReadError, match="all below float32's normal range .largest magnitude 4.*e-298"):
        read_image(tmp_path / "tiny.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 5), np.float32))
    with pytest.raises(ImageReadError, match=r"no voxels \(shape \(0, 5\)\)"):
        read_image(tmp_path / "empty.npy")
    nan = _volume()
    nan[1, 2, 3] = np.nan
    with pytest.raises(ImageReadError, match="NaN"):
        read_image(_write(nan, tmp_path / "nan.mha"))  # (ITK turns NaN into 0 in NIfTI)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "empty.mha").write_bytes(b"")  # ITK's last line, "Reason: Success", said nothing
    with pytest.raises(ImageReadError, match="cannot read .*empty.mha: ITK ERROR: .*File cannot be read"):
        read_image(tmp_path / "empty.mha")
    series = sitk.JoinSeries([sitk.GetImageFromArray(_volume())] * 3)  # 4-D: an fMRI-like series
    sitk.WriteImage(series, str(tmp_path / "bold.nii.gz"))
    with pytest.raises(ImageReadError, match=r"a series of 3 volumes of 9x7x5 voxels: .*\[:, :, :, 0\]"):
        read_image(tmp_path / "bold.nii.gz")


def test_score_two_nifti_files_prints_mutual_information(tmp_path, capsys):
    """``mi score`` on two NIfTI volumes prints what mi.mutual_information gives on the
    arrays decoded from the files' bytes here (to the 4 decimals it prints)."""
    a = _volume((6, 8, 10), seed=3)
    b = np.sqrt(a.max() - a) + np.random.default_rng(4).random(a.shape).astype(np.float32)
    pa, pb = _write(a, tmp_path / "a.nii.gz"), _write(b, tmp_path / "b.nii.gz")
    assert main(["score", str(pa), str(pb), "--bins", "16", "--no-plots"]) == 0
    out = capsys.readouterr().out
    x, y = (torch.from_numpy(_raw_nifti(p))[None, None] for p in (pa, pb))
    kw = dict(num_bins=16, sigma=0.4)
    want = {
        "MI (nats)": mi.mutual_information(x, y, **kw),
        "MI (bits)": mi.mutual_information(x, y, base=2, **kw),
        "NMI arithmetic": mi.mutual_information(x, y, normalize="arithmetic", **kw),
        "NMI Studholme": mi.mutual_information(x, y, normalize="studholme", **kw),
    }
    ha, hb, hab = mi.entropies(x, y, **kw)
    want.update({"H(a) (nats)": ha, "H(b) (nats)": hb, "H(a,b) (nats)": hab})
    want["Pearson"] = torch.tensor(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    for label, value in want.items():
        printed = float(next(ln for ln in out.splitlines() if ln.startswith(label)).split()[-1])
        assert printed == pytest.approx(value.item(), abs=5.1e-5), label
    score = float(next(ln for ln in out.splitlines() if ln.startswith("score (")).rsplit(":", 1)[1])
    assert score == pytest.approx(want["MI (nats)"].item(), abs=5.1e-7)


def test_register_two_nifti_files(tmp_path, capsys):
    a = _volume((12, 12, 12), seed=5)
    pa, pb = _write(a, tmp_path / "f.nii.gz"), _write(np.roll(a, 1, axis=2), tmp_path / "m.nii.gz")
    paths = run_cli(pa, pb, tmp_path / "out", "rigid", levels=1, iterations=2)
    assert "after" in capsys.readouterr().out
    warped, fixed = sitk.ReadImage(str(paths["warped"])), sitk.ReadImage(str(pa))
    assert paths["warped"].name.endswith(".nii.gz") and warped.GetSize() == fixed.GetSize() == (12, 12, 12)
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):  # the fixed image's geometry
        assert np.allclose(getattr(warped, get)(), getattr(fixed, get)()), get


def test_multi_frame_images_are_volumes(tmp_path):
    """A multi-page TIFF and an animated GIF are volumes, one slice per frame (once their
    first frame alone, silently); frames of different sizes are refused."""
    from PIL import Image

    vol = _volume((4, 6, 8))
    frames = [Image.fromarray(s) for s in vol]  # mode F: values kept
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(read_image(tmp_path / "stack.tif"), vol)
    grey = (np.arange(4 * 6 * 8).reshape(4, 6, 8) * 2 % 256).astype(np.uint8)
    gif = [Image.fromarray(s) for s in grey]
    gif[0].save(tmp_path / "anim.gif", save_all=True, append_images=gif[1:], duration=50, loop=0)
    np.testing.assert_allclose(read_image(tmp_path / "anim.gif"), grey / 255.0, atol=1e-7)
    odd = [Image.fromarray(vol[0]), Image.fromarray(vol[1, :5])]
    odd[0].save(tmp_path / "odd.tif", save_all=True, append_images=odd[1:])
    with pytest.raises(ImageReadError, match="2 frames differ in size"):
        read_image(tmp_path / "odd.tif")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_with_nan_or_inf_is_refused(tmp_path, suffix):
    """A statistical map with NaN outside the brain: SimpleITK's NIfTI reader gives 0 there
    (scored as background before, silently); the voxels are checked in the file itself. An
    image whose zeros are real zeros still reads."""
    for bad, dtype in ((np.nan, np.float32), (np.inf, np.float64), (-np.inf, np.float32)):
        a = _volume().astype(dtype)
        a[0, :3] = bad
        sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / f"m{suffix}"))
        assert (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"m{suffix}"))) == 0).any()
        with pytest.raises(ImageReadError, match="NaN or Inf"):
            read_image(tmp_path / f"m{suffix}")
    a = _volume()
    a[1] = 0.0
    path = _write(a, tmp_path / f"z{suffix}")
    np.testing.assert_array_equal(read_image(path), _raw_nifti(path))


def test_nifti_nan_under_scl_inter_and_a_negative_slope(tmp_path):
    """SimpleITK reads a NaN voxel as 0 and then scales it: scl_inter, not 0, so the check for
    NaN (which looked only where the image had zeros) missed it, and a stored +Inf under
    slope -2 came back unscaled (+Inf). The voxels against the file's own bytes, scaled."""
    a = _volume()
    a[0, 0, :2], a[2, 3, 4] = np.nan, np.inf
    path = tmp_path / "m.nii"
    sitk.WriteImage(sitk.GetImageFromArray(a), str(path))
    data = bytearray(path.read_bytes())
    data[112:120] = struct.pack("<2f", -2.0, 1.0)  # scl_slope, scl_inter (SimpleITK writes little-endian)
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="NaN or Inf"):
        read_image(path)
    got = read_image(path, allow_nonfinite=True)
    want = _raw_nifti(path)
    assert np.isnan(want[0, 0, :2]).all() and want[2, 3, 4] == -np.inf
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_a_truncated_nifti_is_refused(tmp_path, dtype):
    """A file cut inside its voxel data (an interrupted copy): SimpleITK read the missing
    voxels as 0 without a word; nibabel refuses it, and so does this, compressed or not."""
    full = _write(_volume().astype(dtype) + 1, tmp_path / "full.nii")
    cut = full.read_bytes()[:600]
    (tmp_path / "cut.nii").write_bytes(cut)
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(cut))
    for name in ("cut.nii", "cut.nii.gz"):
        with pytest.raises(
            ImageReadError, match=r"ends inside its voxel data \(248 of \d+ bytes\): it is truncated"
        ):
            read_image(tmp_path / name)
    np.testing.assert_array_equal(read_image(full), _raw_nifti(full))


def test_one_slice_volumes_are_2d(tmp_path):
    """A 2-D slice stored as a one-slice volume (X, Y, 1), in any medical format, is a 2-D
    image with the slice's geometry, as a one-slice DICOM series is: it scores against the
    same slice stored as 2-D, and registers in 2-D."""
    from mi.io import read_medical

    s = _volume((1, 7, 9))
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        img = read_medical(_write(s, tmp_path / f"s{suffix}", spacing=(0.5, 2.0, 3.0)))
        assert img.GetDimension() == 2 and img.GetSize() == (9, 7) and img.GetSpacing() == (0.5, 2.0)
        np.testing.assert_array_equal(read_image(tmp_path / f"s{suffix}"), s[0])


def test_tiff_and_jpeg_variants(tmp_path):
    """An unsigned 32-bit TIFF keeps its values (PIL holds it as int32: values from 2**31 up
    came out negative); a JPEG with an MPF preview (what many cameras write; PIL calls it
    MPO, of 2 frames) is the photo, not a volume. Oracles: SimpleITK's reading, and PIL's
    grey conversion of the plain JPEG."""
    from PIL import Image

    yy, xx = np.mgrid[0:6, 0:8]
    ramp = (xx * 500_000_000 + yy * 1000).astype(np.uint32)  # up to 3.5e9
    sitk.WriteImage(sitk.GetImageFromArray(ramp), str(tmp_path / "u32.tif"))
    want = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "u32.tif")))
    np.testing.assert_array_equal(read_image(tmp_path / "u32.tif"), want.astype(np.float32))
    assert want.max() > 2**31
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3)).astype(np.uint8)
    photo, preview = Image.fromarray(rgb), Image.fromarray(rgb[::4, ::4])
    photo.save(tmp_path / "mpo.jpg", format="MPO", save_all=True, append_images=[preview])
    with Image.open(tmp_path / "mpo.jpg") as im:
        assert im.format == "MPO" and im.n_frames == 2
        grey = np.asarray(im.convert("L"), np.float32) / 255
    np.testing.assert_array_equal(read_image(tmp_path / "mpo.jpg"), grey)


def test_photos_are_read_upright_as_their_exif_orientation_says(tmp_path):
    """A camera stores its sensor's rows and an EXIF orientation (0x0112) that viewers turn the
    picture by: all eight, for an 8-bit PNG and a 16-bit one. Oracle: PIL's
    ``ImageOps.exif_transpose`` of the grey picture (16-bit: of its raw values)."""
    from PIL import Image, ImageOps

    grey = (np.arange(12).reshape(3, 4) * 20).astype(np.uint8)
    for bits, a in ((8, grey), (16, grey.astype(np.uint16) * 257)):
        for orientation in range(1, 9):
            exif = Image.Exif()
            exif[0x0112] = orientation
            path = tmp_path / f"o{orientation}-{bits}.png"
            Image.fromarray(a).save(path, exif=exif)
            with Image.open(path) as im:
                want = np.asarray(ImageOps.exif_transpose(im), np.float32) / (255.0 if bits == 8 else 65535.0)
            got = read_image(path)
            assert got.shape == want.shape and np.array_equal(got, want), (bits, orientation)


def test_values_that_float32_would_merge_are_refused(tmp_path):
    """Label IDs near 3e9 (200 of them: 2 left in float32) and a signal on an offset of 1e9
    (one value left) are refused, saying why; data that float32 holds exactly, or spread
    over many of its steps, read as before."""
    rng = np.random.default_rng(7)
    labels = np.uint32(3_000_000_000) + rng.integers(0, 200, (16, 16)).astype(np.uint32)
    assert len(np.unique(labels.astype(np.float32))) < 10 < len(np.unique(labels))
    offset = 1e9 + rng.random((16, 16))
    for a in (labels, offset, labels.astype(np.int64), labels.astype(np.uint64) + np.uint64(2**63)):
        np.save(tmp_path / "a.npy", a)
        with pytest.raises(ImageReadError, match="would merge"):
            read_image(tmp_path / "a.npy")
    # three labels near 3e9 beside a background of 0: a wide spread, but 4 values become 2
    background = np.where(rng.random((16, 16)) < 0.5, 0, 3_000_000_000 + rng.integers(0, 3, (16, 16)))
    assert len(np.unique(background)) == 4 and len(np.unique(background.astype(np.float32))) == 2
    for a in (background.astype(np.uint32), background.astype(np.int64)):
        np.save(tmp_path / "a.npy", a)
        with pytest.raises(ImageReadError, match="its 4 distinct integers .* would be 2 in float32"):
            read_image(tmp_path / "a.npy")
    ramp = np.arange(256, dtype=np.uint32).reshape(16, 16) * np.uint32(14_000_000)  # to 3.6e9: many steps
    small = rng.integers(-5000, 5000, (16, 16))  # int64, exact in float32
    for a in (ramp, small, rng.random((16, 16)), labels - np.uint32(3_000_000_000)):
        np.save(tmp_path / "b.npy", a)
        np.testing.assert_array_equal(read_image(tmp_path / "b.npy"), a.astype(np.float32))


def _score(capsys, *argv) -> tuple:
    """(``mi score``'s exit status, its final score line's value or None, stdout, stderr)."""
    status = main(["score", *map(str, argv), "--no-plots", "--bins", "16", "--sigma", "0.5"])
    out, err = capsys.readouterr()
    found = re.search(r"score \(normalize=none\): (\S+)", out)
    return status, float(found.group(1)) if found else None, out, err


def _oracle_mi(a, b, num_bins=16, sigma=0.5):
    """MI (nats) of paired voxel values, each on its own min..max, dense float64 (tests/oracle)."""
    a, b = (torch.from_numpy(np.asarray(v, np.float64).ravel())[None] for v in (a, b))
    u, v = (oracle.to_bins(t, float(t.min()), float(t.max()), num_bins) for t in (a, b))
    return float(oracle.mutual_information(oracle.dense_joint(u, v, num_bins=num_bins, sigma=sigma))[0])


def test_score_compares_medical_files_in_physical_space(tmp_path, capsys):
    """Two medical files whose voxels lie at different points in mm: ``mi score`` resamples b
    onto a's grid in physical space and scores where b covers a. Oracles: a copy stored
    flipped with a flipped direction is the same image in mm (scores as a against itself,
    Pearson 1); SimpleITK's ``Resample`` of a rotated, finer b that covers all of a; and
    numpy indexing for a finer b on whole-voxel offsets that covers part of a (the voxels it
    reaches, picked by index). MI from the dense float64 formula (tests/oracle.py)."""
    a = _volume((6, 8, 10), seed=3)
    pa = _write(a, tmp_path / "a.nii.gz", spacing=(2.0, 2.0, 2.0))  # origin (-10, 4, 2.5)
    img_a = sitk.ReadImage(str(pa))
    flipped = sitk.GetImageFromArray(a[:, :, ::-1].copy())
    flipped.SetSpacing((2.0, 2.0, 2.0))
    flipped.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    flipped.SetOrigin((-10.0 + 2.0 * 9, 4.0, 2.5))
    sitk.WriteImage(flipped, str(tmp_path / "f.nrrd"))
    status, self_score, _, _ = _score(capsys, pa, pa)
    status_f, flip_score, out, err = _score(capsys, pa, tmp_path / "f.nrrd")
    assert status == status_f == 0 and "warning" not in err
    assert "resampled onto a's grid" in out and "480 of 480" in out
    assert flip_score == pytest.approx(self_score, abs=2e-6)
    assert self_score == pytest.approx(_oracle_mi(a, a), abs=2e-6)
    assert re.search(r"Pearson correlation \(contrast\)\s+1\.0000", out), out
    status, as_stored, _, _ = _score(capsys, pa, tmp_path / "f.nrrd", "--voxels")
    assert status == 0 and as_stored == pytest.approx(_oracle_mi(a, a[:, :, ::-1]), abs=2e-6)
    assert as_stored < self_score - 0.01

    # b: a rotated 20 degrees about z on a 1.5 mm grid that covers all of a
    rot = sitk.Euler3DTransform()
    rot.SetRotation(0.0, 0.0, np.deg2rad(20.0))
    direction = np.array(rot.GetMatrix())
    center = np.array(img_a.TransformContinuousIndexToPhysicalPoint((4.5, 3.5, 2.5)))
    size = (24, 24, 12)
    origin = center - np.reshape(direction, (3, 3)) @ (1.5 * (np.array(size) - 1) / 2)
    smooth = sitk.SmoothingRecursiveGaussian(img_a, 2.0)
    b_img = sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, tuple(origin), (1.5,) * 3,
                          tuple(direction), 0.0, sitk.sitkFloat32)  # fmt: skip
    sitk.WriteImage(b_img, str(tmp_path / "b.mha"))
    on_a = sitk.GetArrayFromImage(sitk.Resample(b_img, img_a, sitk.Transform(), sitk.sitkLinear, 0.0))
    ones = sitk.Image(b_img.GetSize(), sitk.sitkFloat32) + 1.0
    ones.CopyInformation(b_img)
    reach = sitk.GetArrayFromImage(
        sitk.Resample(ones, img_a, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    )
    assert reach.min() == 1.0  # b covers all of a: every voxel weighs 1
    status, got, out, _ = _score(capsys, pa, tmp_path / "b.mha")
    assert status == 0 and "differ in size, spacing, origin, direction" in out, out
    assert got == pytest.approx(_oracle_mi(a, on_a), abs=2e-6)

    # c: a finer (1 mm) grid two a-voxels over in x, one in y: a's voxel (i, j, k) is c's
    # (2i - 4, 2j - 2, 2k); c (13 x 9 x 5 voxels) reaches i in 2..8, j in 1..5, k in 0..2
    c = _volume((5, 9, 13), seed=4) ** 2
    img_c = sitk.GetImageFromArray(c)
    img_c.SetOrigin((-10.0 + 4.0, 4.0 + 2.0, 2.5))
    sitk.WriteImage(img_c, str(tmp_path / "c.nii"))
    status, got, out, _ = _score(capsys, pa, tmp_path / "c.nii")
    assert status == 0 and "105 of 480" in out, out
    k, j, i = np.meshgrid(np.arange(3), np.arange(1, 6), np.arange(2, 9), indexing="ij")
    assert got == pytest.approx(_oracle_mi(a[k, j, i], c[2 * k, 2 * j - 2, 2 * i - 4]), abs=2e-6)

    # what cannot be compared: no overlap, 2-D against 3-D, other shapes as stored
    img_c.SetOrigin((500.0, 4.0, 2.5))
    sitk.WriteImage(img_c, str(tmp_path / "far.nii"))
    sitk.WriteImage(img_a[:, :, 0], str(tmp_path / "slice.nii"))
    for argv, words in (
        ((tmp_path / "far.nii",), "covers none"),
        ((tmp_path / "slice.nii",), "is 3-D and"),
        ((tmp_path / "c.nii", "--voxels"), "differ in shape"),
    ):
        status, got, out, err = _score(capsys, pa, *argv)
        assert status == 2 and words in err and got is None, err
    np.save(tmp_path / "x.npy", a)
    assert main(["score", str(tmp_path / "x.npy"), str(pa), "--no-plots", "--range", "-inf,1"]) == 2
    assert "value_range must be finite" in capsys.readouterr().err  # (not argparse's "expected one argument")
    (tmp_path / "file").write_text("")
    assert main(["score", str(tmp_path / "x.npy"), str(pa), "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr()
    assert "is a file" in err.err and "MI" not in err.out
