"""The diffeomorphic model (mi.registration.velocity): scaling and squaring against the matrix
exponential of a linear velocity, a constant velocity's exact translation, on grids with
anisotropic voxels and rotated directions."""

import pytest
import torch
from test_deformable import GRIDS as SIZED

from mi.registration.bspline import ControlGrid
from mi.registration.space import Geometry
from mi.registration.velocity import SQUARINGS, VelocityLevel, exp_field, sample_field

#: test_deformable's grids (a 2-D one whose rotated direction makes ITK's initialiser swap the
#: control grid's axes, and a 3-D one), shape in array order: (shape, spacing, origin,
#: direction, grid spacing mm).
GRIDS = [(tuple(reversed(size)), *rest) for size, *rest in SIZED]


def _setup(shape, spacing, origin, direction, grid_mm):
    pytest.importorskip("SimpleITK")
    g = Geometry(shape, spacing, origin, direction)
    d = g.dim
    grid = ControlGrid.over(g, grid_mm)
    axes = [torch.arange(n, dtype=torch.float64) for n in reversed(grid.size)]
    idx = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).flip(-1)  # (x, y[, z]) per point
    rot = torch.tensor(grid.direction, dtype=torch.float64).reshape(d, d)
    control = idx * torch.tensor(grid.spacing, dtype=torch.float64) @ rot.T + torch.tensor(grid.origin)
    to_phys = g.index_to_physical()
    level = VelocityLevel(grid, grid.physical_to_index() @ to_phys, to_phys, g.shape)
    voxels = (
        torch.stack(
            torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in g.shape], indexing="ij"), -1
        )
        .flip(-1)
        .reshape(-1, d)
    )
    return g, control, level, voxels, voxels @ to_phys[:d, :d].T + to_phys[:d, d]


@pytest.mark.parametrize("shape, spacing, origin, direction, grid_mm", GRIDS)
def test_a_linear_velocity_gives_its_matrix_exponential(shape, spacing, origin, direction, grid_mm):
    """v(p) = M (p - c) (cubic B-splines reproduce it: coefficients M (control point - c)) flows
    to exp(v)(p) = c + expm(M) (p - c), the float64 matrix exponential (torch.linalg.matrix_exp):
    the voxels' displacements, in mm, where their flow stays within the nodes (the middle
    40 % along each axis: beyond the nodes the field is held at its edge value). Scaling and
    squaring's error halves with each further squaring (its first step is first order)."""
    g, control, level, voxels, p = _setup(shape, spacing, origin, direction, grid_mm)
    d = g.dim
    m = 0.15 * torch.randn(d, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = g.center()
    coef = ((control - c) @ m.T).movedim(-1, 0).contiguous()
    want = (p - c) @ (torch.linalg.matrix_exp(m) - torch.eye(d, dtype=torch.float64)).T
    sizes = torch.tensor(g.size, dtype=torch.float64)
    inner = ((voxels > 0.3 * (sizes - 1)) & (voxels < 0.7 * (sizes - 1))).all(-1)
    assert want[inner].norm(dim=-1).max() > 1.5  # mm: displacements of a few voxels
    err = (level.displacement(coef) - want).norm(dim=-1)[inner].max().item()
    # measured 7.1e-3 mm (2-D, 13 mm at most over the image) and 1.3e-3 (3-D) with 7 squarings
    assert err < {2: 0.012, 3: 0.0025}[d]
    # with 9: 1.8e-3 and 3.9e-4 (5: 2.8e-2 and 5.2e-3)
    w = level.grid.field(coef, level.node_to_index, level.nodes.shape) @ level.inverse_linear.T
    finer = sample_field(exp_field(w.movedim(-1, 0).contiguous(), SQUARINGS + 2), level._voxels)
    err9 = ((finer @ level.linear.T) - want).norm(dim=-1)[inner].max().item()
    assert err9 < err / 3.0
    # the result keeps the same field in mm on the fixed image's nodes (float64), and its inverse
    from mi.registration.deformable import DeformableResult, _diffeomorphic_result

    eye = torch.eye(d + 1, dtype=torch.float64)
    r = DeformableResult(eye, level.grid, coef, None, [], 0.0, 0.0, fixed_geometry=g, moving_geometry=g)
    r = _diffeomorphic_result(r, level, coef)
    kept = (r.displacement(p) - want).norm(dim=-1)[inner].max().item()
    assert kept < 1.01 * err
    back = (r.inverse_transform_points(r.transform_points(p[inner])) - p[inner]).norm(dim=-1).max().item()
    # measured 0.011 mm (2-D) and 2.7e-3 (3-D): 1.5x and 2x the exponential's error
    assert back < 2.5 * err


@pytest.mark.parametrize("shape, spacing, origin, direction, grid_mm", GRIDS)
def test_a_constant_velocity_translates_every_voxel(shape, spacing, origin, direction, grid_mm):
    """A constant velocity (mm, physical axes) moves every voxel by itself, exactly: the
    conversions to node units and back, whatever the voxels' size and direction."""
    g, control, level, _, _ = _setup(shape, spacing, origin, direction, grid_mm)
    d = g.dim
    shift = torch.tensor([2.5, -1.25, 0.75][:d], dtype=torch.float64)
    coef = shift.reshape(d, *([1] * d)).expand(d, *control.shape[:-1]).contiguous()
    u = level.displacement(coef)
    assert (u - shift).abs().max() < 1e-12
    # and a subset of the voxels, by flat index
    idx = torch.tensor([0, 7, u.shape[0] - 1])
    assert (level.displacement(coef, idx) - shift).abs().max() < 1e-12


def test_nodes_span_the_voxels():
    """The nodes start on the first voxel and end on the last, about 3 per control cell, at
    most one per voxel."""
    g, _, level, voxels, _ = _setup(*GRIDS[1])
    to_voxel = level.nodes.to_voxel()
    last = torch.tensor([n - 1 for n in reversed(level.nodes.shape)] + [1.0], dtype=torch.float64)
    assert torch.allclose(
        to_voxel @ last, torch.tensor([*(n - 1.0 for n in g.size), 1.0], dtype=torch.float64)
    )
    assert all(1.0 <= s for s in level.nodes.step)
    cells = [n * s / gs for n, s, gs in zip(g.size, g.spacing, level.grid.spacing)]
    assert all(n <= 3 * c + 3 for n, c in zip(reversed(level.nodes.shape), cells))


def test_the_kept_field_is_evaluated_as_itk_evaluates_it():
    """A diffeomorphic result's field on its nodes, at points inside, near and beyond them (a
    rotated grid of unequal spacing), equals SimpleITK's DisplacementFieldTransform of the
    same image: bilinear inside, the edge values up to half a node beyond, 0 further out."""
    sitk = pytest.importorskip("SimpleITK")
    import numpy as np

    from mi.registration.deformable import _field_at

    g = Geometry((5, 6), (2.0, 3.0), (1.0, -2.0), (0.6, -0.8, 0.8, 0.6))
    u = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = sitk.DisplacementFieldTransform(
        g.to_sitk(sitk.GetImageFromArray(u.movedim(0, -1).numpy(), isVector=True))
    )
    m = g.index_to_physical().numpy()
    pts = np.random.default_rng(0).uniform(-1.5, 7, size=(2000, 2)) @ m[:2, :2].T + m[:2, 2]
    ours = _field_at(u, g, torch.from_numpy(pts)).numpy()
    theirs = np.array([np.array(t.TransformPoint(tuple(p))) - p for p in pts])
    assert 0.3 < (np.abs(theirs).sum(1) == 0).mean() < 0.8  # (points beyond the nodes too)
    assert np.abs(ours - theirs).max() < 1e-12  # measured 5e-15
