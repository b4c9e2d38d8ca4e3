"""Registration benchmark: mi.register against SimpleITK (and ANTsPy where it installs), same run.

    python bench/bench_register.py [--cases 2d,3d,brain,brain3mm] [--repeat 1] [--out bench/results]
                                   [--methods mi,mi-eager,SimpleITK,...] [--device cuda]

Cases (known rigid transforms, a second "modality"):
    2d: mi.registration.demo_pair(): matplotlib's grace_hopper.jpg, grey, 192x160 (H x W),
        rotated 7 degrees about the centre and shifted (6, -4) px (x, y); sin(3x)^2 remap.
    3d: mi.registration.demo_volume_pair(): 40^3 anisotropic Gaussian blobs, rotation
        vector (3, -2, 4) degrees, shift (2.5, -1.5, 2) voxels, sampled analytically.
    brain: mi.registration.brain.brain_pair(): the MNI ICBM152 2009a T1 (nilearn's copy,
        197x233x189, 1 mm) against a T2-like contrast built from its tissue maps, rotated
        (4, -3, 5) degrees about x, y, z and shifted (6, -4, 3) mm; physical space.
    brain3mm: the same with the moving image in 3 mm slices (each averaging its thickness).
    photo25 (capture range): scikit-learn's china.jpg in grey, 640x427 pixels of 0.5 mm,
        against an inverted copy (255 - x) rotated 25 degrees about its centre and shifted
        (6, -4) mm (SimpleITK's linear resampling, 0 outside); physical space.
    fine35 (capture range): the MNI T1 resampled (linear) onto a 0.5x0.5x3 mm grid of
        394x466x63 voxels centred on it (a clinical in-plane resolution) against the 1 mm
        T2-like contrast rotated 35 degrees about z and shifted (10, -8, 6) mm.
    spikes (outliers): the brain pair with 0.01 % of each image's voxels (seeded) at 20
        times its maximum (hot pixels, metal, spikes); errors over the clean T1's brain.

Methods:
    mi: ``mi.register(fixed, moving, transform="rigid")`` with its defaults (3 levels,
        120/60/60 Adam steps; 4 levels, 200/120/60/60, on photo25 and fine35, whose fixed
        images have over 387 voxels along an axis: ``default_levels``; Studholme NMI, 32
        bins, B-spline window, 2**17 sampled voxels per iteration on the levels larger than
        that), on ``--device`` (on CUDA each level is replayed from a CUDA graph:
        ``graph=None``).
    mi-eager: the same with ``graph=False`` (on CUDA: every kernel launched from Python).
    mi winsorize=None: the same with every intensity as it is (min..max bins, as ITK's
        metrics), the default before ``winsorize`` (each image clamped to its 0.5 and 99.5
        percentiles for the loss, as ANTs' scripts).
    mi 3 levels (photo25, fine35): the same with ``levels=3``, the default before
        ``default_levels``: its steps reach about 170 of the finest voxels.
    SimpleITK: ImageRegistrationMethod, Mattes MI (32 bins on the physical cases, 50 on the
        demos), RANDOM sampling of 20 % of the voxels on the physical cases (every pixel on
        the small demos), linear interpolator, RegularStepGradientDescent (learning rate 1,
        min step 1e-4, at most 300 iterations per level, relaxation 0.5), scales from
        physical shift, Euler transform centred by CenteredTransformInitializer(GEOMETRY),
        shrink factors [4, 2, 1], smoothing sigmas [2, 1, 0] (physical units).
    ANTsPy (physical cases, if ``import ants`` works): ``ants.registration(type_of_transform=
        "Rigid")`` (Mattes MI, 32 bins) and "QuickRigid", its forward transform read back
        with SimpleITK.

Errors: 2d/3d against the known voxel matrix (rotation angle of R_found R_true^T, degrees;
displacement at the centre and the worst corner, voxels); physical cases: the mean
displacement error over the brain (the fixed image's voxels above 10 % of its maximum: the
brain, or most of the photo), in mm (``brain.mean_error_mm``). Every method's transform
maps fixed physical points to moving physical points (ITK's convention). "NMI" is the same
score for all: Studholme's (H(f) + H(w)) / H(f, w), 32 bins, B-spline window, over the
overlap, of the full-resolution pair resampled by each method's transform. Wall time is one
run (the minimum of --repeat runs) on this machine, whose cores may be shared with other
jobs.

Writes bench_register.csv to --out and prints a Markdown table.
"""

import argparse
import csv
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import machine  # noqa: E402

from mi import mutual_information  # noqa: E402
from mi.registration import SCORE, demo_pair, demo_volume_pair, register, transform_error  # noqa: E402
from mi.registration.space import as_image, voxel_matrix, warp  # noqa: E402
from mi.registration.transforms import from_sitk, to_sitk  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIELDS = [
    "case", "method", "shape", "mean_err_mm", "angle_err_deg", "centre_err", "corner_err", "wall_s",
    "nmi", "note",
]  # fmt: skip


def _brain(slice_mm=None):
    from mi.registration import brain

    fixed, moving, true = brain.brain_pair(slice_mm=slice_mm)
    return fixed, moving, from_sitk(true, 3)


def _moved(image, true, sitk):
    """``image`` moved by ``true`` (fixed physical -> moving physical) on its own grid."""
    return sitk.Resample(image, image, true.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _centre(image):
    return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])


def _photo25():
    import math

    import numpy as np
    import SimpleITK as sitk
    from sklearn.datasets import load_sample_images

    grey = load_sample_images().images[0].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    fixed = sitk.GetImageFromArray(grey)
    fixed.SetSpacing((0.5, 0.5))
    fixed.SetOrigin((10.0, -20.0))
    true = sitk.Euler2DTransform(_centre(fixed), math.radians(25.0), (6.0, -4.0))
    moving = sitk.GetImageFromArray(255.0 - sitk.GetArrayFromImage(_moved(fixed, true, sitk)))
    moving.CopyInformation(fixed)
    return fixed, moving, from_sitk(true, 2)


def _fine35():
    import math

    import numpy as np
    import SimpleITK as sitk

    from mi.registration import brain

    t1 = brain.brain_t1()
    size, spacing, centre = (394, 466, 63), (0.5, 0.5, 3.0), np.array(_centre(t1))
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(spacing)
    grid.SetDirection(t1.GetDirection())
    direction = np.reshape(t1.GetDirection(), (3, 3))
    grid.SetOrigin(tuple(centre - direction @ (np.subtract(size, 1) / 2 * spacing)))
    fixed = sitk.Resample(t1, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    true = sitk.Euler3DTransform(tuple(centre), 0.0, 0.0, math.radians(35.0), (10.0, -8.0, 6.0))
    return fixed, _moved(brain.brain_contrast2(), true, sitk), from_sitk(true, 3)


def _spiked(image, seed, fraction=1e-4, factor=20.0):
    """``image`` with ``fraction`` of its voxels (seeded) at ``factor`` times its maximum."""
    import numpy as np
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(image)
    a.flat[np.random.default_rng(seed).choice(a.size, int(fraction * a.size), replace=False)] = (
        factor * a.max()
    )
    out = sitk.GetImageFromArray(a)
    out.CopyInformation(image)
    return out


def _spikes():
    """(fixed, moving, true, the clean fixed image: where the error is measured)."""
    fixed, moving, true = _brain()
    return _spiked(fixed, 1), _spiked(moving, 2), true, fixed


CASES = {
    "2d": demo_pair,
    "3d": demo_volume_pair,
    "brain": _brain,
    "brain3mm": lambda: _brain(3.0),
    "photo25": _photo25,
    "fine35": _fine35,
    "spikes": _spikes,
}
PHYSICAL = {"brain", "brain3mm", "photo25", "fine35", "spikes"}
CAPTURE = {"photo25", "fine35"}  # (large images: 4 default levels)


def nmi(fixed, moving, physical):
    """The common score of a transform (fixed physical -> moving physical)."""
    (f, gf), (m, gm) = as_image("fixed", fixed), as_image("moving", moving)
    warped, overlap = warp(m, voxel_matrix(physical, gf, gm), f.shape[2:])
    return mutual_information(f, warped, mask=overlap, **SCORE).item()


DEVICE = None  # --device


def _mi(graph, **kw):
    def run(fixed, moving, physical_case):
        t = time.perf_counter()
        r = register(fixed, moving, transform="rigid", progress=False, device=DEVICE, graph=graph, **kw)
        if DEVICE is not None and torch.device(DEVICE).type == "cuda":
            torch.cuda.synchronize()
        note = ", ".join(f"{k}={v}" for k, v in kw.items()) or ("" if graph is None else f"graph={graph}")
        return r.physical, time.perf_counter() - t, note

    return run


def _sitk_images(fixed, moving):
    import SimpleITK as sitk

    if isinstance(fixed, torch.Tensor):  # array (H, W) -> image of size (W, H), spacing 1
        return sitk.GetImageFromArray(fixed.numpy()), sitk.GetImageFromArray(moving.numpy())
    return fixed, moving


def run_sitk(fixed, moving, physical_case):
    import SimpleITK as sitk

    t = time.perf_counter()
    f, m = _sitk_images(fixed, moving)
    d = f.GetDimension()
    euler = sitk.Euler2DTransform() if d == 2 else sitk.Euler3DTransform()
    init = sitk.CenteredTransformInitializer(f, m, euler, sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    if physical_case:
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.2, 1)
    else:
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
    return from_sitk(out, d), time.perf_counter() - t, ""


def _ants(kind):
    def run(fixed, moving, physical_case):
        import ants
        import SimpleITK as sitk

        with tempfile.TemporaryDirectory() as tmp:
            paths = [os.path.join(tmp, n) for n in ("f.nii.gz", "m.nii.gz")]
            f, m = _sitk_images(fixed, moving)
            sitk.WriteImage(f, paths[0])
            sitk.WriteImage(m, paths[1])
            fa, ma = (ants.image_read(p) for p in paths)
            t = time.perf_counter()
            out = ants.registration(fa, ma, type_of_transform=kind, outprefix=os.path.join(tmp, "x"))
            wall = time.perf_counter() - t
            tfm = sitk.ReadTransform(out["fwdtransforms"][0])
        return from_sitk(tfm, f.GetDimension()), wall, "time excludes the NIfTI round trip"

    return run


METHODS = {
    "mi": _mi(None),
    "mi-eager": _mi(False),
    "mi winsorize=None": _mi(None, winsorize=None),
    "mi 3 levels": _mi(None, levels=3),  # (the capture cases only: the others default to 3)
    "SimpleITK": run_sitk,
    "ANTsPy Rigid": _ants("Rigid"),
    "ANTsPy QuickRigid": _ants("QuickRigid"),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--methods", default=",".join(m for m in METHODS if m != "mi-eager"))  # (same on CPU)
    p.add_argument("--repeat", type=int, default=1, help="runs per method; the fastest is kept")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--device", default=None, help="mi's device (default: the images', CPU)")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    torch.manual_seed(0)
    f0, m0, _ = demo_pair((48, 40))  # warm-up: the first call of each method pays one-time costs
    for method in args.methods.split(","):
        if method in ("mi", "mi-eager", "SimpleITK"):
            METHODS[method](f0, m0, False)
    rows = []
    for case in args.cases.split(","):
        fixed, moving, true, *clean = CASES[case]()
        reference = clean[0] if clean else fixed  # (the error's brain voxels)
        physical_case = case in PHYSICAL
        f, gf = as_image("fixed", fixed)
        for method in args.methods.split(","):
            if method == "mi 3 levels" and case not in CAPTURE:
                continue
            if method.startswith("ANTsPy"):
                if not physical_case:
                    continue
                try:
                    import ants  # noqa: F401
                except ImportError:
                    print(f"{case} {method}: skipped (pip install antspyx)", file=sys.stderr)
                    continue
            runs = [METHODS[method](fixed, moving, physical_case) for _ in range(max(1, args.repeat))]
            physical, _, note = runs[-1]
            wall = min(r[1] for r in runs)
            row = dict(
                case=case, method=method, shape="x".join(map(str, gf.size)), wall_s=f"{wall:.2f}", note=note
            )
            if physical_case:
                from mi.registration import brain

                row["mean_err_mm"] = f"{brain.mean_error_mm(to_sitk(physical), to_sitk(true), reference):.3f}"
            # (both on the fixed grid's indices: for the demos physical = voxel coordinates)
            ang, cen, cor = transform_error(
                voxel_matrix(physical, gf, gf), voxel_matrix(true, gf, gf), gf.shape
            )
            row.update(angle_err_deg=f"{ang:.3f}", centre_err=f"{cen:.3f}", corner_err=f"{cor:.3f}")
            row["nmi"] = f"{nmi(fixed, moving, physical):.4f}"
            rows.append(row)
            print(f"{case} {method}: {row}", file=sys.stderr, flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "bench_register.csv")
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        w.writeheader()
        w.writerows(rows)
    import SimpleITK as sitk

    print(f"Machine: {machine()}, SimpleITK {sitk.Version_VersionString()}\n")
    print(
        "| case | method | mean error over the brain (mm) | rotation error (deg) | centre error "
        "| max corner error | wall (s) | NMI (same for all) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['case']} {r['shape']} | {r['method']} | {r.get('mean_err_mm', '')} | "
            f"{r['angle_err_deg']} | {r['centre_err']} | {r['corner_err']} | {r['wall_s']} | {r['nmi']} |"
        )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
