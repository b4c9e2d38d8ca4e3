"""Deformable registration benchmark: mi.registration.register_deformable against SimpleITK's
B-spline Mattes registration, on a real brain deformed by a known smooth field, same run.

    python bench/bench_deformable.py [--shrink 2] [--amplitude 3.0] [--out bench/results]
    python bench/bench_deformable.py --swirl 90      # the large-deformation pair

Pair: the MNI T1 (mi.registration.brain; --shrink 2: a 2 mm grid) against its T2-like
contrast deformed by a known cubic B-spline transform (control points 40 mm apart,
coefficients ~ N(0, amplitude mm) per component, seeded); the moving image is the contrast
resampled through the numerically inverted dense field (SimpleITK InvertDisplacementField),
so ``moving(true(p)) ~ contrast2(p)``.

Methods (both start from the identity: there is no affine misalignment):
    mi: ``register_deformable(fixed, moving, grid_spacing=20)`` with its defaults (2 levels,
        the control grid 40 mm then refined to 20 mm, 100 Adam steps each, Studholme NMI,
        32 bins, B-spline window, 2**17 samples per iteration, bending weight 1; and bending
        0.1), with the B-spline model and with ``transform="diffeomorphic"`` (the velocity
        on that grid, scaling and squaring).
    SimpleITK: ImageRegistrationMethod, Mattes MI 32 bins, 20 % random sampling, a
        BSplineTransform on a 20 mm mesh (BSplineTransformInitializer), LBFGSB (at most 100
        iterations per level), shrink 4/2/1, smoothing 2/1/0 mm.
    ANTsPy (if ``import ants`` works; pip install antspyx): SyN alone, Mattes MI 32 bins
        (``type_of_transform="SyNOnly"``), with ANTsPy's default iterations (40x20x0: none at
        full resolution) and with antsRegistrationSyN.sh's (100x70x50x20).

The true field is itself a cubic B-spline, which favours the B-spline models over SyN's
velocity fields.

``--swirl DEGREES``: a large deformation instead, the kind a velocity field generates: the
contrast swirled about the brain's centre (the mean of its voxels' positions) around the z
axis, by ``DEGREES`` times exp(-r^2 / (2 (25 mm)^2)) at distance r from the centre (90: up
to 17 mm, 5.8 mm mean over the brain). Its inverse is the swirl by -DEGREES, so the moving
image is the contrast resampled through that exact inverse. mi's rows use bending 1, 0.1
and 0 (a swirl is not smooth at the control grid's scale: the default bending holds it
back). Writes bench_deformable_swirl.csv, no figure.

Errors: the mean displacement error over the brain (voxels above 10 % of the T1's maximum)
against the true transform, mm (``brain.mean_error_mm``); the folding fraction (Jacobian
determinant <= 0 on the fixed grid: SimpleITK's DisplacementFieldJacobianDeterminant, the
vectors turned into the index axes, ``folding``); wall time on this machine. Writes
bench_deformable.csv and prints a Markdown table; ``--figure`` (default
docs/deformable_brain.png, '' for none): the overlays before and after and the deformation
grid found against the true one, on the middle axial slice.
"""

import argparse
import csv
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import machine  # noqa: E402

from mi.registration import brain, register_deformable  # noqa: E402
from mi.registration.bspline import random_deformation  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def make_pair(shrink, amplitude, seed=0):

    fixed, _, _ = brain.brain_pair(shrink=shrink)
    contrast = brain.brain_contrast2()
    true, apply = random_deformation(fixed, 40.0, amplitude, seed)
    moving = apply(contrast)
    return fixed, moving, true


def folding(transform, fixed):
    """The fraction of the fixed voxels where ``transform``'s Jacobian determinant is <= 0:
    SimpleITK's DisplacementFieldJacobianDeterminant of its displacement field on the fixed
    grid, the vectors first turned into the grid's index axes (D^T u, direction identity):
    the filter differentiates along the index axes scaled by the spacing only, ignoring the
    direction (on the MNI brain's, diag(-1, -1, 1), its determinant is that of another
    matrix: it called 0.04 % of a fold-free field's voxels folded)."""
    import numpy as np
    import SimpleITK as sitk

    field = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        fixed.GetSize(),
        fixed.GetOrigin(),
        fixed.GetSpacing(),
        fixed.GetDirection(),
    )
    d = fixed.GetDimension()
    direction = np.array(fixed.GetDirection()).reshape(d, d)
    along_index = sitk.GetImageFromArray(sitk.GetArrayFromImage(field) @ direction, isVector=True)
    along_index.SetSpacing(fixed.GetSpacing())
    det = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(along_index))
    return float((det <= 0).mean())


def make_swirl_pair(shrink, degrees, sigma_mm=25.0):
    """(fixed T1, moving contrast, the true transform: a SimpleITK DisplacementFieldTransform
    on the fixed grid, fixed -> moving points): the swirl of the module's docstring."""
    import numpy as np
    import SimpleITK as sitk

    fixed, _, _ = brain.brain_pair(shrink=shrink)
    d = fixed.GetDimension()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in reversed(fixed.GetSize())], indexing="ij"), -1)
    direction = np.array(fixed.GetDirection()).reshape(d, d)
    points = (index[..., ::-1] * fixed.GetSpacing()) @ direction.T + fixed.GetOrigin()  # (z, y, x, 3) mm
    values = sitk.GetArrayFromImage(fixed)
    centre = points[values > brain.BRAIN_FRACTION * values.max()].mean(0)

    def swirl(deg):
        r = points - centre
        a = np.deg2rad(deg) * np.exp(-(r**2).sum(-1) / (2 * sigma_mm**2))
        c, s = np.cos(a), np.sin(a)
        q = np.stack([c * r[..., 0] - s * r[..., 1], s * r[..., 0] + c * r[..., 1], r[..., 2]], -1)
        field = sitk.GetImageFromArray(q + centre - points, isVector=True)
        field.CopyInformation(fixed)
        return sitk.DisplacementFieldTransform(field)

    moving = sitk.Resample(brain.brain_contrast2(), fixed, swirl(-degrees), sitk.sitkLinear, 0.0)
    return fixed, moving, swirl(degrees)


def run_mi(fixed, moving, bending, results, transform="bspline"):
    t = time.perf_counter()
    r = register_deformable(
        fixed, moving, grid_spacing=20.0, bending=bending, transform=transform, progress=False
    )
    results.append(r)
    return r.sitk_transform(), time.perf_counter() - t


def figure(fixed, moving, result, true, path, exaggerate=4.0):
    """One axial slice through the middle: the fixed T1 with the moving image's contours before
    and after registration, and the deformation grid found (cyan) over the true one (orange,
    dashed), in-plane, over the brain (outside it the images say nothing about the field),
    lines every 6 voxels, displacements drawn ``exaggerate`` times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import SimpleITK as sitk

    z = fixed.GetSize()[2] // 2
    f = sitk.GetArrayFromImage(fixed)[z]
    m = sitk.GetArrayFromImage(moving)[z]
    w = result.warped.numpy()[z]
    h, wd = f.shape
    to_phys = np.array(fixed.GetDirection()).reshape(3, 3) * np.array(fixed.GetSpacing())  # D diag(s)
    idx = np.stack(np.meshgrid(np.arange(wd), np.arange(h), [z]), -1)[:, :, 0].reshape(-1, 3).astype(float)
    pts = idx @ to_phys.T + np.array(fixed.GetOrigin())
    want = np.array([true.TransformPoint(tuple(p)) for p in pts]) - pts  # (n, 3) mm, physical axes
    found = result.displacement_field().numpy()[:, z].reshape(3, -1).T
    # in voxels along the index axes (x, y), as the slice is drawn
    want, found = ((u @ np.linalg.inv(to_phys).T).T.reshape(3, h, wd) for u in (want, found))
    levels = np.quantile(m[m > 0], [0.3, 0.8])  # the moving contrast's tissue boundaries
    fig, ax = plt.subplots(1, 3, figsize=(13, 5.6))
    for a, img, title in ((ax[0], m, "before"), (ax[1], w, f"after ({result.seconds:.0f} s)")):
        a.imshow(f, cmap="gray", origin="lower")
        a.contour(img, levels=levels, colors=["tab:orange", "tab:cyan"], linewidths=0.9, origin="lower")
        a.set_title(f"{title}: fixed T1, moving contours")
    ax[2].imshow(f, cmap="gray", origin="lower", alpha=0.6)
    styles = ((want, dict(color="tab:orange", ls="--", lw=1.0)), (found, dict(color="tab:cyan", lw=0.9)))
    for field, style in styles:
        gx = np.arange(wd) + exaggerate * field[0]
        gy = np.arange(h)[:, None] + exaggerate * field[1]
        inside = f > 0.1 * f.max()  # over the brain, where the error is measured
        gx, gy = (np.where(inside, np.broadcast_to(t, (h, wd)), np.nan) for t in (gx, gy))
        for r in range(0, h, 6):
            ax[2].plot(gx[r], gy[r], **style)
        for c in range(0, wd, 6):
            ax[2].plot(gx[:, c], gy[:, c], **style)
    ax[2].set_xlim(0, wd - 1)
    ax[2].set_ylim(0, h - 1)
    ax[2].set_title(f"over the brain, x{exaggerate:g}: found (cyan), true (orange)")
    for a in ax:
        a.set_axis_off()
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_ants(fixed, moving, iterations):
    """ANTs SyN alone (no affine stage: the pair has none), Mattes MI 32 bins, ``iterations``
    per level, ANTsPy's defaults otherwise; its forward warp (fixed -> moving points, ITK's convention) read
    back as a SimpleITK displacement field transform. Time excludes the NIfTI round trip."""
    import tempfile

    import ants
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, n) for n in ("f.nii.gz", "m.nii.gz")]
        sitk.WriteImage(fixed, paths[0])
        sitk.WriteImage(moving, paths[1])
        fa, ma = (ants.image_read(p) for p in paths)
        t = time.perf_counter()
        out = ants.registration(
            fa, ma, type_of_transform="SyNOnly", syn_metric="mattes", syn_sampling=32,
            reg_iterations=iterations, outprefix=os.path.join(tmp, "x"),
        )  # fmt: skip
        wall = time.perf_counter() - t
        warps = [p for p in out["fwdtransforms"] if p.endswith(".nii.gz")]
        field = sitk.ReadImage(warps[0], sitk.sitkVectorFloat64)
    return sitk.DisplacementFieldTransform(field), wall


def run_sitk(fixed, moving):
    import SimpleITK as sitk

    t = time.perf_counter()
    mesh = [max(1, int(round((n - 1) * s / 20.0))) for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    init = sitk.BSplineTransformInitializer(fixed, mesh, 3)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=100)
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    out = reg.Execute(fixed, moving)
    return out, time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shrink", type=int, default=2)
    p.add_argument("--amplitude", type=float, default=3.0)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--figure", default=os.path.join(os.path.dirname(HERE), "docs", "deformable_brain.png"))
    p.add_argument("--figure-only", action="store_true", help="the pair, mi (bending 1) and the figure")
    p.add_argument("--swirl", type=float, default=None, metavar="DEGREES", help="the swirled pair instead")
    p.add_argument(
        "--only",
        default=None,
        help="only the methods whose names start with this (a trial: prints, writes nothing)",
    )
    args = p.parse_args(argv)
    import SimpleITK as sitk

    if args.swirl is not None:
        fixed, moving, true = make_swirl_pair(args.shrink, args.swirl)
        args.figure, csv_name = "", "bench_deformable_swirl.csv"
        truth = f"true field: a swirl of {args.swirl:g} degrees (25 mm Gaussian profile)"
        bendings = (1.0, 0.1, 0.0)
    else:
        fixed, moving, true = make_pair(args.shrink, args.amplitude)
        csv_name = "bench_deformable.csv"
        truth = f"true field: 40 mm B-spline, coefficients ~N(0, {args.amplitude} mm)"
        bendings = (1.0, 0.1)
    identity = sitk.Euler3DTransform()
    rows = [dict(method="(none)", err=brain.mean_error_mm(identity, true, fixed), folding=0.0, wall=0.0)]
    results = []
    if args.figure_only:
        run_mi(fixed, moving, 1.0, results)
        figure(fixed, moving, results[0], true, args.figure)
        return
    methods = [
        (f"mi{' diffeomorphic' if model == 'diffeomorphic' else ''} (bending {b:g})", model, b)
        for model in ("bspline", "diffeomorphic")
        for b in bendings
    ]
    for name, fn in [
        *[(n, lambda m=m, b=b: run_mi(fixed, moving, b, results, m)) for n, m, b in methods],
        ("SimpleITK B-spline", lambda: run_sitk(fixed, moving)),
        ("ANTsPy SyN (Mattes 32, 40x20x0: its defaults)", lambda: run_ants(fixed, moving, (40, 20, 0))),
        ("ANTsPy SyN (Mattes 32, 100x70x50x20)", lambda: run_ants(fixed, moving, (100, 70, 50, 20))),
    ]:
        if args.only is not None and not name.startswith(args.only):
            continue
        if name.startswith("ANTsPy") and importlib.util.find_spec("ants") is None:
            print(f"{name}: skipped (pip install antspyx)", file=sys.stderr)
            continue
        found, wall = fn()
        rows.append(
            dict(
                method=name,
                err=brain.mean_error_mm(found, true, fixed),
                folding=folding(found, fixed),
                wall=wall,
            )
        )
        print(rows[-1], file=sys.stderr, flush=True)
    if args.only is not None:  # a trial: nothing written
        return
    if args.figure:
        figure(fixed, moving, results[0], true, args.figure)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, csv_name), "w", newline="") as fh:
        w = csv.DictWriter(fh, ["method", "err", "folding", "wall"])
        w.writeheader()
        w.writerows(rows)
    size = "x".join(map(str, fixed.GetSize()))
    print(
        f"Machine: {machine()}, SimpleITK {sitk.Version_VersionString()}; brain {size} at "
        f"{fixed.GetSpacing()[0]:g} mm, {truth}\n"
    )
    print("| method | mean error over the brain (mm) | folding (det J <= 0) | wall (s) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['err']:.3f} | {100 * r['folding']:.3f} % | {r['wall']:.1f} |")


if __name__ == "__main__":
    main()
