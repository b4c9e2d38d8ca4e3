"""Sharded mutual information over torch.distributed: per-rank time and bytes communicated.

    python bench/bench_distributed.py [--world 2] [--shape 1,1,96,96,96] [--bins 64]
    torchrun --nproc-per-node 2 bench/bench_distributed.py [--shape ...]   # NCCL on GPUs

Each rank holds a slab (along the first spatial axis) of the same pair of volumes and runs
``mi.mutual_information(x, y, group=...).sum().backward()``; the script prints, per rank, the
median forward+backward time, the time of the same call on the whole volume in one process
(rank 0, for reference), the payload of the call's all-reduces (with the value checks on, the
arguments' comparison, 24 numbers; the per-row extremes; the (B, K, K) histograms; and the
"auto" range's derivative in the backward) and what a ring all-reduce sends per rank,
2 (n - 1) / n of it.
Without torchrun it spawns ``--world`` gloo processes on this machine's CPU (there they
share its cores, so the times show the overhead, not a speed-up).
"""

import argparse
import os
import platform
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mi  # noqa: E402


def _volumes(shape, device):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g)
    y = torch.sin(3 * x) ** 2 + 0.1 * torch.rand(shape, generator=g)
    return x.to(device), y.to(device)


def _time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def run(rank, world, args, init=None):
    cuda = torch.cuda.is_available()
    if init is not None:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    x, y = _volumes(args.shape, device)
    depth = x.shape[2]
    lo, hi = rank * depth // world, (rank + 1) * depth // world
    xs, ys = x[:, :, lo:hi].contiguous(), y[:, :, lo:hi].contiguous()
    sent = []
    reduce = dist.all_reduce

    def counting(t, *a, **k):
        sent.append(t.numel() * t.element_size())
        return reduce(t, *a, **k)

    kw = dict(num_bins=args.bins, sigma=args.sigma)

    def sharded():
        yy = ys.clone().requires_grad_()
        mi.mutual_information(xs, yy, group=dist.group.WORLD, **kw).sum().backward()

    def whole():
        yy = y.clone().requires_grad_()
        mi.mutual_information(x, yy, **kw).sum().backward()

    dist.all_reduce = counting
    sharded()
    payload = sum(sent)
    dist.all_reduce = reduce
    ms = _time(sharded, args.repeats)
    ref = _time(whole, args.repeats) if rank == 0 else float("nan")
    row = (rank, world, tuple(xs.shape), ms, ref, payload, payload * 2 * (world - 1) / world)
    rows = [None] * world
    dist.all_gather_object(rows, row)
    if rank == 0:
        backend = dist.get_backend()
        where = torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine()
        print(
            f"{backend}, {world} ranks, {where}, torch {torch.__version__}, K={args.bins}, sigma={args.sigma}"
        )
        print(
            "| rank | shard | fwd+bwd ms (median) | whole volume, 1 process | payload bytes "
            "| ring bytes sent |"
        )
        print("|---:|---|---:|---:|---:|---:|")
        for r, _, shp, t, whole_ms, p, ring in rows:
            shard = "x".join(map(str, shp))
            whole_s = f"{whole_ms:.1f}" if whole_ms == whole_ms else ""
            print(f"| {r} | {shard} | {t:.1f} | {whole_s} | {p} | {ring:.0f} |")
    dist.destroy_process_group()


def _spawned(rank, world, args, init):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    run(rank, world, args, init)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2, help="processes to spawn (without torchrun)")
    p.add_argument("--shape", type=lambda s: tuple(int(v) for v in s.split(",")), default=(1, 1, 96, 96, 96))
    p.add_argument("--bins", type=int, default=64)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if "RANK" in os.environ:  # under torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        run(dist.get_rank(), dist.get_world_size(), args)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_spawned, args=(args.world, args, f"tcp://127.0.0.1:{port}"), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
