"""Reading images: one reader for the whole project (``mi score``, ``mi register``).

Medical formats go through SimpleITK, which reads what these users have and is what ITK,
ANTs and SimpleITK users compare against: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``,
``.nhdr``) and MetaImage (``.mha``, ``.mhd``). The voxel array is SimpleITK's
(``GetArrayFromImage``): index ``[k, j, i]`` for the file's voxel ``(i, j, k)``, the
transpose of nibabel's ``get_fdata()[i, j, k]``; nothing is flipped or reoriented.
:func:`read_image` gives that array; :func:`read_medical` the ``SimpleITK.Image`` itself,
with its geometry (spacing, origin, direction), which registration uses.

``.npy``: a 2-D or 3-D real array, values kept. Anything else goes to PIL: colour becomes
grey, 8-bit is scaled to [0, 1] and 16-bit by 65535; 32-bit integer or float images keep
their values.
"""

from pathlib import Path

import numpy as np

__all__ = ["ImageReadError", "read_image", "read_medical", "is_medical", "MEDICAL_SUFFIXES"]

MEDICAL_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


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
    """A NIfTI / NRRD / MetaImage file as a grey 2-D or 3-D ``SimpleITK.Image``, with its
    geometry (spacing, origin, direction); a 4-D file holding one volume gives that volume.
    Raises :class:`ImageReadError`."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"no such file: {path}")
    sitk = _simpleitk(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:  # ITK's exceptions: keep the first line of the reason
        reason = str(e).strip().splitlines()
        raise ImageReadError(f"cannot read {path}: {reason[-1] if reason else 'SimpleITK failed'}") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{path}: expected a grey image, got {img.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:  # a 4-D file with one volume
        img = img[:, :, :, 0]
    if img.GetDimension() not in (2, 3):
        raise ImageReadError(f"{path}: expected a 2-D or 3-D image, got size {img.GetSize()}")
    return img


def _read_medical(path: Path) -> np.ndarray:
    return _simpleitk(path).GetArrayFromImage(read_medical(path)).astype(np.float32)


def _read_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as f:  # np.load would try a non-.npy file as a pickle
        a = np.lib.format.read_array(f, allow_pickle=False)
    if a.dtype.kind not in "biuf" or a.ndim not in (2, 3):
        raise ImageReadError(f"{path}: expected a 2-D or 3-D real array, got {a.dtype} {a.shape}")
    return a.astype(np.float32)


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode.startswith("I;16"):  # 16-bit grey PNG/TIFF
                return np.asarray(img, dtype=np.float32) / 65535.0
            if img.mode in ("I", "F"):  # 32-bit integer or float: keep the values
                return np.asarray(img, dtype=np.float32)
            return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except UnidentifiedImageError:
        raise ImageReadError(
            f"cannot read {path}: not an image file that PIL can read, nor .npy or "
            f"{', '.join(MEDICAL_SUFFIXES)}"
        ) from None


def is_medical(path) -> bool:
    """Whether ``path`` names a format read through SimpleITK (by its suffix)."""
    return Path(path).name.lower().endswith(MEDICAL_SUFFIXES)


def read_image(path) -> np.ndarray:
    """A grey image or volume as float32 (H, W) or (D, H, W); see the module's docstring.

    Raises :class:`ImageReadError` (a ValueError) with one line naming the file when it is
    missing, unreadable, holds NaN or Inf, or is not a 2-D or 3-D grey image.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"no such file: {path}")
    if not path.is_file():
        raise ImageReadError(f"not a file: {path}")
    name = path.name.lower()
    try:
        if is_medical(path):
            a = _read_medical(path)
        elif name.endswith(".npy"):
            a = _read_npy(path)
        else:
            a = _read_pil(path)
    except ImageReadError:
        raise
    except Exception as e:  # PIL and numpy each raise their own kinds
        detail = str(e).replace(repr(str(path)), "").replace(str(path), "").strip(" :")
        raise ImageReadError(f"cannot read {path}: {detail or type(e).__name__}") from None
    if not np.isfinite(a).all():
        raise ImageReadError(f"{path}: contains NaN or Inf values")
    return a
