"""Where the GPU time of one mutual_information forward+backward goes (kernels alone vs the call).

    python bench/profile_gpu.py [--shape 8,1,512,512] [--bins 256] [--sigma 0.5]

Prints do_bench medians of the Triton kernels alone (float atomics and the deterministic
fixed-point mode), of a plain read of the inputs (the HBM floor), of the whole public call,
and a torch.profiler table of the whole call.
"""

import argparse

import torch
import triton.testing

import mi
from mi import kernels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="8,1,512,512")
    ap.add_argument("--bins", type=int, default=256)
    ap.add_argument("--sigma", type=float, default=0.5)
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    k, sigma = args.bins, args.sigma
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(shape, device="cuda", generator=gen)
    y = torch.sin(3 * x) ** 2
    b = shape[0]
    u = (x.reshape(b, -1) * (k - 1)).contiguous()
    v = (y.reshape(b, -1) * (k - 1)).contiguous()
    g = torch.randn(b, k, k, device="cuda")
    # the public functions' path: raw samples and one [lo, hi] per row, mapped in registers
    xr, yr = x.reshape(b, -1), y.reshape(b, -1)
    ranges = (torch.stack(torch.aminmax(xr, dim=-1), -1), torch.stack(torch.aminmax(yr, dim=-1), -1))
    mapped = dict(ranges=ranges, length=k - 1.0)
    rows = [
        ("read x and y (HBM floor)", lambda: (x.sum(), y.sum())),
        ("kernel fwd, float atomics", lambda: kernels.joint_hist_forward(u, v, None, k, sigma)),
        (
            "  the same, raw samples mapped in the kernel",
            lambda: kernels.joint_hist_forward(xr, yr, None, k, sigma, **mapped),
        ),
        (
            "kernel fwd, fixed point",
            lambda: kernels.joint_hist_forward(u, v, None, k, sigma, deterministic=True),
        ),
        ("kernel bwd (du, dv)", lambda: kernels.joint_hist_backward(g, u, v, None, k, sigma)),
        (
            "  the same, raw samples mapped in the kernel",
            lambda: kernels.joint_hist_backward(g, xr, yr, None, k, sigma, **mapped),
        ),
    ]
    yy = y.clone().requires_grad_()

    def call():
        mi.mutual_information(x, yy, num_bins=k, sigma=sigma, value_range=(0.0, 1.0)).sum().backward()
        yy.grad = None

    def call_auto():
        mi.mutual_information(x, yy, num_bins=k, sigma=sigma).sum().backward()
        yy.grad = None

    def unchecked():
        previous = mi.set_value_checks(False)
        try:
            call()
        finally:
            mi.set_value_checks(previous)

    rows += [
        ("mutual_information fwd+bwd, range (0,1)", call),
        ("mutual_information fwd+bwd, auto", call_auto),
        ("  the same, set_value_checks(False)", unchecked),
    ]
    print(f"{torch.cuda.get_device_name()}  shape {shape}  K={k}  sigma={sigma}")
    for name, fn in rows:
        ms = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        print(f"{name:45s} {ms[0] * 1e3:9.1f} us  [{ms[1] * 1e3:.1f}, {ms[2] * 1e3:.1f}]")
    call()
    torch.cuda.synchronize()
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as prof:
        for _ in range(5):
            call()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=40)
    print("\n".join(line[:150] for line in table.splitlines()))
    launches = sum(
        e.count
        for e in prof.key_averages()
        if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx")
    )
    print(f"kernel launches per call: {launches / 5:.0f}")


if __name__ == "__main__":
    main()
