"""What one mutual_information forward+backward asks of the device, counted on the CPU.

    python bench/host_overhead.py [--baseline REF] [--out bench/results/host_overhead.csv]

On a GPU a small call is bound by the host: every op is a kernel launch with a few
microseconds of Python and driver work, and every read of a device value waits for the
queue. This script counts, for one ``mutual_information(...).sum().backward()``:

* ``ops``: aten ops that would launch a kernel on a GPU (views, metadata and bare
  allocations are not counted), dispatched outside the Triton kernels;
* ``triton``: Triton kernel launches (the Triton backend runs in the interpreter here);
* ``syncs``: reads of tensor values on the host (``.item()``, ``.tolist()``), each a
  device synchronisation on a GPU;

and times the call with the torch backend on a tiny input on this CPU, where the per-op
overhead is most of the time. ``--baseline REF`` runs the same measurements on a git
worktree of REF (an earlier commit) in the same run, one row per version.
"""

import contextlib
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import worktree

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["version", "backend", "value_range", "checks", "ops", "triton", "syncs", "host_us", "ops_detail"]
SHAPE, BINS, SIGMA = (8, 1, 16, 16), 64, 0.5

#: aten ops that launch no kernel on a GPU: views, metadata, allocations, CPU scalars.
NO_LAUNCH = {
    "view",
    "_unsafe_view",
    "reshape",
    "_reshape_alias",
    "alias",
    "detach",
    "unsqueeze",
    "squeeze",
    "expand",
    "slice",
    "select",
    "permute",
    "t",
    "transpose",
    "as_strided",
    "unflatten",
    "flatten",
    "split",
    "split_with_sizes",
    "unbind",
    "empty",
    "empty_like",
    "new_empty",
    "empty_strided",
    "scalar_tensor",
    "lift_fresh",
    "promote_types",
    "_local_scalar_dense",
    "set_",
    "is_nonzero",
}


def _counting():
    """A context that counts ops, Triton launches and host reads; yields the counters."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = Counter()
    ops = Counter()
    inside = [0]

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name == "_local_scalar_dense" and not inside[0]:
                counts["syncs"] += 1
            elif not inside[0] and name not in NO_LAUNCH:
                ops[name] += 1
            return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def patched():
        from triton.runtime import interpreter

        call, tolist = interpreter.GridExecutor.__call__, torch.Tensor.tolist

        def launch(self, *args, **kwargs):
            counts["triton"] += 1
            inside[0] += 1
            try:
                return call(self, *args, **kwargs)
            finally:
                inside[0] -= 1

        def counted_tolist(self):
            if not inside[0]:
                counts["syncs"] += 1
            return tolist(self)

        interpreter.GridExecutor.__call__, torch.Tensor.tolist = launch, counted_tolist
        try:
            with Mode():
                yield counts, ops
        finally:
            interpreter.GridExecutor.__call__, torch.Tensor.tolist = call, tolist

    return patched()


def measure(version):
    """Rows for the ``mi`` importable here (this tree, or a baseline's via sys.path)."""
    os.environ["TRITON_INTERPRET"] = "1"
    import torch

    import mi

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(SHAPE, generator=gen)
    y = (torch.sin(3 * x) ** 2).requires_grad_()
    rows = []
    for backend in ("torch", "triton"):
        for rng in ("auto", (0.0, 1.0)):
            for checks in (True, False):
                mi.set_value_checks(checks)

                def call(rng=rng, backend=backend):
                    mi.mutual_information(
                        x, y, num_bins=BINS, sigma=SIGMA, value_range=rng, backend=backend
                    ).sum().backward()
                    y.grad = None

                call()
                with _counting() as (counts, ops):
                    call()
                host_us = ""
                if backend == "torch":  # the interpreter's own cost would swamp the triton timing
                    medians = []
                    for _ in range(5):
                        t = []
                        for _ in range(40):
                            t0 = time.perf_counter()
                            call()
                            t.append(time.perf_counter() - t0)
                        medians.append(statistics.median(t))
                    host_us = f"{min(medians) * 1e6:.0f}"
                rows.append({
                    "version": version, "backend": backend,
                    "value_range": "auto" if rng == "auto" else "fixed", "checks": checks,
                    "ops": sum(ops.values()), "triton": counts["triton"], "syncs": counts["syncs"],
                    "host_us": host_us, "ops_detail": " ".join(f"{k}:{v}" for k, v in sorted(ops.items())),
                })  # fmt: skip
    mi.set_value_checks(True)
    return rows


def main():
    rows, out = worktree.main(
        __file__, __doc__.splitlines()[0], measure, COLUMNS, ROOT / "bench" / "results" / "host_overhead.csv"
    )
    if rows is None:
        return
    print(f"shape {SHAPE}, K={BINS}, sigma={SIGMA}: one forward+backward; host_us: torch backend on this CPU")
    head = ("version", "backend", "range", "checks", "ops", "triton", "syncs", "host_us")
    print("{:16s} {:7s} {:6s} {:6s} {:>4s} {:>6s} {:>5s} {:>8s}".format(*head))
    for r in rows:
        cells = [
            r[c] for c in ("version", "backend", "value_range", "checks", "ops", "triton", "syncs", "host_us")
        ]
        print("{:16s} {:7s} {:6s} {:6s} {:>4s} {:>6s} {:>5s} {:>8s}".format(*map(str, cells)))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
