"""How many atomic adds the Triton forward issues per pixel, counted on the CPU.

    python bench/atomic_counts.py [--out bench/results/atomic_counts.txt]

The forward is bound by global atomics on a GPU, so their count is the number to cut. For
the GPU benchmark's image pairs (``bench/data.py``, value_range "auto", sigma 0.5) this
counts, with the kernels' own window rules (``mi.kernels.utils.window_size``, start
``floor(u - r) + 1`` clamped to [0, K - W], float32 weights):

* ``square``: the W x W window cells with a non-zero contribution (the kernel before the
  Gaussian disk trimming);
* ``disk``: those with ``w_u * w_v`` above 2**-24 of the pixel's largest cell (what
  ``_joint_hist_fwd_kernel`` adds now);
* ``pairs``: the share of neighbouring pixel pairs (2i, 2i+1) whose windows start at the same
  bins in both images: what merging such pairs before the atomics could save at most.
"""

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402
from mi.kernels.utils import GAUSSIAN_TRUNCATION, window_size  # noqa: E402

CASES = {"G1": ((8, 1, 512, 512), 64), "G2": ((8, 1, 512, 512), 256), "G3": ((1, 1, 160, 192, 224), 64),
         "G4": ((1, 1, 160, 192, 224), 256)}  # fmt: skip
SIGMA = 0.5
CHUNK = 1 << 18


def bins(t, k):
    """Rows of t (B, N) -> bin coordinates, each row's min..max onto 0..K-1 (value_range="auto")."""
    lo, hi = t.amin(1, keepdim=True), t.amax(1, keepdim=True)
    return (t - lo) / ((hi - lo) / (k - 1))


def windows(u, k, w):
    """Window starts (M,) and float32 Gaussian weights (M, W), as the kernels compute them."""
    r = GAUSSIAN_TRUNCATION * SIGMA
    start = (torch.floor(u - r) + 1).clamp(0, k - w)
    d = u[:, None] - (start[:, None] + torch.arange(w))
    return start, torch.exp(-(d * d) / (2 * SIGMA**2))


def count(x, y, k):
    """(mean square cells, mean disk cells, share of pixel pairs with equal window starts)."""
    w = window_size("gaussian", k, SIGMA)
    u, v = bins(x.reshape(x.shape[0], -1), k).reshape(-1), bins(y.reshape(y.shape[0], -1), k).reshape(-1)
    square = disk = 0
    for lo in range(0, u.numel(), CHUNK):
        (_, wu), (_, wv) = windows(u[lo : lo + CHUNK], k, w), windows(v[lo : lo + CHUNK], k, w)
        prod = wu[:, :, None] * wv[:, None, :]
        square += int((prod != 0).sum())
        disk += int((prod > prod.amax((1, 2), keepdim=True) * 2.0**-24).sum())
    su, sv = windows(u, k, w)[0], windows(v, k, w)[0]
    same = ((su[0::2] == su[1::2]) & (sv[0::2] == sv[1::2])).float().mean().item()
    return square / u.numel(), disk / u.numel(), same


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "atomic_counts.txt"
    )
    args = ap.parse_args()
    w = window_size("gaussian", 256, SIGMA)
    lines = [
        f"sigma {SIGMA}: W = {w}, W^2 = {w * w}; disk radius r = {GAUSSIAN_TRUNCATION * SIGMA:.3f} bins "
        f"(pi r^2 = {math.pi * (GAUSSIAN_TRUNCATION * SIGMA) ** 2:.1f})",  # fmt: skip
        f"{'case':5s} {'shape':18s} {'K':>4s} {'square':>7s} {'disk':>6s} {'disk/square':>11s} {'pairs':>6s}",
    ]
    for name, (shape, k) in CASES.items():
        x, y = data.make_pair(shape)
        square, disk, same = count(x, y, k)
        lines.append(f"{name:5s} {'x'.join(map(str, shape)):18s} {k:4d} {square:7.1f} {disk:6.1f} "
                     f"{disk / square:11.2f} {same:6.2f}")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
