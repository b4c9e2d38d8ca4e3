"""Free-form deformation: ITK's cubic B-spline transform, evaluated in torch (differentiable).

The control grid is ITK's (``SimpleITK.BSplineTransformInitializer`` over the fixed image,
``mesh + 3`` control points per axis, the grid starting one spacing outside the domain), and
the evaluation is ITK's ``BSplineTransform::TransformPoint``: at a physical point ``p`` (mm)
the continuous grid index is ``c = D^-1 (p - origin) / spacing`` per axis, the support
starts at ``floor(c) - 1``, and the displacement is the sum over the 4^d support points of
the tensor-product cubic B-spline weights times their coefficients (mm). A point whose
support leaves the grid is not moved (ITK's "valid region"). So a :class:`ControlGrid`'s
coefficients written with :meth:`ControlGrid.to_sitk` give SimpleITK's transform, which
moves every point by the same displacement (tests: to float32 rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .space import Geometry, _sitk, per_axis


def _bspline3(t: Tensor) -> Tensor:
    """The cubic B-spline at t (any shape): (2/3 - t^2 + |t|^3 / 2) for |t| < 1, (2 - |t|)^3 / 6
    for |t| < 2, 0 beyond."""
    a = t.abs()
    return torch.where(
        a < 1, 2.0 / 3.0 - a * a + 0.5 * a**3, torch.where(a < 2, (2.0 - a).clamp(min=0) ** 3 / 6.0, 0.0)
    )


@dataclass(frozen=True)
class ControlGrid:
    """ITK's B-spline control grid: ``size`` control points per index axis (x, y[, z]),
    ``origin`` (mm), ``spacing`` (mm), ``direction`` (d x d, row-major). Coefficients are
    tensors (d, *reversed(size)): one displacement component (mm, physical axes) per
    control point, in array order like an image of the grid."""

    size: tuple
    origin: tuple
    spacing: tuple
    direction: tuple

    @property
    def dim(self) -> int:
        return len(self.size)

    @classmethod
    def over(cls, geom: Geometry, grid_spacing) -> ControlGrid:
        """The grid SimpleITK's ``BSplineTransformInitializer`` puts over an image of geometry
        ``geom``, with a mesh of ``ceil(extent / grid_spacing)`` cells along each image axis
        (at least 1; extent (n - 1) voxels): control points about ``grid_spacing`` mm apart
        (one number, or one per image axis x, y[, z]; ITK's domain is about a voxel longer
        than that extent, so the spacing may exceed it by that much over the cells).

        ITK orders the grid's axes by the physical axes they run along, not as the image's:
        for a direction that permutes them (a 90 degree rotation, a sagittal volume) each
        grid axis takes the mesh of the image axis it runs along (a first grid of one cell
        tells which: the largest |cos| between the two directions' columns)."""
        sitk = _sitk()
        d = geom.dim
        spacing = per_axis("grid_spacing", grid_spacing, d)
        mesh = [max(1, math.ceil((n - 1) * s / g)) for n, s, g in zip(geom.size, geom.spacing, spacing)]
        img = geom.to_sitk(sitk.Image([int(n) for n in geom.size], sitk.sitkUInt8))
        one = cls.from_fixed_parameters(
            sitk.BSplineTransformInitializer(img, [1] * d, 3).GetFixedParameters(), d
        )
        along = np.abs(np.reshape(one.direction, (d, d)).T @ np.reshape(geom.direction, (d, d))).argmax(1)
        t = sitk.BSplineTransformInitializer(img, [mesh[int(i)] for i in along], 3)
        return cls.from_fixed_parameters(t.GetFixedParameters(), d)

    @classmethod
    def from_fixed_parameters(cls, fixed, d: int) -> ControlGrid:
        f = [float(v) for v in fixed]
        return cls(
            tuple(int(round(v)) for v in f[:d]),
            tuple(f[d : 2 * d]),
            tuple(f[2 * d : 3 * d]),
            tuple(f[3 * d :]),
        )

    def zeros(self, dtype=torch.float64, device=None) -> Tensor:
        return torch.zeros(self.dim, *reversed(self.size), dtype=dtype, device=device)

    def continuous_index(self, points: Tensor) -> Tensor:
        """Physical points (n, d) -> continuous grid indices (n, d), (x, y[, z])."""
        d = self.dim
        direction = torch.tensor(self.direction, dtype=points.dtype, device=points.device).reshape(d, d)
        origin = torch.tensor(self.origin, dtype=points.dtype, device=points.device)
        spacing = torch.tensor(self.spacing, dtype=points.dtype, device=points.device)
        # D^-1 (p - o) as rows; the inverse itself, not D^T: a direction read from a file is
        # orthonormal only to its float32 rounding, and ITK inverts it
        return ((points - origin) @ torch.linalg.inv(direction).T) / spacing

    def displacement(self, coef: Tensor, points: Tensor) -> Tensor:
        """The displacement (n, d) in mm at physical points (n, d): ITK's B-spline sum over
        the 4^d support points; 0 where the support leaves the grid. Differentiable with
        respect to ``coef`` (d, *grid) and ``points``. The 4 weights per axis are computed
        once and combined by broadcasting: one gather of (d, n, 4^d) coefficients."""
        d = self.dim
        c = self.continuous_index(points)
        start = torch.floor(c.detach()) - 1.0
        sizes = torch.tensor(self.size, device=points.device)
        valid = ((start >= 0) & (start + 3 <= (sizes - 1).to(start))).all(-1)
        start = torch.where(valid[:, None], start, torch.zeros_like(start)).long()
        offsets = torch.arange(4, device=points.device)
        stride, lin, weight = 1, None, None
        for a in range(d):  # x fastest, as the array's last axis
            idx = start[:, a : a + 1] + offsets  # (n, 4)
            w = _bspline3(c[:, a : a + 1] - idx.to(c))
            if lin is None:
                lin, weight = idx * stride, w
            else:  # (n, 4^a) x (n, 4) -> (n, 4^(a+1)), this axis varying slowest
                lin = (lin[:, None, :] + (idx * stride)[:, :, None]).reshape(len(c), -1)
                weight = (weight[:, None, :] * w[:, :, None]).reshape(len(c), -1)
            stride *= self.size[a]
        vals = coef.reshape(d, -1)[:, lin]  # (d, n, 4^d)
        out = (vals * (weight * valid[:, None]).to(coef.dtype)).sum(-1)
        return out.T

    def physical_to_index(self) -> Tensor:
        """(d+1) x (d+1) float64: physical points (mm) -> continuous grid indices, the affine
        map of :meth:`continuous_index`."""
        d = self.dim
        inv = torch.linalg.inv(torch.tensor(self.direction, dtype=torch.float64).reshape(d, d))
        m = torch.eye(d + 1, dtype=torch.float64)
        m[:d, :d] = inv / torch.tensor(self.spacing, dtype=torch.float64)[:, None]
        m[:d, d] = -m[:d, :d] @ torch.tensor(self.origin, dtype=torch.float64)
        return m

    def field(self, coef: Tensor, voxel_to_index: Tensor, shape) -> Tensor:
        """The displacement (*shape, d) in mm at every voxel of a grid of array ``shape`` whose
        axes lie along this grid's (the image the grid was made ``over``, or a pyramid level
        of it): the sum of :meth:`displacement` at the voxel centres, as d small matrix
        products instead of a gather of 4^d coefficients per voxel (and, backwards, a
        scatter). The voxel index along one axis alone fixes the grid's continuous index
        along one grid axis (ITK's initialiser may order the grid's axes differently from
        the image's), so the weights are one (voxels x control points) matrix per axis, 4
        non-zeros a row, zero rows where the support leaves the grid. Differentiable with
        respect to ``coef``; the weights in float64, the products in ``coef``'s dtype.

        ``voxel_to_index``: (d+1) x (d+1), voxel indices (x, y[, z]) -> continuous grid
        indices; its linear part must have one non-zero per row and column, up to 1e-6 of
        the largest: ITK keeps the grid's direction to float32 rounding (5e-8 off axis in
        the tests), and that rest is dropped, at most 1e-6 x the voxels along an axis in grid
        indices."""
        d = self.dim
        lin = voxel_to_index[:d, :d]
        axis = lin.abs().argmax(dim=1)  # grid axis a lies along voxel axis axis[a]
        rest = lin.clone()
        rest[torch.arange(d), axis] = 0.0
        if sorted(axis.tolist()) != list(range(d)) or rest.abs().max() > 1e-6 * lin.abs().max():
            raise ValueError("field: the voxel grid's axes must lie along the control grid's")
        out = coef
        for a in range(d):  # grid axis a (x first) is coef's dim d - a (dim 0: the component)
            b, size = int(axis[a]), self.size[a]
            c = lin[a, b] * torch.arange(shape[d - 1 - b], dtype=torch.float64) + voxel_to_index[a, d]
            start = torch.floor(c) - 1.0
            valid = (start >= 0) & (start + 3 <= size - 1)
            cols = start.long().clamp(0, size - 4)[:, None] + torch.arange(4)
            basis = torch.zeros(len(c), size, dtype=torch.float64)
            basis.scatter_(1, cols, _bspline3(c[:, None] - cols.double()) * valid[:, None])
            out = torch.movedim(torch.tensordot(out, basis.to(coef), dims=([d - a], [1])), -1, d - a)
        # dim d - a now runs along voxel axis axis[a]; the array order wants voxel axis d - j at dim j
        grid_axis = {int(b): a for a, b in enumerate(axis)}
        return out.permute(*[d - grid_axis[d - j] for j in range(1, d + 1)], 0)

    def refined(self, coef: Tensor) -> tuple[ControlGrid, Tensor]:
        """(the grid with twice the mesh cells per axis, half the spacing; the coefficients on
        it that give the same displacement at every point of the valid region). The cubic
        B-spline's two-scale relation along each axis, as ITK's
        ``BSplineTransformParametersAdaptor``: the fine point at a coarse control point gets
        (c[i-1] + 6 c[i] + c[i+1]) / 8, the one half-way to the next (c[i] + c[i+1]) / 2. The
        fine grid is the one ``over`` makes for twice the mesh (mesh + 3 points, starting one
        fine spacing outside the domain)."""
        d = self.dim
        direction = np.asarray(self.direction, dtype=np.float64).reshape(d, d)
        half = np.asarray(self.spacing) / 2.0
        grid = ControlGrid(
            tuple(2 * n - 3 for n in self.size),
            tuple(float(v) for v in np.asarray(self.origin) + direction @ half),
            tuple(float(v) for v in half),
            self.direction,
        )
        for axis in range(1, d + 1):
            c = coef.movedim(axis, 0)
            fine = c.new_empty((2 * c.shape[0] - 3, *c.shape[1:]))
            fine[0::2] = (c[:-1] + c[1:]) / 2.0
            fine[1::2] = (c[:-2] + 6.0 * c[1:-1] + c[2:]) / 8.0
            coef = fine.movedim(0, axis)
        return grid, coef

    def to_sitk(self, coef: Tensor):
        """A ``SimpleITK.BSplineTransform`` with this grid and these coefficients."""
        sitk = _sitk()
        t = sitk.BSplineTransform(self.dim, 3)
        t.SetFixedParameters([*map(float, self.size), *self.origin, *self.spacing, *self.direction])
        t.SetParameters(coef.detach().double().cpu().reshape(-1).tolist())
        return t

    def bending_energy(self, coef: Tensor) -> Tensor:
        """A discrete, dimensionless bending energy of the deformation: the mean over control
        points and components of the squared second differences of the coefficients along
        every pair of axes, divided by the control spacing (so a second difference of one
        spacing's length counts 1), summed over the pairs (the off-diagonal ones twice, as in
        the thin-plate energy). 0 for any affine deformation."""
        d = self.dim
        total = coef.new_zeros(())
        sp = list(reversed(self.spacing))  # array order
        for i in range(d):
            for j in range(i, d):
                ai, aj = 1 + i, 1 + j
                if i == j:
                    diff = coef.diff(n=2, dim=ai) / sp[i]
                    total = total + (diff**2).mean()
                else:
                    diff = coef.diff(dim=ai).diff(dim=aj) / math.sqrt(sp[i] * sp[j])
                    total = total + 2.0 * (diff**2).mean()
        return total


def random_deformation(image, grid_spacing: float, amplitude: float, seed: int = 0):
    """A known smooth deformation for tests and benchmarks: (``BSplineTransform`` on a grid of
    ``grid_spacing`` mm over ``image``, coefficients ~ N(0, amplitude mm) per component,
    seeded; a function ``apply(source)`` that resamples a SimpleITK image on ``image``'s grid
    so that ``apply(source)(T(p)) ~ source(p)``: through the inverse of T's dense field,
    inverted numerically by SimpleITK's ``InvertDisplacementField``, linear, 0 outside)."""
    from .space import as_image

    sitk = _sitk()
    _, g = as_image("image", image)
    grid = ControlGrid.over(g, grid_spacing)
    gen = torch.Generator().manual_seed(seed)
    coef = torch.randn(grid.dim, *reversed(grid.size), generator=gen, dtype=torch.float64) * amplitude
    true = grid.to_sitk(coef)
    geometry = (image.GetSize(), image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    field = sitk.TransformToDisplacementField(true, sitk.sitkVectorFloat64, *geometry)
    inverse = sitk.InvertDisplacementField(
        field, maximumNumberOfIterations=50, meanErrorToleranceThreshold=1e-5
    )
    warp = sitk.DisplacementFieldTransform(inverse)

    def apply(source):
        return sitk.Resample(source, image, warp, sitk.sitkLinear, 0.0)

    return true, apply
