"""Registration benchmark: mi.register against SimpleITK's own MI registration, same run.

    python bench/bench_register.py [--cases 2d,3d] [--repeat 1] [--out bench/results]

Cases (known rigid transforms, second "modality" = a non-monotonic sin(3x)^2 remap):
    2d: mi.register.demo_pair(): matplotlib's grace_hopper.jpg, grey, 192x160 (H x W),
        rotated 7 degrees about the centre and shifted (6, -4) px (x, y).
    3d: mi.register.demo_volume_pair(): 40^3 anisotropic Gaussian blobs, rotation vector
        (3, -2, 4) degrees, shift (2.5, -1.5, 2) voxels, sampled analytically.

Methods:
    mi: ``mi.register.register(fixed, moving, transform="rigid")`` with its defaults
        (3 levels, 120/60/30 Adam steps, Studholme NMI, 32 bins, B-spline window).
    SimpleITK: ImageRegistrationMethod, Mattes MI with 50 bins, all pixels (sampling NONE),
        linear interpolator, RegularStepGradientDescent (learning rate 1, min step 1e-4,
        at most 300 iterations per level, relaxation 0.5), scales from physical shift,
        Euler2D/3D transform centred by CenteredTransformInitializer(GEOMETRY), shrink
        factors [4, 2, 1], smoothing sigmas [2, 1, 0].

Conventions: SimpleITK's result maps fixed physical points to moving physical points;
with spacing 1 and origin 0 a physical point is the index (x, y[, z]), which is exactly
mi.register's pixel convention, so its matrix is read off by transforming the origin and
the unit vectors. Errors against the known matrix: rotation angle of R_found R_true^T
(degrees); displacement error |A_found p - A_true p| at the fixed centre and the maximum
over the corners (pixels/voxels). "metric" is each method's own final value (mi: the loss,
-NMI at the finest level; SimpleITK: Mattes' negative MI); "NMI" is the same score for
both: Studholme's (H(f) + H(w)) / H(f, w), 32 bins, B-spline window, over the overlap, of
the full-resolution pair resampled by each method's matrix. Wall time is one run (the
minimum of --repeat runs) on this machine, whose cores may be shared with other jobs.

Writes bench_register.csv to --out and prints a Markdown table.
"""

import argparse
import csv
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import machine  # noqa: E402

from mi import mutual_information  # noqa: E402
from mi.register import SCORE, demo_pair, demo_volume_pair, register, transform_error, warp  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = {"2d": demo_pair, "3d": demo_volume_pair}
FIELDS = [
    "case", "method", "shape", "angle_err_deg", "centre_err_px", "corner_err_px", "wall_s",
    "metric", "nmi", "found_angle_deg", "found_translation_px",
]  # fmt: skip


def describe(matrix: torch.Tensor, shape):
    """(angle in degrees: signed in 2-D, total in 3-D; centre displacement (x, y[, z]))."""
    d = len(shape)
    u, _, vh = torch.linalg.svd(matrix[:d, :d])
    r = u @ vh
    if d == 2:
        angle = math.degrees(math.atan2(r[1, 0].item(), r[0, 0].item()))
    else:
        angle = math.degrees(math.acos(max(-1.0, min(1.0, (r.trace().item() - 1) / 2))))
    c = torch.tensor([(s - 1) / 2 for s in reversed(shape)], dtype=torch.float64)
    t = matrix[:d, :d] @ c + matrix[:d, d] - c
    return angle, t


def nmi(fixed, moving, matrix):
    warped, overlap = warp(moving, matrix, fixed.shape)
    return mutual_information(fixed[None, None], warped, mask=overlap, **SCORE).item()


def run_mi(fixed, moving):
    t = time.perf_counter()
    r = register(fixed, moving, transform="rigid", progress=False)
    return r.matrix, time.perf_counter() - t, r.loss_history[-1]


def run_sitk(fixed, moving):
    import SimpleITK as sitk

    d = fixed.ndim
    t = time.perf_counter()
    f = sitk.GetImageFromArray(fixed.numpy())  # array (H, W) -> image of size (W, H), spacing 1
    m = sitk.GetImageFromArray(moving.numpy())
    euler = sitk.Euler2DTransform() if d == 2 else sitk.Euler3DTransform()
    init = sitk.CenteredTransformInitializer(f, m, euler, sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=300, relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )  # fmt: skip
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    out = reg.Execute(f, m)
    wall = time.perf_counter() - t
    # fixed physical (x, y[, z]) -> moving physical; spacing 1, origin 0: physical = index
    origin = torch.tensor(out.TransformPoint((0.0,) * d), dtype=torch.float64)
    a = torch.eye(d + 1, dtype=torch.float64)
    a[:d, d] = origin
    for i in range(d):
        e = [0.0] * d
        e[i] = 1.0
        a[:d, i] = torch.tensor(out.TransformPoint(tuple(e)), dtype=torch.float64) - origin
    return a, wall, reg.GetMetricValue()


METHODS = {"mi": run_mi, "SimpleITK": run_sitk}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="2d,3d")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--repeat", type=int, default=1, help="runs per method; the fastest is kept")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for case in args.cases.split(","):
        fixed, moving, true = CASES[case]()
        shape = tuple(fixed.shape)
        for method in args.methods.split(","):
            runs = [METHODS[method](fixed, moving) for _ in range(max(1, args.repeat))]
            matrix, _, metric = runs[-1]
            wall = min(r[1] for r in runs)
            ang, cen, cor = transform_error(matrix, true, shape)
            found_angle, found_t = describe(matrix, shape)
            rows.append(
                dict(
                    case=case,
                    method=method,
                    shape="x".join(map(str, shape)),
                    angle_err_deg=f"{ang:.3f}",
                    centre_err_px=f"{cen:.3f}",
                    corner_err_px=f"{cor:.3f}",
                    wall_s=f"{wall:.2f}",
                    metric=f"{metric:.4f}",
                    nmi=f"{nmi(fixed, moving, matrix):.4f}",
                    found_angle_deg=f"{found_angle:.3f}",
                    found_translation_px=" ".join(f"{v:.3f}" for v in found_t.tolist()),
                )  # fmt: skip
            )
            print(f"{case} {method}: {rows[-1]}", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "bench_register.csv")
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        w.writeheader()
        w.writerows(rows)
    import SimpleITK as sitk

    print(f"Machine: {machine()}, SimpleITK {sitk.Version_VersionString()}\n")
    print("| case | method | rotation error (deg) | centre error (px) | max corner error (px) "
          "| wall (s) | own metric | NMI (same for both) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['case']} {r['shape']} | {r['method']} | {r['angle_err_deg']} | "
            f"{r['centre_err_px']} | {r['corner_err_px']} | {r['wall_s']} | {r['metric']} | "
            f"{r['nmi']} |"
        )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
