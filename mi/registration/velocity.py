"""Diffeomorphic deformation: a stationary velocity field integrated by scaling and squaring.

The velocity ``v`` (mm, physical axes) is a cubic B-spline on a control grid, ITK's sum as
the free-form deformation's (:class:`~mi.registration.bspline.ControlGrid`, the same
coefficients, refinement and bending energy). The deformation is its group exponential
``phi = exp(v)``, the flow of ``v`` for unit time, computed as Arsigny et al. (2006) and
voxelmorph, FireANTs and NiftyReg's velocity-field option do: ``u_0 = v / 2**N``, then
``N`` squarings ``u <- u + u o (id + u)`` (``phi_{2t} = phi_t o phi_t``). ``phi`` is
smooth and invertible for a smooth ``v`` (its inverse is ``exp(-v)``), so it cannot fold
in the continuum, whatever the coefficients; the discrete one, on the nodes below, can
still fold where ``v`` varies faster than they resolve.

The squarings run on a :class:`Nodes` grid: a regular lattice over the image's voxels,
about ``NODES_PER_CELL`` (3) nodes per control cell along each axis (at most one per voxel),
the first and last nodes on the first and last voxels' centres. The field is linear
(bi-/trilinear) between the nodes, in the composition and everywhere it is evaluated:
the voxels' displacements during registration, and the saved transform (an ITK
``DisplacementFieldTransform`` on the nodes, the same interpolation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .bspline import ControlGrid

#: Scaling and squaring steps: ``u_0 = v / 2**SQUARINGS`` (voxelmorph's default, 7). At 7, a
#: velocity of 30 mm starts at 0.23 mm, a small part of a node spacing.
SQUARINGS = 7
#: Nodes per control cell along each axis (no more than one per voxel): where the squarings
#: run. Chosen from one-off runs with this constant patched (not a repo command): the 2 mm
#: brain pair of ``bench/bench_deformable.py`` (mean error 0.283, 0.286, 0.287 mm with 2, 3,
#: 4 nodes per cell) and the 60-degree swirl of tests/test_deformable.py (0.77, 0.64, 0.59
#: px); 3 has 0.42x the nodes of 4 in 3-D, where at 4 the squarings took half the time (a
#: registration 28 s against 14 s for the B-spline model).
NODES_PER_CELL = 3


def sample_field(w: Tensor, points: Tensor) -> Tensor:
    """Bi/trilinear values of a field ``w`` (d, *m) at continuous node indices ``points``
    (n, d), (x, y[, z]) -> (n, d); points beyond the nodes take the nearest edge value
    (``grid_sample``'s border padding). Differentiable in both."""
    d = w.shape[0]
    sizes = torch.tensor(list(reversed(w.shape[1:])), dtype=points.dtype, device=points.device)
    norm = 2.0 * points / (sizes - 1.0) - 1.0
    out = F.grid_sample(
        w[None], norm.reshape(1, *([1] * (d - 1)), -1, d), mode="bilinear", padding_mode="border",
        align_corners=True,
    )  # fmt: skip
    return out.reshape(d, -1).T


def exp_field(v: Tensor, steps: int = SQUARINGS) -> Tensor:
    """``exp(v)`` of a stationary velocity field ``v`` (d, *m) in node units (node index
    displacements along (x, y[, z]) at every node, array order): the displacement ``u``
    (d, *m) with ``id + u = exp(v)``, by ``steps`` squarings (scaling and squaring) on the
    nodes, linear between them, the nearest edge value beyond them. Differentiable."""
    d = v.shape[0]
    axes = [torch.arange(n, dtype=v.dtype, device=v.device) for n in v.shape[1:]]
    ids = torch.stack(list(reversed(torch.meshgrid(*axes, indexing="ij"))), -1).reshape(-1, d)
    u = v / 2.0**steps
    for _ in range(steps):
        flat = u.reshape(d, -1).T
        u = u + sample_field(u, ids + flat).T.reshape(u.shape)
    return u


@dataclass(frozen=True)
class Nodes:
    """The nodes of the squarings over a voxel grid of array ``shape``: ``shape`` nodes
    (array order) ``step`` voxels apart along each index axis (x, y[, z]; not a whole
    number in general), node 0 on voxel 0 and the last node on the last voxel."""

    shape: tuple
    step: tuple

    @classmethod
    def over(cls, voxels: tuple, voxel_to_index: Tensor) -> Nodes:
        """About ``NODES_PER_CELL`` nodes per cell of the control grid whose continuous index
        ``voxel_to_index`` ((d+1) x (d+1)) gives at voxel indices of a grid of array shape
        ``voxels`` (whose axes lie along the grid's: ``ControlGrid.field``'s condition),
        at most one per voxel."""
        d = len(voxels)
        cells = voxel_to_index[:d, :d].abs().amax(0)  # control cells per voxel along each index axis
        step, shape = [], []
        for n, c in zip(reversed(voxels), cells.tolist()):
            m = max(2, math.ceil((n - 1) * c * NODES_PER_CELL) + 1)
            m = min(m, n)  # (n >= 2 voxels: MIN_SIZE)
            step.append((n - 1) / (m - 1))
            shape.append(m)
        return cls(tuple(reversed(shape)), tuple(step))

    def to_voxel(self) -> Tensor:
        """(d+1) x (d+1) float64: node indices -> voxel indices (x, y[, z])."""
        d = len(self.step)
        m = torch.eye(d + 1, dtype=torch.float64)
        m[:d, :d] = torch.diag(torch.tensor(self.step, dtype=torch.float64))
        return m


class VelocityLevel:
    """The diffeomorphic model on one pyramid level: the velocity's coefficients (those of a
    :class:`ControlGrid`) -> the displacement (mm) of the level's voxels.

    ``voxel_to_index``: the level's voxel indices -> the grid's continuous indices;
    ``voxel_to_mm``: the level's voxel indices -> physical points; ``shape``: its array shape."""

    def __init__(self, grid: ControlGrid, voxel_to_index: Tensor, voxel_to_mm: Tensor, shape: tuple):
        d = len(shape)
        self.grid, self.shape = grid, tuple(shape)
        self.nodes = Nodes.over(self.shape, voxel_to_index)
        to_voxel = self.nodes.to_voxel()
        self.node_to_index = voxel_to_index @ to_voxel
        self.linear = (voxel_to_mm @ to_voxel)[:d, :d]  # node index displacement -> mm
        self.inverse_linear = torch.linalg.inv(self.linear)
        self.voxel_to_node = torch.linalg.inv(to_voxel)
        self._voxels = None

    def node_field(self, coef: Tensor, sign: float = 1.0) -> Tensor:
        """``exp(sign * v)``'s displacement at the nodes, (d, *nodes), node units."""
        v = self.grid.field(coef, self.node_to_index, self.nodes.shape)  # (*m, d) mm
        w = v @ self.inverse_linear.to(v).T
        return exp_field(sign * w.movedim(-1, 0).contiguous())

    def displacement(self, coef: Tensor, idx: Tensor | None = None) -> Tensor:
        """The displacement (mm, physical axes) of the level's voxels ``idx`` (flat indices;
        None: all of them, in C order): (n, d), differentiable in ``coef``."""
        w = self.node_field(coef)
        if self._voxels is None:  # every voxel's node coordinates, once
            d = len(self.shape)
            flat = torch.arange(math.prod(self.shape), device=coef.device)
            cols = []
            for size in reversed(self.shape):  # x first: the last array axis
                cols.append((flat % size).to(torch.float64))
                flat = flat // size
            m = self.voxel_to_node.to(coef.device)
            self._voxels = (torch.stack(cols, -1) @ m[:d, :d].T).to(coef.dtype)
        pts = self._voxels if idx is None else self._voxels[idx]
        return sample_field(w, pts) @ self.linear.to(w).T


__all__ = ["exp_field", "sample_field", "Nodes", "VelocityLevel", "SQUARINGS", "NODES_PER_CELL"]
