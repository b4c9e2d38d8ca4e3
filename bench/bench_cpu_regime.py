"""CPU time in the registration regime: the loss at 32 bins and whole registrations, against a
baseline commit and with the ``mi`` command's malloc settings, interleaved in one run.

    python bench/bench_cpu_regime.py [--baseline REF] [--rounds 3] [--brain]
                                     [--out bench/results/bench_cpu_regime.csv]

What each configuration measures, each workload in a fresh process (as a run of the ``mi``
command is; PYTHONPATH: this tree, or a worktree of ``--baseline``):

* ``loss_2d_ms``: one forward+backward of ``MutualInformationLoss(num_bins=32,
  normalize="studholme", kernel="bspline", value_range=(0, 1))`` (``mi.register``'s loss) on
  the 2-D demo pair, 192x160 = 30,720 pixels (its finest level); the median of 40 calls.
* ``loss_3d_ms``: the same on 2**17 voxels of the 3-D demo pair at 64^3 (a random subset,
  fixed seed): what a sampled level of a 3-D registration gives the loss each iteration.
* ``register_2d_s``, ``register_3d_s``: the wall time of ``mi.register(fixed, moving,
  transform="rigid")`` with its defaults on the 2-D and 3-D demo pairs (``demo_pair``,
  ``demo_volume_pair``; 240 iterations over 3 levels).
* ``register_brain_s`` (``--brain``): the same on ``brain.brain_pair()``: the MNI T1 against a
  T2-like contrast, 1 mm, 197x233x189 (2**17 sampled voxels per iteration on the two finer
  levels).

Configurations: ``baseline`` (REF, glibc's default malloc), ``this tree`` (default malloc),
``this tree, mi's malloc``: with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set to
``mi.cli.MALLOC_SETTINGS``, what the ``mi`` command applies to itself (``keep_freed_memory``).
Each round runs every configuration once, in turn, so that a slow spell of a shared machine
falls on all of them; the table gives each metric's median over the rounds and its ratio to the
baseline's. ``faults_*``: minor page faults of each workload's whole process (``getrusage``).

Writes the CSV to --out and prints a Markdown table.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import worktree
from bench_cpu import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ["loss", "register_2d_s", "register_3d_s", "register_brain_s"]
METRICS = ["loss_2d_ms", "loss_3d_ms", "register_2d_s", "register_3d_s", "register_brain_s"]
METRICS += ["faults_loss", "faults_2d", "faults_3d", "faults_brain"]


def child(workload: str):
    """Runs one workload in the measured process (a fresh one per workload, as a run of the
    ``mi`` command is); prints one JSON line of its metric(s) and the process's page faults."""
    import resource

    import torch

    import mi
    from mi.registration import demo_pair, demo_volume_pair, register

    out = {}
    if workload == "loss":
        loss = mi.MutualInformationLoss(
            num_bins=32, normalize="studholme", kernel="bspline", value_range=(0.0, 1.0)
        )
        f2, m2, _ = demo_pair()
        f3, m3, _ = demo_volume_pair(size=64)
        pick = torch.randperm(f3.numel(), generator=torch.Generator().manual_seed(0))[: 2**17]
        for name, (f, m) in {
            "loss_2d_ms": (f2, m2),
            "loss_3d_ms": (f3.reshape(-1)[pick], m3.reshape(-1)[pick]),
        }.items():
            f = f.reshape(1, 1, -1)
            m = m.reshape(1, 1, -1).clone().requires_grad_(True)
            times = []
            for i in range(45):
                t = time.perf_counter()
                loss(f, m).backward()
                if i >= 5:  # the first calls pay one-time costs
                    times.append(time.perf_counter() - t)
                m.grad = None
            out[name] = 1e3 * statistics.median(times)
    else:
        if workload == "register_brain_s":
            from mi.registration import brain

            fixed, moving, _ = brain.brain_pair()
        else:
            fixed, moving, _ = (demo_pair if workload == "register_2d_s" else demo_volume_pair)()
        t = time.perf_counter()
        register(fixed, moving, transform="rigid", progress=False)
        out[workload] = time.perf_counter() - t
    out["faults_" + workload.rsplit("_", 1)[0].removeprefix("register_")] = resource.getrusage(
        resource.RUSAGE_SELF
    ).ru_minflt
    print(json.dumps(out))


def run(tree: Path, env_extra: dict, workload: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), **env_extra)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", workload]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({tree}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="a git ref measured in the same run (default: none)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--brain", action="store_true", help="also register the 1 mm brain pair (about 25 s a run)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bench_cpu_regime.csv")
    ap.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    sys.path.insert(0, str(ROOT))
    from mi.cli import MALLOC_SETTINGS

    tuned = {
        "MALLOC_MMAP_THRESHOLD_": str(MALLOC_SETTINGS[-3]),
        "MALLOC_TRIM_THRESHOLD_": str(MALLOC_SETTINGS[-1]),
    }
    here = worktree.version()
    with contextlib.ExitStack() as stack:
        configs = []
        if args.baseline:
            configs.append(
                (f"baseline {args.baseline}", stack.enter_context(worktree.checkout(args.baseline)), {})
            )
        configs += [(f"{here}", ROOT, {}), (f"{here}, mi's malloc", ROOT, tuned)]
        results = {name: [] for name, _, _ in configs}
        workloads = WORKLOADS if args.brain else WORKLOADS[:-1]
        for r in range(args.rounds):
            for name, tree, env in configs:
                merged = {}
                for w in workloads:
                    merged.update(run(tree, env, w))
                results[name].append(merged)
                print(f"round {r + 1}/{args.rounds} {name}: {merged}", file=sys.stderr)
    rows = []
    base = configs[0][0]
    for name, runs in results.items():
        for metric in METRICS:
            values = [x[metric] for x in runs if metric in x]
            if not values:
                continue
            med = statistics.median(values)
            ref = statistics.median(x[metric] for x in results[base])
            rows.append({
                "config": name, "metric": metric, "median": f"{med:.4g}", "min": f"{min(values):.4g}",
                "rounds": len(values), "ratio_to_first": f"{med / ref:.2f}",
                "machine": machine(),
            })  # fmt: skip
    worktree.write(rows, args.out, list(rows[0]))
    print(f"{machine()}; {args.rounds} rounds, each configuration once per round, in turn")
    print(f"| metric | {' | '.join(results)} |")
    print("|---|" + "---|" * len(results))
    for metric in METRICS:
        cells = [
            next(
                (
                    f"{r['median']} ({r['ratio_to_first']}x)"
                    for r in rows
                    if r["config"] == n and r["metric"] == metric
                ),
                "",
            )
            for n in results
        ]
        if any(cells):
            print(f"| {metric} | {' | '.join(cells)} |")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
