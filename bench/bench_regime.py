"""GPU benchmark of the registration regime: 32-64 bins, sigma 1 bin (the loss defaults).

    python bench/bench_regime.py [--cases R1,R3] [--providers ...] [--sweep] [--out DIR]
    python bench/bench_regime.py --plot [--out DIR]     (bench_regime.png from DIR's CSV)
    TRITON_INTERPRET=1 python bench/bench_regime.py --dry-run

Cases (issue 9):
  R1  one 160x192x224 volume pair, K = 32      R2  the same at K = 64
  R3  a batch of 16 2-D pairs 256x256, K = 32  R4  one registration iteration of R1 (affine
      ``grid_sample`` warp, MI loss, backward, Adam step), eager and replayed from a CUDA graph
  R5  R1 with the cubic B-spline window (``mi.register``'s default loss; MONAI's "b-spline")

Providers: the library as it chooses ("auto"; "auto-graph": its forward+backward captured
in a CUDA graph and replayed, value checks off, forward+backward only) and on each
joint-histogram path (``mi.kernels.forced_method``: "tiled", "scatter", "span" (the span
forward, scatter backward), "span-sorted" (the same on the pixels sorted by bin tile);
"tiled-<p>" with tl.dot precision p, "tiled-tf32x3-fma" with the gaussian's exp2 on the FMA
units, ``utils.TILED_EXP``), MONAI's ``GlobalMutualInformationLoss``, kornia's
``mutual_information_loss`` and the seed's algorithm (``bench/providers.py``). Times are
``triton.testing.do_bench`` medians. The HBM floor is the bytes the op must move at the
copy bandwidth measured in the same run (a device-to-device copy): the forward reads x and
y (8 bytes a voxel), the backward reads them again and writes the gradient of y (12), so
forward+backward moves 20. Errors of the library's rows are against the dense float64
formula (``tests/oracle.py``) computed on the GPU: MI relative to its value, the gradient
relative to its largest magnitude. Memory: peak allocation of one forward+backward beyond
the inputs. R4's kernel time is the sum of the CUDA kernels a profiler sees in one replay.

``--sweep`` also times the joint-histogram kernels alone on R1's volume at each of
``SWEEP_BINS``: scatter, and tiled over block sizes, warps and precisions (the data for
``utils.TILED_CONFIGS`` and ``utils.AUTO_TILED_BINS``); the span forward over
``SPAN_SWEEP`` at each of ``SPAN_SWEEP_BINS`` (precision "span-<T>", ``utils.SPAN_CONFIG``);
the tiled ones at their default blocks over ``PROGRAMS_SWEEP`` persistent programs per
multiprocessor (precision "tf32x3-programs<n>", ``utils.TILED_PROGRAMS_PER_SM``);
and at 32 bins the three paths with the cubic B-spline window ("bspline-<path>"), whose 4
bins per axis may move the crossover (16 atomics a voxel where sigma 1 needs about 100).
"""

import argparse
import contextlib
import csv
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

SIGMA = 1.0
CASES = {
    "R1": ((1, 1, 160, 192, 224), 32), "R2": ((1, 1, 160, 192, 224), 64), "R3": ((16, 1, 256, 256), 32),
    "R5": ((1, 1, 160, 192, 224), 32),
}  # fmt: skip
DRY_CASES = {
    "R1": ((1, 1, 5, 6, 7), 32), "R2": ((1, 1, 5, 6, 7), 64), "R3": ((2, 1, 8, 8), 32),
    "R5": ((1, 1, 5, 6, 7), 32),
}  # fmt: skip
#: The window of each case (gaussian at SIGMA elsewhere): R5 is R1 with mi.register's default
#: loss window, the cubic B-spline (4 bins per axis where sigma 1 touches 12).
CASE_KERNEL = {"R5": "bspline"}
#: Where [0, 1] lands in bin coordinates, per window (the library's layout, README "Usage":
#: a B-spline's support is 2 bins, so [0, 1] maps onto bins 1..K-2): (first, margin at the end).
LAYOUT = {"gaussian": (0.0, 1.0), "bspline": (1.0, 2.0)}
PROVIDERS = [
    "auto", "auto-graph", "tiled", "scatter", "span", "span-sorted", "tiled-tf32", "tiled-ieee",
    "tiled-tf32x3-fma", "monai", "kornia", "seed",
]  # fmt: skip
#: K of the ``--sweep`` (the H200 run committed in results/ had 32 and 64 and no scatter rows)
SWEEP_BINS = (16, 32, 64)
#: K of the span forward's sweep (any K: also where the tiled path cannot hold J), and its
#: (T, BLOCK_P, num_warps) configurations
SPAN_SWEEP_BINS = (32, 64, 128, 256)
SPAN_SWEEP = ((16, 32, 4), (32, 32, 4), (32, 64, 4), (32, 64, 8), (64, 32, 4))
#: Persistent programs per multiprocessor of the tiled kernels' sweep at their default
#: configuration (``utils.TILED_PROGRAMS_PER_SM``; 4 programs of 4 warps keep 16 warps on a
#: multiprocessor, a quarter of what it holds: the H200 run never varied it)
PROGRAMS_SWEEP = (1, 2, 4, 8, 16)
MINE = ("auto", "tiled", "scatter", "span")  # the library, by joint-histogram path
MODES = ["fwd", "bwd", "fwd_bwd"]
BYTES_PER_VOXEL = {"fwd": 8, "bwd": 12, "fwd_bwd": 20}
FIELDS = [
    "case", "provider", "shape", "bins", *[f"{m}_ms" for m in MODES], *[f"{m}_x_floor" for m in MODES],
    "mi_rel_err", "grad_rel_err", "peak_mb_over_inputs", "note",
]  # fmt: skip


def timer(cuda):
    """fn -> median milliseconds (do_bench on a GPU; one perf_counter run in the dry run, whose
    times mean nothing: it checks that the benchmark runs)."""
    if cuda:
        from triton.testing import do_bench

        return lambda fn, grads=(): do_bench(fn, grad_to_none=list(grads))

    def measure(fn, grads=()):
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return measure


def copy_bandwidth(device, cuda):
    """Bytes per second of a device-to-device copy (read + write), the HBM ceiling used here."""
    n = (1 << 28) if cuda else (1 << 20)
    a = torch.empty(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    ms = timer(cuda)(lambda: b.copy_(a))
    return 2 * a.numel() * 4 / (ms / 1e3)


@contextlib.contextmanager
def path(provider):
    """The library with one joint-histogram path and tl.dot precision."""
    from mi import kernels

    utils = kernels._module("utils")
    method, _, precision = provider.partition("-")
    precision, _, exp = precision.partition("-")  # "tf32x3-fma": the exp2 on the FMA units
    if method == "span":  # "span", "span-sorted": methods of their own
        method, precision, exp = provider, "", ""
    saved, saved_exp = dict(utils.TILED_PRECISION), dict(utils.TILED_EXP)
    if precision:
        utils.TILED_PRECISION.update(forward=precision, backward=precision)
    if exp:
        utils.TILED_EXP.update(forward=exp, backward=exp)
    try:
        with kernels.forced_method(method):
            yield
    finally:
        utils.TILED_PRECISION.update(saved)
        utils.TILED_EXP.update(saved_exp)


def loss_of(provider, kernel="gaussian"):
    """loss(x, y, num_bins, sigma) of ``provider`` with the case's window."""
    import providers

    if provider.startswith(MINE):
        import mi

        return lambda x, y, k, s: mi.mutual_information(
            x, y, num_bins=k, sigma=s, value_range=(0.0, 1.0), kernel=kernel, backend="triton"
        ).sum()
    if kernel == "gaussian":
        return providers.load(provider)
    if provider == "monai":
        from monai.losses import GlobalMutualInformationLoss

        losses = {}

        def run(x, y, k, s):
            if k not in losses:
                losses[k] = GlobalMutualInformationLoss(kernel_type="b-spline", num_bins=k, reduction="sum")
            return losses[k](y, x)

        return run
    raise ImportError(f"{provider} has no {kernel} window", name=f"{provider} ({kernel})")


def oracle(x, y, num_bins, kernel="gaussian"):
    """(MI per row (B,), dMI.sum()/dy) by the dense float64 formula on x's device."""
    from oracle import dense_joint
    from oracle import mutual_information as oracle_mi

    yd = y.detach().double().requires_grad_()
    b = x.shape[0]
    first, margin = LAYOUT[kernel]
    length = num_bins - margin - first
    u, v = (first + length * t.reshape(b, -1) for t in (x.detach().double(), yd))
    value = oracle_mi(dense_joint(u, v, None, num_bins, SIGMA, kernel, kernel))
    value.sum().backward()
    return value.detach(), yd.grad


def run_provider(provider, case, x, y, num_bins, measure, bandwidth, reference):
    import providers

    shape = tuple(x.shape)
    row = {"case": case, "provider": provider, "shape": "x".join(map(str, shape)), "bins": num_bins}
    cuda = x.is_cuda
    try:
        fn = loss_of(provider, CASE_KERNEL.get(case, "gaussian"))
    except ImportError as e:
        return {**row, "note": f"not installed ({e.name})"}
    mine = provider.startswith(MINE)
    need = 0 if mine else providers.estimate_bytes(provider, shape[0], int(np.prod(shape[1:])), num_bins)
    if cuda and need > 0.8 * torch.cuda.get_device_properties(x.device).total_memory:
        return {**row, "note": f"skipped: needs ~{need / 1e9:.0f} GB"}
    ctx = path(provider) if mine else contextlib.nullcontext()
    y = y.detach().requires_grad_()
    loss_fn = lambda: fn(x, y, num_bins, SIGMA)
    try:
        with ctx:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            value = loss_fn()
            value.backward()
            if cuda:
                torch.cuda.synchronize()
                row["peak_mb_over_inputs"] = round((torch.cuda.max_memory_allocated() - base) / 1e6, 1)
            if mine and reference is not None:
                ref_value, ref_grad = reference
                ref_sum = ref_value.sum().item()
                row["mi_rel_err"] = f"{abs(value.item() - ref_sum) / abs(ref_sum):.2e}"
                err = (y.grad.double() - ref_grad).abs().max() / ref_grad.abs().max()
                row["grad_rel_err"] = f"{err.item():.2e}"
            y.grad = None
            row["fwd_ms"] = measure(loss_fn, [y])
            loss = loss_fn()
            row["bwd_ms"] = measure(lambda loss=loss: loss.backward(retain_graph=True), [y])
            del loss
            row["fwd_bwd_ms"] = measure(lambda: loss_fn().backward(), [y])
    except Exception as e:
        if mine:
            raise
        oom = isinstance(e, torch.cuda.OutOfMemoryError)
        return {**row, "note": "out of memory" if oom else f"error: {type(e).__name__}: {str(e)[:100]}"}
    voxels = int(np.prod(shape))
    for mode in MODES:
        row[f"{mode}_ms"] = round(row[f"{mode}_ms"], 4)
        floor_ms = BYTES_PER_VOXEL[mode] * voxels / bandwidth * 1e3
        row[f"{mode}_x_floor"] = round(row[f"{mode}_ms"] / floor_ms, 1)
    row.setdefault("note", "")
    return row


def registration_step(fixed, moving, num_bins):
    """One affine MI registration iteration on (1, 1, D, H, W) volumes: (step(), theta)."""
    import mi

    theta = torch.tensor([[1.0, 0.02, 0.0, 0.01], [-0.02, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -0.02]],
                         device=fixed.device)[None].requires_grad_()  # fmt: skip
    opt = torch.optim.Adam([theta], lr=1e-3, capturable=fixed.is_cuda)

    def step():
        grid = F.affine_grid(theta, list(fixed.shape), align_corners=False)
        warped = F.grid_sample(moving, grid, align_corners=False)
        score = mi.mutual_information(fixed, warped, num_bins=num_bins, sigma=SIGMA, value_range=(0.0, 1.0))
        loss = -score.sum()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        return loss

    return step, theta


def kernel_ms(replay, repeats=10):
    """Milliseconds of CUDA kernels per call of ``replay``, summed from the profiler's events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            replay()
        torch.cuda.synchronize()
    total_us = sum(e.device_time_total for e in prof.key_averages())
    return total_us / 1e3 / repeats


def captured(fn, warmup=3):
    """A CUDA graph of ``fn()``, after ``warmup`` eager calls on a side stream (which run)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def run_graph(case, x, y, num_bins, measure, bandwidth):
    """The library's forward+backward (value checks off) captured in a CUDA graph and replayed:
    what a training step or a captured registration step pays per call, host time gone."""
    import mi

    row = {"case": case, "provider": "auto-graph", "shape": "x".join(map(str, x.shape)), "bins": num_bins}
    if not x.is_cuda:
        return {**row, "note": "CUDA only"}
    y = y.detach().requires_grad_()

    def call():
        kernel = CASE_KERNEL.get(case, "gaussian")
        value = mi.mutual_information(
            x, y, num_bins=num_bins, sigma=SIGMA, value_range=(0.0, 1.0), kernel=kernel
        ).sum()
        return torch.autograd.grad(value, y)

    with mi.value_checks(False):
        graph = captured(call)
        ms = measure(graph.replay)
    floor_ms = BYTES_PER_VOXEL["fwd_bwd"] * x.numel() / bandwidth * 1e3
    return {
        **row,
        "fwd_bwd_ms": round(ms, 4),
        "fwd_bwd_x_floor": round(ms / floor_ms, 1),
        "note": "graph replay",
    }


def run_r4(x, y, num_bins, provider, measure):
    """R4: eager step time, graph replay time, kernel time per step, and the largest
    difference between theta after 8 eager steps and after 3 warm-up + 5 replayed steps."""
    import mi

    row = {"case": "R4", "provider": provider, "shape": "x".join(map(str, x.shape)), "bins": num_bins}
    with path(provider), mi.value_checks(False):
        step, theta = registration_step(x, y, num_bins)
        for _ in range(8):
            step()
        eager_theta = theta.detach().clone()
        row["fwd_bwd_ms"] = round(measure(step), 4)
        if not x.is_cuda:
            row["note"] = "eager only (no CUDA graph on CPU)"
            return row
        step, theta = registration_step(x, y, num_bins)
        graph = captured(step)
        for _ in range(5):
            graph.replay()
        torch.cuda.synchronize()
        diff = (theta.detach() - eager_theta).abs().max().item()
        replay_ms = measure(graph.replay)
        try:
            kernels = kernel_ms(graph.replay)
        except Exception:  # a machine whose profiler cannot trace kernels
            kernels = float("nan")
    row["note"] = (
        f"graph replay {replay_ms:.4f} ms; kernels {kernels:.4f} ms per step (replay/kernels "
        f"{replay_ms / kernels:.2f}); eager/kernels {row['fwd_bwd_ms'] / kernels:.2f}; "
        f"theta eager vs graph max diff {diff:.2e}"
    )
    return row


def sweep(x, y, measure, out):
    """The joint-histogram kernels alone on R1's volume (bin coordinates, no mask), per K
    (32 and 64 first): the scatter ones (precision "scatter"), the span forward per
    ``SPAN_SWEEP``, the tiled ones per (BLOCK_P, warps, tl.dot precision, exp2 unit). The
    backward computes dv only, as in registration. Each row is written as it is measured
    (a run stopped by its time limit keeps what it measured)."""
    from mi import kernels

    utils = kernels._module("utils")
    b = x.shape[0]
    f = open(os.path.join(out, "bench_regime_sweep.csv"), "w", newline="")
    w = csv.DictWriter(f, ["bins", "block_p", "warps", "precision", "fwd_ms", "bwd_ms"])
    w.writeheader()

    def record(row):
        print(row, file=sys.stderr, flush=True)
        w.writerow(row)
        f.flush()

    def time_into(row, name, fn):
        try:
            row[name] = round(measure(fn), 4)
        except Exception as e:  # out of resources: a configuration that cannot launch
            row[name] = f"{type(e).__name__}"

    def time_row(row, context, fwd, bwd=None):
        """Times fwd (and bwd) under ``context`` (a path forced) into ``row``, and records it."""
        with context:
            time_into(row, "fwd_ms", fwd)
            if bwd is not None:
                time_into(row, "bwd_ms", bwd)
        record(row)

    wanted = sorted(set(SWEEP_BINS) | set(SPAN_SWEEP_BINS), key=lambda k: (k not in (32, 64), k))
    for k in wanted:
        u = (x.reshape(b, -1) * (k - 1)).contiguous()
        v = (y.reshape(b, -1) * (k - 1)).contiguous()
        g = torch.randn(b, k, k, device=x.device)
        fwd = lambda u=u, v=v, k=k: kernels.joint_hist_forward(u, v, None, k, SIGMA)
        bwd = lambda u=u, v=v, k=k, g=g: kernels.joint_hist_backward(g, u, v, None, k, SIGMA, needs_u=False)
        time_row({"bins": k, "precision": "scatter"}, kernels.forced_method("scatter"), fwd, bwd)
        if k in SPAN_SWEEP_BINS:
            saved_span = utils.SPAN_CONFIG
            for (tile, block_p, warps), method in [(c, "span") for c in SPAN_SWEEP] + [
                (c, "span-sorted") for c in SPAN_SWEEP[1:3]
            ]:
                utils.SPAN_CONFIG = (tile, block_p, warps)
                row = {"bins": k, "block_p": block_p, "warps": warps, "precision": f"{method}-{tile}"}
                time_row(row, kernels.forced_method(method), fwd)
            utils.SPAN_CONFIG = saved_span
        if k not in SWEEP_BINS:
            continue
        kp = max(16, k)
        tiled_bwd = bwd if k <= utils.MAX_TILED_BINS["backward"] else None
        saved = {d: utils.TILED_CONFIGS[d].get(kp) for d in utils.TILED_CONFIGS}
        for block_p in (32, 64, 128):
            for warps in (4, 8):
                for d in utils.TILED_CONFIGS:
                    utils.TILED_CONFIGS[d][kp] = (block_p, warps)
                for prec in ("tf32", "tf32x3", "tf32x3-fma"):
                    row = {"bins": k, "block_p": block_p, "warps": warps, "precision": prec}
                    time_row(row, path(f"tiled-{prec}"), fwd, tiled_bwd)
        for d, config in saved.items():
            if config is None:
                utils.TILED_CONFIGS[d].pop(kp, None)
            else:
                utils.TILED_CONFIGS[d][kp] = config
        saved_programs = utils.TILED_PROGRAMS_PER_SM
        for programs in PROGRAMS_SWEEP:
            utils.TILED_PROGRAMS_PER_SM = programs
            time_row(
                {"bins": k, "precision": f"tf32x3-programs{programs}"}, path("tiled-tf32x3"), fwd, tiled_bwd
            )
        utils.TILED_PROGRAMS_PER_SM = saved_programs
        if k == 32:  # mi.register's default window, the cubic B-spline: 4 bins a voxel and axis
            fwd = lambda u=u, v=v: kernels.joint_hist_forward(u, v, None, 32, SIGMA, "bspline", "bspline")
            bwd = lambda u=u, v=v, g=g: kernels.joint_hist_backward(
                g, u, v, None, 32, SIGMA, "bspline", "bspline", needs_u=False
            )
            for method in ("scatter", "tiled"):
                time_row(
                    {"bins": k, "precision": f"bspline-{method}"}, kernels.forced_method(method), fwd, bwd
                )
            saved_span = utils.SPAN_CONFIG
            for tile, block_p, warps in ((16, 32, 4), (16, 64, 4), (32, 32, 4)):
                utils.SPAN_CONFIG = (tile, block_p, warps)
                row = {"bins": k, "block_p": block_p, "warps": warps, "precision": f"bspline-span-{tile}"}
                time_row(row, kernels.forced_method("span"), fwd)
            utils.SPAN_CONFIG = saved_span
    f.close()


def plot_results(folder):
    """bench_regime.png in ``folder`` from its bench_regime.csv (forward+backward per case and
    provider, log scale, with the HBM floor as one more bar) titled with the card that the
    first lines of bench_regime.md name (the device tool's header): the GPU run itself keeps
    to the files it must bring back, so the plot is drawn afterwards, anywhere."""
    from bench_cpu import plot

    with open(os.path.join(folder, "bench_regime.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["fwd_bwd_ms"] and r["case"] != "R4"]
    md = os.path.join(folder, "bench_regime.md")
    head = open(md).read().splitlines()[:3] if os.path.exists(md) else []
    card = next((line.split(",")[0] for line in head if line.startswith("NVIDIA")), "GPU")
    versions = next((line for line in head if line.startswith("torch")), "")
    out, floors = [], {}
    for r in rows:
        ms = float(r["fwd_bwd_ms"])
        out.append(dict(r, fwd_bwd_ms=ms))
        if r["provider"] in MINE and r["fwd_bwd_x_floor"]:
            floors[r["case"]] = dict(r, provider="HBM floor", fwd_bwd_ms=ms / float(r["fwd_bwd_x_floor"]))
    keys = ("fwd_bwd_ms",) * 3
    title = f"{card} ({versions}): MI forward + backward, sigma 1 bin, value checks on"
    path = os.path.join(folder, "bench_regime.png")
    plot(out + list(floors.values()), path, title, keys, ylabel="forward + backward, ms (log)")
    return path


def markdown(rows):
    lines = [
        "| case | provider | fwd ms | bwd ms | fwd+bwd ms | x floor (fwd, bwd, both) | MI rel. err | "
        "grad rel. err | MB over inputs | note |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        floors = ", ".join(str(r.get(f"{m}_x_floor", "")) for m in MODES)
        lines.append(
            f"| {r['case']} {r['shape']} K={r['bins']} | {r['provider']} | {r.get('fwd_ms', '')} | "
            f"{r.get('bwd_ms', '')} | {r.get('fwd_bwd_ms', '')} | {floors} | {r.get('mi_rel_err', '')} | "
            f"{r.get('grad_rel_err', '')} | {r.get('peak_mb_over_inputs', '')} | {r.get('note', '')} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny CPU tensors, Triton interpreter")
    p.add_argument("--cases", default="R1,R2,R3,R4,R5")
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--out", help="output folder (default bench/results; dry run: a temp folder)")
    p.add_argument("--plot", action="store_true", help="only draw bench_regime.png from --out's CSV")
    args = p.parse_args(argv)
    if args.plot:
        print(plot_results(args.out or os.path.join(HERE, "results")))
        return
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        device, cases = torch.device("cpu"), DRY_CASES
        out = args.out or tempfile.mkdtemp(prefix="bench_regime_dry_")
    else:
        if not torch.cuda.is_available():
            p.error("no CUDA device (use --dry-run for the CPU path)")
        device, cases = torch.device("cuda"), CASES
        out = args.out or os.path.join(HERE, "results")
    import data

    os.makedirs(out, exist_ok=True)
    cuda = device.type == "cuda"
    measure = timer(cuda)
    bandwidth = copy_bandwidth(device, cuda)
    name = torch.cuda.get_device_name(device) if cuda else "CPU (dry run)"
    header = f"Device: {name}; measured copy bandwidth {bandwidth / 1e12:.2f} TB/s (the floor's ceiling)"
    print(header, file=sys.stderr, flush=True)
    rows, wanted = [], args.cases.split(",")
    pairs = {}

    def pair(shape):
        if shape not in pairs:
            pairs[shape] = [t.to(device) for t in data.make_pair(shape)]
        return pairs[shape]

    for case in [c for c in ("R1", "R2", "R3", "R5") if c in wanted]:
        shape, k = cases[case]
        x, y = pair(shape)
        reference = oracle(x, y, k, CASE_KERNEL.get(case, "gaussian"))
        for prov in args.providers.split(","):
            if prov == "auto-graph":
                row = run_graph(case, x, y, k, measure, bandwidth)
            else:
                row = run_provider(prov, case, x, y, k, measure, bandwidth, reference)
            print(row, file=sys.stderr, flush=True)
            rows.append(row)
        del reference
        if cuda:
            torch.cuda.empty_cache()
    if "R4" in wanted:
        x, y = pair(cases["R1"][0])
        for prov in ("auto", "tiled", "scatter"):
            try:
                row = run_r4(x, y, cases["R1"][1], prov, measure)
            except Exception as e:  # reported, and the other cases' rows are still written
                row = {"case": "R4", "provider": prov, "bins": cases["R1"][1], "shape": "",
                       "note": f"error: {type(e).__name__}: {str(e)[:200]}"}  # fmt: skip
            print(row, file=sys.stderr, flush=True)
            rows.append(row)
    stem = "bench_regime" if cuda else "bench_regime_dry"
    with open(os.path.join(out, f"{stem}.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows)
    if args.sweep:
        x, y = pair(cases["R1"][0])
        sweep(x, y, measure, out)
    print(f"{header}\n\n{markdown(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
