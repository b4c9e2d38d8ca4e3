"""float32 MI and its gradient against the float64 computation, by bins and sigma (CPU).

    python bench/precision.py [--out bench/results/precision.txt]

The README's "Precision" numbers. Each case computes ``mutual_information`` (torch backend,
no normalisation) and its gradient with respect to both images in float32 and again from the
same values in float64 (the float64 path agrees with the dense oracle to its rounding:
``tests/test_functional.py``), and prints the value's relative error and the gradients'
largest error relative to their largest element: with value_range "auto" (each image's
min..max, whose derivative, a sum over every sample, goes to the samples at the extremes),
the same without those samples, and with a fixed range (-0.05, 1.15) around every image.
Pairs: the Grace Hopper photo (100x100 and 300x300) against a remapped copy rotated 5
degrees (``tests/images.py``), and 1000 / 20000 random samples against a remap of them plus
noise (1-D images).
"""

import argparse
import itertools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from images import photo, remap, rotated, to_tensor01  # noqa: E402

import mi  # noqa: E402


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def errors(x, y, k, sigma, value_range="auto"):
    """(value error, gradient error, gradient error away from each image's extremes) of
    float32 against float64, from the same values."""
    kw = dict(num_bins=k, sigma=sigma, value_range=value_range, backend="torch")
    x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
    v64 = mi.mutual_information(x64, y64, **kw)
    v64.sum().backward()
    x32, y32 = x.clone().requires_grad_(), y.clone().requires_grad_()
    v32 = mi.mutual_information(x32, y32, **kw)
    v32.sum().backward()
    grads = ((x32.grad, x64.grad, x), (y32.grad, y64.grad, y))
    inner = []
    for got, want, t in grads:
        keep = (t != t.amin()) & (t != t.amax())
        inner.append((got.double() - want)[keep].abs().max().item() / want.abs().max().item())
    return _rel(v32, v64), max(_rel(g, w) for g, w, _ in grads), max(inner)


def pairs():
    for size in (100, 300):
        a = photo((size, size))
        yield f"photo {size}x{size}", to_tensor01(a), remap(to_tensor01(rotated(a, 5.0)))
    for n in (1000, 20000):
        g = torch.Generator().manual_seed(n)
        x = torch.rand(1, 1, n, generator=g)
        yield f"{n} random samples", x, remap(x) + 0.1 * torch.rand(1, 1, n, generator=g)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args()
    lines = [
        f"torch {torch.__version__}; float32 against float64 (same values); mutual_information, torch backend"
    ]
    head = ("pair", "K", "sigma", "value rel", "grad/max auto", "not extremes", "grad/max fixed")
    lines.append("{:20s} {:>4s} {:>6s} {:>10s} {:>14s} {:>13s} {:>15s}".format(*head))
    grid = list(itertools.product((32, 64, 128, 256), (0.4, 0.5, 1.0, 2.0)))
    for name, x, y in pairs():
        for k, sigma in grid:
            v, g, inner = errors(x, y, k, sigma)
            _, fixed, _ = errors(x, y, k, sigma, (-0.05, 1.15))
            lines.append(f"{name:20s} {k:4d} {sigma:6.2f} {v:10.1e} {g:14.1e} {inner:13.1e} {fixed:15.1e}")
            print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
