"""How many sub-tiles the span forward walks on real images: a static work count, no GPU.

    python bench/span_tiles.py [--out bench/results]

The span forward (``kernels/tiled.py``, ``mi.kernels.forced_method("span")``) gives each
block of P consecutive pixels the T x T sub-tiles that cover its pixels' windows: its work
per pixel is tiles x (2 T window evaluations + 2 T^2 multiply-adds). This script computes,
in torch on the CPU and with the kernel's window placement (``utils.window_size``, the
gaussian's support radius), the mean number of sub-tiles per block for real pairs at the
loss defaults (sigma 1 bin, K = 32/64) and the seed's (sigma 0.4, K = 256):

* photo: the benchmark's 8 crops of matplotlib's photograph, 512x512, and their remapped
  partners (``bench/data.py``; G1/G2 of ``bench_gpu.py``);
* volume: the benchmark's blob volume 160x192x224 (R1/R2);
* brain: the MNI ICBM152 T1 (nilearn's copy, 197x233x189) against the T2-like contrast of
  ``mi.registration.brain`` (needs nilearn's data and SimpleITK; skipped without them).

Pixels in array order (x fastest), as the kernels read them ("image"), and sorted by the
T x T tile of their windows' first bins ("sorted": what a bucketing pass before the kernel
would give, its own cost not counted). Dense evaluation would cost
2 K window evaluations per pixel (K = 256: J does not fit a program's registers), the
scatter path W^2 atomics (W = ``window_size``). Writes span_tiles.csv and prints a table.
"""

import argparse
import csv
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from mi.kernels.utils import triton_next_power_of_2, window_size  # noqa: E402

from mi import _torch  # noqa: E402

SETTINGS = [(32, 1.0), (64, 1.0), (256, 0.4), (256, 1.0)]
BLOCKS = [(32, 32), (64, 32), (32, 16), (32, 64)]  # (BLOCK_P, T)


def starts(x, k, sigma):
    """The kernel's window start per pixel of x in [0, 1] (``window._window_start``)."""
    w = window_size("gaussian", k, sigma)
    return _torch.window_start(x.float() * (k - 1), "gaussian", sigma, k, w).long(), w


def tiles_per_block(x, y, k, sigma, block_p, tile, order):
    """Mean over blocks of ceil(span_u / T) x ceil(span_v / T), the pixels in array order or
    ("sorted") sorted by the T x T tile of their windows' first bins."""
    su, w = starts(x.reshape(-1), k, sigma)
    sv, _ = starts(y.reshape(-1), k, sigma)
    if order == "sorted":
        perm = torch.argsort((su // tile) * (k // tile + 1) + sv // tile, stable=True)
        su, sv = su[perm], sv[perm]
    n = su.numel() - su.numel() % block_p
    su, sv = su[:n].view(-1, block_p), sv[:n].view(-1, block_p)
    span_u = su.amax(1) + w - su.amin(1)
    span_v = sv.amax(1) + w - sv.amin(1)
    return ((span_u + tile - 1) // tile * ((span_v + tile - 1) // tile)).double().mean().item(), w


def pairs():
    import data

    x, y = data.make_pair((8, 1, 512, 512))
    yield "photo 8x512x512", x, y
    x, y = data.make_pair((1, 1, 160, 192, 224))
    yield "volume 160x192x224", x, y
    try:
        import SimpleITK as sitk

        from mi.registration import brain

        t1 = torch.from_numpy(sitk.GetArrayFromImage(brain.brain_t1())).float()
        t2 = torch.from_numpy(sitk.GetArrayFromImage(brain.brain_contrast2())).float()
    except Exception as e:  # no SimpleITK or no template data
        print(f"brain: skipped ({type(e).__name__}: {e})", file=sys.stderr)
        return
    unit = [(t - t.min()) / (t.max() - t.min()) for t in (t1, t2)]
    yield "brain T1 / T2-like 197x233x189", *unit


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    rows = []
    for name, x, y in pairs():
        for k, sigma in SETTINGS:
            for (block_p, tile), order in [(b, "image") for b in BLOCKS] + [(BLOCKS[0], "sorted")]:
                t, w = tiles_per_block(x, y, k, sigma, block_p, tile, order)
                evals = t * 2 * tile  # window evaluations per pixel, both axes
                rows.append(dict(
                    pair=name, order=order, bins=k, sigma=sigma, block_p=block_p, tile=tile, window=w,
                    tiles_per_block=round(t, 2), evals_per_pixel=round(evals, 1),
                    dense_evals=2 * max(16, triton_next_power_of_2(k)), scatter_atomics=w * w,
                ))  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "span_tiles.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    head = [
        "pair",
        "order",
        "K",
        "sigma",
        "P",
        "T",
        "W",
        "sub-tiles per block",
        "evaluations per pixel",
        "dense 2 KP",
    ]
    print("| " + " | ".join(head + ["scatter atomics"]) + " |\n" + "|---" * (len(head) + 1) + "|")
    for r in rows:
        print("| " + " | ".join(str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
