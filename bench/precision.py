"""float32 MI and its gradient against the float64 computation, by bins and sigma (CPU).

    python bench/precision.py [--out bench/results/precision.txt]
    python bench/precision.py --scatter [--out bench/results/precision_scatter.txt]

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

``--scatter``: the Triton paths (in the interpreter on the CPU unless a GPU is present) on
few samples, where the scatter forward's skip of the cells below 2**-24 of each sample's
largest cell shows: one pixel (its MI and gradient are exactly 0), then 15-4000 random
samples at 64-200 bins, sigma 0.5, scatter and tiled against the torch backend in float64.
"""

import argparse
import itertools
import os
import sys
from pathlib import Path

if "--scatter" in sys.argv:  # (before torch: Triton reads it when the kernels are defined)
    import torch.cuda  # noqa: F401

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")

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


def scatter_lines():
    """The --scatter table (see the module docstring)."""
    from mi.kernels import forced_method

    device = "cuda" if torch.cuda.is_available() else "cpu"
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    yield f"torch {torch.__version__}; Triton on {device} (interpreted: {interpreted})"
    x = torch.tensor([[[[0.3]]], [[[0.55]]]], device=device)
    y = torch.tensor([[[[0.71]]], [[[0.2]]]], device=device)
    for method in ("scatter", "tiled"):
        xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
        with forced_method(method):
            s = mi.mutual_information(
                xx, yy, num_bins=65, sigma=0.5, value_range=(0.2, 0.8), backend="triton"
            )
            s.sum().backward()
        grad = max(xx.grad.abs().max().item(), yy.grad.abs().max().item())
        value = s.abs().max().item()
        yield f"one pixel, 65 bins, {method:8s}: MI {value:.2e}, largest |gradient| {grad:.2e} (exact: 0)"
    yield f"{'samples':>8s} {'K':>4s}  grad/max scatter  grad/max tiled"
    for k, n in itertools.product((64, 128, 200), (15, 60, 221, 1000, 4000)):
        g = torch.Generator().manual_seed(n + k)
        x = torch.rand(1, 1, n, generator=g)
        y = remap(x) + 0.1 * torch.rand(1, 1, n, generator=g)
        x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
        mi.mutual_information(x64, y64, num_bins=k, sigma=0.5, backend="torch").sum().backward()
        errs = []
        for method in ("scatter", "tiled"):
            if method == "tiled" and k > 128:
                errs.append(float("nan"))
                continue
            xx, yy = (t.to(device).clone().requires_grad_() for t in (x, y))
            with forced_method(method):
                mi.mutual_information(xx, yy, num_bins=k, sigma=0.5, backend="triton").sum().backward()
            errs.append(max(_rel(xx.grad.cpu(), x64.grad), _rel(yy.grad.cpu(), y64.grad)))
        yield f"{n:8d} {k:4d}  {errs[0]:16.1e}  {errs[1]:14.1e}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the table to this file")
    parser.add_argument("--scatter", action="store_true", help="the Triton paths on few samples")
    args = parser.parse_args()
    if args.scatter:
        lines = []
        for line in scatter_lines():
            lines.append(line)
            print(line, flush=True)
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n")
        return
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
