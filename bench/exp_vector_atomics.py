"""Experiment (sm_90): does the joint forward get faster with 16-byte vector atomics?

    python bench/exp_vector_atomics.py > bench/results/exp_vector_atomics.txt

``red.global.add.v4.f32`` (PTX 8.1, sm_90) adds four consecutive floats in one instruction.
This variant of the forward (Gaussian windows, W = 6, raw samples in [0, 1]) covers each
pixel's window row with up to three aligned quads (K must be a multiple of 4), so it issues
about half as many atomic instructions as the scalar kernel. It prints its time, replicas
zeroed and summed included, beside ``kernels.joint_hist_forward``'s, with its error. The
answer on an H100 (bench/results/exp_vector_atomics.txt) was no: the L2 does the same work
per element, so the kernel stays where it is. Not used by the library; kept as the record.
"""

import os
import sys

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
from bench_gpu import CASES  # noqa: E402
from mi.kernels.window import _load_bins, _pixel_block, _window, _window_start  # noqa: E402

from mi import kernels  # noqa: E402


@triton.jit
def _red_v4(ptr, w0, w1, w2, w3, go):
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .pred %p;
        setp.ne.b32 %p, $6, 0;
        @%p red.relaxed.gpu.global.add.v4.f32 [$1], {$2, $3, $4, $5};
        mov.u32 $0, 0;
        }""",
        constraints="=r,l,f,f,f,f,r",
        args=[ptr, w0, w1, w2, w3, go],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


@triton.jit
def fwd_v4_kernel(
    p_u,
    p_v,
    p_out,
    p_ru,
    p_rv,
    N,
    K,
    c_g,
    length,
    W: tl.constexpr,
    REPLICAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_n, i_b, o_x, m_n = _pixel_block(N, BLOCK_N)
    b_u, _ = _load_bins(p_u, o_x, m_n, p_ru, 0, i_b, 0.0, length, True)
    b_v, _ = _load_bins(p_v, o_x, m_n, p_rv, 0, i_b, 0.0, length, True)
    b_su = _window_start(b_u, K, c_g, W, 0)
    b_sv = _window_start(b_v, K, c_g, W, 0)
    b_q = b_sv - (b_sv % 4)
    p_o = p_out + ((i_n % REPLICAS) * tl.num_programs(1) + i_b) * K * K
    tiny = 5.960464477539063e-08
    for j in range(3):
        c0 = b_q + 4 * j
        ok0 = m_n & (c0 < K) & (c0 < b_sv + W)
        w0 = tl.where((c0 >= b_sv) & ok0, _window(b_v - c0.to(tl.float32), c_g, 0), 0.0)
        w1 = tl.where((c0 + 1 >= b_sv) & (c0 + 1 < b_sv + W) & ok0, _window(b_v - (c0 + 1.0), c_g, 0), 0.0)
        w2 = tl.where((c0 + 2 >= b_sv) & (c0 + 2 < b_sv + W) & ok0, _window(b_v - (c0 + 2.0), c_g, 0), 0.0)
        w3 = tl.where((c0 + 3 >= b_sv) & (c0 + 3 < b_sv + W) & ok0, _window(b_v - (c0 + 3.0), c_g, 0), 0.0)
        for i in range(W):
            b_a = b_su + i
            b_wu = _window(b_u - b_a.to(tl.float32), c_g, 0)
            v0, v1, v2, v3 = b_wu * w0, b_wu * w1, b_wu * w2, b_wu * w3
            v0 = tl.where(v0 > tiny, v0, 0.0)
            v1 = tl.where(v1 > tiny, v1, 0.0)
            v2 = tl.where(v2 > tiny, v2, 0.0)
            v3 = tl.where(v3 > tiny, v3, 0.0)
            go = ok0 & ((v0 + v1 + v2 + v3) > 0.0)
            _red_v4((p_o + b_a * K + c0).to(tl.int64), v0, v1, v2, v3, go.to(tl.int32))


def time_vector(x, y, r, k, block_n, num_warps, reps):
    """(ms, J) of the vector-atomic forward, replicas zeroed and summed included."""
    b, n = x.shape
    out = torch.zeros(reps, b, k, k, device="cuda")

    def vector():
        out.zero_()
        fwd_v4_kernel[(triton.cdiv(n, block_n), b)](
            x, y, out, r, r, n, k, 2.0, k - 1.0, W=6, REPLICAS=reps, BLOCK_N=block_n, num_warps=num_warps
        )
        return out.sum(0)

    return do_bench(vector), vector()


def main():
    print(torch.cuda.get_device_name())
    for case in ("G1", "G2", "G4"):
        shape, k = CASES[case]
        xi, yi = data.make_pair(shape)
        xn = torch.rand(xi.shape, generator=torch.Generator().manual_seed(0))
        for name, (x, y) in (("images", (xi, yi)), ("noise", (xn, torch.sin(3 * xn) ** 2))):
            b, r = shape[0], torch.tensor([[0.0, 1.0]], device="cuda")
            x, y = x.reshape(b, -1).cuda(), y.reshape(b, -1).cuda()
            args, kw = (x, y, None, k, 0.5), dict(ranges=(r, r), length=k - 1.0)
            ref = kernels.joint_hist_forward(*args, **kw)
            t_ref = do_bench(lambda a=args, kw=kw: kernels.joint_hist_forward(*a, **kw))
            for bn, nw in ((128, 4), (256, 4), (512, 8)):
                for reps in (4, 16):
                    t, got = time_vector(x, y, r, k, bn, nw, reps)
                    err = ((got - ref).abs().max() / ref.abs().max()).item()
                    print(f"{case} {name:6s} scalar (launcher) {t_ref * 1e3:7.1f} us | v4 BN{bn} nw{nw} "
                          f"replicas {reps:2d}: {t * 1e3:7.1f} us, max error / max {err:.1e}",
                          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
