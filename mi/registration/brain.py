"""A real 3-D brain MRI pair with a known rigid transform, for tests and benchmarks of
multi-modal registration in physical space (mm).

The anatomy is the MNI ICBM152 2009a symmetric template (a T1 and grey/white-matter
probability maps) that the ``nilearn`` wheel ships in ``nilearn/datasets/data``: nothing is
downloaded, and nilearn itself is never imported (its files are found with
``importlib.util.find_spec`` and read with SimpleITK). Install it with ``pip install nilearn``
(it is in the project's ``test`` extra).

Conventions (those of :mod:`mi.registration`):

* Images are float32 ``SimpleITK.Image`` objects with their geometry: the physical point of
  the index ``(i, j, k)`` is ``p = origin + D diag(spacing) (i, j, k)`` in **mm**, in ITK's
  LPS frame (SimpleITK reads NIfTI into it). The numpy array (``GetArrayFromImage``) is
  indexed ``[k, j, i]``.
* A **transform** maps **fixed** physical points to **moving** physical points (ITK's
  convention, what ``ImageRegistrationMethod.Execute`` returns): the moving image brought
  onto the fixed grid is ``sitk.Resample(moving, fixed, transform)``, i.e.
  ``warped(p) = moving(transform(p))``.

The template's geometry as SimpleITK reads it: size (197, 233, 189) voxels (i, j, k) of
1 mm, direction ``diag(-1, -1, 1)`` (the file's affine is RAS+ with an identity rotation;
ITK's frame is LPS, so physical x decreases along i and y along j), origin (98, 134, -72) mm
(the RAS corner (-98, -134, -72)), physical centre of the grid (0, 18, 22) mm. The T1 is
skull-stripped (exactly 0 outside the brain), and the field of view ends at the lower
brainstem: the first slice (k = 0) still holds brain, so a transform that moves the
anatomy down pushes a few mm of brainstem out of the grid.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

__all__ = [
    "BRAIN_FRACTION",
    "CONTRAST2_WEIGHTS",
    "brain_t1",
    "brain_contrast2",
    "rigid_transform",
    "brain_pair",
    "mean_error_mm",
]

_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

#: Intensities of pure CSF, grey matter and white matter in :func:`brain_contrast2` (a
#: T2-like contrast in arbitrary units: CSF bright, GM medium, WM dark; background 0).
CONTRAST2_WEIGHTS = {"csf": 1.0, "gm": 0.55, "wm": 0.25}

#: :func:`mean_error_mm` without a mask averages over the voxels brighter than this fraction
#: of the image's maximum (for the T1 template: the whole skull-stripped brain, CSF included).
BRAIN_FRACTION = 0.1

#: Largest deviation (mm) from the recovered affine map, at probe points, for which
#: :func:`mean_error_mm` treats a transform as affine.
_AFFINE_TOLERANCE_MM = 1e-6


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError:
        raise ModuleNotFoundError(
            "mi.registration.brain needs SimpleITK: pip install SimpleITK "
            "(or pip install 'torch-mutual-information[test]')",
            name="SimpleITK",
        ) from None
    return sitk


def _template_path(which: str) -> Path:
    """The template file ``which`` ('t1', 'gm' or 'wm') in the installed nilearn package,
    found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the brain template (MNI ICBM152 2009a) comes with nilearn: pip install nilearn "
            "(or pip install 'torch-mutual-information[test]')",
            name="nilearn",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / _FILES[which]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: this nilearn does not ship the MNI ICBM152 2009a template; "
            "install one that does (pip install -U nilearn)"
        )
    return path


def _read(which: str) -> sitk.Image:
    sitk = _sitk()
    return sitk.Cast(sitk.ReadImage(str(_template_path(which))), sitk.sitkFloat32)


def _header(which: str):
    """A SimpleITK ImageFileReader that has read only the file's header (size, spacing,
    origin, direction)."""
    reader = _sitk().ImageFileReader()
    reader.SetFileName(str(_template_path(which)))
    reader.ReadImageInformation()
    return reader


def _geometry(image):
    """(size, spacing, origin, direction d x d) of an image or header, as float64 arrays."""
    d = image.GetDimension()
    return (
        np.asarray(image.GetSize(), dtype=np.int64),
        np.asarray(image.GetSpacing(), dtype=np.float64),
        np.asarray(image.GetOrigin(), dtype=np.float64),
        np.asarray(image.GetDirection(), dtype=np.float64).reshape(d, d),
    )


def _index_to_physical(image, idx) -> np.ndarray:
    """Continuous indices ``idx`` (..., d) in ITK order (i, j, k) -> physical points (..., d),
    mm: ``origin + D (spacing * idx)``, vectorised."""
    _, spacing, origin, direction = _geometry(image)
    return origin + (np.asarray(idx, dtype=np.float64) * spacing) @ direction.T


def _center(image) -> np.ndarray:
    """The physical centre (mm) of an image's grid: the point of index ``(size - 1) / 2``."""
    return _index_to_physical(image, (_geometry(image)[0] - 1.0) / 2.0)


def brain_t1() -> sitk.Image:
    """The MNI ICBM152 2009a symmetric T1 template, float32.

    Values are the file's (uint8, 0 .. 255): 0 outside the skull-stripped brain, CSF about
    40-80, grey matter about 165, white matter about 220. The geometry is the file's,
    untouched: size (197, 233, 189) voxels (i, j, k), spacing (1, 1, 1) mm, origin
    (98, 134, -72) mm, direction ``diag(-1, -1, 1)`` (LPS; see the module docstring). A fresh
    image on each call.
    """
    return _read("t1")


def brain_contrast2() -> sitk.Image:
    """A second, T2-like "modality" of the same anatomy, float32, on the T1's grid.

    With ``p_gm = GM / 255`` and ``p_wm = WM / 255`` the template's grey- and white-matter
    probability maps, ``brain = (T1 > 0)`` (the skull-stripped brain of :func:`brain_t1`) and
    ``p_csf = clip(1 - p_gm - p_wm, 0, 1)``::

        contrast2 = brain * (1.0 * p_csf + 0.55 * p_gm + 0.25 * p_wm)

    (weights :data:`CONTRAST2_WEIGHTS`; arbitrary units, values in [0, 1]): CSF bright,
    grey matter medium, white matter dark, background 0. As a function of the T1 intensity
    it is non-monotonic (background 0 -> 0, dark CSF -> brightest, grey -> medium, bright
    white -> darkest): inside the brain its Pearson correlation with the T1 is about -0.98,
    over the whole grid about +0.82 (the brain against the background): a correlation
    metric gets two cues of opposite signs, mutual information one relationship. (Measured
    on the 2 mm grid (BinShrink), shifting contrast2 one voxel along x: the whole-grid
    correlation only drops from 0.835 to 0.827, still peaking at alignment through the
    brain's outline, while 32-bin mutual information drops from 0.92 to 0.65 nats.) Same
    geometry as :func:`brain_t1`.
    """
    sitk = _sitk()
    t1 = _read("t1")
    gm = sitk.GetArrayFromImage(_read("gm")) / np.float32(255.0)
    wm = sitk.GetArrayFromImage(_read("wm")) / np.float32(255.0)
    csf = np.clip(np.float32(1.0) - gm - wm, np.float32(0.0), np.float32(1.0))
    w = {k: np.float32(v) for k, v in CONTRAST2_WEIGHTS.items()}
    out = (w["csf"] * csf + w["gm"] * gm + w["wm"] * wm) * (sitk.GetArrayViewFromImage(t1) > 0)
    image = sitk.GetImageFromArray(out.astype(np.float32, copy=False))
    image.CopyInformation(t1)
    return image


def rigid_transform(
    angles_deg: Sequence[float] = (4.0, -3.0, 5.0),
    shift_mm: Sequence[float] = (6.0, -4.0, 3.0),
    center: Sequence[float] | None = None,
) -> sitk.Euler3DTransform:
    """A rigid transform ``T(p) = R (p - c) + c + shift`` (physical points, mm), mapping
    **fixed** physical points to **moving** physical points (ITK's convention).

    ``angles_deg``: rotations about the physical x, y and z axes, in degrees (right-handed:
    positive turns y towards z, z towards x, x towards y). They are composed as ITK's
    ``Euler3DTransform`` does by default (``ComputeZYX`` off): ``R = Rz @ Rx @ Ry``, i.e. the
    rotation about y is applied first, then x, then z. ``shift_mm``: the translation in mm
    (the image of the centre minus the centre). ``center``: the centre of rotation ``c``
    (mm); default the physical centre of the T1 template's grid, (0, 18, 22) mm.
    """
    sitk = _sitk()
    angles = [math.radians(float(a)) for a in angles_deg]
    shift = [float(s) for s in shift_mm]
    if len(angles) != 3 or len(shift) != 3:
        raise ValueError(f"need 3 angles and 3 shifts, got {len(angles)} and {len(shift)}")
    c = _center(_header("t1")) if center is None else np.asarray(center, dtype=np.float64)
    if c.shape != (3,):
        raise ValueError(f"center must be a 3-D point, got shape {c.shape}")
    return sitk.Euler3DTransform(tuple(map(float, c)), *angles, tuple(shift))


def _moving_grid(t1, shrink: int, slice_mm: float | None):
    """Per index axis: (voxel count, voxel thickness mm, sub-samples per voxel, position of
    the grid's first edge along that axis in mm, 0 at the T1's voxel 0)."""
    size, spacing, _, _ = _geometry(t1)
    axes = []
    for a in range(3):
        if a == 2 and slice_mm is not None:
            n = max(1, math.ceil(slice_mm / spacing[a] - 1e-9))
            count = max(1, math.ceil(size[a] * spacing[a] / slice_mm - 1e-9))
            edge = (size[a] - 1) * spacing[a] / 2.0 - count * slice_mm / 2.0  # centred on the T1
            axes.append((count, float(slice_mm), n, edge))
        else:  # sitk.BinShrink's grid: size // shrink blocks from the first voxel's edge
            axes.append((int(size[a]) // shrink, shrink * spacing[a], shrink, -spacing[a] / 2.0))
    return axes


def brain_pair(
    angles_deg: Sequence[float] = (4.0, -3.0, 5.0),
    shift_mm: Sequence[float] = (6.0, -4.0, 3.0),
    *,
    slice_mm: float | None = None,
    shrink: int = 1,
    noise: float = 0.0,
    seed: int = 0,
):
    """A multi-modal 3-D pair with a known rigid transform: ``(fixed, moving, true)``.

    * ``true`` = :func:`rigid_transform` ``(angles_deg, shift_mm)`` (centre: the T1 grid's
      centre), mapping fixed physical points to moving physical points (mm). Registering
      ``moving`` to ``fixed`` should find it (compare with :func:`mean_error_mm`).
    * ``fixed`` = :func:`brain_t1`, or with ``shrink > 1`` its ``sitk.BinShrink`` by
      ``shrink`` along each axis (each voxel the mean of a ``shrink``\\ :sup:`3` block; size
      ``size // shrink``, spacing and origin updated by SimpleITK, same physical space).
    * ``moving`` = :func:`brain_contrast2` moved by ``true``: ``moving(true(p)) ~ contrast2(p)``
      for fixed physical points ``p``, i.e. ``moving(q) = contrast2(true^-1(q))``. Its grid
      has the T1's direction and, in-plane (i, j), the fixed grid's voxels (``shrink`` mm).
      Along k: the fixed grid's voxels, or with ``slice_mm`` thick slices of ``slice_mm``
      mm (as clinical T2/FLAIR), ``ceil(extent / slice_mm)`` of them, centred on the T1's
      extent along k (for 3 mm: 63 slices covering exactly the T1's 189 mm; the origin then
      differs from the fixed one by 1 mm along k).

    Each moving voxel integrates its whole box, the slice profile included: ``contrast2 o
    true^-1`` is first sampled (``sitk.Resample``, linear, 0 outside) on a fine grid filling
    every moving voxel with ``shrink x shrink x n`` evenly spaced points (``n`` sub-slices of
    at most 1 mm across a thick slice, *along the moving grid's k axis*, not the template's),
    then averaged over each voxel's points (``sitk.BinShrink``): a box profile of the voxel
    size by the midpoint rule. With the defaults (1 mm, no ``slice_mm``) this is plain
    linear resampling onto the T1's own grid.

    ``noise``: Gaussian noise added to ``moving``, standard deviation ``noise`` times the
    noiseless moving image's maximum, from ``numpy.random.default_rng(seed)`` (also in the
    background). Everything is deterministic given the arguments. Images are float32.
    """
    sitk = _sitk()
    if int(shrink) != shrink or shrink < 1:
        raise ValueError(f"shrink must be a positive integer, got {shrink!r}")
    shrink = int(shrink)
    if slice_mm is not None and not slice_mm > 0:
        raise ValueError(f"slice_mm must be > 0 (mm), got {slice_mm!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")

    t1 = brain_t1()
    true = rigid_transform(angles_deg, shift_mm, center=_center(t1))
    fixed = t1 if shrink == 1 else sitk.BinShrink(t1, [shrink] * 3)

    axes = _moving_grid(t1, shrink, None if slice_mm is None else float(slice_mm))
    _, _, origin, direction = _geometry(t1)
    sub_spacing = np.array([thick / n for _, thick, n, _ in axes])
    first = np.array([edge for *_, edge in axes]) + sub_spacing / 2.0  # along the index axes, mm
    fine = sitk.Resample(
        brain_contrast2(),
        [int(count * n) for count, _, n, _ in axes],
        true.GetInverse(),
        sitk.sitkLinear,
        tuple(map(float, origin + direction @ first)),
        tuple(map(float, sub_spacing)),
        tuple(map(float, direction.ravel())),
        0.0,
        sitk.sitkFloat32,
    )
    factors = [n for _, _, n, _ in axes]
    moving = sitk.BinShrink(fine, factors) if max(factors) > 1 else fine

    if noise > 0:
        arr = sitk.GetArrayFromImage(moving)
        sigma = np.float32(noise * float(arr.max()))
        arr += sigma * np.random.default_rng(seed).standard_normal(arr.shape, dtype=np.float32)
        noisy = sitk.GetImageFromArray(arr)
        noisy.CopyInformation(moving)
        moving = noisy
    return fixed, moving, true


def _affine_map(transform, image):
    """(A, b) with ``transform(p) = A p + b`` (mm), recovered exactly from d + 1 points inside
    ``image``'s grid, or None when the transform is not affine there (checked on the grid's
    corners and other points)."""
    size, spacing, _, direction = _geometry(image)
    d = len(size)
    c = _center(image)
    length = max(0.25 * float(np.min((size - 1) * spacing)), 1.0)
    points = np.vstack([c, c + length * direction.T])  # the centre, then along each index axis
    out = np.array([transform.TransformPoint(tuple(map(float, p))) for p in points])
    a = np.linalg.solve((points[1:] - c), (out[1:] - out[0])).T  # rows: (p_i - c) A^T = T(p_i) - T(c)
    b = out[0] - a @ c
    corners = np.array(np.meshgrid(*[[0.0, s - 1.0] for s in size], indexing="ij")).reshape(d, -1).T
    inner = np.random.default_rng(0).uniform(0.0, 1.0, size=(8, d)) * (size - 1.0)
    probes = _index_to_physical(image, np.vstack([corners, inner]))
    want = np.array([transform.TransformPoint(tuple(map(float, p))) for p in probes])
    if np.abs(probes @ a.T + b - want).max() > _AFFINE_TOLERANCE_MM:
        return None
    return a, b


def _mapped(transform, image, points, selected, sitk):
    """``transform`` at ``points`` (N, d), the physical centres of the ``selected`` voxels of
    ``image``: vectorised through its affine map when it has one, else through SimpleITK's
    dense evaluation on the grid (``TransformToDisplacementField``)."""
    affine = _affine_map(transform, image)
    if affine is not None:
        a, b = affine
        return points @ a.T + b
    field = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        image.GetSize(),
        image.GetOrigin(),
        image.GetSpacing(),
        image.GetDirection(),
    )
    return points + sitk.GetArrayViewFromImage(field)[selected]


def mean_error_mm(found, true, image, mask=None) -> float:
    """The mean registration error in mm: the mean, over voxel centres ``p`` of ``image``
    (physical points, mm), of ``|| found(p) - true(p) ||``.

    ``found``, ``true``: SimpleITK transforms of ``image``'s dimension, both mapping fixed
    physical points to moving physical points (ITK's convention); ``image``: the fixed image
    (its geometry gives the points). ``mask``: which voxels count: None (default) for those
    brighter than :data:`BRAIN_FRACTION` (10 %) of ``image``'s maximum (the brain, for the
    T1 template or any skull-stripped image), else a SimpleITK image or numpy array of
    ``image``'s array shape (``[k, j, i]``) whose nonzero voxels count.

    The points come from ``origin + D (spacing * index)``, vectorised. An affine transform
    (rigid, Euler, versor, similarity, affine, translation, or a ``CompositeTransform`` of
    them) is recovered exactly from its values at d + 1 points and applied to all points at
    once; any other transform (displacement field, B-spline, ...) is evaluated on the grid
    by SimpleITK (``TransformToDisplacementField``). No loop over voxels.
    """
    sitk = _sitk()
    d = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("image must be a scalar image")
    for name, t in (("found", found), ("true", true)):
        if t.GetDimension() != d:
            raise ValueError(f"{name} is a {t.GetDimension()}-D transform, the image is {d}-D")
    arr = sitk.GetArrayViewFromImage(image)
    if mask is None:
        selected = arr > BRAIN_FRACTION * float(arr.max())
    else:
        m = sitk.GetArrayViewFromImage(mask) if isinstance(mask, sitk.Image) else np.asarray(mask)
        if m.shape != arr.shape:
            raise ValueError(f"mask has shape {m.shape}, the image's array {arr.shape}")
        selected = m != 0
    if not selected.any():
        raise ValueError("no voxel selected (empty mask, or an image without a positive maximum)")
    index = np.stack(np.nonzero(selected)[::-1], axis=1)  # (N, d), ITK order (i, j, k)
    points = _index_to_physical(image, index)
    diff = _mapped(found, image, points, selected, sitk) - _mapped(true, image, points, selected, sitk)
    return float(np.linalg.norm(diff, axis=1).mean())
