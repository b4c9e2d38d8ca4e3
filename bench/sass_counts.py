"""Static instruction counts of the tiled kernels (no GPU): SASS for sm_90 from the AOT compile.

    python bench/sass_counts.py [--baseline REF] [--out bench/results/sass_counts.csv]

Compiles ``_joint_tiled_fwd_kernel`` and ``_joint_tiled_bwd_kernel`` (dv only, as in
registration) with ``mi.kernels.report.compile_cubin`` for sm_90, at the loss defaults
(Gaussian windows, sigma 1 bin) and the blocks of the H200 sweep (32 pixels, 4 warps,
tf32x3), disassembles them with the ``cuobjdump`` of the Triton wheel and counts the
instructions of the whole kernel, the loop body being most of it: a proxy for the work per
pixel when no GPU is at hand, not a time. Where the kernels have ``EXP``, also with the
gaussian's exp2 on the FMA units ("tf32x3-fma", ``utils.TILED_EXP``). ``--baseline REF``
counts an earlier commit's kernels too (a git worktree, in a subprocess), one row per version.
"""

import collections
import os
import re
import subprocess
import tempfile
from pathlib import Path

import worktree

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["version", "kernel", "bins", "block_p", "warps", "precision", "instructions", "registers",
           "spill_bytes", "MUFU", "MMA", "LDS", "top"]  # fmt: skip
CASES = [("forward", 32), ("forward", 64), ("backward", 32), ("backward", 64)]


def count(sass):
    """{mnemonic: count} of a ``cuobjdump --dump-sass`` listing (predicates and suffixes dropped)."""
    counts = collections.Counter()
    for line in sass.splitlines():
        found = re.match(r"\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if found:
            counts[found.group(1).split(".")[0]] += 1
    return counts


def measure(version):
    """Rows for the ``mi.kernels`` importable here (this tree, or a baseline's via sys.path)."""
    os.environ.pop("TRITON_INTERPRET", None)
    from mi.kernels import report, tiled
    from mi.kernels.utils import KERNEL_IDS, window_size

    rows = []
    for (direction, k), exp in [(c, e) for c in CASES for e in ("mufu", "fma")]:
        fn = tiled._joint_tiled_fwd_kernel if direction == "forward" else tiled._joint_tiled_bwd_kernel
        if "EXP" not in fn.arg_names and exp == "fma":
            continue  # (older forms evaluate exp on the special-function unit only)
        const = dict(MAP=True, KIND_U=KERNEL_IDS["gaussian"], KIND_V=KERNEL_IDS["gaussian"], HAS_M=False,
                     KP=k, BLOCK_P=32, PRECISION="tf32x3")  # fmt: skip
        if "W_U" in fn.arg_names:  # the first form masked the tiles to each pixel's window
            const.update(W_U=window_size("gaussian", k, 1.0), W_V=window_size("gaussian", k, 1.0))
        if "EXP" in fn.arg_names:
            const.update(EXP=exp)
        if direction == "backward":
            const.update(NEEDS_U=False, NEEDS_V=True, NEEDS_M=False)
        cubin, _ = report.compile_cubin(fn, const, 90, 4)
        usage = report.resource_usage(cubin)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin)
            f.flush()
            sass = subprocess.run(
                [str(report.cuobjdump_path()), "--dump-sass", f.name],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        c = count(sass)
        rows.append({
            "version": version, "kernel": direction, "bins": k, "block_p": 32, "warps": 4,
            "precision": "tf32x3" + ("-fma" if exp == "fma" else ""), "instructions": sum(c.values()),
            "registers": usage["REG"], "spill_bytes": usage["STACK"] + usage["LOCAL"], "MUFU": c["MUFU"],
            "MMA": c["HMMA"] + c["HGMMA"],
            "LDS": c["LDS"], "top": " ".join(f"{name}:{n}" for name, n in c.most_common(8)),
        })  # fmt: skip
    return rows


def main():
    rows, out = worktree.main(
        __file__, __doc__.splitlines()[0], measure, COLUMNS, ROOT / "bench" / "results" / "sass_counts.csv"
    )
    for r in rows or []:
        print(
            f"{r['version']:>10} {r['kernel']:>8} K={r['bins']:<3} {r['precision']:<10} "
            f"{r['instructions']:>5} instructions, {r['registers']} registers, "
            f"{r['spill_bytes']} spill bytes, MUFU {r['MUFU']}, MMA {r['MMA']}"
        )
    if rows is not None:
        print(f"-> {out}")


if __name__ == "__main__":
    main()
