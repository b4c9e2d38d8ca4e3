"""The seed's two pictures: an image beside its soft histogram, two images beside their joint one.

Both functions return a :class:`matplotlib.figure.Figure` drawn with the Agg canvas (no
display, no pyplot state); save it with ``fig.savefig("hist.png")`` or show it in a notebook.

Units: images are arrays in their own intensity units (``(H, W)``, or ``(D, H, W)``
volumes, of which the middle slice along the first axis is shown; all voxels are
counted). ``value_range`` is in those units, ``sigma`` in bin widths, as in
:func:`mi.mutual_information`. Histograms are drawn as probability densities (per unit
of intensity), so the soft and the hard histogram share one scale.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

import mi

from .io import as_float32

__all__ = ["plot_histogram", "plot_joint_histogram"]


def _as_numpy(image, name="image") -> np.ndarray:
    """A 2-D or 3-D float32 array of finite values from an array-like or tensor (a leading 1
    is dropped; ``mi.io.as_float32``'s checks)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    a = np.asarray(image)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got {a.dtype}")
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2-D (H, W) or 3-D (D, H, W), got shape {a.shape}")
    return as_float32(a, name)


def _num_bins(num_bins) -> int:
    if isinstance(num_bins, bool) or not isinstance(num_bins, numbers.Integral) or num_bins < 2:
        raise ValueError(f"num_bins must be an int >= 2, got {num_bins!r}")
    return int(num_bins)


def _per_image(value_range) -> tuple:
    """value_range for a and b: one for both, or a pair of them (each (lo, hi) or "auto")."""
    if isinstance(value_range, (tuple, list)) and len(value_range) == 2:
        if all(isinstance(r, str) or isinstance(r, (tuple, list)) for r in value_range):
            return tuple(value_range)
    return value_range, value_range


def _range(a: np.ndarray, value_range) -> tuple[float, float]:
    """(lo, hi) in intensity units; "auto" is the image's own min and max."""
    if isinstance(value_range, str):
        if value_range != "auto":
            raise ValueError(f'value_range must be (lo, hi) or "auto", got {value_range!r}')
        lo, hi = float(a.min()), float(a.max())
        return (lo, hi) if hi > lo else (lo, lo + 1.0)
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range needs lo < hi, got {value_range!r}")
    return lo, hi


def _show(ax, a: np.ndarray, lo: float, hi: float, title: str) -> None:
    """The image (the middle slice of a volume) in grey, lo..hi black..white."""
    ax.imshow(a[a.shape[0] // 2] if a.ndim == 3 else a, cmap="gray", vmin=lo, vmax=hi)
    ax.set_title(title)
    ax.set_axis_off()


def plot_histogram(
    image,
    *,
    num_bins: int = 256,
    sigma: float = 0.4,
    value_range=(0.0, 1.0),
    title: str = "image",
    mask=None,
) -> Figure:
    """The image beside its soft histogram, with the hard (counting) histogram under it.

    image: (H, W) or (D, H, W) array or tensor, intensities in value_range's units.
    num_bins: bin centres equally spaced from lo to hi (inclusive), as in the seed.
    sigma: the Gaussian kernel's standard deviation in bin widths (converted to
        intensity units for :func:`mi.histogram`).
    value_range: (lo, hi) or "auto" (the min and max of the voxels counted).
    mask: None, or the voxels to count (nonzero) of the image's shape; the others are left
        out of both histograms and drawn blank.
    Both histograms are densities per unit intensity over the same bins.
    """
    a = _as_numpy(image)
    num_bins = _num_bins(num_bins)
    values = a.reshape(-1)
    if mask is not None:
        keep = _as_numpy(mask, "mask") != 0
        if keep.shape != a.shape or not keep.any():
            raise ValueError(f"mask must have the image's shape {a.shape} and keep a voxel")
        values, a = a[keep], np.where(keep, a, np.nan)
    lo, hi = _range(values, value_range)
    width = (hi - lo) / (num_bins - 1)
    centres = torch.linspace(lo, hi, num_bins)
    soft = mi.histogram(torch.from_numpy(values)[None], centres, sigma * width)[0]
    soft = soft.double().numpy() / width
    edges = np.linspace(lo - width / 2, hi + width / 2, num_bins + 1)
    counts, _ = np.histogram(values, bins=edges)
    hard = counts / max(counts.sum(), 1) / width

    fig = Figure(figsize=(11, 5), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, width_ratios=(1, 1.3))
    _show(fig.add_subplot(grid[:, 0]), a, lo, hi, title)
    ax_soft = fig.add_subplot(grid[0, 1])
    ax_hard = fig.add_subplot(grid[1, 1], sharex=ax_soft, sharey=ax_soft)
    ax_soft.plot(centres.numpy(), soft, color="C0", lw=1.2)
    ax_soft.fill_between(centres.numpy(), soft, color="C0", alpha=0.3, lw=0)
    ax_soft.set_title(f"soft histogram (mi.histogram): {num_bins} bins, sigma {sigma:g} bin widths")
    ax_hard.stairs(hard, edges, fill=True, color="0.45")
    ax_hard.set_title("hard histogram (counts)")
    ax_hard.set_xlabel("intensity")
    top, second = np.sort(hard)[-2:][::-1] if num_bins > 1 else (hard.max(), 0.0)
    clip = top > 4 * second > 0  # one bin towers over the rest (e.g. a black background)
    for ax in (ax_soft, ax_hard):
        ax.set_ylabel("density")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(0, 1.3 * second if clip else None)
    if clip:
        peak = centres[int(np.argmax(hard))].item()
        ax_hard.annotate(
            f"axis cut: the bin at {peak:.3g} reaches {top:.3g}",
            (0.99, 0.9),
            xycoords="axes fraction",
            ha="right",
            fontsize=9,
        )
    return fig


def plot_joint_histogram(
    a,
    b,
    *,
    num_bins: int = 256,
    sigma: float = 0.4,
    value_range=(0.0, 1.0),
    titles: tuple[str, str] = ("a", "b"),
    log: bool = True,
    mask=None,
) -> Figure:
    """The two images beside their soft joint histogram (from :func:`mi.joint_histogram`).

    a, b: images of one shape, (H, W) or (D, H, W), intensities in value_range's units.
    num_bins, sigma (in bin widths), value_range ((lo, hi) or "auto": each image's own
    min and max; or a pair of those, one for a and one for b) and mask (None, or
    non-negative weights of the images' shape: the histogram counts each voxel with its
    weight, and "auto" ranges span the voxels of positive weight) are passed to
    :func:`mi.joint_histogram`.
    The joint histogram is drawn with a's intensity along the horizontal axis and b's
    up the vertical one, as a joint probability per bin; log=True uses a log colour
    scale (four decades, the highest 0.1% of bins saturated), which shows the faint
    structure.
    """
    a, b = _as_numpy(a, "a"), _as_numpy(b, "b")
    num_bins = _num_bins(num_bins)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one shape, got {a.shape} and {b.shape}")
    w = None
    if mask is not None:
        w = _as_numpy(mask, "mask")
        if w.shape != a.shape:
            raise ValueError(f"mask must have the images' shape {a.shape}, got {w.shape}")
        if not ((w >= 0).all() and (w > 0).any()):
            raise ValueError("mask must be non-negative weights, not all zero")
    range_a, range_b = _per_image(value_range)
    live = slice(None) if w is None else w > 0
    (alo, ahi), (blo, bhi) = _range(a[live], range_a), _range(b[live], range_b)
    x = torch.from_numpy(a)[None, None]
    y = torch.from_numpy(b)[None, None]
    m = None if w is None else torch.from_numpy(w)[None, None]
    joint = mi.joint_histogram(x, y, num_bins=num_bins, sigma=sigma, value_range=value_range, mask=m)
    joint = joint[0].double().numpy()

    fig = Figure(figsize=(15, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": (1, 1, 1.15)})
    _show(axes[0], a, alo, ahi, titles[0])
    _show(axes[1], b, blo, bhi, titles[1])
    ha, hb = (ahi - alo) / (num_bins - 1) / 2, (bhi - blo) / (num_bins - 1) / 2
    positive = joint[joint > 0]
    # Colour scale: up to the 99.9th percentile of the non-empty bins (a lone background
    # bin would squash the rest), four decades down on the log scale.
    vmax = float(np.quantile(positive, 0.999)) if positive.size else 1.0
    norm = LogNorm(vmin=vmax * 1e-4, vmax=vmax, clip=True) if log else None
    cmap = "viridis"
    if log:
        import matplotlib

        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#440154")  # exact zeros
    im = axes[2].imshow(
        joint.T,  # a along the horizontal axis, b up: a remap b = f(a) reads as its graph
        origin="lower",
        extent=(alo - ha, ahi + ha, blo - hb, bhi + hb),
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        norm=norm,
    )
    axes[2].set_title(f"joint histogram: {num_bins}x{num_bins} bins, sigma {sigma:g}")
    axes[2].set_xlabel(f"{titles[0]} intensity")
    axes[2].set_ylabel(f"{titles[1]} intensity")
    fig.colorbar(
        im,
        ax=axes[2],
        extend="both" if log else "neither",
        label="joint probability per bin" + (" (log scale)" if log else ""),
    )
    return fig
