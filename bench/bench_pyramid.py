"""Small images: how often registration ends in a wrong optimum with 1, 2 and 3 pyramid levels,
with the levels ``register`` chooses (``default_levels``: no level under 768 voxels), and with
``sampling`` fractions with and without the per-level floor of 768 samples.

    python bench/bench_pyramid.py [--trials 30] [--sizes 48x40,64x54,80x66,96x80] [--out bench/results]
    python bench/bench_pyramid.py --dry-run    (one trial of each part, one size, sampling 0.1: the
                                               test suite's check that it runs)

Cases: ``mi.registration.demo_pair`` (matplotlib's grace_hopper.jpg against its sin(3x)^2
remap, warped at full resolution, then area-downsampled) at each size (H x W), the true
transform drawn from ``numpy.random.default_rng(11)`` per size: a rotation uniform in +-12
degrees about the centre, a shift uniform in +-8 % of each axis.
    levels: rigid, ``levels`` 1, 2, 3 and the default (equal to one of them).
    affine: 64x54, 10 trials from ``default_rng(5)``: rotation +-10 degrees, scales 0.9-1.1,
        shear +-0.05, shift +-6 %; 3 levels and the default.
    sampling: 128x108, 10 rigid trials, ``sampling`` 0.2, 0.1 and 0.05, with the floor
        (``MIN_LEVEL_SAMPLES``) and without it (an ablation: the constant set to 1 here).
A trial fails when the worst corner of the image ends more than 1 px from the truth
(``transform_error``). Writes bench_pyramid.csv (one row per trial) and bench_pyramid.md.
"""

import argparse
import csv
import math
import os
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import machine  # noqa: E402

import mi.registration.optim as optim  # noqa: E402
from mi.registration import demo_pair, register, transform_error  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIELDS = ["part", "shape", "setting", "trial", "levels", "corner_err_px", "wall_s"]


def _rigid_trials(shape, n, seed=11):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        angle = rng.uniform(-12, 12)
        shift = tuple(rng.uniform(-0.08, 0.08, 2) * np.array(shape[::-1]))
        yield demo_pair(shape, angle_deg=angle, shift=shift)


def _affine_trials(shape, n, seed=5):
    rng = np.random.default_rng(seed)
    h, w = shape
    for _ in range(n):
        angle = math.radians(rng.uniform(-10, 10))
        scale, shift, shear = (
            rng.uniform(0.9, 1.1, 2),
            rng.uniform(-0.06, 0.06, 2) * [w, h],
            rng.uniform(-0.05, 0.05),
        )
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        lin = rot @ np.array([[scale[0], shear], [0.0, scale[1]]])
        centre = np.array([(w - 1) / 2, (h - 1) / 2])
        matrix = np.eye(3)
        matrix[:2, :2], matrix[:2, 2] = lin, centre - lin @ centre + shift
        yield demo_pair(shape, matrix=torch.tensor(matrix))


def _run(rows, part, shape, setting, trial, fixed, moving, true, **kw):
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the warnings are not what is measured)
        r = register(fixed, moving, progress=False, **kw)
    wall, err = time.perf_counter() - t, transform_error(r.matrix, true, fixed.shape)[2]
    rows.append(dict(part=part, shape="x".join(map(str, shape)), setting=setting, trial=trial,
                     levels=len(r.iterations), corner_err_px=f"{err:.4f}", wall_s=f"{wall:.3f}"))  # fmt: skip
    return len(r.iterations)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--sizes", default="48x40,64x54,80x66,96x80")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    trials, small = (1, 1) if args.dry_run else (args.trials, 10)
    if args.dry_run:
        sizes = sizes[:1]
    rows = []
    for shape in sizes:
        for i, (f, m, true) in enumerate(_rigid_trials(shape, trials)):
            chosen = _run(rows, "levels", shape, "default", i, f, m, true)
            for lv in (1, 2, 3):
                if lv != chosen:
                    _run(rows, "levels", shape, f"{lv} levels", i, f, m, true, levels=lv)
        print(f"levels {shape}: done", flush=True)
    for i, (f, m, true) in enumerate(_affine_trials((64, 54), small)):
        _run(rows, "affine", (64, 54), "default", i, f, m, true, transform="affine")
        _run(rows, "affine", (64, 54), "3 levels", i, f, m, true, transform="affine", levels=3)
    floor = optim.MIN_LEVEL_SAMPLES
    for fraction in (0.1,) if args.dry_run else (0.2, 0.1, 0.05):
        for i, (f, m, true) in enumerate(_rigid_trials((128, 108), small)):
            for name, value in (("floor", floor), ("no floor", 1)):
                optim.MIN_LEVEL_SAMPLES = value
                try:
                    _run(rows, "sampling", (128, 108), f"{fraction} {name}", i, f, m, true, sampling=fraction)
                finally:
                    optim.MIN_LEVEL_SAMPLES = floor
    os.makedirs(args.out, exist_ok=True)
    stem = "bench_pyramid_dry" if args.dry_run else "bench_pyramid"
    with open(os.path.join(args.out, stem + ".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    table = _table(rows)
    with open(os.path.join(args.out, stem + ".md"), "w") as fh:
        fh.write(f"Machine: {machine()}\n\n{table}\n")
    print(table)


def _table(rows):
    """Failures (worst corner > 1 px) per part, shape and setting; the default's level count."""
    groups = {}
    for r in rows:
        groups.setdefault((r["part"], r["shape"], r["setting"]), []).append(r)
    out = ["| part | shape | setting | trials | failed (> 1 px) | worst (px) | median (px) | mean wall (s) |",
           "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for (part, shape, setting), rs in groups.items():
        errs = np.array([float(r["corner_err_px"]) for r in rs])
        name = setting if setting != "default" else f"default ({rs[0]['levels']} levels)"
        wall = np.mean([float(r["wall_s"]) for r in rs])
        out.append(f"| {part} | {shape} | {name} | {len(rs)} | {int((errs > 1).sum())} | {errs.max():.2f} | "
                   f"{np.median(errs):.3f} | {wall:.2f} |")  # fmt: skip
    return "\n".join(out)


if __name__ == "__main__":
    main()
