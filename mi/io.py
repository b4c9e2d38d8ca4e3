"""Reading images: one reader for the whole project (``mi score``, ``mi register``).

Medical formats go through SimpleITK, which reads what these users have and is what ITK,
ANTs and SimpleITK users compare against: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``,
``.nhdr``) and MetaImage (``.mha``, ``.mhd``); FreeSurfer's MGH (``.mgz``, ``.mgh``), which
SimpleITK lacks, through nibabel (when installed) into the SimpleITK image of the same voxels
and geometry. The voxel array is SimpleITK's
(``GetArrayFromImage``): index ``[k, j, i]`` for the file's voxel ``(i, j, k)``, the
transpose of nibabel's ``get_fdata()[i, j, k]``; nothing is flipped or reoriented.
:func:`read_image` gives that array; :func:`read_medical` the ``SimpleITK.Image`` itself,
with its geometry (spacing, origin, direction), which registration and ``mi score`` use
(:func:`read_image_and_grid`: both).

DICOM (through SimpleITK's GDCM reader): a folder holding one series, or any one file of a
series (a ``.dcm``/``.ima`` name, or the ``DICM`` marker that DICOM files carry), which
reads that file's whole series from its folder; a folder with several series is refused,
naming them, rather than one of them chosen silently. A colour DICOM image (ultrasound,
secondary captures: RGB, and YBR or palette colour, which GDCM gives as RGB) is grey:
its luma 0.299 R + 0.587 G + 0.114 B (PIL's "L", not rounded to 8 bits), in the pixels'
units. A multi-frame file whose frames are in time (a Frame Time: an ultrasound or
X-ray cine loop) is refused rather than stacked into a volume. A one-slice volume (a series, or a
file of size (X, Y, 1)) is a 2-D image. A float NIfTI file's NaN and Inf voxels (SPM and
resampling tools write NaN where there is no data) are kept as such, read from the file's
own voxel data: SimpleITK's reader alone gives 0 there. :func:`read_image` refuses them
unless asked (``allow_nonfinite``); registration and ``mi score`` count them as outside
the image.

``.npy``: a 2-D or 3-D real array, values kept. Anything else goes to PIL: colour becomes
grey, 8-bit is scaled to [0, 1] and 16-bit by 65535; 32-bit integer (signed or unsigned)
or float images keep their values; a photo is turned upright as its EXIF orientation says
(as viewers show it); a file of several frames (a multi-page TIFF, an
animated GIF) is a volume, one slice per frame, but a JPEG with an MPF preview (MPO) is
its first frame. Everything is computed in float32: values beyond its range, all below
its normal range (1e-38), or spread over so few of its steps that distinct values would
merge (label IDs near 3e9, an offset of 1e9) are refused rather than turned into Inf,
zeros or a constant.
"""

import math
from pathlib import Path

import numpy as np

__all__ = [
    "ImageReadError",
    "read_image",
    "read_image_and_grid",
    "read_medical",
    "is_medical",
    "is_dicom",
    "MEDICAL_SUFFIXES",
]

#: The files read through SimpleITK, and its reader for each (chosen here by name in any
#: case: ITK's own choice knows lower-case names only)
_IMAGE_IO = {
    ".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO", ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO",
    ".mha": "MetaImageIO", ".mhd": "MetaImageIO",
}  # fmt: skip
#: FreeSurfer's MGH format, which SimpleITK cannot read: nibabel (when installed) reads it,
#: and its voxels and vox2ras affine become the SimpleITK image of the same voxels and
#: geometry (:func:`mi.registration.space.from_affine`, tested against SimpleITK's NIfTI)
MGH_SUFFIXES = (".mgz", ".mgh")
MEDICAL_SUFFIXES = tuple(_IMAGE_IO) + MGH_SUFFIXES
DICOM_SUFFIXES = (".dcm", ".ima")


class ImageReadError(ValueError):
    """A file that is missing, unreadable, or not a grey 2-D/3-D image; one line, naming it."""


def _simpleitk(path: Path):
    try:
        import SimpleITK as sitk
    except ImportError:
        raise ImageReadError(
            f"{path}: reading {''.join(path.suffixes) or 'this format'} needs SimpleITK "
            "(pip install SimpleITK, or pip install 'torch-mutual-information[medical]')"
        ) from None
    return sitk


def read_medical(path):
    """A NIfTI / NRRD / MetaImage file, or a DICOM series (a folder or one of its files), as a
    grey 2-D or 3-D ``SimpleITK.Image`` with its geometry (spacing, origin, direction); a 4-D
    file holding one volume gives that volume, a one-slice DICOM series a 2-D image.
    A float NIfTI file's NaN and Inf voxels are kept (SimpleITK's reader gives 0 there).
    Raises :class:`ImageReadError`."""
    path = Path(path)
    if path.is_dir() or is_dicom(path):
        img = _read_dicom(path)
        if img.GetNumberOfComponentsPerPixel() == 3 and "integer" in img.GetPixelIDTypeAsString():
            img = _luma(img)  # (a colour DICOM: ultrasound, secondary captures)
    elif path.name.lower().endswith(MGH_SUFFIXES):
        img = _read_mgh(path)
    else:
        if not path.is_file():
            raise ImageReadError(f"no such file: {path}")
        sitk = _simpleitk(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        suffix = next((s for s in MEDICAL_SUFFIXES if path.name.lower().endswith(s)), None)
        if suffix is not None:
            reader.SetImageIO(_IMAGE_IO[suffix])
        try:
            img = reader.Execute()
        except RuntimeError as e:  # ITK's exceptions: keep the first line of the reason
            raise ImageReadError(f"cannot read {path}: {_itk_reason(e)}") from None
        if path.name.lower().endswith((".nii", ".nii.gz")):
            img = _checked_nifti(path, img)
    if img.GetNumberOfComponentsPerPixel() != 1 or "complex" in img.GetPixelIDTypeAsString():
        raise ImageReadError(
            f"{path}: expected a grey image of real values, got {img.GetPixelIDTypeAsString()} with "
            f"{img.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    try:
        img = drop_single_axes(img)
    except ValueError as e:
        raise ImageReadError(f"{path}: {e}") from None
    if img.GetDimension() == 4:  # a time series (fMRI, diffusion): which volume is the user's to say
        raise ImageReadError(
            f"{path}: expected a 2-D or 3-D image, got a series of {img.GetSize()[3]} volumes of "
            f"{'x'.join(map(str, img.GetSize()[:3]))} voxels: write the one to use (or their mean) to "
            "a file of its own, e.g. sitk.WriteImage(sitk.ReadImage(path)[:, :, :, 0], 'volume0.nii.gz')"
        )
    if img.GetDimension() not in (2, 3):
        raise ImageReadError(f"{path}: expected a 2-D or 3-D image, got size {img.GetSize()}")
    return img


#: ITU-R BT.601 luma weights of R, G, B (PIL's "L" conversion, there rounded to 8 bits)
LUMA = (0.299, 0.587, 0.114)


def _luma(img):
    """A 3-component (RGB) SimpleITK image as its grey luma ``LUMA . (R, G, B)``, float32,
    with its geometry (GDCM gives YBR and palette DICOM images as RGB)."""
    import SimpleITK as sitk

    grey = sitk.GetArrayFromImage(img).astype(np.float64) @ np.array(LUMA)
    out = sitk.GetImageFromArray(grey.astype(np.float32), isVector=False)  # (a 4-D series too)
    out.CopyInformation(img)
    return out


def _read_mgh(path: Path):
    """A FreeSurfer ``.mgz``/``.mgh`` file through nibabel, as the SimpleITK image of the same
    voxels and geometry (its vox2ras affine, RAS, turned to ITK's LPS)."""
    if not path.is_file():
        raise ImageReadError(f"no such file: {path}")
    try:
        import nibabel
    except ImportError:
        raise ImageReadError(
            f"{path}: reading FreeSurfer's {path.suffix} files needs nibabel (pip install nibabel)"
        ) from None
    from .registration.space import from_affine

    try:
        image = nibabel.load(str(path))
        shape = image.shape
    except Exception as e:  # (nibabel's errors for a damaged or mislabelled file)
        raise ImageReadError(f"cannot read {path}: {e}") from None
    if len(shape) == 4 and shape[3] > 1:
        raise ImageReadError(
            f"{path}: expected a 2-D or 3-D image, got a series of {shape[3]} volumes of "
            f"{'x'.join(map(str, shape[:3]))} voxels: write the one to use to a file of its own"
        )
    try:
        return from_affine(str(path), image)
    except ValueError as e:
        raise ImageReadError(str(e)) from None


def drop_single_axes(img):
    """A SimpleITK image without its trailing axes of one voxel: a 4-D image of one volume is
    3-D, a 3-D image of one slice 2-D (a 2-D image stored as 3-D), with the geometry of the
    remaining axes (SimpleITK's slicing: spacing, origin, the direction's sub-matrix).
    ValueError for a slice whose plane is oblique to the physical x-y plane (its in-plane
    axes have a z component): a 2-D geometry cannot place it."""
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() == 3 and img.GetSize()[2] == 1:
        d = np.reshape(img.GetDirection(), (3, 3))
        if np.abs(d[2, :2]).max() > 1e-4:  # (the sub-matrix is then not orthonormal)
            raise ValueError(
                "a one-slice image is read as 2-D, but this slice's plane is oblique to the "
                f"physical x-y plane (direction {np.round(d, 4).tolist()}): resample it onto an "
                "axis-aligned plane first, or pass its voxels as an array"
            )
        img = img[:, :, 0]
    return img


def _checked_nifti(path: Path, img):
    """``img`` (what SimpleITK read from the NIfTI-1 file ``path``) checked against the file's
    own voxel data, read once in chunks:

    * a file that ends inside its voxel data is refused (SimpleITK reads the missing voxels
      as 0 without a word; nibabel refuses it: an interrupted copy or download);
    * a float file's NaN and Inf voxels are put back, scaled as the others (``scl_slope``,
      ``scl_inter``: a stored +Inf under slope -1 is -Inf, as nibabel reads it): SimpleITK's
      reader turns them into 0 (then scl_inter) without a word (statistical maps and
      resampled images often have NaN where there is no data), which would be scored as
      background."""
    import gzip
    import struct

    where, values = [], []
    with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as f:
        try:
            head = f.read(348)
            order = next(
                (e for e in "<>" if len(head) == 348 and struct.unpack(e + "i", head[:4])[0] == 348), None
            )
            if order is None:  # not NIfTI-1: SimpleITK read it, as it reads it
                return img
            dim = struct.unpack(order + "8h", head[40:56])
            code, bitpix = struct.unpack(order + "2h", head[70:74])
            offset, slope, inter = struct.unpack(order + "3f", head[108:120])
            total = int(np.prod([max(0, n) for n in dim[1 : 1 + max(0, min(dim[0], 7))]], dtype=np.int64))
            need = (total * max(0, bitpix) + 7) // 8
            dtype = np.dtype(order + {16: "f4", 64: "f8"}.get(code, f"V{max(1, bitpix // 8)}"))
            f.seek(int(offset))
            got, left = 0, need
            while left > 0:  # in chunks of 2**22 voxels
                data = f.read(min(left, dtype.itemsize << 22))
                if not data:
                    break
                if dtype.kind == "f":
                    chunk = np.frombuffer(data[: len(data) - len(data) % dtype.itemsize], dtype)
                    bad = np.flatnonzero(~np.isfinite(chunk))
                    where.append(bad + got // dtype.itemsize)
                    values.append(chunk[bad])
                got += len(data)
                left -= len(data)
        except (OSError, EOFError, struct.error) as e:  # (a gzip stream cut short, say)
            raise ImageReadError(f"cannot read {path}: {e}") from None
    if got < need:
        raise ImageReadError(
            f"{path}: the file ends inside its voxel data ({got} of {need} bytes): it is truncated "
            "(an interrupted copy or download?)"
        )
    if not any(w.size for w in where):
        return img
    a = _simpleitk(path).GetArrayFromImage(img)
    if a.size != total or a.dtype.kind != "f":  # (a layout this reading does not know: refuse, not guess)
        raise ImageReadError(f"{path}: contains NaN or Inf values (SimpleITK would read them as 0)")
    found = np.concatenate(values).astype(np.float64)
    if slope != 0 and math.isfinite(slope) and math.isfinite(inter) and (slope, inter) != (1.0, 0.0):
        found = found * slope + inter  # (NIfTI: slope 0 means unscaled)
    a.reshape(-1)[np.concatenate(where)] = found
    out = _simpleitk(path).GetImageFromArray(a, isVector=False)
    out.CopyInformation(img)
    return out


def _itk_reason(e: RuntimeError) -> str:
    """ITK's reason, its last line; the one before when that says nothing ("Reason: Success",
    as its MetaImage reader ends an empty or truncated file's message)."""
    reason = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    while len(reason) > 1 and reason[-1].lower().endswith(("success", "success.")):
        reason.pop()
    return reason[-1] if reason else "SimpleITK failed"


def _read_dicom(path: Path):
    """The DICOM series in folder ``path``, or the series of DICOM file ``path`` (its
    SeriesInstanceUID, 0020|000e, among the files of its folder), as SimpleITK reads it:
    slices sorted by position, spacing between slices from their positions."""
    sitk = _simpleitk(path)
    reader = sitk.ImageSeriesReader
    if path.is_dir():
        folder, ids = path, reader.GetGDCMSeriesIDs(str(path))
        if not ids:
            raise ImageReadError(f"{path}: a folder with no DICOM series in it")
        if len(ids) > 1:
            listed = "; ".join(
                f"{uid} ({len(names)} files, e.g. {Path(names[0]).name})"
                for uid, names in ((uid, reader.GetGDCMSeriesFileNames(str(path), uid)) for uid in ids)
            )
            raise ImageReadError(
                f"{path}: a folder with {len(ids)} DICOM series, {listed}: pass one file of a series "
                "to read that series"
            )
        names = reader.GetGDCMSeriesFileNames(str(path), ids[0])
    else:
        folder, info = path.resolve().parent, sitk.ImageFileReader()  # (a symlink: its target's series)
        info.SetFileName(str(path))
        try:
            info.ReadImageInformation()
        except RuntimeError as e:
            raise ImageReadError(f"cannot read {path}: {_itk_reason(e)}") from None
        uid = info.GetMetaData("0020|000e").strip(" \0") if info.HasMetaDataKey("0020|000e") else ""
        names = reader.GetGDCMSeriesFileNames(str(folder), uid) if uid else ()
        if not any(Path(n).resolve() == path.resolve() for n in names):
            names = (str(path),)  # no series tag, or GDCM did not group it: the file alone
    _refuse_cine(path, names[0], sitk)
    series = reader()
    series.SetFileNames(names)
    try:
        return series.Execute()
    except RuntimeError as e:
        raise ImageReadError(f"cannot read the DICOM series in {folder}: {_itk_reason(e)}") from None


#: DICOM frames in time: a Frame Increment Pointer (0028,0009) to, or the presence of, Frame
#: Time (0018,1063) or Frame Time Vector (0018,1065): an ultrasound or X-ray cine loop
CINE_TAGS = ("0018|1063", "0018|1065")


def _refuse_cine(path: Path, first: str, sitk) -> None:
    """Refuse a multi-frame DICOM file whose frames are in time (a cine loop), which
    SimpleITK would stack as a volume; frames in space (an RT dose grid, a multi-frame
    secondary capture without frame times) read as a volume, as a multi-frame TIFF does."""
    info = sitk.ImageFileReader()
    info.SetFileName(first)
    try:
        info.ReadImageInformation()
    except RuntimeError:
        return  # (the series reader says what is wrong)
    meta = {
        k: info.GetMetaData(k).strip(" \0")
        for k in ("0028|0008", "0028|0009", *CINE_TAGS)
        if info.HasMetaDataKey(k)
    }
    try:
        frames = int(meta.get("0028|0008", "1"))
    except ValueError:
        return
    pointer = meta.get("0028|0009", "").upper().replace("(", "").replace(")", "").replace(",", "|")
    if frames > 1 and (pointer in CINE_TAGS or any(k in meta for k in CINE_TAGS)):
        raise ImageReadError(
            f"{path}: a cine loop of {frames} frames in time (DICOM Frame Time), not a volume: "
            "write the frame to register to a file of its own"
        )


def _read_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as f:  # np.load would try a non-.npy file as a pickle
        a = np.lib.format.read_array(f, allow_pickle=False)
    if a.dtype.kind not in "biuf" or a.ndim not in (2, 3):
        raise ImageReadError(f"{path}: expected a 2-D or 3-D real array, got {a.dtype} {a.shape}")
    return a


def _grey(img) -> np.ndarray:
    if img.mode.startswith("I;16"):  # 16-bit grey PNG/TIFF
        return np.asarray(img, dtype=np.float32) / 65535.0
    if img.mode == "I" and getattr(img, "tag_v2", {}).get(339) in (1, (1,)):  # unsigned 32-bit TIFF
        return np.asarray(img).view(np.uint32)  # (PIL holds it as int32: 2**31 and up wrap)
    if img.mode in ("I", "F"):  # 32-bit integer or float: keep the values
        return np.asarray(img)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


#: EXIF orientation (tag 0x0112) -> what shows the picture upright, as viewers (and PIL's
#: ``ImageOps.exif_transpose``) do: the camera's sensor rows are stored as they were taken.
_EXIF_ORIENTATION = {
    2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud, 5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).T, 8: lambda a: np.rot90(a, 1),
}  # fmt: skip


def _upright(img, a: np.ndarray) -> np.ndarray:
    """``a`` (the picture's grey values) turned as its EXIF orientation says."""
    turn = _EXIF_ORIENTATION.get(img.getexif().get(0x0112))
    return a if turn is None else np.ascontiguousarray(turn(a))


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) == 1 or img.format == "MPO":  # (a JPEG and its previews)
                return _upright(img, _grey(img))
            frames = [_grey(f) for f in ImageSequence.Iterator(img)]  # a TIFF stack, a GIF
            if len({f.shape for f in frames}) > 1:
                raise ImageReadError(
                    f"{path}: its {len(frames)} frames differ in size ({sorted({f.shape for f in frames})}): "
                    "not one volume"
                )
            return np.stack(frames)
    except UnidentifiedImageError:
        raise ImageReadError(
            f"cannot read {path}: not an image file that PIL can read, nor .npy or "
            f"{', '.join(MEDICAL_SUFFIXES)}"
        ) from None


def is_dicom(path) -> bool:
    """Whether ``path`` is a DICOM file: a ``.dcm``/``.ima`` name, or the ``DICM`` marker at
    byte 128 (DICOM files often have no suffix at all)."""
    path = Path(path)
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def is_medical(path) -> bool:
    """Whether ``path`` is read through SimpleITK: a NIfTI/NRRD/MetaImage suffix, a DICOM
    file or a folder (a DICOM series)."""
    path = Path(path)
    return path.name.lower().endswith(MEDICAL_SUFFIXES) or path.is_dir() or is_dicom(path)


def read_image(path, *, allow_nonfinite: bool = False) -> np.ndarray:
    """A grey image or volume (a file, or a DICOM folder) as float32 (H, W) or (D, H, W);
    see the module's docstring.

    Raises :class:`ImageReadError` (a ValueError) with one line naming the file when it is
    missing, unreadable, empty, holds NaN or Inf (unless ``allow_nonfinite``: they are kept,
    as long as some voxel is finite) or values beyond float32's range, or is not a 2-D or
    3-D grey image.
    """
    return read_image_and_grid(path, allow_nonfinite=allow_nonfinite)[0]


def read_image_and_grid(path, *, allow_nonfinite: bool = False) -> tuple:
    """``(array, image)``: :func:`read_image`'s array and, for the medical formats and DICOM,
    the ``SimpleITK.Image`` it came from (its spacing, origin and direction: where the voxels
    lie in mm); ``image`` is None for PNG/JPEG/TIFF/.npy (voxel space). Raises as
    :func:`read_image`."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"no such file: {path}")
    if not (path.is_file() or path.is_dir()):
        raise ImageReadError(f"not a file: {path}")
    name = path.name.lower()
    image = None
    try:
        if is_medical(path):
            image = read_medical(path)
            a = _simpleitk(path).GetArrayFromImage(image)
        elif name.endswith(".npy"):
            a = _read_npy(path)
        else:
            a = _read_pil(path)
    except ImageReadError:
        raise
    except Exception as e:  # PIL and numpy each raise their own kinds
        detail = str(e).replace(repr(str(path)), "").replace(str(path), "").strip(" :")
        raise ImageReadError(f"cannot read {path}: {detail or type(e).__name__}") from None
    return as_float32(a, str(path), ImageReadError, allow_nonfinite=allow_nonfinite), image


def as_float32(a: np.ndarray, what: str, error=ValueError, *, allow_nonfinite: bool = False) -> np.ndarray:
    """A non-empty real array of finite values as float32, refusing (``error``, naming
    ``what``) what float32 would turn into Inf or into zeros: float64 values beyond its
    range, or all below its normal range (1e-38, with 24 bits to spare); and values that
    float32 would merge, those whose spread is under 2**12 of float32's steps at their
    magnitude when float32 does not hold them exactly (label IDs near 3e9, a signal on an
    offset of 1e9: a few distinct values, or one, would be left). ``allow_nonfinite``: NaN
    and Inf are kept (the checks look at the finite values, of which there must be one)."""
    if a.size == 0:
        raise error(f"{what}: an image with no voxels (shape {a.shape})")
    finite = np.isfinite(a)
    if not finite.all():
        if not allow_nonfinite:
            raise error(f"{what}: contains NaN or Inf values")
        if not finite.any():
            raise error(f"{what}: every voxel is NaN or Inf")
        f = a.astype(np.float32)
        as_float32(a[finite], what, error)  # (the checks, on the finite values)
        return f
    big = float(np.abs(a).max()) if a.dtype.kind == "f" and a.dtype.itemsize > 4 else 1.0
    if big > float(np.finfo(np.float32).max) or 0.0 < big < float(np.finfo(np.float32).tiny) * 2.0**24:
        side = "beyond float32's range" if big > 1.0 else "all below float32's normal range"
        raise error(
            f"{what}: values {side} (largest magnitude {big:.3g}), which is what this library "
            "computes in: rescale the image"
        )
    f = a.astype(np.float32)
    reason = float32_merges(a, f)
    if reason:
        raise error(f"{what}: {reason}")
    return f


def float32_merges(a: np.ndarray, f: np.ndarray) -> str:
    """Why float32 (``f``, ``a`` cast) would merge distinct values of the finite array ``a``:
    a sentence when ``a``'s type is wider than float32 holds exactly (64-bit, or 32-bit
    integers), float32 changes its values, and their spread is under 2**12 of float32's
    steps at their magnitude (label IDs near 3e9, a signal on an offset of 1e9: a few
    distinct values, or one, would be left), or, for integers, when float32 merges any of
    at most 2**16 distinct values (label IDs near 3e9 beside a background of 0); else "".
    (With 4096 steps or more, a bin of 256 holds 16 of them: float32's rounding moves a value
    by 1/32 bin at most.)"""
    if not (a.dtype.itemsize > 4 or (a.dtype.kind in "iu" and a.dtype.itemsize == 4)):
        return ""
    if np.array_equal(f, a):
        return ""
    lo, hi = a.min(), a.max()
    spread = float(int(hi) - int(lo)) if a.dtype.kind in "iu" else float(hi) - float(lo)
    step = float(np.spacing(np.float32(max(abs(float(lo)), abs(float(hi))))))
    if spread < step * 2.0**12:
        return (
            f"its values span {spread:.6g} around {float(hi):.6g}, where float32 (what this library "
            f"computes in) has steps of {step:.3g}, so distinct values would merge: subtract an offset "
            "(e.g. the minimum) first"
        )
    if a.dtype.kind in "iu":  # few distinct integers (a label map beside its background 0): none may merge
        ids = np.unique(a)
        kept = np.unique(ids.astype(np.float32)).size
        if ids.size <= 2**16 and kept < ids.size:
            return (
                f"its {ids.size} distinct integers (labels?) would be {kept} in float32 (what this "
                "library computes in), which holds integers exactly only up to 2**24: renumber them"
            )
    return ""
