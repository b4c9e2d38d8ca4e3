"""Files in and out of a registration: the outputs of ``mi register`` and its picture.

Reading goes through the project's one reader (:mod:`mi.io`; medical formats with their
geometry, :func:`mi.registration.space.read_path`). Writing: the warped moving image on the
fixed grid, in the fixed image's format and with its geometry (NIfTI, NRRD, MHA: spacing,
origin, direction, so a viewer shows it in place over the fixed image), the ITK transform
file, the matrix as text, and a before/after picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..functional import joint_histogram, mutual_information
from ..io import MEDICAL_SUFFIXES, MGH_SUFFIXES, ImageReadError, is_dicom, is_medical, read_image
from .deformable import DEFORMABLE, DeformableResult, DiffeomorphicResult, check_grid, register_deformable
from .optim import SCORE, RegistrationResult, register
from .space import _sitk, as_image, finite_part, geometry_of, voxel_matrix, warp


class RegisterError(ValueError):
    """A user error of the ``mi register`` command (bad file, unknown format)."""


def load_image(path) -> np.ndarray:
    """A grey image or volume as float32 (H, W) or (D, H, W): :func:`mi.io.read_image` (the
    array only; :func:`mi.register` reads the geometry too). PNG/JPEG/TIFF come as grey, 8-bit
    scaled to [0, 1] and 16-bit by 65535; .npy, 32-bit and float images and the medical
    formats keep their values (:mod:`mi.io`). Raises :class:`RegisterError`."""
    try:
        return read_image(path)
    except ImageReadError as e:
        raise RegisterError(str(e)) from None


def _unit(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _slices(x: np.ndarray, spacing) -> list:
    """[(2-D slice, aspect, name, origin)]: the image itself in 2-D; in 3-D the three
    orthogonal slices through the centre (axial z, coronal y, sagittal x), each with the
    aspect of its voxels (mm per row / mm per column), the z axis drawn upwards."""
    if x.ndim == 2:
        return [(x, spacing[1] / spacing[0], "", "upper")]
    z, y, k = (s // 2 for s in x.shape)
    sx, sy, sz = spacing
    return [  # (slice, aspect, name, imshow origin: the slice axis z drawn upwards)
        (x[z], sy / sx, "axial", "upper"),
        (x[:, y, :], sz / sx, "coronal", "lower"),
        (x[:, :, k], sz / sy, "sagittal", "lower"),
    ]


def save_figure(path, result: RegistrationResult, fixed, moving) -> Path:
    """Write :func:`registration_figure` to ``path`` (PNG); returns the path."""
    path = Path(path)
    registration_figure(result, fixed, moving).savefig(path, dpi=90)
    return path


def registration_figure(result: RegistrationResult, fixed, moving):
    """Before/after picture (a matplotlib Figure): colour overlays of the fixed image
    (magenta) and the moving image resampled onto it (green), by the identity (the files'
    own placement) and by the result (3-D: three orthogonal slices through the centre, in
    physical proportions), with the normalised MI of each over its overlap, and the 64-bin
    joint histograms (log colour scale) of each, over the overlap. ``fixed``, ``moving``:
    the registered images (anything :func:`mi.register` accepts)."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    (f, vf), (m, vm) = (
        finite_part(as_image(n, x, "cpu", nonfinite=True)[0])
        for n, x in (("fixed", fixed), ("moving", moving))
    )
    gf, gm = result.fixed_geometry, result.moving_geometry
    eye = torch.eye(result.dim + 1, dtype=torch.float64)
    if isinstance(result, DeformableResult):  # its warp is not a matrix: the result's own image
        after = (result.warped.reshape(f.shape).cpu(), result.overlap.reshape(f.shape).cpu())
    else:
        after = warp(m, result.matrix, f.shape[2:], vm)
    before = warp(m, voxel_matrix(eye, gf, gm), f.shape[2:], vm)
    if vf is not None:  # (the fixed image's NaN voxels: outside it)
        after, before = ((w, o * vf) for w, o in (after, before))
    # each panel's NMI is that of what it draws, over its overlap (result.mi_before is at the
    # start transform, an initial= one or the affine stage's, and both scores count the masks)
    cases = [
        (label, (w, o), mutual_information(f, w, mask=o, **SCORE).item())
        for label, (w, o) in (("before (identity)", before), ("after", after))
    ]
    cols = 1 if result.dim == 2 else 3
    fig = Figure(figsize=(4.2 * max(cols, 2), 3.6 * 3 if cols == 3 else 8), layout="constrained")
    grid = fig.add_gridspec(3 if cols == 3 else 2, max(cols, 2))
    cmap = colormaps["magma"].with_extremes(bad="black", under="black")  # empty bins: black
    for row, (label, (warped, overlap), score) in enumerate(cases):
        pairs = zip(_slices(f[0, 0].numpy(), gf.spacing), _slices(warped[0, 0].numpy(), gf.spacing))
        for col, ((fa, aspect, name, origin), (wa, *_)) in enumerate(pairs):
            ax = fig.add_subplot(grid[row, col] if cols == 3 else grid[0, row])
            fa, wa = _unit(fa), _unit(wa)
            ax.imshow(np.stack([fa, wa, fa], -1), aspect=aspect, origin=origin)
            ax.set_title(f"{label} {name}: fixed magenta / moving green, NMI {score:.4f}", fontsize=8)
            ax.axis("off")
        j = joint_histogram(f, warped, num_bins=64, mask=overlap)[0].numpy()
        ax = fig.add_subplot(grid[-1, row])
        pos = j[j > 0]
        norm = LogNorm(vmin=max(pos.min(), j.max() * 1e-5), vmax=j.max()) if pos.size else None
        im = ax.imshow(j, origin="lower", cmap=cmap, norm=norm)
        ax.set_title(f"joint histogram {label} (log scale)", fontsize=9)
        ax.set_xlabel("moving intensity bin")
        ax.set_ylabel("fixed intensity bin")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"mi register ({result.transform}, {result.dim}-D)")
    return fig


def describe(result) -> str:
    unit = result.fixed_geometry.unit if result.fixed_geometry is not None else "px"
    axes = "(x, y)" if result.dim == 2 else "(x, y, z)"
    if isinstance(result, DeformableResult):
        u = result.displacement_field().norm(dim=0)
        grid = "x".join(map(str, result.grid.size))
        spacing = ", ".join(f"{s:.1f}" for s in result.grid.spacing)
        model = f"B-spline deformation (applied first): {grid} control points, spacing ({spacing}) {unit}"
        if isinstance(result, DiffeomorphicResult):
            nodes = "x".join(map(str, result.nodes.size))
            model = (
                f"diffeomorphic deformation (applied first): the exponential of a velocity on {grid} "
                f"B-spline control points, spacing ({spacing}) {unit}, kept on {nodes} nodes"
            )
        return "\n".join([
            f"affine stage, fixed physical {axes} -> moving physical {axes}:",
            np.array2string(result.affine.numpy(), precision=5, suppress_small=True),
            f"{model}; displacement mean {u.mean():.3f}, max {u.max():.3f} {unit}; folding (Jacobian <= 0) "
            f"{100 * result.folding_fraction():.3f} % of the voxels",
            f"normalised MI (Studholme, 1..2): affine {result.mi_before:.4f}  "
            f"deformable {result.mi_after:.4f}  ({result.seconds:.1f} s)",
        ])  # fmt: skip
    lines = [
        f"transform ({result.transform}), fixed physical {axes} -> moving physical {axes}:",
        np.array2string(result.physical.numpy(), precision=5, suppress_small=True),
    ]
    t = ", ".join(f"{v:+.3f}" for v in result.translation.tolist())
    if result.dim == 2:
        lines.append(f"rotation {result.angle_deg:+.3f} deg about the centre, translation ({t}) {unit}")
    else:
        rv = ", ".join(f"{v:+.3f}" for v in result.rotation_vector_deg.tolist())
        lines.append(f"rotation vector ({rv}) deg about the centre, translation ({t}) {unit}")
    lines.append(
        f"normalised MI (Studholme, 1..2): before {result.mi_before:.4f}  after {result.mi_after:.4f}"
        f"  ({result.seconds:.1f} s)"
    )
    return "\n".join(lines)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in MEDICAL_SUFFIXES if name.endswith(s)), path.suffix.lower())


def _stem(path: Path) -> str:
    """The outputs' prefix: the moving file's name without its format's suffix
    (``case1.t2.nii.gz``: ``case1.t2``, so that ``case1.flair.mha`` beside it gets other
    names); a DICOM folder's whole name."""
    if path.is_dir():
        return path.name
    suffix = _suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix and len(suffix) < len(path.name) else path.name


def write_warped(path_stem: Path, result: RegistrationResult, fixed_path: Path, moving_values) -> Path:
    """The warped image on the fixed grid, in the fixed file's format: medical formats (a
    DICOM series and FreeSurfer's MGH: NIfTI) with the fixed geometry; PNG/JPEG scaled to the moving image's
    min..max (8-bit); .npy with its values."""
    warped = result.warped.detach().cpu().reshape(result.fixed_shape).numpy()
    if is_medical(fixed_path):
        suffix = _suffix(fixed_path)
        if fixed_path.is_dir() or is_dicom(fixed_path) or suffix in MGH_SUFFIXES:  # (SimpleITK's: NIfTI)
            suffix = ".nii.gz"
        if suffix in (".nhdr", ".mhd"):  # headers with a separate data file: write the one-file form
            suffix = {".nhdr": ".nrrd", ".mhd": ".mha"}[suffix]
        out = Path(f"{path_stem}{suffix}")
        _sitk().WriteImage(result.warped_image(), str(out))
        return out
    if warped.ndim == 2 and _suffix(fixed_path) != ".npy":
        from PIL import Image

        lo, hi = float(moving_values.min()), float(moving_values.max())
        scaled = np.clip((warped - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
        out = Path(f"{path_stem}.png")
        Image.fromarray(np.round(scaled * 255.0).astype(np.uint8)).save(out)
        return out
    out = Path(f"{path_stem}.npy")
    np.save(out, warped)
    return out


def _check_outputs(out: Path, stem: str, inputs) -> None:
    """Refuse an output folder where the outputs (``<stem>_registered.*``,
    ``_transform.*``, ``_matrix.txt``, ``_registration.png``) would overwrite an input file."""
    if out.exists() and not out.is_dir():
        raise RegisterError(f"the output folder {out} is a file")
    names = (f"{stem}_registered.", f"{stem}_transform.", f"{stem}_matrix.txt", f"{stem}_registration.png")
    for p in inputs:
        if isinstance(p, (str, Path)) and Path(p).exists():
            p = Path(p).resolve()
            if p.parent == out.resolve() and p.name.startswith(names):
                raise RegisterError(
                    f"the outputs in {out} would overwrite the input {p.name}: choose another -o"
                )


def run_cli(
    fixed_path,
    moving_path,
    out_dir=".",
    transform: str = "rigid",
    *,
    progress: bool = True,
    **kwargs,
) -> dict:
    """Register two image files (or DICOM folders), print the result and write the outputs.

    Runs :func:`mi.register` on the files (their geometry: medical formats register in mm),
    prints the transform (fixed physical -> moving physical), rotation/translation and the
    normalised MI before/after, and writes into ``out_dir`` (created if needed), named after
    the moving file:

    * ``<moving>_registered.<ext>``: the moving image on the fixed grid, in the fixed file's
      format with its geometry (:func:`write_warped`);
    * ``<moving>_transform.tfm``: the ITK transform (SimpleITK, ITK and ANTs read it);
      written when SimpleITK is installed; for ``transform="bspline"`` or ``"diffeomorphic"``
      ``.h5``, the composite of the affine stage and the deformation (:func:`register_deformable`,
      after an affine :func:`mi.register`; ``grid_spacing`` (mm) and ``bending`` in ``kwargs``);
    * ``<moving>_matrix.txt``: the (affine) matrix as text (numpy.savetxt);
    * ``<moving>_registration.png``: the before/after picture (:func:`save_figure`).

    ``kwargs`` go to :func:`mi.register` (levels, iterations, lr, sampling, masks, ...).
    NaN and Inf voxels (kept from NIfTI files: :func:`mi.io.read_medical`) are outside their
    image, as :func:`mi.register` has them; a line says how many there are.
    Returns ``{"warped", "figure", "matrix", "transform" (or None): Path, "result"}``.
    Raises :class:`RegisterError` (a ValueError) for unreadable files.
    """
    fixed_path, moving_path = Path(fixed_path), Path(moving_path)
    from .space import read_path

    try:
        fixed, moving = read_path(fixed_path), read_path(moving_path)
    except ImageReadError as e:
        raise RegisterError(str(e)) from None
    except ImportError as e:
        raise RegisterError(str(e)) from None
    out, stem = Path(out_dir), _stem(moving_path)
    inputs = [fixed_path, moving_path] + [kwargs.get(k) for k in ("mask", "moving_mask", "initial")]
    _check_outputs(out, stem, inputs)  # before the work
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RegisterError(f"cannot create the output folder {out}: {e.strerror or e}") from None
    for path, image in ((fixed_path, fixed), (moving_path, moving)):
        values = image if isinstance(image, np.ndarray) else _sitk().GetArrayViewFromImage(image)
        count = int(values.size - np.isfinite(values).sum())
        if count:
            print(f"{path}: {count} of {values.size} voxels are NaN or Inf: outside the image")
    if transform in DEFORMABLE:  # an affine stage, then the deformation on top
        spacing, bending = kwargs.pop("grid_spacing", 20.0), kwargs.pop("bending", 1.0)
        check_grid(spacing, bending, geometry_of("fixed", fixed))  # before the affine stage
        affine = register(fixed, moving, transform="affine", progress=progress, **kwargs)
        kwargs.pop("tolerance", None), kwargs.pop("initial", None)
        result = register_deformable(
            fixed, moving, initial=affine, transform=transform, grid_spacing=spacing, bending=bending,
            progress=progress, **kwargs,
        )  # fmt: skip
    else:
        result = register(fixed, moving, transform=transform, progress=progress, **kwargs)
    print(describe(result))
    moving_values = as_image("moving", moving, "cpu", nonfinite=True)[0]
    moving_values = moving_values[torch.isfinite(moving_values)]  # (for the PNG's scale: min..max)
    try:  # SimpleITK's writers raise RuntimeError; numpy's and save_transform OSError
        warped_path = write_warped(out / f"{stem}_registered", result, fixed_path, moving_values)
        matrix_path = out / f"{stem}_matrix.txt"
        np.savetxt(
            matrix_path, result.physical.numpy(), header="fixed physical (x, y[, z]) -> moving physical"
        )
        try:
            suffix = ".h5" if transform in DEFORMABLE else ".tfm"  # (the composite: HDF5, as ITK prefers)
            transform_path = result.save_transform(out / f"{stem}_transform{suffix}")
        except ImportError:
            transform_path = None
    except (RuntimeError, OSError) as e:
        raise RegisterError(f"cannot write to {out}: {str(e).strip().splitlines()[-1]}") from None
    figure_path = save_figure(out / f"{stem}_registration.png", result, fixed, moving)
    for label, p in (
        ("image", warped_path),
        ("transform", transform_path),
        ("picture", figure_path),
        ("matrix", matrix_path),
    ):
        if p is not None:
            print(f"wrote {label}: {p}")
    return {
        "warped": warped_path,
        "figure": figure_path,
        "matrix": matrix_path,
        "transform": transform_path,
        "result": result,
    }
