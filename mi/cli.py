"""The ``mi`` command: ``mi demo`` and ``mi score A B`` (also ``python -m mi``).

``mi demo`` takes a real picture that ships with matplotlib, makes a second "modality"
of it (a non-monotonic intensity remap, with and without a 10 degree rotation), prints
mutual information, normalised MI and entropies for both pairs, and draws the seed's
two pictures. ``mi score A B`` prints the same numbers for two image files (two medical
files: point by point in mm, b resampled onto a's grid where their grids differ).

Units: images are grey, PNG/JPEG scaled to [0, 1]; ``--sigma`` is in bin widths;
entropies and MI are in nats (MI also in bits).
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import math
import os
import platform
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

import mi
from mi.registration.optim import DEFAULT_SAMPLING, DEFAULT_TOLERANCE, WINSORIZE

__all__ = ["main"]

#: The demo's second modality: b = sin(3 pi a)^2, non-monotonic (a and 1/3 - a look alike),
#: so MI sees the dependency while Pearson's correlation is near zero.
REMAP = "sin(3*pi*a)^2"
ROTATION_DEG = 10.0


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


#: glibc malloc settings of the ``mi`` process (``mallopt``): blocks up to 256 MiB from the
#: heap, and up to 1 GiB of freed heap kept for reuse. With glibc's defaults, the per-iteration
#: temporaries of a registration on the CPU go back to the system after every step and come back
#: as fresh zeroed pages, page fault by page fault (millions in a 1 mm brain registration).
MALLOC_SETTINGS = {-3: 256 * 2**20, -1: 2**30}  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def keep_freed_memory() -> bool:
    """Apply ``MALLOC_SETTINGS`` to this process, on Linux with glibc, unless the caller chose
    an allocator (a ``MALLOC_*`` variable or ``LD_PRELOAD`` in the environment). Returns
    whether it did. Only the ``mi`` executable calls it (``command``; not ``main``, which a
    program may call in its own process): a library leaves its host's allocator alone (the
    README's CPU notes give the same settings as environment variables)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "LD_PRELOAD" in os.environ or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.items())


# ---------------------------------------------------------------- reading images


def _float_range(text: str):
    """--range: "auto" or "lo,hi"."""
    if text == "auto":
        return "auto"
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected "auto" or "lo,hi", got {text!r}') from None
    if not hi > lo:
        raise argparse.ArgumentTypeError(f"expected lo < hi, got {text!r}")
    return (lo, hi)


def read_image(path) -> np.ndarray:
    """A grey image or volume as float32 (H, W) or (D, H, W): :func:`mi.io.read_image`.

    Raises :class:`mi.io.ImageReadError` (a ValueError: one line, exit status 2)."""
    from .io import read_image as read

    return read(path)


def _shape(a: np.ndarray) -> str:
    return "x".join(map(str, a.shape))


# ---------------------------------------------------------------- the numbers


def scores(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, **kw
) -> dict[str, torch.Tensor]:
    """MI, its normalisations and the entropies of each pair of a batch: {name: (B,)}.

    x, y: (B, 1, *spatial); mask: None or non-negative voxel weights of x's shape; kw:
    num_bins, sigma (bin widths), value_range, as for :func:`mi.mutual_information`. One
    joint histogram per pair gives every number (what ``mi.mutual_information(x, y,
    normalize=..., mask=mask, **kw)`` computes, without recomputing it). Entropies and MI
    in nats; "pearson" is the plain (weighted) correlation coefficient, printed for contrast.
    """
    joint = mi.joint_histogram(x, y, mask=mask, **kw)
    h_a, h_b, h_ab = mi.entropies_from_joint(joint)
    nats = mi.mutual_information_from_joint(joint, "none")
    xf, yf = x.flatten(1).double(), y.flatten(1).double()
    w = torch.ones_like(xf) if mask is None else mask.flatten(1).double().expand_as(xf)
    w = w / w.sum(1, keepdim=True)
    xf, yf = xf - (w * xf).sum(1, keepdim=True), yf - (w * yf).sum(1, keepdim=True)
    denom = ((w * xf * xf).sum(1) * (w * yf * yf).sum(1)).sqrt().clamp_min(1e-300)
    return {
        "mi": nats,
        "mi_bits": nats / math.log(2),
        "arithmetic": mi.mutual_information_from_joint(joint, "arithmetic"),
        "studholme": mi.mutual_information_from_joint(joint, "studholme"),
        "h_a": h_a,
        "h_b": h_b,
        "h_ab": h_ab,
        "pearson": (w * xf * yf).sum(1) / denom,
    }


ROWS = (
    ("mi", "MI (nats)"),
    ("mi_bits", "MI (bits)"),
    ("arithmetic", "NMI arithmetic 2I/(H(a)+H(b))"),
    ("studholme", "NMI Studholme (H(a)+H(b))/H(a,b)"),
    ("h_a", "H(a) (nats)"),
    ("h_b", "H(b) (nats)"),
    ("h_ab", "H(a,b) (nats)"),
    ("pearson", "Pearson correlation (contrast)"),
)


def _fixed(v: float, digits: int) -> str:
    """``v`` to ``digits`` decimals, without the sign of a rounding error's -0.0000."""
    text = f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0.0 else text


def _print_table(values: dict[str, torch.Tensor], columns: list[str]) -> None:
    width = max(len(label) for _, label in ROWS)
    print(" " * width + "".join(f"  {c:>22}" for c in columns))
    for key, label in ROWS:
        print(f"{label:<{width}}" + "".join(f"  {_fixed(float(v), 4):>22}" for v in values[key]))


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path.resolve()


# ---------------------------------------------------------------- demo


def _demo_image(which: str) -> tuple[np.ndarray, str]:
    """A real grey picture in [0, 1] from matplotlib's sample data, and its description."""
    from matplotlib import cbook
    from PIL import Image

    if which == "photo":
        with cbook.get_sample_data("grace_hopper.jpg") as f, Image.open(f) as img:
            a = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        return a, "grace_hopper.jpg (photograph, matplotlib sample data)"
    path = cbook.get_sample_data("s1045.ima.gz", asfileobj=False)
    with gzip.open(path) as f:  # 256 x 256 big-endian uint16 MRI slice
        a = np.frombuffer(f.read(), ">u2").reshape(256, 256).astype(np.float32)
    return a / a.max(), "s1045.ima.gz (MRI slice, matplotlib sample data)"


def _rotate(a: np.ndarray, degrees: float) -> np.ndarray:
    """Rotated about the centre (bilinear, same size, corners filled with 0)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))  # mode "F"
    return np.asarray(img.rotate(degrees, resample=Image.Resampling.BILINEAR), np.float32)


def _remap(a: np.ndarray) -> np.ndarray:
    return np.sin(3 * np.pi * a) ** 2


def cmd_demo(args) -> int:
    a, what = _demo_image(args.image)
    b_aligned = _remap(a)
    b_rotated = _remap(_rotate(a, ROTATION_DEG))
    kw = dict(num_bins=args.bins, sigma=args.sigma, value_range=(0.0, 1.0))
    x = torch.from_numpy(np.stack([a, a]))[:, None]  # (2, 1, H, W): one batch, two pairs
    y = torch.from_numpy(np.stack([b_aligned, b_rotated]))[:, None]
    values = scores(x, y, **kw)
    print(f"image a: {what}, {_shape(a)}, grey in [0, 1]")
    print(f"image b: a second 'modality' of a: b = {REMAP}, unrotated and rotated {ROTATION_DEG:g} deg")
    print(f"soft histograms: {args.bins} bins over [0, 1], Gaussian sigma {args.sigma:g} bin widths")
    print()
    _print_table(values, ["a vs b (aligned)", f"a vs b rotated {ROTATION_DEG:g} deg"])
    aligned, rotated = (float(v) for v in values["mi"])
    verdict = ">" if aligned > rotated else "<="
    print(f"\naligned MI {aligned:.4f} {verdict} rotated MI {rotated:.4f} nats: MI peaks at alignment,")
    r_aligned, r_rotated = (float(v) for v in values["pearson"])
    print(
        f"whatever the intensity mapping; Pearson's correlation ({r_aligned:+.3f} aligned, "
        f"{r_rotated:+.3f} rotated) does not see it."
    )

    from mi.plots import plot_histogram, plot_joint_histogram

    out = Path(args.out)
    paths = [
        _save(
            plot_histogram(a, num_bins=args.bins, sigma=args.sigma, title=f"a: {what.split()[0]}"),
            out / "hist.png",
        ),
        _save(
            plot_joint_histogram(a, b_rotated, titles=("a", f"b rotated {ROTATION_DEG:g} deg"), **kw),
            out / "jointhist.png",
        ),
        _save(
            plot_joint_histogram(a, b_aligned, titles=("a", f"b = {REMAP}"), **kw),
            out / "jointhist_aligned.png",
        ),
    ]
    print()
    for p in paths:
        print(f"wrote {p}")
    return 0


# ---------------------------------------------------------------- score


def _b_on_grid_of_a(args, a, image_a, b, image_b) -> tuple:
    """``(b, weights, note)``: what ``mi score`` compares with ``a``.

    Two medical files whose voxels lie at different physical points (size, spacing, origin
    or direction differ): b resampled onto a's grid in physical space (identity transform
    in mm; linear, as ITK's ``Resample`` with default 0), and the weights of a's voxels,
    0 where b does not reach (1 inside b, 1/2 to 1 over the half voxel past its edge
    voxels' centres, as the registration's scores: ``overlap_weight(..., itk=True)``).
    Otherwise (same grid, a file without geometry, or ``--voxels``) the arrays as stored,
    which need one shape, and weights None.

    NaN and Inf voxels are outside their image: a's weigh 0, and so do the voxels where b's
    are (b's value read as 0), or, resampled, where b's interpolation reads one
    (:func:`mi.registration.space.interpolable`).
    """
    from .registration.space import Geometry, finite_part, voxel_matrix, warp

    (a, va), (b, vb) = (finite_part(torch.from_numpy(x)) for x in (a, b))
    if image_a is None or image_b is None or args.voxels:
        if a.shape != b.shape:
            why = "" if args.voxels else " (only medical files carry where their voxels lie)"
            raise CLIError(
                f"images differ in shape: {args.a} is {_shape(a)}, {args.b} is {_shape(b)}{why}: "
                "resample one onto the other first, or mi register them"
            )
        return b.numpy(), _finite_weights(va, vb, args), None
    ga, gb = Geometry.of_sitk(image_a, args.a), Geometry.of_sitk(image_b, args.b)
    if ga.dim != gb.dim:
        raise CLIError(
            f"{args.a} is {ga.dim}-D and {args.b} is {gb.dim}-D: nothing to compare point by point"
        )
    names = ga.differences(gb)
    if not names:
        return b.numpy(), _finite_weights(va, vb, args), None
    d = ga.dim
    identity = torch.eye(d + 1, dtype=torch.float64)
    valid = None if vb is None else vb[None, None]
    warped, weights = warp(b[None, None], voxel_matrix(identity, ga, gb), ga.shape, valid)
    if va is not None:
        weights = weights * va
    covered = int((weights > 0).sum())
    if covered == 0:
        raise CLIError(
            f"{args.b} covers none of {args.a}'s voxels in physical space (their grids differ in "
            f"{', '.join(names)}): nothing to compare (mi register --initial geometry aligns their centres; "
            "--voxels compares the arrays as stored)"
        )
    note = (
        f"b resampled onto a's grid in mm (they differ in {', '.join(names)}; linear, as ITK's Resample), "
        f"scored where b covers a: {covered} of {a.numel()} voxels (--voxels: the arrays as stored)"
    )
    return warped[0, 0].numpy(), weights[0, 0].numpy(), note


def _finite_weights(va, vb, args):
    """The voxels finite in both images (1) or not (0), as a numpy array; None when all are.
    CLIError when none is."""
    if va is None and vb is None:
        return None
    w = va if vb is None else vb if va is None else va * vb
    if not (w > 0).any():
        raise CLIError(f"no voxel is finite in both {args.a} and {args.b}: nothing to score")
    return w.numpy()


def cmd_score(args) -> int:
    from .io import read_image_and_grid

    (a, image_a), (b, image_b) = (read_image_and_grid(p, allow_nonfinite=True) for p in (args.a, args.b))
    nonfinite = [(p, int((~np.isfinite(x)).sum()), x.size) for p, x in ((args.a, a), (args.b, b))]
    out = Path(args.out)
    if not args.no_plots and out.exists() and not out.is_dir():
        raise CLIError(f"--out {args.out} is a file, not a folder for the pictures")
    shape_b = _shape(b)
    b, weights, note = _b_on_grid_of_a(args, a, image_a, b, image_b)
    kw = dict(num_bins=args.bins, sigma=args.sigma, value_range=args.range)
    mask = None if weights is None else torch.from_numpy(weights)[None, None]
    finite_a = np.isfinite(a)
    a = np.where(finite_a, a, np.float32(0.0))
    values = scores(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], mask=mask, **kw)
    if args.range == "auto":
        rng = "each image's own min..max" + ("" if note is None else " where b covers a")
    else:
        rng = f"{args.range[0]:g}..{args.range[1]:g}"
    print(f"a: {args.a} ({_shape(a)})")
    print(f"b: {args.b} ({shape_b})")
    if note is not None:
        print(note)
    for path, count, size in nonfinite:
        if count:
            print(f"{path}: {count} of {size} voxels are NaN or Inf: outside the image, left out")
    print(f"soft histograms: {args.bins} bins over {rng}, Gaussian sigma {args.sigma:g} bin widths")
    print()
    _print_table(values, ["a vs b"])
    key = {"none": "mi"}.get(args.normalize, args.normalize)
    print(f"\nscore (normalize={args.normalize}): {_fixed(float(values[key][0]), 6)}")
    if not args.no_plots:
        from mi.plots import plot_histogram, plot_joint_histogram

        print()
        p = _save(
            plot_histogram(
                a,
                num_bins=args.bins,
                sigma=args.sigma,
                value_range=args.range,
                title=f"a: {Path(args.a).name}",
                mask=None if finite_a.all() else finite_a,
            ),
            out / "hist.png",
        )
        print(f"wrote {p}")
        titles = (f"a: {Path(args.a).name}", f"b: {Path(args.b).name}" + (" on a's grid" if note else ""))
        p = _save(plot_joint_histogram(a, b, titles=titles, mask=weights, **kw), out / "jointhist.png")
        print(f"wrote {p}")
    return 0


def _fraction_or_count(text: str):
    """--sampling: "auto", "0.2" (a fraction; "1": every voxel) or "50000" (a count)."""
    if text == "auto":
        return text
    try:
        return 1.0 if int(text) == 1 else int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction in (0, 1], a voxel count or auto, got {text!r}"
        ) from None


def _quantiles(text: str):
    """--winsorize: "LO,HI" (quantiles) or "none"."""
    if text.lower() == "none":
        return None
    try:
        lo, hi = (float(q) for q in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LO,HI (quantiles, e.g. 0.005,0.995) or none, got {text!r}"
        ) from None
    return lo, hi


def busy_cores_note() -> str | None:
    """A note for ``mi register`` when other work keeps this machine's cores busy (its 1-minute
    load average at least its core count) and torch runs several threads that spin-wait
    (``OMP_WAIT_POLICY`` unset): the README's advice, measured there (53 s against 12 s on 2
    shared cores). The command only says it: the setting must come before Python starts."""
    if "OMP_WAIT_POLICY" in os.environ or not hasattr(os, "getloadavg") or torch.get_num_threads() < 2:
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load < cores:
        return None
    return (
        f"mi: note: this machine is busy (load average {load:.1f} on {cores} cores): torch's threads "
        "spin-wait while they share the cores, which can make a registration several times slower; "
        "run with OMP_WAIT_POLICY=PASSIVE (or OMP_NUM_THREADS=1) set in the environment"
    )


def cmd_register(args) -> int:
    from PIL import Image

    from . import register as reg

    note = busy_cores_note()
    if note and not args.quiet:
        print(note, file=sys.stderr)
    its = args.iterations[0] if args.iterations is not None and len(args.iterations) == 1 else args.iterations
    kw = dict(levels=args.levels, iterations=its, lr=args.lr, progress=not args.quiet, num_bins=args.bins)
    kw.update(sampling=args.sampling, sampling_strategy=args.strategy, tolerance=args.tolerance)
    kw.update(winsorize=args.winsorize)
    if args.fixed is not None:
        kw.update(mask=args.mask, moving_mask=args.moving_mask, initial=args.initial)
    if args.transform in ("bspline", "diffeomorphic"):
        kw.update(grid_spacing=args.grid_spacing, bending=args.bending)
    if (args.fixed is None) != (args.moving is None):
        raise CLIError("give both FIXED and MOVING, or neither for the demo pair")
    if args.fixed is None:
        given = [f"--{n.replace('_', '-')}" for n in ("mask", "moving_mask", "initial") if getattr(args, n)]
        if given:
            raise CLIError(f"{', '.join(given)} need FIXED and MOVING (the demo pair takes none)")
    if args.fixed is not None:
        reg.run_cli(args.fixed, args.moving, args.out, args.transform, **kw)
        return 0
    fixed, moving, true = reg.demo_pair()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, img in (("demo_fixed.png", fixed), ("demo_moving.png", moving)):
        paths.append(out / name)
        Image.fromarray(np.round(np.clip(np.asarray(img), 0, 1) * 255).astype(np.uint8)).save(paths[-1])
    print(
        f"demo pair: {paths[0]} and {paths[1]} (the photograph, and a copy rotated 7 deg, "
        "shifted (6, -4) px and remapped sin(3x)^2)"
    )
    result = reg.run_cli(paths[0], paths[1], out, args.transform, **kw)["result"]
    if args.transform in ("bspline", "diffeomorphic"):  # not a matrix: the mean error over the pixels
        h, w = result.fixed_shape
        pts = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(h), indexing="xy"), -1).reshape(-1, 2)
        pts = pts.double()
        want = pts @ true[:2, :2].T + true[:2, 2]
        err = (result.transform_points(pts) - want).norm(dim=1)
        print(f"error against the known transform: {err.mean():.3f} px mean, {err.max():.3f} px at most")
        return 0
    angle, centre, corner = reg.transform_error(result.matrix, true, result.fixed_shape)
    print(
        f"error against the known transform: rotation {angle:.3f} deg, {centre:.3f} px at the "
        f"centre, {corner:.3f} px at the worst corner"
    )
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mi",
        description="Soft (differentiable) histograms and mutual information of images.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, out_help):
        p.add_argument(
            "--bins", type=int, default=256, metavar="K", help="number of bins (default 256, as the seed)"
        )
        p.add_argument(
            "--sigma",
            type=float,
            default=0.4,
            metavar="S",
            help="Gaussian kernel std in bin widths (default 0.4, as the seed)",
        )
        p.add_argument("-o", "--out", default="out", metavar="DIR", help=f"{out_help} (default ./out/)")

    demo = sub.add_parser(
        "demo",
        help="MI of a real image and a remapped, rotated copy; pictures",
        description="Takes a real picture that ships with matplotlib, makes a second "
        "'modality' of it (b = sin(3 pi a)^2, unrotated and rotated 10 "
        "degrees), prints MI, normalised MI and entropies of both pairs, and "
        "draws the histogram and joint histogram pictures.",
    )
    common(demo, "where hist.png, jointhist.png (rotated pair) and jointhist_aligned.png go")
    demo.add_argument(
        "--image",
        choices=("photo", "mri"),
        default="photo",
        help="photo: grace_hopper.jpg; mri: s1045.ima.gz (default photo)",
    )
    demo.set_defaults(func=cmd_demo)

    score = sub.add_parser(
        "score",
        help="MI of two image files (PNG/JPEG, .npy, NIfTI/NRRD/MHA, .mgz)",
        description="Mutual information of two images: of one shape, or two medical files on "
        "any grids (b is resampled onto a's grid in mm, and scored where it covers a). "
        "PNG/JPEG are read as grey in [0, 1]; .npy and .nii/.nii.gz/.nrrd/.mha "
        "(read with SimpleITK) keep their values.",
    )
    score.add_argument("a", help="first image file (or DICOM series folder)")
    score.add_argument("b", help="second image file (or DICOM series folder)")
    common(score, "where hist.png (of A) and jointhist.png go")
    score.add_argument(
        "--range",
        type=_float_range,
        default="auto",
        metavar="auto|LO,HI",
        help="intensities mapped onto the bins: auto = each image's own "
        "min..max (default), or LO,HI for both",
    )
    score.add_argument(
        "--normalize",
        choices=("none", "arithmetic", "studholme"),
        default="none",
        help="which number the final 'score' line gives (default none: plain MI in nats)",
    )
    score.add_argument(
        "--voxels",
        action="store_true",
        help="compare the voxel arrays as stored (one shape), even where two medical files put their "
        "voxels at different points in mm (default: b is resampled onto a's grid in mm)",
    )
    score.add_argument("--no-plots", action="store_true", help="write no pictures")
    score.set_defaults(func=cmd_score)

    reg = sub.add_parser(
        "register",
        help="align MOVING to FIXED by maximising MI (rigid/affine/B-spline/diffeomorphic)",
        description="Rigid, affine or deformable (an affine stage, then a cubic B-spline grid, or "
        "the diffeomorphism of a velocity on one) "
        "registration of MOVING onto FIXED (2-D "
        "PNG/JPEG/.npy, 3-D .npy, NIfTI, NRRD, MHA, FreeSurfer .mgz, or a DICOM series: its folder "
        "or one of its files) by maximising normalised MI over a pyramid, in physical space (mm) for medical "
        "formats. Prints the transform "
        "(fixed physical (x, y[, z]) -> moving physical, ITK's convention) and MI before/after; "
        "writes the moving image resampled onto the fixed grid (in the fixed file's format, "
        "with its geometry), the ITK transform file, the matrix and a before/after picture. "
        "With no files: the demo pair (a photograph, and a copy rotated 7 deg, shifted "
        "(6, -4) px and remapped sin(3x)^2), and the error against the known transform.",
    )
    reg.add_argument("fixed", nargs="?", help="fixed image (omit both for the demo pair)")
    reg.add_argument("moving", nargs="?", help="moving image, same number of dimensions")
    reg.add_argument("-o", "--out", default="out", metavar="DIR", help="output folder (default ./out/)")
    reg.add_argument(
        "--transform",
        choices=("rigid", "affine", "bspline", "diffeomorphic"),
        default="rigid",
        help="bspline: an affine stage, then a B-spline free-form deformation; diffeomorphic: an affine "
        "stage, then the exponential of a B-spline velocity field (invertible by construction)",
    )
    reg.add_argument(
        "--grid-spacing",
        type=float,
        default=20.0,
        metavar="MM",
        help="bspline/diffeomorphic control points (mm) at the finest level (the grid starts coarser "
        "and is refined; default 20)",
    )
    reg.add_argument(
        "--bending", type=float, default=1.0, help="bspline/diffeomorphic bending-energy weight (default 1)"
    )
    reg.add_argument(
        "--levels",
        type=int,
        default=None,
        help="pyramid levels (default: as many as --iterations gives, else 3, or more while the coarsest "
        "level keeps over 96 voxels along an axis: 4 from 388 voxels, 5 from 776; fewer where a level "
        "would keep under 768 voxels (in --mask, if given): 2 below about 112x112 pixels or 40^3 "
        "voxels, 1 below 56x56 or 20^3)",
    )
    reg.add_argument(
        "--iterations",
        type=int,
        nargs="+",
        default=None,
        help="Adam steps per level, coarsest first (one value: all levels; several: one per level, "
        "which sets the levels)",
    )
    reg.add_argument(
        "--lr",
        type=float,
        default=None,
        help="step in mm (pixels without geometry; default: half the fixed image's smallest voxel spacing)",
    )
    reg.add_argument("--bins", type=int, default=32, help="histogram bins (default 32)")
    reg.add_argument(
        "--sampling",
        type=_fraction_or_count,
        default=DEFAULT_SAMPLING,
        metavar="F|N",
        help="fixed voxels resampled per iteration: a fraction in (0, 1], a count (at least 64), or "
        f"auto (default {DEFAULT_SAMPLING}: see mi.register; 1 or 1.0: every voxel); a fraction or "
        "count gives at least 768 per level (fewer misled MI on small images)",
    )
    reg.add_argument(
        "--strategy", choices=("random", "regular"), default="random", help="how voxels are sampled"
    )
    reg.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE, help="convergence test per level (0: off)"
    )
    reg.add_argument(
        "--winsorize",
        type=_quantiles,
        default=WINSORIZE,
        metavar="LO,HI|none",
        help="the loss sees each image's intensities clamped to these quantiles (within its mask; "
        f"default {WINSORIZE[0]},{WINSORIZE[1]}, as ANTs' scripts: a few extreme voxels no longer "
        "squeeze the anatomy into a few bins); none: every intensity as it is (ITK's metrics)",
    )
    reg.add_argument("--mask", metavar="FILE", help="fixed-image mask (its grid)")
    reg.add_argument("--moving-mask", metavar="FILE", help="moving-image mask (its grid)")
    reg.add_argument(
        "--initial",
        metavar="TFM",
        help="initial ITK transform file (fixed -> moving), or geometry (align the grids' centres) "
        "or moments (align the centres of mass): for scans whose positions are unrelated",
    )
    reg.add_argument("--quiet", action="store_true", help="no progress bar")
    reg.set_defaults(func=cmd_register)
    return parser


def _attach_range(argv) -> list:
    """``--range -1,1`` -> ``--range=-1,1``: argparse takes a value that starts with "-" and is
    not a plain number for an option, and would say that --range expects an argument."""
    out = []
    for a in argv:
        if out and out[-1] == "--range" and re.match(r"-(\.?\d|inf|nan)", a, re.IGNORECASE):
            out[-1] = f"--range={a}"
        else:
            out.append(a)
    return out


def main(argv=None) -> int:
    """Run the ``mi`` command with argv (default sys.argv[1:]); returns the exit status.

    User errors (missing or unreadable file, mismatched shapes, bad values, a missing
    optional package) print one line ``mi: error: ...`` to stderr and give 2; argparse's
    own errors also give 2.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(_attach_range(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # --help (0) or a usage error (2): return, don't exit
        return int(e.code or 0)
    try:
        return args.func(args)
    except (CLIError, ValueError, OSError, ImportError) as e:  # (ImportError: "pip install ...")
        print(f"mi: error: {e}", file=sys.stderr)
        return 2


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """The ``mi`` command's warnings: ``mi: warning: ...``, as its errors (not Python's
    ``file:line: UserWarning:`` and a line of the command's own code)."""
    return f"mi: warning: {message}\n"


def command() -> int:
    """The ``mi`` executable and ``python -m mi``: ``main()`` in a process of its own, whose
    allocator keeps freed memory (``keep_freed_memory``) and whose warnings are one line
    (``_warning_line``)."""
    keep_freed_memory()
    warnings.formatwarning = _warning_line
    return main()


if __name__ == "__main__":
    sys.exit(command())
