"""Launch-configuration sweep of the joint-histogram forward kernel on a GPU, and where its time goes.

    python bench/sweep_fwd.py [--cases G1,G2,G3,G4] [--out bench/results/sweep_fwd.csv]

For each benchmark case (the images of bench/data.py, and uniform noise of the same shape),
times with triton.testing.do_bench (median):
  * the forward kernel as launched by ``kernels.joint_hist_forward`` (raw samples mapped in
    the kernel), for BLOCK_N x num_warps x replica counts;
  * ``no-atomics``: the same loads, window weights and masks, summed per pixel and stored,
    no atomics: what the kernel costs without its reduction;
  * ``read``: x.sum() + y.sum(), the HBM floor.
The difference kernel - no-atomics is the price of the atomics.
"""

import argparse
import csv
import os
import sys

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
from bench_gpu import CASES, SIGMA  # noqa: E402
from mi.kernels import joint_hist as jh  # noqa: E402
from mi.kernels import utils  # noqa: E402
from mi.kernels.window import _load_bins, _pixel_block, _window, _window_start  # noqa: E402


@triton.jit
def _no_atomics_kernel(p_u, p_v, p_out, p_ru, p_rv, N, K, c_g, length,
                       W_U: tl.constexpr, W_V: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_W: tl.constexpr):  # fmt: skip
    i_n, i_b, o_x, m_n = _pixel_block(N, BLOCK_N)
    b_u, _ = _load_bins(p_u, o_x, m_n, p_ru, 0, i_b, 0.0, length, True)
    b_v, _ = _load_bins(p_v, o_x, m_n, p_rv, 0, i_b, 0.0, length, True)
    b_su = _window_start(b_u, K, c_g, W_U, 0)
    b_sv = _window_start(b_v, K, c_g, W_V, 0)
    o_j = tl.arange(0, BLOCK_W)
    b_c = b_sv[:, None] + o_j[None, :]
    m_c = m_n[:, None] & (o_j[None, :] < W_V)
    b_wv = _window(b_v[:, None] - b_c.to(tl.float32), c_g, 0)
    b_acc = tl.zeros([BLOCK_N, BLOCK_W], dtype=tl.float32)
    for i in range(W_U):
        b_a = b_su + i
        b_val = _window(b_u - b_a.to(tl.float32), c_g, 0)[:, None] * b_wv
        b_acc += tl.where(m_c & (b_val > 5.960464477539063e-08), b_val + (b_a * K)[:, None], 0.0)
    tl.store(p_out + o_x, tl.sum(b_acc, axis=1), mask=m_n)


def time_forward(x, y, ranges, k, block_n, num_warps, reps):
    b, n = x.shape
    w = utils.window_size("gaussian", k, SIGMA)
    out = torch.zeros((reps, b, k, k), device=x.device)
    c_g = 1.0 / (2.0 * SIGMA**2)
    grid = (triton.cdiv(n, block_n), b)

    def launch():
        out.zero_()
        jh._joint_hist_fwd_kernel[grid](
            x, y, x, x, out, ranges[0], ranges[1], 0, 0, n, k, c_g, 1.0, 0.0, k - 1.0,
            MAP=True, W_U=w, W_V=w, KIND_U=0, KIND_V=0, HAS_M=False, FIXED_POINT=False,
            REPLICAS=reps, BLOCK_N=block_n, BLOCK_W=8, num_warps=num_warps,
        )  # fmt: skip

    return do_bench(launch)


def time_no_atomics(x, y, ranges, k, block_n, num_warps):
    b, n = x.shape
    w = utils.window_size("gaussian", k, SIGMA)
    tmp = torch.empty_like(x)

    def launch():
        _no_atomics_kernel[(triton.cdiv(n, block_n), b)](
            x, y, tmp, ranges[0], ranges[1], n, k, 1.0 / (2.0 * SIGMA**2), k - 1.0,
            W_U=w, W_V=w, BLOCK_N=block_n, BLOCK_W=8, num_warps=num_warps,
        )  # fmt: skip

    return do_bench(launch)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="G1,G2,G3,G4")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "sweep_fwd.csv"))
    args = ap.parse_args()
    rows = []
    device = torch.cuda.get_device_name()
    print(device)
    for case in args.cases.split(","):
        shape, k = CASES[case]
        xi, yi = data.make_pair(shape)
        gen = torch.Generator().manual_seed(0)
        for images, (x, y) in (("images", (xi, yi)), ("noise", (torch.rand(xi.shape, generator=gen), None))):
            if y is None:
                y = torch.sin(3 * x) ** 2
            b = shape[0]
            x, y = x.reshape(b, -1).cuda(), y.reshape(b, -1).cuda()
            ranges = [torch.tensor([[0.0, 1.0]], device="cuda")] * 2
            base = dict(case=case, data=images, device=device)
            ms = do_bench(lambda x=x, y=y: (x.sum(), y.sum()))
            rows.append({**base, "variant": "read", "ms": ms})
            for block_n, warps in ((128, 4), (256, 4), (256, 8), (512, 8)):
                ms = time_no_atomics(x, y, ranges, k, block_n, warps)
                rows.append({**base, "variant": "no-atomics", "block_n": block_n, "warps": warps, "ms": ms})
                for reps in (1, 4, 16, 64):
                    ms = time_forward(x, y, ranges, k, block_n, warps, reps)
                    rows.append({**base, "variant": "kernel", "block_n": block_n, "warps": warps,
                                 "replicas": reps, "ms": ms})  # fmt: skip
            for r in rows[-18:]:
                print(f"{r['case']} {r['data']:6s} {r['variant']:10s} {r.get('block_n', ''):>5} "
                      f"{r.get('warps', ''):>2} {r.get('replicas', ''):>3} {r['ms'] * 1e3:9.1f} us",
                      flush=True)  # fmt: skip
    fields = ["device", "case", "data", "variant", "block_n", "warps", "replicas", "ms"]
    with open(args.out, "w", newline="") as f:
        wr = csv.DictWriter(f, fields)
        wr.writeheader()
        for r in rows:
            wr.writerow({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()})


if __name__ == "__main__":
    main()
