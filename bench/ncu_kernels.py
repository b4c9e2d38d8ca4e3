"""The joint-histogram kernels once each on R1's volume, for Nsight Compute (GPU only).

    ncu --clock-control none --profile-from-start off --kernel-name regex:_joint \
        --section SpeedOfLight --section ComputeWorkloadAnalysis --section Occupancy \
        --section WarpStateStats --section InstructionStats python3 bench/ncu_kernels.py

Every launch is compiled and run once before ``cudaProfilerStart``, so ncu sees one launch
of each, in the order of ``LAUNCHES``: (path, K, direction) at sigma 1, R1's 160x192x224
volume pair in bin coordinates, no mask; the backward computes dv only (registration).
Where ncu cannot read the counters (gVisor) it says so and nothing is profiled.
"""

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

LAUNCHES = [
    ("tiled", 32, "forward"),
    ("tiled", 32, "backward"),
    ("scatter", 32, "forward"),
    ("scatter", 32, "backward"),
    ("tiled", 64, "forward"),
    ("span", 64, "forward"),
    ("span", 256, "forward"),
    ("span-sorted", 256, "forward"),
    ("scatter", 256, "forward"),
]


def main():
    import data

    from mi import kernels

    x, y = (t.cuda() for t in data.make_pair((1, 1, 160, 192, 224)))
    calls = []
    for method, k, direction in LAUNCHES:
        u = (x.reshape(1, -1) * (k - 1)).contiguous()
        v = (y.reshape(1, -1) * (k - 1)).contiguous()
        if direction == "forward":
            call = lambda u=u, v=v, k=k: kernels.joint_hist_forward(u, v, None, k, 1.0)
        else:
            g = torch.randn(1, k, k, device="cuda")
            call = lambda u=u, v=v, k=k, g=g: kernels.joint_hist_backward(
                g, u, v, None, k, 1.0, needs_u=False
            )
        calls.append((method, call))
    for method, call in calls:  # compile and warm up, unprofiled
        with kernels.forced_method(method):
            call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for method, call in calls:
        with kernels.forced_method(method):
            call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print("profiled:", ", ".join(f"{m} K={k} {d}" for m, k, d in LAUNCHES))


if __name__ == "__main__":
    main()
