"""CPU benchmark: forward+backward time and peak memory of mi, the seed's algorithm and peers.

    python bench/bench_cpu.py [--cases C1,C2] [--providers mi,seed] [--out bench/results]

Each (case, provider) runs in a fresh Python process, so that one provider's memory neither
hides nor inflates another's and an out-of-memory kill cannot take the benchmark down. That
process imports the provider, loads the case's images, resets its peak RSS (``VmHWM``, through
/proc/self/clear_refs) and reads its RSS, runs one warm-up call and then repeats (as many as fit
in ``--budget-s``, 3 to 25). Memory columns: peak RSS over that baseline (what one call adds to
the inputs and the imported libraries), and the total peak RSS.
Dense peers whose estimated memory exceeds ``--mem-limit-gb`` are skipped with the estimate.

Writes bench_cpu.csv and bench_cpu.png to --out and prints a Markdown table.
"""

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import providers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# name: (shape, num_bins, sigma in bin widths)
CASES = {
    "C1": ((2, 1, 300, 300), 256, 0.4),  # the seed's README example
    "C2": ((8, 1, 256, 256), 64, 0.5),
    "C3": ((1, 1, 96, 96, 96), 64, 0.5),
    "C4": ((1, 1, 160, 192, 224), 256, 0.5),  # a brain MR volume
}
PROVIDERS = ["mi", "seed", "kornia", "kornia-compat", "kornia-hist2d", "monai", "monai-compat", "histogramdd"]
FIELDS = [
    "case",
    "provider",
    "shape",
    "bins",
    "sigma",
    "fwd_bwd_ms_median",
    "q25",
    "q75",
    "repeats",
    "peak_rss_increase_mb",
    "peak_rss_total_mb",
    "ratio_vs_seed",
    "note",
]


def memory_mb(field):
    """VmRSS (resident now) or VmHWM (peak resident) of this process, MB (Linux)."""
    with open("/proc/self/status") as f:
        kib = next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":"))
    return kib * 1024 / 1e6


def reset_peak():
    """Sets VmHWM to the current RSS, so that the imports' transient peak is not counted."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(name, num_bins, sigma, x_path, y_path, budget_s):
    """Runs in the child process; prints one JSON line."""
    try:
        fn = providers.load(name)
    except ImportError as e:
        print(json.dumps({"note": f"not installed ({e.name})"}))
        return
    num_bins, sigma, budget_s = int(num_bins), float(sigma), float(budget_s)
    x = torch.from_numpy(np.load(x_path))
    y = torch.from_numpy(np.load(y_path)).requires_grad_(name not in providers.FORWARD_ONLY)
    reset_peak()
    base = memory_mb("VmRSS")

    def call():
        start = time.perf_counter()
        loss = fn(x, y, num_bins, sigma)
        if loss.requires_grad:
            loss.backward()
        y.grad = None
        return time.perf_counter() - start

    call()  # warm-up: the first call pays one-time costs, so the count comes from the second
    times = [call()]
    times += [call() for _ in range(int(min(max(budget_s / times[0], 3), 25)) - 1)]
    note = "forward only, no gradient" if name in providers.FORWARD_ONLY else ""
    peak = memory_mb("VmHWM")
    print(json.dumps({"times": times, "base_mb": base, "peak_mb": peak, "note": note}))


def run_one(name, case, paths, args):
    shape, num_bins, sigma = CASES[case]
    row = {
        "case": case,
        "provider": name,
        "shape": "x".join(map(str, shape)),
        "bins": num_bins,
        "sigma": sigma,
    }
    numel = int(np.prod(shape[1:]))
    need = providers.estimate_bytes(name, shape[0], numel, num_bins)
    if need > args.mem_limit_gb * 1e9:
        return {**row, "note": f"skipped: needs ~{need / 1e9:.0f} GB"}
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        name,
        str(num_bins),
        str(sigma),
        *paths,
        str(args.budget_s),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        return {**row, "note": f"timed out after {args.timeout_s} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return {**row, "note": f"failed: {err[:120]}"}
    out = json.loads(lines[-1])
    if "times" not in out:
        return {**row, "note": out["note"]}
    ms = np.array(out["times"]) * 1e3
    q25, med, q75 = np.percentile(ms, [25, 50, 75])
    return {
        **row,
        "fwd_bwd_ms_median": round(med, 2),
        "q25": round(q25, 2),
        "q75": round(q75, 2),
        "repeats": len(ms),
        "peak_rss_increase_mb": round(out["peak_mb"] - out["base_mb"], 1),
        "peak_rss_total_mb": round(out["peak_mb"], 1),
        "note": out["note"],
    }


def add_ratio_vs_seed(rows, key):
    """ratio_vs_seed = the seed's time / the provider's time, among the rows of one case."""
    seed = next((r for r in rows if r["provider"] == "seed"), {})
    for r in rows:
        if seed.get(key) and r.get(key):
            r["ratio_vs_seed"] = round(seed[key] / r[key], 2)


def machine():
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{model}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def markdown(rows):
    lines = [
        "| case | shape, bins | provider | fwd+bwd ms, median [q25, q75] | "
        "peak MB over inputs | seed time / time | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = (
            f"{r['fwd_bwd_ms_median']:.1f} [{r['q25']:.1f}, {r['q75']:.1f}]"
            if r.get("fwd_bwd_ms_median") is not None
            else ""
        )
        ratio = f"{r['ratio_vs_seed']:.1f}x" if r.get("ratio_vs_seed") else ""
        lines.append(
            f"| {r['case']} | {r['shape']}, {r['bins']} | {r['provider']} | {t} | "
            f"{r.get('peak_rss_increase_mb', '')} | {ratio} | {r.get('note', '')} |"
        )
    return "\n".join(lines)


def plot(rows, path, title, keys=("fwd_bwd_ms_median", "q25", "q75"), ylabel="forward + backward, ms (log)"):
    """Grouped bars on a log scale, one group per case, one bar per provider; keys: the
    median and the quantiles drawn as the error bar."""
    key, lo, hi = keys
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cases = list(dict.fromkeys(r["case"] for r in rows))
    names = list(dict.fromkeys(r["provider"] for r in rows))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 2 + 1.8 * len(cases)), 5))
    missing = []
    for i, name in enumerate(names):
        for j, case in enumerate(cases):
            r = next((r for r in rows if r["case"] == case and r["provider"] == name), None)
            xpos = j + (i - (len(names) - 1) / 2) * width
            if r and r.get(key) is not None:
                err = [[r[key] - r[lo]], [r[hi] - r[key]]]
                ax.bar(xpos, r[key], width, yerr=err, color=f"C{i}", capsize=2)
            elif r:
                missing.append((xpos, "skipped" if r["note"].startswith("skip") else "n/a"))
    ax.set_yscale("log")
    for xpos, text in missing:
        ax.text(xpos, ax.get_ylim()[0], text, rotation=90, ha="center", va="bottom", fontsize=7)
    labels = {r["case"]: f"{r['case']}\n{r['shape']}\nK={r['bins']}" for r in rows}
    ax.set_xticks(range(len(cases)), [labels[c] for c in cases], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    ax.legend([Patch(color=f"C{i}") for i in range(len(names))], names, fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--mem-limit-gb", type=float, default=8.0)
    p.add_argument("--budget-s", type=float, default=3.0, help="timed seconds per provider")
    p.add_argument("--timeout-s", type=int, default=300)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            x, y = data.make_pair(CASES[case][0])
            paths = [os.path.join(tmp, f"{case}_{v}.npy") for v in "xy"]
            np.save(paths[0], x.numpy())
            np.save(paths[1], y.numpy())
            case_rows = []
            for name in args.providers.split(","):
                row = run_one(name, case, paths, args)
                print(
                    f"{case} {name}: {row.get('fwd_bwd_ms_median', '')} ms "
                    f"{row.get('peak_rss_increase_mb', '')} MB {row['note']}",
                    file=sys.stderr,
                    flush=True,
                )
                case_rows.append(row)
            add_ratio_vs_seed(case_rows, "fwd_bwd_ms_median")
            rows += case_rows
    with open(os.path.join(args.out, "bench_cpu.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows)
    plot(rows, os.path.join(args.out, "bench_cpu.png"), machine())
    print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
    print(f"Machine: {machine()}\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:])
    else:
        sys.exit(main())
