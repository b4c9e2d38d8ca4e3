"""Deformable registration: a B-spline free-form deformation or a diffeomorphism, after an
affine stage.

The transform maps a fixed physical point ``p`` (mm) to the moving physical point
``T(p) = A (p + u(p))``: first the deformation ``u``, then the affine ``A`` of a previous
:func:`mi.registration.register` (or identity). ``u`` is ITK's cubic B-spline on a control
grid over the fixed image (:class:`~mi.registration.bspline.ControlGrid`;
``transform="bspline"``), or the displacement of ``exp(v)``, the diffeomorphism that a
stationary velocity ``v`` on such a grid generates (:mod:`~mi.registration.velocity`;
``transform="diffeomorphic"``). That is ITK's ``CompositeTransform([A, B])`` (the last
transform added is applied first), ``B`` a ``BSplineTransform`` or a
``DisplacementFieldTransform``, which :meth:`DeformableResult.save_transform` writes and
SimpleITK applies to the same points.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._warn import warn
from .bspline import ControlGrid
from .optim import (
    DIVERGED,
    FINAL_STEP_DENSE,
    FINAL_STEP_SAMPLED,
    WINSORIZE,
    _check_iterations,
    _check_levels,
    _check_positive,
    _check_sampling,
    _normalized_points,
    _Sampler,
    _setup,
    _step_size,
    check_finite_step,
    check_level_sizes,
    check_loss_value,
    check_lr,
    check_overlap,
    constant_images,
    initial_transform,
    read_pair,
    shrink_factors,
)
from .space import (
    Geometry,
    _sitk,
    extent,
    mask_for,
    overlap_weight,
    per_axis,
    sample_points,
    to_normalized,
)
from .transforms import save_sitk_transform, to_sitk
from .velocity import VelocityLevel

#: The deformation models of :func:`register_deformable`.
DEFORMABLE = ("bspline", "diffeomorphic")
#: Fixed voxels whose displacement is evaluated at once when warping a whole image.
CHUNK = 2**16


@dataclass
class DeformableResult:
    """What :func:`register_deformable` found: ``T(p) = affine (p + u(p))``, fixed physical ->
    moving physical (mm).

    Attributes:
        affine: (d+1, d+1) float64, the affine stage (fixed physical -> moving physical).
        grid: the control grid; coef: its coefficients (d, *grid), mm, physical axes.
        warped: the moving image as given (not winsorized) resampled onto the fixed grid
            (bilinear, zero outside, as ``SimpleITK.Resample`` with the saved transform).
        overlap: the fixed voxels' weights in the scores (fixed shape): the affine stage's
            overlap (1 where it maps a voxel into the moving image, fading to 1/2 over the
            half voxel beyond its edge voxels' centres, 0 further out) times the moving mask
            at the deformed points. The deformation does not move a voxel out of the
            comparison: one it maps out of the moving image is compared against 0, in the
            loss and the scores.
        loss_history, mi_before (affine stage only), mi_after (Studholme NMI, 32 bins,
        B-spline window, over ``overlap`` times the fixed mask, of the images as the loss saw
        them: ``winsorize``), seconds.
    """

    affine: Tensor
    grid: ControlGrid
    coef: Tensor
    warped: Tensor
    loss_history: list
    mi_before: float
    mi_after: float
    seconds: float = 0.0
    fixed_geometry: Geometry | None = field(default=None, repr=False)
    moving_geometry: Geometry | None = field(default=None, repr=False)
    overlap: Tensor | None = field(default=None, repr=False)
    transform = "bspline"

    @property
    def dim(self) -> int:
        return self.affine.shape[0] - 1

    @property
    def physical(self) -> Tensor:
        """The affine stage (what ``mi register`` writes as its matrix)."""
        return self.affine

    @property
    def fixed_shape(self) -> tuple:
        return self.fixed_geometry.shape

    def warped_image(self):
        """:attr:`warped` as a SimpleITK image with the fixed image's geometry."""
        img = _sitk().GetImageFromArray(self.warped.detach().cpu().reshape(self.fixed_shape).numpy())
        return self.fixed_geometry.to_sitk(img)

    def displacement(self, points) -> Tensor:
        """u at fixed physical points (..., d) -> (..., d), mm (the deformation, before the affine)."""
        p = torch.as_tensor(points, dtype=torch.float64)
        return self.grid.displacement(self.coef.double().cpu(), p.reshape(-1, p.shape[-1])).reshape(p.shape)

    def transform_points(self, points) -> Tensor:
        """Fixed physical points (..., d) -> moving physical points: ``A (p + u(p))``."""
        p = torch.as_tensor(points, dtype=torch.float64)
        q = p + self.displacement(p)
        d = p.shape[-1]
        return q @ self.affine[:d, :d].T + self.affine[:d, d]

    def displacement_field(self) -> Tensor:
        """u on the fixed grid: (d, *fixed shape) float64, mm, physical axes."""
        return self._fixed_field(torch.float64, "cpu").T.reshape(self.dim, *self.fixed_shape)

    def _fixed_field(self, dtype, device) -> Tensor:
        """u at the fixed voxels, C order: (n, d), mm."""
        coef = self.coef.to(dtype=dtype, device=device)
        return _on_grid(self.grid, coef, self.fixed_geometry).reshape(-1, self.dim)

    def jacobian_determinant(self) -> Tensor:
        """det(I + du/dp) of the deformation on the fixed grid (*fixed shape): central differences
        (one-sided at the borders) along the index axes, mapped to physical derivatives by
        the grid's (D diag(spacing))^-1. Values <= 0 are folding."""
        g = self.fixed_geometry
        d = g.dim
        u = self.displacement_field()  # (d, *shape), array order of the spatial axes
        # du_c / d index axis a, for a in (x, y[, z]): torch.gradient over the array axes, reversed
        grads = [torch.gradient(u[c], dim=tuple(range(d))) for c in range(d)]
        jac_index = torch.stack([torch.stack(list(reversed(gr)), -1) for gr in grads], -2)  # (..., c, a)
        to_phys = torch.linalg.inv(g.index_to_physical()[:d, :d])  # d index / d p
        jac = jac_index @ to_phys + torch.eye(d, dtype=torch.float64)
        return torch.linalg.det(jac)

    def folding_fraction(self) -> float:
        """The fraction of fixed voxels where the deformation folds (Jacobian determinant <= 0)."""
        return (self.jacobian_determinant() <= 0).double().mean().item()

    def sitk_transform(self):
        """``SimpleITK.CompositeTransform([affine, bspline])``: SimpleITK applies the B-spline
        first, then the affine, as here."""
        return _sitk().CompositeTransform([to_sitk(self.affine), self.grid.to_sitk(self.coef)])

    def save_transform(self, path):
        """Write the whole chain (affine + B-spline) as an ITK composite transform file
        (``.h5`` or ``.tfm``; the suffixes of :func:`~mi.registration.transforms.save_sitk_transform`)
        that ``SimpleITK.ReadTransform`` reads and applies to the same points; returns the path."""
        return save_sitk_transform(self.sitk_transform(), path)


@dataclass
class DiffeomorphicResult(DeformableResult):
    """What :func:`register_deformable` found with ``transform="diffeomorphic"``: ``T(p) = affine
    (p + u(p))``, fixed physical -> moving physical (mm), where ``p + u(p) = exp(v)(p)`` for
    the stationary velocity ``v`` whose B-spline coefficients (mm) on ``grid`` are ``coef``.

    ``u`` is kept on ``nodes`` (a grid over the fixed image, its corners on the fixed image's
    corner voxels, about 3 nodes per control cell; :mod:`~mi.registration.velocity`), linear
    between them: ``node_displacement`` (d, *nodes.shape) float64, mm, physical axes, and
    ``node_inverse``, the same of ``exp(-v)``, the inverse (to the interpolation's accuracy).
    Both are evaluated as ITK's ``DisplacementFieldTransform`` evaluates its field: bi-/trilinear
    on the nodes, the edge values up to half a node spacing beyond the edge nodes, 0 further
    out (every fixed voxel lies within the nodes). Other attributes as
    :class:`DeformableResult`'s."""

    nodes: Geometry | None = field(default=None, repr=False)
    node_displacement: Tensor | None = field(default=None, repr=False)
    node_inverse: Tensor | None = field(default=None, repr=False)
    transform = "diffeomorphic"

    def displacement(self, points) -> Tensor:
        """u at fixed physical points (..., d) -> (..., d), mm (the deformation, before the affine)."""
        return _field_at(self.node_displacement, self.nodes, points)

    def _fixed_field(self, dtype, device) -> Tensor:
        points = torch.cat([p for _, p in _voxel_points(self.fixed_geometry)])
        return self.displacement(points).to(dtype=dtype, device=device)

    def inverse_transform_points(self, points) -> Tensor:
        """Moving physical points (..., d) -> fixed physical points: ``exp(-v)(affine^-1 q)``,
        the inverse of :meth:`transform_points` (to the interpolation's accuracy)."""
        q = torch.as_tensor(points, dtype=torch.float64)
        d = q.shape[-1]
        x = (q - self.affine[:d, d]) @ torch.linalg.inv(self.affine[:d, :d]).T
        return x + _field_at(self.node_inverse, self.nodes, x)

    def sitk_transform(self):
        """``SimpleITK.CompositeTransform([affine, DisplacementFieldTransform])``: the field on
        the nodes; SimpleITK applies it first, then the affine, as here."""
        return _sitk().CompositeTransform(
            [to_sitk(self.affine), self._field_transform(self.node_displacement)]
        )

    def sitk_inverse_transform(self):
        """The inverse, moving physical -> fixed physical (:meth:`inverse_transform_points`):
        ``SimpleITK.CompositeTransform([DisplacementFieldTransform of exp(-v), affine^-1])``
        (SimpleITK's ``GetInverse()`` cannot invert a composite with a field)."""
        inverse = to_sitk(torch.linalg.inv(self.affine))
        return _sitk().CompositeTransform([self._field_transform(self.node_inverse), inverse])

    def save_transform(self, path, inverse: bool = False):
        """Write the chain (or with ``inverse``, :meth:`sitk_inverse_transform`) as an ITK
        composite transform file (``.h5`` or ``.tfm``) that ``SimpleITK.ReadTransform`` reads
        and applies to the same points; returns the path."""
        t = self.sitk_inverse_transform() if inverse else self.sitk_transform()
        return save_sitk_transform(t, path)

    def _field_transform(self, u: Tensor):
        sitk = _sitk()
        img = sitk.GetImageFromArray(u.movedim(0, -1).contiguous().numpy(), isVector=True)
        return sitk.DisplacementFieldTransform(self.nodes.to_sitk(img))


def _field_at(values: Tensor, nodes: Geometry, points) -> Tensor:
    """A field on ``nodes`` ((d, *nodes.shape), float64) at physical points (..., d), as ITK's
    ``DisplacementFieldTransform`` (``sample_points(..., itk=True)``) -> (..., d) float64."""
    p = torch.as_tensor(points, dtype=torch.float64)
    d = p.shape[-1]
    to_norm = to_normalized(extent(nodes.shape)) @ torch.linalg.inv(nodes.index_to_physical())
    norm = p.reshape(-1, d) @ to_norm[:d, :d].T + to_norm[:d, d]
    return sample_points(values[None].double(), norm, itk=True)[0].T.reshape(p.shape)


def _voxel_points(g: Geometry, dtype=torch.float64, device=None):
    """Yield (first voxel, physical points (n, d)) of the voxels of geometry ``g`` in C order,
    CHUNK at a time."""
    total, to_phys, d = math.prod(g.shape), g.index_to_physical().to(dtype=dtype, device=device), g.dim
    for lo in range(0, total, CHUNK):
        flat = torch.arange(lo, min(total, lo + CHUNK), device=device)
        idx = []
        for size in reversed(g.shape):  # x first: the last array axis
            idx.append((flat % size).to(dtype))
            flat = flat // size
        yield lo, torch.stack(idx, -1) @ to_phys[:d, :d].T + to_phys[:d, d]


def _on_grid(grid: ControlGrid, coef: Tensor, g: Geometry) -> Tensor:
    """u at every voxel of geometry ``g`` (the grid's own image: its axes): (*shape, d)."""
    return grid.field(coef, grid.physical_to_index() @ g.index_to_physical(), g.shape)


@torch.inference_mode(False)  # (a model's predict or validation step may call it)
@torch.enable_grad()
def register_deformable(
    fixed,
    moving,
    *,
    initial=None,
    transform: str = "bspline",
    grid_spacing=20.0,
    levels: int | None = 2,
    refine_grid: bool = True,
    iterations=None,
    lr: float | None = None,
    bending: float = 1.0,
    loss=None,
    mask=None,
    moving_mask=None,
    spacing=None,
    moving_spacing=None,
    sampling="auto",
    sampling_strategy: str = "random",
    winsorize=WINSORIZE,
    seed: int = 0,
    device=None,
    progress: bool = True,
    **loss_kwargs,
) -> DeformableResult:
    """A deformation that maximises MI, after an affine stage: a B-spline free-form
    deformation, or a diffeomorphism (a stationary velocity on a B-spline grid).

    Args:
        fixed, moving, mask, moving_mask, spacing, moving_spacing, sampling,
            sampling_strategy, winsorize, seed, device, progress, loss, **loss_kwargs: as in
            :func:`mi.registration.register` (the same pyramid, sampling and loss). Local MI
            (``loss=mi.LocalMutualInformationLoss(patch_size=...)``) needs ``sampling=None``:
            the images then keep their shape at every level and the patches are cut from it.
        initial: the affine stage, fixed physical -> moving physical: a
            :class:`~mi.registration.RegistrationResult`, a (d+1)x(d+1) matrix, a SimpleITK
            transform, a transform file, or "geometry" / "moments" as in
            :func:`~mi.registration.register` (default identity: run
            :func:`~mi.registration.register` first when the images are not roughly aligned).
        transform: "bspline" (default): the displacement is a cubic B-spline on the control
            grid (ITK's ``BSplineTransform``; it can fold once its coefficients reach a sizeable
            part of their spacing: injective below about 0.4 of it, Choi and Lee 2000);
            "diffeomorphic": the velocity is, and the deformation is its exponential,
            integrated by scaling and squaring (:mod:`~mi.registration.velocity`):
            invertible by construction (the inverse is in the result), and closer on large
            deformations (a swirl, tests/test_deformable.py). Same grid, refinement,
            ``lr`` and ``bending`` (on the velocity) for both.
        grid_spacing: control point spacing in mm at the finest level (one number or one per
            axis, x, y[, z]); at least the fixed image's voxel size along every axis.
        levels: pyramid levels (None: :func:`~mi.registration.optim.default_levels`, as
            :func:`~mi.registration.register`'s default).
        refine_grid: multi-resolution control grid: the grid starts ``2**(levels - 1)``
            times coarser (``ControlGrid.over`` with that spacing) and is refined exactly
            (:meth:`~mi.registration.bspline.ControlGrid.refined`, half the spacing) before
            each finer level, so the finest spacing is at most ``grid_spacing`` (a whole
            number of mesh cells per axis). False: one grid at ``grid_spacing`` throughout.
        iterations: Adam steps per level, coarsest first (default 100 per level; a tuple or
            list with ``levels=None`` sets the levels by its length).
        lr: Adam's step on the coefficients, mm (level ``l`` starts at ``lr * 2**l``); None
            (the default): half the fixed image's smallest voxel spacing (``default_lr``);
            at most the fixed image's diagonal.
        bending: weight of the control grid's (dimensionless) bending energy
            (:meth:`~mi.registration.bspline.ControlGrid.bending_energy`) added to the loss.
            The default 1 keeps a rigid pair rigid (the 2-D demo after an affine stage: 0.21
            px mean spurious displacement; 0.45 at 0.1); 0.1 fits a known deformation closer
            (0.35 against 0.46 px mean error, tests/test_deformable.py). The energy is
            relative to the grid's spacing, so the coarser grids of ``refine_grid`` are
            held stiffer for the same deformation.

    Returns:
        :class:`DeformableResult` (:class:`DiffeomorphicResult` for "diffeomorphic"). Memory
        per iteration: the level's displacement field, d floats per voxel
        (``ControlGrid.field``; "diffeomorphic": d floats per node, about 3 per control cell
        along each axis, for each of its 7 squarings), and the samples' resampling and loss.
    """
    t_start = time.perf_counter()
    mask, moving_mask = mask_for("mask", mask, fixed), mask_for("moving_mask", moving_mask, moving)
    f, gf, m, gm, valid = read_pair(fixed, moving, device, spacing, moving_spacing)
    d = f.ndim - 2
    lr = check_lr(lr, gf)
    gs, bending = check_grid(grid_spacing, bending, gf)
    sampling = _check_sampling(sampling, sampling_strategy)
    if not isinstance(transform, str):
        raise TypeError(f"transform must be a string, got {type(transform).__name__}")
    if transform not in DEFORMABLE:
        raise ValueError(f"transform must be one of {DEFORMABLE}, got {transform!r}")
    if not isinstance(refine_grid, bool):
        raise TypeError(f"refine_grid must be a bool, got {type(refine_grid).__name__}")
    w, wm, loss_fn, gen, pyramid, (fs, ms) = _setup(
        f, gf, m, gm, mask, moving_mask, loss, loss_kwargs, seed, sampling, valid, winsorize
    )
    levels = _check_levels(levels, gf, gm, iterations, w)
    its = _check_iterations(iterations if iterations is not None else 100, levels)
    check_level_sizes(gf, w, mask is not None, loss_fn, levels)
    if constant_images(fs, w, ms, wm):  # nothing to register by: no steps
        its = (0,) * levels
    affine = initial_transform(initial, "affine", f, gf, m, gm, w, wm)
    coarsest = 2 ** (levels - 1) if refine_grid else 1
    grid = ControlGrid.over(gf, tuple(s * coarsest for s in gs))
    coef = nn.Parameter(grid.zeros(torch.float32, f.device))
    to_fixed, to_moving_inv = gf.index_to_physical(), torch.linalg.inv(gm.index_to_physical())
    history = []
    for level in reversed(range(levels)):
        if refine_grid and level < levels - 1:
            grid, fine = grid.refined(coef.detach())
            coef = nn.Parameter(fine)
        ff, fm = shrink_factors(gf, level), shrink_factors(gm, level, gf)
        fl, wl, ml = pyramid(ff, fm)
        # the level's normalised coordinates -> mm, and mm -> the moving level's normalised ones
        phys64 = to_fixed @ torch.linalg.inv(to_normalized(extent(fl.shape[2:], ff)))
        phys = phys64.to(f)
        voxel_to_index = grid.physical_to_index() @ phys64 @ to_normalized(extent(fl.shape[2:]))
        to_grid = (to_normalized(extent(ml.shape[2:], fm)) @ to_moving_inv @ affine).to(f)
        sampler = _Sampler(sampling, sampling_strategy, wl, fl[0, 0].numel(), gen)
        if transform == "diffeomorphic":  # the level's voxel indices -> mm
            velocity = VelocityLevel(
                grid, voxel_to_index, phys64 @ to_normalized(extent(fl.shape[2:])), fl.shape[2:]
            )
        n, lr0 = its[levels - 1 - level], lr * 2.0**level
        opt = torch.optim.Adam([coef], lr=lr0)
        final = FINAL_STEP_SAMPLED if sampler.noisy else FINAL_STEP_DENSE
        if level == levels - 1:
            check_overlap((to_grid @ phys)[:d], fl, wl, ml.shape[2:])
        # the level's voxels in mm, and their weights: the affine stage's overlap (a voxel the
        # deformation maps out of the moving image still counts, against the zero padding:
        # dropping it could raise MI, and the grid ran tens of mm off outside the anatomy,
        # taking a fifth of the fixed image out) x the fixed mask
        voxels = torch.arange(fl[0, 0].numel(), device=f.device)
        p_all = _normalized_points(voxels, fl.shape[2:]) @ phys[:d, :d].T + phys[:d, d]
        weight_all = overlap_weight(p_all @ to_grid[:d, :d].T + to_grid[:d, d], ml.shape[2:])
        if wl is not None:
            weight_all = weight_all * wl.reshape(-1)
        for it in range(n):
            for group in opt.param_groups:
                group["lr"] = _step_size(lr0, it, n, final)
            opt.zero_grad(set_to_none=True)
            idx = sampler(f.device)
            dense = idx is None
            if dense:
                idx = voxels
            if transform == "diffeomorphic":
                u = velocity.displacement(coef, None if dense else idx)
            else:
                u = grid.field(coef, voxel_to_index, fl.shape[2:]).reshape(-1, d)  # the level's voxels
                u = u if dense else u[idx]
            q = (p_all if dense else p_all[idx]) + u
            coords = q @ to_grid[:d, :d].T + to_grid[:d, d]
            out = sample_points(ml, coords)
            overlap = (weight_all if dense else weight_all[idx])[None, None]
            if wm is not None:
                overlap = overlap * out[:, 1:2]
            # every voxel: the images keep their shape (local MI cuts its patches from it)
            shape = fl.shape[2:] if dense else (-1,)
            value = check_loss_value(loss_fn(
                fl.reshape(1, 1, -1)[:, :, idx].reshape(1, 1, *shape), out[:, :1].reshape(1, 1, *shape),
                overlap.reshape(1, 1, *shape),
            ))  # fmt: skip
            if bending:
                value = value + bending * grid.bending_energy(coef)
            value.backward()
            opt.step()
            history.append(value.item())
            check_finite_step(history[-1], coef.detach(), levels - level, it)
            if progress and (it + 1 == n):
                sys.stderr.write(f"level {levels - level}/{levels}: {n} steps, loss {history[-1]:+.5f}\n")
    result = DeformableResult(
        affine=affine, grid=grid, coef=coef.detach().cpu(), warped=None, loss_history=history,
        mi_before=0.0, mi_after=0.0, fixed_geometry=gf, moving_geometry=gm,
    )  # fmt: skip
    if transform == "diffeomorphic":  # level 0 is the fixed image's own grid
        result = _diffeomorphic_result(result, velocity, coef.detach())
    with torch.no_grad():
        result.warped, result.overlap, result.mi_after = _warp_and_score(
            result, fs, ms, w, wm, deform=True, output=m
        )
        *_, result.mi_before = _warp_and_score(result, fs, ms, w, wm, deform=False)
    if result.mi_after < result.mi_before - DIVERGED:  # (as register's)
        warn(
            f"the deformable stage ended below its start (normalised MI {result.mi_after:.4f} < "
            f"{result.mi_before:.4f}, the affine stage's): it diverged or the start was already "
            "the optimum; try a smaller lr or a larger bending weight"
        )
    result.seconds = time.perf_counter() - t_start
    return result


def _diffeomorphic_result(result: DeformableResult, velocity: VelocityLevel, coef: Tensor):
    """``result`` as a :class:`DiffeomorphicResult`: ``exp(+-v)`` on the last level's (the
    fixed image's) nodes, in float64 and mm."""
    g, nodes = result.fixed_geometry, velocity.nodes
    spacing = tuple(s * h for s, h in zip(g.spacing, nodes.step))
    fields = [
        torch.einsum("ij,j...->i...", velocity.linear, velocity.node_field(coef.double(), sign).cpu())
        for sign in (1.0, -1.0)
    ]  # node units -> mm
    return DiffeomorphicResult(
        **{f.name: getattr(result, f.name) for f in dataclasses.fields(result)},
        nodes=Geometry(nodes.shape, spacing, g.origin, g.direction, g.unit),
        node_displacement=fields[0], node_inverse=fields[1],
    )  # fmt: skip


def check_grid(grid_spacing, bending, gf: Geometry) -> tuple:
    """(grid_spacing per image axis, bending), checked for a fixed image of geometry ``gf``:
    spacing positive and not finer than its voxels, bending >= 0 (``mi register`` checks
    them before its affine stage)."""
    gs = per_axis("grid_spacing", grid_spacing, gf.dim)
    if any(s < v for s, v in zip(gs, gf.spacing)):
        raise ValueError(f"grid_spacing {gs} mm is finer than the fixed image's voxels {gf.spacing} mm")
    return gs, _check_positive("bending", bending, allow_zero=True)


def _warp_and_score(result: DeformableResult, f, m, w, wm, deform: bool, output=None):
    """(warped ``output`` (default: ``m``; the image before ``winsorized``) on the fixed grid
    (ITK's resampling: 0 beyond the moving image), its weights without the fixed mask,
    Studholme NMI of f and m over them x the fixed mask), full resolution. The weights are
    the affine stage's overlap (as the loss's) x the moving mask at the deformed points."""
    from ..functional import mutual_information
    from .optim import SCORE

    gf, gm = result.fixed_geometry, result.moving_geometry
    d = gf.dim
    to_grid = (to_normalized(extent(gm.shape)) @ torch.linalg.inv(gm.index_to_physical()) @ result.affine).to(
        f
    )
    extra = [] if output is None or output is m else [output]
    stack = torch.cat([m] + extra + ([wm] if wm is not None else []), 1)
    vals, outs, ovl = [], [], []  # (outs: ``output``'s values, when it is another image)
    u = result._fixed_field(f.dtype, f.device) if deform else None
    for lo, p in _voxel_points(gf, f.dtype, f.device):
        start = p @ to_grid[:d, :d].T + to_grid[:d, d]  # the affine stage's point
        coords = start + u[lo : lo + len(p)] @ to_grid[:d, :d].T if deform else start
        out = sample_points(stack, coords, itk=True)
        o = overlap_weight(start, gm.shape, itk=True)  # (the loss's weights)
        if wm is not None:
            o = o * out[0, -1]
        vals.append(out[0, 0])
        if extra:
            outs.append(out[0, 1])
        ovl.append(o)
    scored = torch.cat(vals).reshape(1, 1, *gf.shape)
    weight = torch.cat(ovl).reshape(1, 1, *gf.shape)
    if w is not None:
        weight = weight * w
    score = mutual_information(f, scored, mask=weight, **SCORE).item()
    warped = torch.cat(outs).reshape(gf.shape) if extra else scored.reshape(gf.shape)
    return warped, torch.cat(ovl).reshape(gf.shape), score


__all__ = ["register_deformable", "DeformableResult", "DiffeomorphicResult", "DEFORMABLE"]
