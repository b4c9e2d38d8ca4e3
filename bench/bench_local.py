"""Local (patch-wise) MI against global MI on the same voxels: forward+backward time and peak memory.

    python bench/bench_local.py [--shape 160,192,224] [--patch 16] [--bins 32] [--sigma 1.0] [--repeat 5]

The target of the issue: local MI at most 2x the time of global MI, in O(patches x K^2)
memory. Both are called as a registration loss would be: the moving image's gradient, each
image's own range, the library's default window (Gaussian). On a CUDA machine the Triton
path is timed too (``torch.cuda.synchronize`` around each call); memory there is
``max_memory_allocated`` beyond the inputs. On the CPU, memory is the peak RSS over a
baseline taken after the inputs exist (Linux), each measurement in its own process.
Prints a Markdown table.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import machine, memory_mb, reset_peak  # noqa: E402

import mi  # noqa: E402


def _volume(shape, device):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, *shape, generator=g)
    x = torch.nn.functional.avg_pool3d(x, 5, 1, 2)  # smooth: image-like, not white noise
    y = torch.sin(3.0 * (x - x.min()) / (x.max() - x.min())) ** 2
    return x.to(device), y.to(device)


def worker(kind, shape, patch, bins, sigma, repeat, device):
    x, y = _volume(shape, device)
    y.requires_grad_(True)
    if device == "cpu":
        reset_peak()
        base = memory_mb("VmRSS")
    else:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 1e6

    def call():
        if kind == "global":
            s = mi.mutual_information(x, y, num_bins=bins, sigma=sigma)
        else:
            s = mi.local_mutual_information(x, y, patch_size=patch, num_bins=bins, sigma=sigma)
        s.sum().backward()
        y.grad = None

    call()
    times = []
    for _ in range(repeat):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        call()
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = memory_mb("VmHWM") if device == "cpu" else torch.cuda.max_memory_allocated() / 1e6
    print(json.dumps({"ms": sorted(times)[len(times) // 2] * 1e3, "mb": peak - base}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="160,192,224")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--bins", type=int, default=32)
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    shape = [int(s) for s in args.shape.split(",")]
    patches = 1
    for s in shape:
        patches *= -(-s // args.patch)
    print(f"Machine: {machine()}; volume {'x'.join(map(str, shape))}, {patches} patches of {args.patch}^3, "
          f"K = {args.bins}, sigma {args.sigma}\n")  # fmt: skip
    print("| device | call | fwd+bwd ms (median) | peak MB beyond the inputs | local / global time |")
    print("|---|---|---:|---:|---:|")
    for device in devices:
        rows = {}
        for kind in ("global", "local"):
            cmd = [sys.executable, __file__, "--worker", kind, args.shape, str(args.patch), str(args.bins),
                   str(args.sigma), str(args.repeat), device]  # fmt: skip
            out = (
                subprocess.run(cmd, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            rows[kind] = json.loads(out)
        for kind, r in rows.items():
            ratio = f"{r['ms'] / rows['global']['ms']:.2f}x" if kind == "local" else ""
            print(f"| {device} | {kind} MI | {r['ms']:.1f} | {r['mb']:.0f} | {ratio} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        k, sh, pa, bi, si, rep, dev = sys.argv[2:]
        worker(k, [int(s) for s in sh.split(",")], int(pa), int(bi), float(si), int(rep), dev)
    else:
        main()
