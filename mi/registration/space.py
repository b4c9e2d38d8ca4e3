"""Physical space: image geometry, the index <-> physical maps, and resampling.

Conventions (the whole subpackage):

* **Index coordinates** are in ITK order ``(i, j, k)`` = ``(x, y, z)``: ``x`` is the array's
  last axis (W), ``y`` the row (H), ``z`` the slice (D); voxel centres sit at the integers
  ``0 .. size - 1``. The array is ``image[y, x]`` / ``volume[z, y, x]`` (SimpleITK's
  ``GetArrayFromImage``), the reverse of the index order.
* **Physical coordinates** (mm for medical images) are ITK's: ``p = origin + D diag(spacing) i``
  with ``D`` the direction matrix (columns: the index axes in physical space). A tensor or
  array without geometry has spacing 1 (or ``spacing=``), origin 0 and D = identity, so
  its physical coordinates are its (scaled) voxel indices.
* A **transform** maps **fixed** physical points to **moving** physical points, ITK's
  convention and what SimpleITK's ``ImageRegistrationMethod.Execute`` returns: the warped
  image is ``warped(p) = moving(T p)``. Its voxel form, fixed index -> moving index, is
  ``M^-1 T F`` with ``F`` and ``M`` the images' index -> physical maps (:func:`voxel_matrix`).
* **theta** is the (d, d+1) matrix for ``affine_grid(theta, size, align_corners=False)``
  (normalised coordinates in [-1, 1], voxel *edges* at +-1).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..io import drop_single_axes, float32_merges

#: Smallest |det| of a direction matrix, and largest deviation from orthonormal, accepted.
DIRECTION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Geometry:
    """Where an image's voxels lie: ``shape`` in array order ((H, W) or (D, H, W)) and, in
    index order (x, y[, z]), ``spacing`` (mm per voxel, > 0), ``origin`` (the physical point
    of voxel 0) and ``direction`` (d x d, row-major as ITK's flat tuple: orthonormal
    columns)."""

    shape: tuple
    spacing: tuple
    origin: tuple
    direction: tuple
    unit: str = "mm"  # "px" for a plain array given no spacing

    @property
    def dim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> tuple:
        """Voxels per index axis (x, y[, z]): the reversed array shape."""
        return tuple(reversed(self.shape))

    def index_to_physical(self) -> Tensor:
        """(d+1) x (d+1) float64: ``[[D diag(spacing), origin], [0, 1]]``."""
        d = self.dim
        m = torch.eye(d + 1, dtype=torch.float64)
        direction = torch.tensor(self.direction, dtype=torch.float64).reshape(d, d)
        m[:d, :d] = direction @ torch.diag(torch.tensor(self.spacing, dtype=torch.float64))
        m[:d, d] = torch.tensor(self.origin, dtype=torch.float64)
        return m

    def center(self) -> Tensor:
        """The physical centre of the voxel grid, (d,) float64."""
        idx = torch.tensor([(s - 1) / 2.0 for s in self.size] + [1.0], dtype=torch.float64)
        return (self.index_to_physical() @ idx)[: self.dim]

    def radius(self) -> float:
        """Half the grid's physical diagonal (mm)."""
        return 0.5 * math.sqrt(sum((n * s) ** 2 for n, s in zip(self.size, self.spacing)))

    @classmethod
    def of_sitk(cls, image, name: str = "image") -> Geometry:
        """The geometry of a 2-D or 3-D SimpleITK image, its spacing and direction checked
        (a ValueError naming ``name``)."""
        d = image.GetDimension()
        geom = cls(
            tuple(reversed(image.GetSize())), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
        )
        check_spacing(geom.spacing, f"{name}'s spacing")
        check_direction(geom.direction, d, f"{name}'s direction")
        return geom

    def differences(self, other: Geometry, atol: float = 1e-4) -> list:
        """What differs from ``other``'s grid: names among "size", "spacing", "origin",
        "direction" (the numbers to ``atol``, mm); empty for the same grid."""
        names = [] if self.shape == other.shape else ["size"]
        for name in ("spacing", "origin", "direction"):
            if not np.allclose(getattr(self, name), getattr(other, name), rtol=0.0, atol=atol):
                names.append(name)
        return names

    def to_sitk(self, image):
        """Copy this geometry onto a SimpleITK image (of the same size)."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def center_of_mass(image: Tensor, geom: Geometry, weights: Tensor | None = None) -> Tensor:
    """The physical centre of mass (mm; (d,) float64) of ``image`` (1, 1, *shape) on the grid
    ``geom``, weighted by ``image - image.min()`` (so a CT's air at -1000 HU weighs nothing,
    and an image whose minimum is 0, ITK's moments, is unchanged) times ``weights`` (a mask,
    (1, 1, *shape), or None). The grid's centre (:meth:`Geometry.center`) when that weight is
    0 everywhere (a constant image)."""
    x = image.detach()[0, 0].double()
    mass = x - x.min()
    if weights is not None:
        mass = mass * weights.detach()[0, 0].double()
    total = mass.sum()
    if not total > 0:
        return geom.center()
    d = geom.dim
    idx = torch.ones(d + 1, dtype=torch.float64)
    for axis in range(d):  # array axis -> index axis d - 1 - axis (x is the last array axis)
        marginal = mass.sum(dim=tuple(a for a in range(d) if a != axis))
        positions = torch.arange(marginal.numel(), dtype=torch.float64, device=marginal.device)
        idx[d - 1 - axis] = ((marginal * positions).sum() / total).cpu()
    return (geom.index_to_physical() @ idx)[:d]


def per_axis(name: str, value, d: int) -> tuple:
    """A length per axis (mm or voxels: ``spacing``, ``grid_spacing``): one positive finite
    number (a Python, numpy or 0-d tensor scalar) for every axis, or d of them (x, y[, z]);
    anything else (a string, a bool, None) is a TypeError naming ``name``."""
    if isinstance(value, Tensor) and value.ndim == 0:
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        values = (float(value),) * d
    else:
        try:
            if isinstance(value, (str, bytes)) or any(isinstance(v, bool) for v in value):
                raise TypeError
            values = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number or one number per axis, got {value!r}") from None
    if len(values) != d:
        raise ValueError(f"{name} must give {d} values (x, y[, z]) for a {d}-D image, got {len(values)}")
    check_spacing(values, name)
    return values


def identity_geometry(shape: Sequence[int], spacing=None) -> Geometry:
    """The geometry of a plain array: origin 0, identity direction, ``spacing`` (one number
    or one per index axis x, y[, z]; default 1)."""
    d = len(shape)
    values = (1.0,) * d if spacing is None else per_axis("spacing", spacing, d)
    eye = tuple(float(i == j) for i in range(d) for j in range(d))
    return Geometry(tuple(int(s) for s in shape), values, (0.0,) * d, eye, "px" if spacing is None else "mm")


def check_spacing(spacing, name="spacing"):
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"{name} must be positive and finite, got {tuple(spacing)}")


def check_direction(direction, d: int, name="direction"):
    m = np.asarray(direction, dtype=np.float64).reshape(d, d)
    if not np.isfinite(m).all():
        raise ValueError(f"{name} contains NaN or Inf")
    err = np.abs(m.T @ m - np.eye(d)).max()
    if err > DIRECTION_TOLERANCE:
        raise ValueError(f"{name} must have orthonormal columns (a rotation or reflection), got {m.tolist()}")


# ---------------------------------------------------------------- reading inputs


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError:
        raise ImportError(
            "medical images need SimpleITK: pip install SimpleITK (or pip install "
            "'torch-mutual-information[medical]')"
        ) from None
    return sitk


def _is_sitk_image(x) -> bool:
    return type(x).__name__ == "Image" and type(x).__module__.startswith("SimpleITK")


def has_affine(x) -> bool:
    """Whether ``x`` is an image that carries its own index -> world affine: a nibabel image
    (``.affine`` and ``.dataobj``) or a MONAI ``MetaTensor`` (``.affine`` and ``.meta``)."""
    return getattr(x, "affine", None) is not None and (hasattr(x, "dataobj") or hasattr(x, "meta"))


def has_geometry(x) -> bool:
    """A SimpleITK image, a nibabel image or a MONAI ``MetaTensor``: an image with its own
    geometry (not a plain array or tensor, whose geometry ``spacing=`` gives)."""
    return _is_sitk_image(x) or has_affine(x)


def from_affine(name: str, x):
    """A nibabel image or a MONAI ``MetaTensor`` as the SimpleITK image of the same voxels
    and geometry. Both hold their voxels with the index axes (i, j[, k]) first and an affine
    from those indices to world mm, RAS for nibabel and for MONAI unless its
    ``meta["space"]`` says LPS; SimpleITK holds ``[k, j, i]`` and LPS, so the voxels are
    transposed and x and y negated. Axes of one voxel beyond the affine's (nibabel's 4-D
    file of one volume) and before them (MONAI's channel, a batch of one) are dropped; a
    batch of affines must hold one. A MetaTensor's rank is that of its
    ``meta["spatial_shape"]`` (a PNG's: 2, under MONAI's 4x4 affine), else its affine's; an
    image of one slice is 2-D, as files are read (:func:`mi.io.drop_single_axes`).
    ValueError for what else would have to be guessed."""
    affine = x.affine
    if isinstance(affine, Tensor):
        affine = affine.detach().cpu().as_subclass(Tensor).double().numpy()
    affine = np.array(affine, dtype=np.float64)
    if affine.ndim == 3 and affine.shape[0] == 1:  # (a MONAI batch of one)
        affine = affine[0]
    d = affine.shape[0] - 1
    if affine.ndim != 2 or affine.shape != (d + 1, d + 1) or d not in (2, 3):
        raise ValueError(f"{name}: expected a 3x3 or 4x4 affine, got shape {affine.shape}")
    if isinstance(x, Tensor):  # MONAI: channel (and batch) first
        a = x.detach().cpu().as_subclass(Tensor).numpy()
        space = str(x.meta.get("space", "RAS")).upper()
        # (MONAI's affine is 4x4 for a 2-D image too; its readers record the image's rank)
        rank = min(len(x.meta.get("spatial_shape", ())) or d, d)
        extra, spatial = a.shape[: max(a.ndim - rank, 0)], a.shape[max(a.ndim - rank, 0) :]
    else:  # nibabel: the data's scaling applied (scl_slope), trailing axes of one voxel
        a = np.asanyarray(x.dataobj)
        space, rank = "RAS", min(a.ndim, d)
        extra, spatial = a.shape[rank:], a.shape[:rank]
    if a.ndim < rank or any(n != 1 for n in extra):
        raise ValueError(f"{name}: expected one {rank}-D image (the affine's), got voxels of shape {a.shape}")
    if space not in ("RAS", "LPS"):
        raise ValueError(f"{name}: its space is {space!r}: expected RAS or LPS")
    a = a.reshape(tuple(spatial) + (1,) * (d - rank))  # (a 2-D image: one slice of the affine's 3-D)
    if space == "RAS":  # -> LPS
        affine = np.diag([-1.0, -1.0] + [1.0] * (d - 1)) @ affine
    linear = affine[:d, :d]
    spacing = np.linalg.norm(linear, axis=0)
    if not (np.isfinite(affine).all() and (spacing > 0).all()):
        raise ValueError(f"{name}: its affine has a zero or non-finite column: {affine.tolist()}")
    if a.dtype.kind == "c":
        raise TypeError(f"{name} must hold real numbers, got {a.dtype}")
    if a.dtype.kind not in "iuf" or a.dtype == np.float16:  # (bool: as 0 and 1)
        a = a.astype(np.float32)
    a = a.astype(a.dtype.newbyteorder("="), copy=False)  # (NIfTI files may be big-endian)
    img = _sitk().GetImageFromArray(np.ascontiguousarray(a.transpose()))
    img.SetSpacing(tuple(spacing.tolist()))
    img.SetOrigin(tuple(affine[:d, d].tolist()))
    img.SetDirection(tuple((linear / spacing).reshape(-1).tolist()))
    try:
        return drop_single_axes(img)  # (one slice: 2-D, as files are read)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


class _OnAffine:
    """A plain array with a nibabel image's affine: what :func:`from_affine` reads of one."""

    def __init__(self, dataobj: np.ndarray, affine):
        self.dataobj, self.affine = dataobj, affine


def mask_for(name: str, mask, image):
    """``mask`` as :func:`as_mask` takes it for the caller's ``image``: as given, except a plain
    array or tensor for a nibabel image or a MONAI ``MetaTensor``, which is indexed as that
    image's own voxels ((i, j[, k]), after a MetaTensor's channel axes; ``image.shape``, axes
    of one voxel aside) and is read with its affine, as :func:`from_affine` reads the image
    (transposed to SimpleITK's [k, j, i]). For a SimpleITK image or a file, arrays are in
    the SimpleITK array's order [k, j, i], as :func:`as_image` gives the image. ValueError
    for another shape (a cube cannot tell the two orders apart: the image's decides)."""
    if mask is None or not has_affine(image) or isinstance(mask, (str, Path)) or has_geometry(mask):
        return mask
    if isinstance(mask, Tensor):
        mask = mask.detach().cpu()
    a = np.asarray(mask)
    want = tuple(image.shape)
    if [n for n in a.shape if n != 1] != [n for n in want if n != 1]:
        kind = "MONAI MetaTensor" if isinstance(image, Tensor) else "nibabel image"
        raise ValueError(
            f"{name}: an array for a {kind} is indexed as that image's voxels (i, j[, k], its "
            f"shape {want}), got shape {a.shape}"
        )
    a = a.reshape(want)
    if isinstance(image, Tensor):  # a MetaTensor: the same type and meta (its affine)
        return type(image)(torch.as_tensor(a), meta=dict(image.meta))
    return _OnAffine(a, image.affine)


def geometry_of(name: str, x) -> Geometry:
    """The :class:`Geometry` of what :func:`read_path` returns (a SimpleITK image: its own;
    an array: voxel space), without converting its voxels as :func:`as_image` does."""
    if has_affine(x):
        x = from_affine(name, x)
    if _is_sitk_image(x):
        return Geometry.of_sitk(x, name)
    return identity_geometry(_as_tensor(name, x).shape[2:])


def read_path(path):
    """A file or a DICOM series (folder or one of its files) -> a SimpleITK image (medical
    formats and DICOM, with their geometry: :func:`mi.io.read_medical`) or a float32 array
    (PNG/JPEG/.npy: voxel space). NaN and Inf voxels are kept (:func:`as_image` decides).
    Raises :class:`mi.io.ImageReadError` (a ValueError naming the file)."""
    from ..io import ImageReadError, is_medical, read_image, read_medical

    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"no such file: {path}")
    return read_medical(path) if is_medical(path) else read_image(path, allow_nonfinite=True)


def check_device(device, name: str = "device") -> torch.device:
    """``device`` (a torch.device, "cpu", "cuda", "cuda:1", or a CUDA index) as a torch.device
    that registration can compute on: CPU, or a CUDA device that exists; else ValueError
    (``name``: the argument, or the image whose tensor is elsewhere: "meta", say)."""
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        what = type(device).__name__
        raise TypeError(
            f"{name} must be a torch.device, a string such as 'cpu' or 'cuda:0', or an int, got {what}"
        )
    try:
        dev = torch.device(device)
    except RuntimeError as e:  # an unknown name; an int without an accelerator
        raise ValueError(f"{name}={device!r} is not a device ({e}); use 'cpu' or 'cuda[:index]'") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: registration computes on 'cpu' or 'cuda', got {str(dev)!r}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise ValueError(
                f"{name}={str(dev)!r}: this machine has {count} CUDA device(s) that torch can use"
            )
    return dev


def as_image(name: str, x, device=None, spacing=None, *, nonfinite: bool = False):
    """An image argument -> ((1, 1, *shape) float32 tensor, :class:`Geometry`).

    ``x``: a SimpleITK image (its geometry; one of a single slice is 2-D, as files are read:
    :func:`mi.io.drop_single_axes`), a file path or a DICOM folder (:func:`read_path`:
    the geometry of medical formats; PNG/JPEG/.npy are voxel space), a nibabel image or a
    MONAI ``MetaTensor`` (their affine: :func:`from_affine`), or a tensor / array (H, W),
    (1, H, W), (D, H, W), (1, 1, H, W) or (1, 1, D, H, W) (voxel space, with ``spacing`` if
    given; (H, W, 3 or 4) is refused as a colour picture: :func:`_as_tensor`).
    ``spacing`` only applies to tensors and arrays. NaN and Inf voxels: ValueError, or kept
    if ``nonfinite`` (:func:`finite_part` separates them), as long as one voxel is finite.
    """
    if isinstance(x, (str, Path)):
        x = read_path(x)
    if has_affine(x):
        x = from_affine(name, x)
    if _is_sitk_image(x):
        if spacing is not None:
            raise ValueError(f"spacing= is for tensors and arrays; {name} is an image with its own geometry")
        sitk = _sitk()
        if "complex" in x.GetPixelIDTypeAsString():
            raise TypeError(f"{name} must hold real numbers, got a {x.GetPixelIDTypeAsString()} image")
        if x.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(
                f"{name} must be a grey image, got {x.GetNumberOfComponentsPerPixel()} components"
            )
        x = drop_single_axes(x)  # as read_path does (one slice: 2-D)
        d = x.GetDimension()
        if d not in (2, 3):
            raise ValueError(f"{name} must be 2-D or 3-D, got a {d}-D image")
        geom = Geometry.of_sitk(x, name)
        t = torch.from_numpy(sitk.GetArrayFromImage(x))[None, None]
    else:
        t = _as_tensor(name, x)
        geom = identity_geometry(t.shape[2:], spacing)
    dev = check_device(device if device is not None else t.device, "device" if device is not None else name)
    given, t = t, t.detach().to(device=dev, dtype=torch.float32)
    if t.is_inference():  # (made under torch.inference_mode: autograd could not save it)
        t = t.clone()
    finite = torch.isfinite(given) if given.is_floating_point() else None
    if finite is not None and not finite.all():
        if not nonfinite:
            raise ValueError(f"{name} contains NaN or Inf")
        if not finite.any():
            raise ValueError(f"{name}: every voxel is NaN or Inf (they count as outside the image)")
        given = given[finite]  # (the checks below: on its finite values)
    if not torch.isfinite(t if finite is None else t[finite.to(dev)]).all():
        raise ValueError(
            f"{name} has values beyond float32's range (largest magnitude "
            f"{given.abs().max().item():.3g}), and registration computes in float32: rescale it"
        )
    if given.dtype.itemsize > 4 or given.dtype in (torch.int32, torch.uint32):  # wider than float32
        reason = float32_merges(given.detach().cpu().numpy(), given.detach().cpu().float().numpy())
        if reason:
            raise ValueError(f"{name}: {reason}")
    return t, geom


def finite_part(image: Tensor) -> tuple:
    """``(image with its NaN and Inf voxels set to 0, valid)``: ``valid`` is 1 at the finite
    voxels and 0 at the others (float32, ``image``'s shape), or None when all are finite.
    Registration and ``mi score`` count the others as outside the image (SPM and resampling
    tools write NaN where there is no data)."""
    finite = torch.isfinite(image)
    if bool(finite.all()):
        return image, None
    return torch.where(finite, image, 0.0), finite.to(image.dtype)


def interpolable(valid: Tensor) -> Tensor:
    """1 at the voxels of ``valid`` (1, 1, *shape) whose neighbours (3x3 or 3x3x3, the
    image's edge aside) are all valid, else 0: weights that, resampled (bi/trilinear) with
    the image, are 0 wherever the interpolation reads an invalid voxel with a nonzero
    coefficient, where NaN would propagate (the corners of the cell around a point are each
    other's neighbours), and also where it reads one next to an invalid voxel (a margin of
    up to one voxel more)."""
    pool = F.max_pool2d if valid.ndim == 4 else F.max_pool3d
    return -pool(-valid, 3, stride=1, padding=1)  # (a minimum; the padding never wins)


def _from_numpy(x):
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


def _as_tensor(name: str, x) -> Tensor:
    """(H, W) / (D, H, W) / (1, 1, H, W) / (1, 1, D, H, W) tensor or array -> (1, 1, ...); (1, H, W)
    is 2-D (a single slice, as torchvision gives a grey picture); (H, W, 3 or 4) with H, W > 4
    is refused as a colour picture (channels last) by name."""
    x = _from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, numpy array, SimpleITK image or a file path, "
            f"got {type(x).__name__}"
        )
    if x.is_complex():  # (bool: a binary image, as 0 and 1)
        raise TypeError(f"{name} must hold real numbers, got {x.dtype}")
    if x.ndim == 3 and x.shape[-1] in (3, 4) and min(x.shape[:2]) > 4:
        raise ValueError(
            f"{name}: an array of shape {tuple(x.shape)} looks like a colour picture (RGB or RGBA, "
            "channels last, as PIL, imageio and OpenCV give them): registration takes grey images; "
            "convert it (PIL's .convert('L'), or a weighted sum of the channels), or pass a volume "
            f"of {x.shape[-1]} voxels along x as (1, 1, D, H, W)"
        )
    if x.ndim == 3 and x.shape[0] == 1:  # one slice (torchvision's grey picture, C = 1): 2-D
        x = x[0]
    if x.ndim in (2, 3):
        return x[None, None]
    if x.ndim in (4, 5) and x.shape[:2] == (1, 1):
        return x
    if x.ndim in (4, 5):
        raise ValueError(
            f"{name} must be one single-channel image: (1, 1, H, W) or (1, 1, D, H, W), "
            f"got shape {tuple(x.shape)}"
        )
    raise ValueError(
        f"{name} must be 2-D (H, W) / (1, 1, H, W) or 3-D (D, H, W) / (1, 1, D, H, W), "
        f"got shape {tuple(x.shape)}"
    )


def as_mask(name: str, mask, image: Tensor, geom: Geometry) -> Tensor | None:
    """A mask for ``image``: bool, integer or non-negative float, its shape (leading axes of one
    voxel aside: (1, H, W) for an (H, W) image, the array of a one-slice image; a SimpleITK
    image or a file must also have its geometry, to 1e-4 mm) -> (1, 1, *shape) float32, or
    None."""
    if mask is None:
        return None
    if isinstance(mask, (str, Path)) or _is_sitk_image(mask) or has_affine(mask):
        m, g = as_image(name, mask, image.device)
        if g.dim != geom.dim:
            raise ValueError(
                f"{name} is a {g.dim}-D image ({'x'.join(map(str, g.size))}) for a {geom.dim}-D image "
                f"({'x'.join(map(str, geom.size))}): it must have its image's grid"
            )
        if g.differences(geom):
            raise ValueError(f"{name} must have its image's grid (shape, spacing, origin, direction)")
    else:
        mask = _from_numpy(mask)
        if not isinstance(mask, Tensor):
            raise TypeError(
                f"{name} must be a tensor, array, SimpleITK image, file path or None, "
                f"got {type(mask).__name__}"
            )
        if mask.is_complex():  # bool, integer (a label image's 0/1) or float weights
            raise TypeError(f"{name} must be real (bool, integer or float weights), got {mask.dtype}")
        m = mask.detach().to(image.device, torch.float32)
        spatial = tuple(image.shape[2:])
        if tuple(m.shape[m.ndim - len(spatial) :]) == spatial and m.numel() == math.prod(spatial):
            m = m.reshape(image.shape)  # (H, W), (1, H, W) (a one-slice image's array), ...
        if m.shape != image.shape:
            raise ValueError(
                f"{name} must have its image's shape {tuple(image.shape[2:])}, got {tuple(mask.shape)}"
            )
    if not (torch.isfinite(m).all() and (m >= 0).all()):
        raise ValueError(f"{name} must be finite and non-negative")
    if not (m > 0).any():
        raise ValueError(f"{name} keeps no voxel (all zero)")
    return m


# ---------------------------------------------------------------- voxel maps and resampling


def voxel_matrix(physical: Tensor, fixed: Geometry, moving: Geometry) -> Tensor:
    """A physical transform (fixed mm -> moving mm) as a voxel matrix (fixed index -> moving index)."""
    return torch.linalg.inv(moving.index_to_physical()) @ physical @ fixed.index_to_physical()


def physical_matrix(voxel: Tensor, fixed: Geometry, moving: Geometry) -> Tensor:
    """The inverse of :func:`voxel_matrix`."""
    return moving.index_to_physical() @ voxel @ torch.linalg.inv(fixed.index_to_physical())


def extent(shape: Sequence[int], scale=1.0) -> Tensor:
    """Extent per index axis (x, y[, z]) of an array ``shape`` whose voxels are ``scale``
    full-resolution voxels wide (a number, or one per index axis)."""
    sizes = torch.tensor(list(reversed(tuple(shape))), dtype=torch.float64)
    return sizes * torch.as_tensor(scale, dtype=torch.float64)


def to_normalized(ext: Tensor) -> Tensor:
    """(d+1)x(d+1): full-resolution voxel coordinates -> grid_sample's normalised ones
    (align_corners=False) of a grid of extent ``ext`` (:func:`extent`).

    ``n = (2 p + 1) / e - 1``: voxel centre 0 -> -1 + 1/e, voxel edges -0.5 and e - 0.5 ->
    -1 and +1. For a pyramid level whose voxels are ``s`` full-resolution voxels wide along
    an axis, ``e = s * level_size`` there: level voxel ``q`` is centred on full-resolution
    ``s q + (s-1)/2``, so ``p`` stays in full-resolution voxels at every level.
    """
    d = ext.numel()
    n = torch.eye(d + 1, dtype=torch.float64)
    n[:d, :d] = torch.diag(2.0 / ext)
    n[:d, d] = 1.0 / ext - 1.0
    return n


def matrix_to_theta(matrix, fixed_shape: Sequence[int], moving_shape: Sequence[int]) -> Tensor:
    """Voxel matrix (fixed index -> moving index, (x, y[, z]) order) -> affine_grid theta (d, d+1).

    ``fixed_shape``/``moving_shape`` are the spatial array shapes ((H, W) or (D, H, W)).
    Use ``affine_grid(theta[None], (1, C, *fixed_shape), align_corners=False)`` and
    ``grid_sample(moving, grid, align_corners=False)``.
    """
    m = torch.as_tensor(matrix, dtype=torch.float64)
    d = m.shape[0] - 1
    nf, nm = to_normalized(extent(fixed_shape)), to_normalized(extent(moving_shape))
    return (nm @ m @ torch.linalg.inv(nf))[:d]


def theta_to_matrix(theta, fixed_shape: Sequence[int], moving_shape: Sequence[int]) -> Tensor:
    """The inverse of :func:`matrix_to_theta`: theta (d, d+1) -> voxel matrix (d+1, d+1)."""
    t = torch.as_tensor(theta, dtype=torch.float64)
    d = t.shape[0]
    full = torch.eye(d + 1, dtype=torch.float64)
    full[:d] = t
    nf, nm = to_normalized(extent(fixed_shape)), to_normalized(extent(moving_shape))
    return torch.linalg.inv(nm) @ full @ nf


def sample_grid(moving: Tensor, theta: Tensor, out_shape: Sequence[int]) -> tuple:
    """Every channel of ``moving`` resampled onto a grid of ``out_shape`` through ``theta``
    as ITK's ``Resample`` does it (``sample_points(..., itk=True)``), and the overlap there
    (``overlap_weight(..., itk=True)``): ((1, C, *out_shape), (1, 1, *out_shape))."""
    grid = F.affine_grid(theta.to(moving)[None], (1, moving.shape[1], *out_shape), align_corners=False)
    values = sample_points(moving, grid.reshape(-1, grid.shape[-1]), itk=True)
    overlap = overlap_weight(grid, moving.shape[2:], itk=True)
    return values.reshape(1, -1, *out_shape), overlap.reshape(1, 1, *out_shape)


def overlap_weight(points: Tensor, shape: Sequence[int], itk: bool = False) -> Tensor:
    """What bilinear/trilinear resampling of an image of ones (zero padding) gives at
    normalised points (..., d) of a grid of array ``shape``, without resampling anything: per
    axis ``clamp(min(u + 1, size - u), 0, 1)`` at voxel coordinate ``u`` (1 inside, fading
    to 0 over the voxel beyond each edge voxel's centre), multiplied over the axes. (...,)

    ``itk``: 0 where ITK's resampling gives 0 (``sample_points(..., itk=True)``: beyond half
    a voxel past the edge voxels' centres), so that the pair (values, weights) never weighs
    a value that is not the image's: the zeros there, weighted up to 1/2, stretched a score's
    "auto" range down to 0 (an image on an offset of 1e4 scored 1.0002 instead of 1.07)."""
    w = None
    for axis, size in enumerate(reversed(tuple(shape))):  # points are (x, y[, z])
        u = ((points[..., axis] + 1.0) * size - 1.0) / 2.0
        a = torch.clamp(torch.minimum(u + 1.0, size - u), 0.0, 1.0)
        w = a if w is None else w * a
    if itk:
        w = torch.where(((points >= -1.0) & (points < 1.0)).all(-1), w, 0.0)
    return w


def sample_points(moving: Tensor, points: Tensor, itk: bool = False) -> Tensor:
    """Bilinear/trilinear values of every channel of ``moving`` at normalised points (n, d)
    (grid_sample's coordinates, (x, y[, z]) order) -> (1, C, n).

    Zero padding (the registration loss: with ``overlap_weight``, the samples fade out over
    the half voxel beyond the edge voxels' centres), or with ``itk`` ITK's linear
    interpolator and ``Resample`` default 0: a point within that half voxel (continuous
    index in [-0.5, size - 0.5), ITK's ``IsInsideBuffer``) takes the nearest edge values, a
    point beyond it 0 (the written warped images, which ``SimpleITK.Resample`` reproduces)."""
    d = points.shape[-1]
    grid = points.to(moving).reshape(1, *([1] * (d - 1)), -1, d)
    pad = "border" if itk else "zeros"
    out = F.grid_sample(moving, grid, mode="bilinear", padding_mode=pad, align_corners=False)
    out = out.reshape(1, moving.shape[1], -1)
    if itk:
        inside = ((points >= -1.0) & (points < 1.0)).all(-1)
        out = torch.where(inside.reshape(1, 1, -1), out, 0.0)
    return out


def warp(moving, matrix, fixed_shape: Sequence[int], valid: Tensor | None = None):
    """Resample ``moving`` onto a grid of ``fixed_shape`` through the voxel ``matrix``
    (fixed index -> moving index).

    Returns ``(warped, overlap)``, both (1, 1, *fixed_shape) float32: ``warped(p) =
    moving(A p)`` (bilinear/trilinear as ITK's ``Resample``: the edge values up to half a
    voxel beyond the edge voxels' centres, 0 further out), ``overlap`` what zero-padded
    resampling of an image of ones gives (1 inside the moving image, 1/2 to 1 over that
    half voxel), 0 where ``warped`` is (``overlap_weight(..., itk=True)``). ``valid``: None,
    or the moving image's finite voxels (1) and the others (0) (:func:`finite_part`), and
    then ``overlap`` is also 0 where the interpolation reads one of the others
    (:func:`interpolable`).
    """
    m = moving if isinstance(moving, Tensor) and moving.ndim >= 4 else _as_tensor("moving", moving).float()
    theta = matrix_to_theta(matrix, fixed_shape, m.shape[2:])
    if valid is None:
        return sample_grid(m, theta, tuple(fixed_shape))
    out, overlap = sample_grid(torch.cat([m, interpolable(valid.to(m))], 1), theta, tuple(fixed_shape))
    return out[:, :1], overlap * out[:, 1:]
