"""Rigid and affine transforms in physical space, and ITK transform files.

A transform is a (d+1) x (d+1) float64 matrix ``T`` that maps fixed physical points to
moving physical points (mm; ITK's convention, see :mod:`mi.registration.space`).
**Rigid**: ``T = [[R, c - R c + t], [0, 1]]``, a rotation ``R`` about the fixed image's
physical centre ``c`` and a translation ``t`` (mm, the displacement of that centre). In 2-D
a positive angle turns the x axis towards the y axis (SimpleITK's Euler2DTransform has the
same sign); in 3-D the rotation is a rotation vector (axis times angle) in (x, y, z).
**Affine**: any invertible linear part in place of ``R``.

Files: :func:`write_transform` writes an ITK transform (``.tfm``/``.txt`` text, ``.mat``,
``.h5``) through SimpleITK, an ``AffineTransform`` that SimpleITK, ITK and ANTs read;
:func:`read_transform` reads any single affine-like ITK transform (Euler, versor,
similarity, affine, a composite of them) back into a matrix.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .space import _sitk

TRANSFORMS = ("rigid", "affine")


def skew(w: Tensor) -> Tensor:
    """Rotation generator: 2-D angle (1,) -> 2x2; 3-D rotation vector (3,) -> 3x3."""
    z = torch.zeros((), dtype=w.dtype)
    if w.numel() == 1:
        return torch.stack([torch.stack([z, -w[0]]), torch.stack([w[0], z])])
    x, y, k = w
    return torch.stack([torch.stack([z, -k, y]), torch.stack([k, z, -x]), torch.stack([-y, x, z])])


def rigid_matrix(angles_rad, shift, center) -> Tensor:
    """Rotation (2-D angle or 3-D rotation vector, radians) about ``center`` + ``shift``."""
    c = torch.as_tensor(center, dtype=torch.float64)
    r = torch.linalg.matrix_exp(skew(torch.as_tensor(angles_rad, dtype=torch.float64).reshape(-1)))
    d = c.numel()
    a = torch.eye(d + 1, dtype=torch.float64)
    a[:d, :d] = r
    a[:d, d] = c - r @ c + torch.as_tensor(shift, dtype=torch.float64)
    return a


class Transform(nn.Module):
    """Parameters of a rigid or affine transform about the fixed image's physical centre.

    Scaled so that one unit of every parameter moves the image by about one mm (one voxel
    for images without geometry): rotation angle = parameter / r and linear part = L0 +
    parameters / r, with r the half diagonal of the fixed image; translation in mm. Adam's
    step (``lr``) is then a displacement in mm for all of them. ``forward()`` -> T.
    """

    def __init__(self, kind: str, center: Tensor, radius: float, initial: Tensor):
        super().__init__()
        d = center.numel()
        self.kind, self.d, self.radius = kind, d, radius
        self.register_buffer("center", center)
        self.register_buffer("linear0", initial[:d, :d].clone())
        t0 = initial[:d, d] - center + initial[:d, :d] @ center
        self.translation = nn.Parameter(t0.clone())
        n = (1 if d == 2 else 3) if kind == "rigid" else d * d
        self.linear = nn.Parameter(torch.zeros(n, dtype=torch.float64))

    def forward(self) -> Tensor:
        d, c = self.d, self.center
        if self.kind == "rigid":
            lin = torch.linalg.matrix_exp(skew(self.linear / self.radius)) @ self.linear0
        else:
            lin = self.linear0 + self.linear.view(d, d) / self.radius
        top = torch.cat([lin, (c - lin @ c + self.translation)[:, None]], dim=1)
        bottom = torch.zeros(1, d + 1, dtype=top.dtype)
        bottom[0, d] = 1.0
        return torch.cat([top, bottom], dim=0)


def check_matrix(m, d: int, kind: str, name: str = "initial") -> Tensor:
    """A (d+1)x(d+1) affine matrix, invertible (for ``kind="rigid"``: a rotation)."""
    if not isinstance(m, (Tensor, np.ndarray, list, tuple)):
        raise TypeError(f"{name} must be a (d+1)x(d+1) matrix, got {type(m).__name__}")
    m = torch.as_tensor(
        np.asarray(m, dtype=np.float64) if not isinstance(m, Tensor) else m, dtype=torch.float64
    )
    m = m.detach().cpu()
    if m.shape != (d + 1, d + 1):
        raise ValueError(
            f"{name} must be a {d + 1}x{d + 1} matrix for {d}-D images, got shape {tuple(m.shape)}"
        )
    if not torch.isfinite(m).all():
        raise ValueError(f"{name} contains NaN or Inf")
    last = torch.zeros(d + 1, dtype=torch.float64)
    last[d] = 1.0
    if not torch.allclose(m[d], last):
        raise ValueError(f"{name}'s last row must be {last.tolist()}, got {m[d].tolist()}")
    s = torch.linalg.svdvals(m[:d, :d])
    if s[-1] <= 1e-8 * max(s[0].item(), 1.0):
        raise ValueError(f"{name} is not invertible (its linear part is singular)")
    if kind == "rigid":
        lin = m[:d, :d]
        err = (lin.T @ lin - torch.eye(d, dtype=torch.float64)).abs().max().item()
        if err > 1e-4 or torch.linalg.det(lin) < 0:
            raise ValueError(
                f"transform='rigid' needs {name} whose linear part is a rotation (orthonormal, "
                "determinant +1); use transform='affine' for a general one"
            )
    return m


def _is_sitk_transform(t) -> bool:
    return type(t).__module__.startswith("SimpleITK") and hasattr(t, "TransformPoint")


def _deforming_parts(transform) -> list:
    """The names of the deformable transforms in ``transform`` (a composite's members too):
    B-spline, displacement-field and velocity-field transforms."""
    name = transform.GetName()
    if name.startswith("CompositeTransform"):
        c = _sitk().CompositeTransform(transform)
        return [n for i in range(c.GetNumberOfTransforms()) for n in _deforming_parts(c.GetNthTransform(i))]
    return (
        [name]
        if any(k in name for k in ("BSpline", "DisplacementField", "Velocity", "Diffeomorphic"))
        else []
    )


def from_sitk(transform, d: int) -> Tensor:
    """The (d+1)x(d+1) matrix of a SimpleITK transform that is affine (Euler, versor,
    similarity, affine, translation, a composite of them): recovered exactly from the
    images of the origin and the unit vectors, then checked on other points."""
    if transform.GetDimension() != d:
        raise ValueError(f"the transform is {transform.GetDimension()}-D, the images {d}-D")
    deforming = _deforming_parts(transform)
    if deforming:  # (their deformation may not reach the probe points below)
        raise ValueError(
            f"the transform holds {', '.join(deforming)}, not affine; only rigid and affine transforms "
            "are accepted"
        )
    pts = np.vstack([np.zeros(d), np.eye(d)])
    out = np.array([transform.TransformPoint(tuple(map(float, p))) for p in pts])
    m = np.eye(d + 1)
    m[:d, d] = out[0]
    m[:d, :d] = (out[1:] - out[0]).T
    probe = np.random.default_rng(0).uniform(-100, 100, size=(4, d))
    want = np.array([transform.TransformPoint(tuple(map(float, p))) for p in probe])
    if not np.allclose(probe @ m[:d, :d].T + m[:d, d], want, atol=1e-6 * (1 + np.abs(want).max())):
        raise ValueError(
            f"the transform ({transform.GetName()}) is not affine; only rigid and affine transforms "
            "are accepted"
        )
    return torch.from_numpy(m)


def read_transform(path, d: int) -> Tensor:
    """An ITK transform file (anything ``SimpleITK.ReadTransform`` reads) -> its matrix."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"no such transform file: {path} (initial= takes a transform file, a matrix, a "
            "SimpleITK transform, a registration result, or 'geometry' or 'moments', in lower case)"
        )
    sitk = _sitk()
    try:
        t = sitk.ReadTransform(str(path))
    except RuntimeError as e:
        raise ValueError(f"cannot read the transform {path}: {str(e).strip().splitlines()[-1]}") from None
    return from_sitk(t, d)


def as_matrix(initial, d: int, kind: str) -> Tensor:
    """``initial=`` of :func:`mi.register`: None (identity), a (d+1)x(d+1) matrix, a SimpleITK
    transform or a transform file -> the physical matrix."""
    if initial is None:
        return torch.eye(d + 1, dtype=torch.float64)
    if isinstance(initial, (str, Path)):
        initial = read_transform(initial, d)
    elif _is_sitk_transform(initial):
        initial = from_sitk(initial, d)
    return check_matrix(initial, d, kind)


def to_sitk(matrix: Tensor, center=None):
    """A ``SimpleITK.AffineTransform`` equal to ``matrix`` (fixed -> moving physical), with
    its centre of rotation at ``center`` (default 0; the map is the same either way)."""
    sitk = _sitk()
    m = torch.as_tensor(matrix, dtype=torch.float64).cpu().numpy()
    d = m.shape[0] - 1
    c = np.zeros(d) if center is None else np.asarray(center, dtype=np.float64)
    t = sitk.AffineTransform(d)
    t.SetCenter(tuple(map(float, c)))
    t.SetMatrix(tuple(map(float, m[:d, :d].ravel())))
    t.SetTranslation(tuple(map(float, m[:d, d] - c + m[:d, :d] @ c)))
    return t


#: The transform file suffixes ITK writes (text, MATLAB binary, HDF5).
TRANSFORM_SUFFIXES = (".tfm", ".txt", ".mat", ".h5", ".hdf5", ".hdf")


def save_sitk_transform(transform, path) -> Path:
    """Write a SimpleITK transform to ``path``, whose suffix picks the format
    (``TRANSFORM_SUFFIXES``, lower case); ValueError for another suffix, FileNotFoundError
    for a missing folder, OSError when ITK cannot write the file. Returns the path."""
    path = Path(path)
    if path.suffix not in TRANSFORM_SUFFIXES:
        suffixes = ", ".join(TRANSFORM_SUFFIXES)
        raise ValueError(f"cannot write a transform to {str(path)!r}: the suffix must be one of {suffixes}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write the transform {str(path)!r}: no folder {str(path.parent)!r}")
    try:
        _sitk().WriteTransform(transform, str(path))
    except RuntimeError as e:
        raise OSError(
            f"cannot write the transform {str(path)!r}: {str(e).strip().splitlines()[-1]}"
        ) from None
    return path


def write_transform(path, matrix: Tensor, center=None) -> Path:
    """Write ``matrix`` as an ITK transform file (:func:`to_sitk`); the format follows the
    suffix (``.tfm``/``.txt`` text, ``.mat`` binary, ``.h5`` HDF5: ``save_sitk_transform``)."""
    return save_sitk_transform(to_sitk(matrix, center), path)


def rotation_part(matrix: Tensor) -> Tensor:
    """The nearest rotation (polar factor) of a matrix's linear part."""
    d = matrix.shape[0] - 1
    u, _, vh = torch.linalg.svd(matrix[:d, :d])
    return u @ vh


def angle_deg(matrix: Tensor) -> float:
    """2-D: the signed rotation angle in degrees (x towards y); 3-D: the total angle."""
    r = rotation_part(matrix)
    if r.shape[0] == 2:
        return math.degrees(math.atan2(r[1, 0].item(), r[0, 0].item()))
    return math.degrees(math.acos(max(-1.0, min(1.0, (r.trace().item() - 1.0) / 2.0))))
