"""Ahead-of-time compile every kernel for sm_80 and sm_90 and report its resources.

    python -m mi.kernels.report [--out bench/results/kernels_static.csv] [--arch 80 90]

No GPU is needed: ``triton.compile`` builds the cubin for a ``GPUTarget`` and the
``cuobjdump`` shipped in the Triton wheel prints registers, stack/local memory (spills)
and static shared memory per kernel. Every configuration here is one the launchers
actually use (block sizes from ``utils.block_sizes`` and ``utils.TILED_CONFIGS``). Exits
non-zero if a kernel fails to compile, spills, or needs more shared memory than a block
may have (its launch would fail). Must not run under TRITON_INTERPRET (it is removed here before the
kernel modules are imported).
"""

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from . import entropy, hist, joint_hist, tiled, unavailable_reason  # noqa: E402
from .utils import (  # noqa: E402
    KERNEL_IDS,
    MAX_REPLICAS_HIST,
    MAX_REPLICAS_JOINT,
    MAX_TILED_BINS,
    SPAN_CONFIG,
    TILED_EXP,
    TILED_PRECISION,
    block_sizes,
    tiled_config,
    window_size,
)

#: Shared memory one block may use (opt-in maximum), bytes: a kernel above it cannot launch.
SHARED_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}

COLUMNS = ["kernel", "arch", "config", "registers", "local_bytes", "shared_bytes"]

#: (kernel_u, kernel_v, K, sigma): representative windows. sigma 0.4 is the seed's default
#: (W 5), 1.0 (W 12), 4.0 the widest single chunk (W 47), 8.0 on K 256 a chunked one (W 93).
WINDOWS = [
    ("gaussian", "gaussian", 256, 0.4),
    ("gaussian", "gaussian", 256, 1.0),
    ("gaussian", "gaussian", 256, 4.0),
    ("gaussian", "gaussian", 256, 8.0),
    ("bspline", "bspline", 64, 1.0),
    ("box", "bspline", 64, 1.0),
    # mi.compat: kornia's default window (xu, radius 1) and a wider truncated Gaussian; MONAI's
    # b-spline pair (its target's tie-splitting box on the second axis)
    ("xu", "xu", 64, 1.0),
    ("tgauss", "tgauss", 64, 2.0),
    ("bspline", "nearest", 32, 1.0),
]


def _abbrev(kind):
    return {
        "gaussian": "g",
        "bspline": "b",
        "box": "x",
        "xu": "u",
        "tgauss": "t",
        "rect": "r",
        "nearest": "n",
    }[kind]


#: The sample pointers, read (and their gradients written) in the samples' own dtype.
SAMPLE_POINTERS = {"p_u", "p_v", "p_du", "p_dv"}
#: The entropy kernels' float64 outputs and inputs (``entropy.py``).
FP64_POINTERS = {"p_h64", "p_pa", "p_pb", "p_s"}


def _signature(fn, constexprs, samples="fp32"):
    """Triton types of the runtime arguments, from the kernels' naming convention:
    ``p_*`` fp32 pointers (the samples and their gradients ``samples``, the fixed-point
    accumulator int64), N, K and the range strides ``s_*`` i32, the rest fp32."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "p_out" and constexprs.get("FIXED_POINT"):
            sig[name] = "*i64"
        elif name in SAMPLE_POINTERS:
            sig[name] = f"*{samples}"
        elif name in FP64_POINTERS:
            sig[name] = "*fp64"
        elif name.startswith("p_"):
            sig[name] = "*fp32"
        else:
            sig[name] = "i32" if name in ("N", "K") or name.startswith("s_") else "fp32"
    return sig


#: (kernel_u, kernel_v, K, sigma) of the tiled kernels: the loss defaults (sigma 1) at each
#: K they serve, the seed's sigma 0.4, the B-spline pair and Mattes (box x B-spline).
TILED_WINDOWS = [
    ("gaussian", "gaussian", 16, 1.0),
    ("gaussian", "gaussian", 32, 1.0),
    ("gaussian", "gaussian", 64, 1.0),
    ("gaussian", "gaussian", 128, 1.0),
    ("gaussian", "gaussian", 64, 0.4),
    ("bspline", "bspline", 64, 1.0),
    ("box", "bspline", 32, 1.0),
]


#: The span forward's windows: the seed's K = 256 at sigma 0.4, the loss defaults at 64.
SPAN_WINDOWS = [
    ("gaussian", "gaussian", 256, 0.4),
    ("gaussian", "gaussian", 64, 1.0),
    ("bspline", "bspline", 256, 1.0),
]


def _tiled_configs():
    """The tiled kernels as ``tiled._launch_args`` launches them, in each precision measured,
    and the span forward as ``tiled.forward_span`` does."""
    import torch

    fwd, bwd = tiled._joint_tiled_fwd_kernel, tiled._joint_tiled_bwd_kernel
    for ku, kv, k, sigma in TILED_WINDOWS:
        w_u, w_v = window_size(ku, k, sigma), window_size(kv, k, sigma)
        common = dict(MAP=ku != "box", KIND_U=KERNEL_IDS[ku], KIND_V=KERNEL_IDS[kv], HAS_M=True)
        for direction, fn in (("forward", fwd), ("backward", bwd)):
            if k > MAX_TILED_BINS[direction]:
                continue
            kp, bp, nw, _ = tiled_config(direction, k, 1, 1 << 20, torch.device("cpu"))
            tag = f"{_abbrev(ku)}{w_u}x{_abbrev(kv)}{w_v}-K{k}-KP{kp}-BP{bp}-nw{nw}"
            const = dict(common, KP=kp, BLOCK_P=bp)
            if direction == "backward":
                const.update(NEEDS_U=True, NEEDS_V=True, NEEDS_M=True)
            const.update(EXP=TILED_EXP[direction])
            for prec in dict.fromkeys([TILED_PRECISION[direction], "tf32x3", "tf32"]):
                yield fn.__name__, fn, f"{tag}-{prec}", dict(const, PRECISION=prec), nw, "fp32"
            if ku == "gaussian":  # the exp2 on the FMA units (its own block where it needs one)
                kp, bp, nw, _ = tiled_config(direction, k, 1, 1 << 20, torch.device("cpu"), exp="fma")
                tag = f"{_abbrev(ku)}{w_u}x{_abbrev(kv)}{w_v}-K{k}-KP{kp}-BP{bp}-nw{nw}"
                const.update(BLOCK_P=bp, EXP="fma", PRECISION=TILED_PRECISION[direction])
                yield fn.__name__, fn, f"{tag}-{TILED_PRECISION[direction]}-fma", const, nw, "fp32"
    span = tiled._joint_span_fwd_kernel
    t, bp, nw = SPAN_CONFIG
    for ku, kv, k, sigma in SPAN_WINDOWS:
        w_u, w_v = window_size(ku, k, sigma), window_size(kv, k, sigma)
        const = dict(MAP=ku != "box", KIND_U=KERNEL_IDS[ku], KIND_V=KERNEL_IDS[kv], HAS_M=True)
        const.update(W_U=w_u, W_V=w_v, T=t, BLOCK_P=bp, PRECISION=TILED_PRECISION["forward"])
        const.update(EXP=TILED_EXP["forward"])
        yield (
            span.__name__,
            span,
            f"{_abbrev(ku)}{w_u}x{_abbrev(kv)}{w_v}-K{k}-T{t}-BP{bp}-nw{nw}",
            const,
            nw,
            "fp32",
        )


def _configs():
    """Yield (kernel name, fn, config label, constexprs, num_warps, sample dtype) as the
    launchers use them (MAP on where the public functions pass raw samples and their ranges,
    off for the Mattes pair); the first window also with bf16 and fp16 samples (loads,
    conversions, gradient stores)."""
    fwd2, bwd2 = joint_hist._joint_hist_fwd_kernel, joint_hist._joint_hist_bwd_kernel
    fwd1, bwd1 = hist._hist_fwd_kernel, hist._hist_bwd_kernel
    for i, (ku, kv, k, sigma) in enumerate(WINDOWS):
        w_u, w_v = window_size(ku, k, sigma), window_size(kv, k, sigma)
        bn, bw, nw = block_sizes(w_v)
        # kernel="mattes" and mi.compat pass bin coordinates (MAP off); the others raw samples
        bins_given = ku in ("box", "xu", "tgauss") or kv == "nearest"
        tag = f"{_abbrev(ku)}{w_u}x{_abbrev(kv)}{w_v}-BN{bn}-BW{bw}-nw{nw}" + ("-nomap" if bins_given else "")
        common = dict(W_U=w_u, W_V=w_v, KIND_U=KERNEL_IDS[ku], KIND_V=KERNEL_IDS[kv], HAS_M=True)
        common.update(MAP=not bins_given)
        common.update(BLOCK_N=bn, BLOCK_W=bw)
        for fixed, mode in ((False, "float"), (True, "fixed")):
            const = dict(common, FIXED_POINT=fixed, REPLICAS=MAX_REPLICAS_JOINT)
            yield fwd2.__name__, fwd2, f"{tag}-{mode}", const, nw, "fp32"
        bwd_const = dict(common, NEEDS_U=True, NEEDS_V=True, NEEDS_M=True)
        yield bwd2.__name__, bwd2, tag, bwd_const, nw, "fp32"
        for half in ("bf16", "fp16") if i == 0 else ():
            const = dict(common, FIXED_POINT=False, REPLICAS=MAX_REPLICAS_JOINT)
            yield fwd2.__name__, fwd2, f"{tag}-float-{half}", const, nw, half
            yield bwd2.__name__, bwd2, f"{tag}-{half}", bwd_const, nw, half
    for i, (kind, w) in enumerate(dict.fromkeys((ku, window_size(ku, k, s)) for ku, _, k, s in WINDOWS)):
        bn, bw, nw = block_sizes(w)
        tag = f"{_abbrev(kind)}{w}-BN{bn}-BW{bw}-nw{nw}"
        common = dict(W=w, KIND=KERNEL_IDS[kind], HAS_M=True, MAP=True, BLOCK_N=bn, BLOCK_W=bw)
        for fixed, mode in ((False, "float"), (True, "fixed")):
            const = dict(common, FIXED_POINT=fixed, REPLICAS=MAX_REPLICAS_HIST)
            yield fwd1.__name__, fwd1, f"{tag}-{mode}", const, nw, "fp32"
        yield bwd1.__name__, bwd1, tag, dict(common, NEEDS_U=True, NEEDS_M=True), nw, "fp32"
        for half in ("bf16", "fp16") if i == 0 else ():
            const = dict(common, FIXED_POINT=False, REPLICAS=MAX_REPLICAS_HIST)
            yield fwd1.__name__, fwd1, f"{tag}-float-{half}", const, nw, half
            yield bwd1.__name__, bwd1, f"{tag}-{half}", dict(common, NEEDS_U=True, NEEDS_M=True), nw, half
    yield from _tiled_configs()
    fwd, bwd = entropy._entropies_fwd_kernel, entropy._entropies_bwd_kernel
    for mode, score in enumerate(entropy.SCORES):
        for block in (2, 4, 8, 16, 32, entropy.FWD_BLOCK):  # K = 2, 3-4, ..., 33-64, and above
            nw = entropy.fwd_warps(block)
            const = dict(MODE=mode, BLOCK_A=block, BLOCK_C=block)
            yield fwd.__name__, fwd, f"{score}-B{block}x{block}-nw{nw}", const, nw, "fp32"
        nw, block = entropy.BWD_WARPS, entropy.BWD_BLOCK
        yield bwd.__name__, bwd, f"{score}-B{block}-nw{nw}", dict(MODE=mode, BLOCK=block), nw, "fp32"


def compile_cubin(fn, constexprs, arch, num_warps, samples="fp32"):
    """(cubin bytes, dynamic shared bytes) of ``fn`` for sm_<arch>, with no GPU present."""
    signature = _signature(fn, constexprs, samples)
    # pointers 16-byte aligned, as torch allocates them and the JIT would specialise
    attrs = {
        (fn.arg_names.index(n),): [["tt.divisibility", 16]] for n, t in signature.items() if t.startswith("*")
    }
    target = GPUTarget("cuda", arch, 32)
    options = {"num_warps": num_warps}
    try:
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=target, options=options)
    except (TypeError, AttributeError):  # a Triton whose attrs format differs: no hints
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        compiled = triton.compile(src, target=target, options=options)
    return compiled.asm["cubin"], int(getattr(compiled.metadata, "shared", 0) or 0)


def cuobjdump_path():
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def resource_usage(cubin):
    """{'REG', 'STACK', 'LOCAL', 'SHARED'}: ints from ``cuobjdump --dump-resource-usage``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [str(cuobjdump_path()), "--dump-resource-usage", f.name],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    usage = {}
    for key in ("REG", "STACK", "LOCAL", "SHARED"):
        found = re.search(rf"\b{key}:(\d+)", out)
        if found is None:
            raise RuntimeError(f"no {key} in cuobjdump output:\n{out}")
        usage[key] = int(found.group(1))
    return usage


def build_report(archs=(80, 90)):
    """Rows of COLUMNS for every kernel, arch and configuration; raises if one fails."""
    if not isinstance(joint_hist._joint_hist_fwd_kernel, triton.runtime.jit.JITFunction):
        raise RuntimeError("kernels were defined under TRITON_INTERPRET; run without it")
    rows = []
    for name, fn, label, const, nw, samples in _configs():
        for arch in archs:
            cubin, dyn_shared = compile_cubin(fn, const, arch, nw, samples)
            usage = resource_usage(cubin)
            rows.append({
                "kernel": name,
                "arch": f"sm_{arch}",
                "config": label,
                "registers": usage["REG"],
                "local_bytes": usage["STACK"] + usage["LOCAL"],
                "shared_bytes": max(usage["SHARED"], dyn_shared),
            })  # fmt: skip
    return rows


def _default_out():
    root = Path(__file__).resolve().parent.parent
    base = root if (root / "pyproject.toml").exists() else Path.cwd()
    return base / "bench" / "results" / "kernels_static.csv"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=_default_out())
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason is not None:
        print(f"mi.kernels.report: {reason}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows = build_report(tuple(args.arch))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    spills = [r for r in rows if r["local_bytes"] > 0]
    too_big = [r for r in rows if r["shared_bytes"] > SHARED_LIMIT[r["arch"]]]
    print(
        f"{len(rows)} kernel builds (triton {triton.__version__}) in "
        f"{time.perf_counter() - t0:.0f} s -> {args.out}"
    )
    for r in spills:
        print(f"SPILL {r['kernel']} {r['arch']} {r['config']}: {r['local_bytes']} bytes local")
    for r in too_big:
        print(f"SHARED {r['kernel']} {r['arch']} {r['config']}: {r['shared_bytes']} bytes > "
              f"{SHARED_LIMIT[r['arch']]} (the launch would fail)")  # fmt: skip
    return 1 if spills or too_big else 0


if __name__ == "__main__":
    sys.exit(main())
