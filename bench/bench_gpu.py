"""GPU benchmark: forward, backward and forward+backward of mi (Triton), mi's torch backend,
the seed's algorithm and peers, timed with triton.testing.do_bench (median, 20/80 quantiles).

    python bench/bench_gpu.py [--cases G1,G2] [--providers mi,seed] [--peak-bw 3.35e12] [--out DIR]
    TRITON_INTERPRET=1 python bench/bench_gpu.py --dry-run

Bandwidth: the inputs are read at least once, so ``2 * B * N * 4`` bytes (x and y, float32)
over the peak HBM bandwidth (``--peak-bw``, default 3.35e12 B/s: H100 SXM) is a floor on any
implementation's time; the table gives effective GB/s (those bytes / time) and time / floor.
Memory: peak ``torch.cuda.max_memory_allocated`` of one forward+backward, beyond the inputs.
Dense peers whose estimate exceeds 80% of the GPU's memory are skipped with the estimate; an
out-of-memory error is caught and reported.

``--dry-run`` takes the same path on tiny CPU tensors with the Triton interpreter and
time.perf_counter, writing bench_gpu_dry.csv/png to a temporary folder unless --out is given.
"""

import argparse
import csv
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import providers  # noqa: E402
from bench_cpu import add_ratio_vs_seed, plot  # noqa: E402

SIGMA = 0.5
# name: (shape, num_bins)
CASES = {
    "G1": ((8, 1, 512, 512), 64),
    "G2": ((8, 1, 512, 512), 256),
    "G3": ((1, 1, 160, 192, 224), 64),
    "G4": ((1, 1, 160, 192, 224), 256),
}
DRY_CASES = {"D1": ((2, 1, 16, 16), 8), "D2": ((1, 1, 8, 8, 8), 8)}
PROVIDERS = [
    "mi",
    "mi-torch",
    "seed",
    "kornia",
    "kornia-compat",
    "monai",
    "monai-compat",
]  # also: kornia-hist2d
MODES = ["fwd", "bwd", "fwd_bwd"]
FIELDS = [
    "case",
    "provider",
    "shape",
    "bins",
    "sigma",
    *[f"{m}_ms_{q}" for m in MODES for q in ("median", "q20", "q80")],
    "fwd_gbps",
    "fwd_x_floor",
    "fwd_bwd_gbps",
    "fwd_bwd_x_floor",
    "peak_mb_over_inputs",
    "ratio_vs_seed",
    "note",
]


def bench(fn, grad_to_none, cuda):
    """(median, q20, q80) milliseconds of fn()."""
    if cuda:
        from triton.testing import do_bench

        return do_bench(fn, quantiles=[0.5, 0.2, 0.8], grad_to_none=grad_to_none)
    fn()  # warm-up
    times = []
    for _ in range(3):
        for t in grad_to_none:
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return list(np.percentile(times, [50, 20, 80]))


def run_one(name, case, x, y, num_bins, args):
    shape = tuple(x.shape)
    row = {
        "case": case,
        "provider": name,
        "shape": "x".join(map(str, shape)),
        "bins": num_bins,
        "sigma": SIGMA,
    }
    cuda = x.is_cuda
    try:
        fn = providers.load(name, mi_backend="triton")
    except ImportError as e:
        return {**row, "note": f"not installed ({e.name})"}
    batch, numel = shape[0], int(np.prod(shape[1:]))
    need = providers.estimate_bytes(name, batch, numel, num_bins)
    if cuda and need > 0.8 * torch.cuda.get_device_properties(x.device).total_memory:
        return {**row, "note": f"skipped: needs ~{need / 1e9:.0f} GB"}
    if cuda:
        torch.cuda.empty_cache()  # what the previous provider left cached
    y.requires_grad_(True)
    loss_fn = lambda: fn(x, y, num_bins, SIGMA)
    try:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            loss_fn().backward()
            torch.cuda.synchronize()
            row["peak_mb_over_inputs"] = round((torch.cuda.max_memory_allocated() - base) / 1e6, 1)
        for mode in ["fwd"] if name in providers.FORWARD_ONLY else MODES:
            if mode == "fwd":
                ms = bench(loss_fn, [y], cuda)
            elif mode == "bwd":
                loss = loss_fn()  # built outside the timing, kept for the repeats
                ms = bench(lambda loss=loss: loss.backward(retain_graph=True), [y], cuda)
                del loss
            else:
                ms = bench(lambda: loss_fn().backward(), [y], cuda)
            for q, v in zip(("median", "q20", "q80"), ms):
                row[f"{mode}_ms_{q}"] = round(v, 4)
    except Exception as e:  # a peer's failure is a row; ours fails the benchmark
        if name.startswith("mi"):
            raise
        row = {k: v for k, v in row.items() if k in ("case", "provider", "shape", "bins", "sigma")}
        oom = isinstance(e, torch.cuda.OutOfMemoryError)
        row["note"] = (
            f"out of memory (estimate ~{need / 1e9:.1f} GB)"
            if oom
            else f"error: {type(e).__name__}: {str(e)[:100]}"
        )
    finally:
        y.grad = None
    nbytes = 2 * batch * numel * 4  # x and y read once: the HBM floor
    for mode in ("fwd", "fwd_bwd"):
        if row.get(f"{mode}_ms_median"):
            seconds = row[f"{mode}_ms_median"] / 1e3
            row[f"{mode}_gbps"] = round(nbytes / seconds / 1e9, 2)
            row[f"{mode}_x_floor"] = round(seconds / (nbytes / args.peak_bw), 1)
    row.setdefault("note", "")
    return row


def fmt(v, spec=".2f"):
    return "" if v is None else format(v, spec)


def markdown(rows):
    lines = [
        "| case | provider | fwd ms | bwd ms | fwd+bwd ms [q20, q80] | GB/s | x floor | "
        "MB over inputs | seed / this | note |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        both = (
            f"{fmt(r.get('fwd_bwd_ms_median'))} [{fmt(r.get('fwd_bwd_ms_q20'))}, "
            f"{fmt(r.get('fwd_bwd_ms_q80'))}]"
            if r.get("fwd_bwd_ms_median")
            else ""
        )
        lines.append(
            f"| {r['case']} {r['shape']} K={r['bins']} | {r['provider']} | "
            f"{fmt(r.get('fwd_ms_median'))} | {fmt(r.get('bwd_ms_median'))} | {both} | "
            f"{fmt(r.get('fwd_bwd_gbps'), '.1f')} | {fmt(r.get('fwd_bwd_x_floor'), '.0f')} | "
            f"{fmt(r.get('peak_mb_over_inputs'), '.0f')} | {fmt(r.get('ratio_vs_seed'), '.1f')} | "
            f"{r.get('note', '')} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny CPU tensors, Triton interpreter")
    p.add_argument("--cases", help="comma-separated, default all")
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--peak-bw", type=float, default=3.35e12, help="peak HBM bytes/s")
    p.add_argument("--out", help="output folder (default bench/results; dry run: a temp folder)")
    args = p.parse_args(argv)
    if args.dry_run:
        # Triton reads this when the kernels are defined, i.e. when mi is first imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
        device, cases, stem = torch.device("cpu"), DRY_CASES, "bench_gpu_dry"
        out = args.out or tempfile.mkdtemp(prefix="bench_gpu_dry_")
    else:
        if not torch.cuda.is_available():
            p.error("no CUDA device (use --dry-run for the CPU path)")
        device, cases, stem = torch.device("cuda"), CASES, "bench_gpu"
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    if args.cases:
        cases = {c: cases[c] for c in args.cases.split(",")}
    os.makedirs(out, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    header = f"Device: {name}; HBM floor at peak {args.peak_bw / 1e12:.2f} TB/s (--peak-bw)"
    rows = []
    for case, (shape, num_bins) in cases.items():
        x, y = (t.to(device) for t in data.make_pair(shape))
        case_rows = []
        for prov in args.providers.split(","):
            row = run_one(prov, case, x, y, num_bins, args)
            print(
                f"{case} {prov}: {row.get('fwd_bwd_ms_median', '')} ms {row['note']}",
                file=sys.stderr,
                flush=True,
            )
            case_rows.append(row)
        add_ratio_vs_seed(case_rows, "fwd_bwd_ms_median")
        rows += case_rows
    with open(os.path.join(out, f"{stem}.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows)
    keys = ("fwd_bwd_ms_median", "fwd_bwd_ms_q20", "fwd_bwd_ms_q80")
    plot(rows, os.path.join(out, f"{stem}.png"), header, keys)
    print(f"wrote {out}/{stem}.csv and .png", file=sys.stderr)
    print(f"{header}\n\n{markdown(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
