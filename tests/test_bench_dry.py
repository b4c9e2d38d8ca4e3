"""The GPU benchmark's dry run (tiny sizes, Triton interpreter on CPU) keeps it from rotting."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mi.kernels import unavailable_reason

ROOT = Path(__file__).resolve().parents[1]
#: The dry runs of the GPU benchmarks run the Triton kernels (in the interpreter).
needs_kernels = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


@needs_kernels
def test_bench_gpu_dry_run(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--dry-run", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "bench_gpu_dry.csv")))
    mine = [r for r in rows if r["provider"] == "mi"]
    assert mine and all(float(r["fwd_bwd_ms_median"]) > 0 for r in mine), rows


@needs_kernels
def test_bench_regime_dry_run(tmp_path):
    """The registration-regime benchmark's dry run: every case and the library's providers, with
    the float64 oracle's errors (the interpreter's tl.dot is fp32: both paths within 1e-5)."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    providers = "auto,auto-graph,tiled,scatter,span,span-sorted,tiled-tf32x3-fma,monai"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_regime.py"), "--dry-run", "--out", str(tmp_path),
           "--providers", providers]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "bench_regime_dry.csv")))
    assert {r["case"] for r in rows} == {"R1", "R2", "R3", "R4", "R5"}, rows
    for r in rows:
        if r["case"] != "R4" and r["provider"] not in ("monai", "auto-graph"):  # (graphs: CUDA only)
            assert float(r["fwd_bwd_ms"]) > 0 and float(r["mi_rel_err"]) < 1e-5, r
            assert float(r["grad_rel_err"]) < 1e-5, r


@needs_kernels
def test_bench_regime_sweep_writes_every_row_timed(tmp_path, monkeypatch):
    """``bench_regime.py --sweep`` (the GPU run's data for the tiled blocks, the programs per
    multiprocessor and the auto rule) writes a row per configuration, each timed: a
    configuration that raises records the exception's name instead, which a GPU run would
    show only once it is back. Trimmed to 16 bins, one span configuration and two program
    counts, on R1's dry-run volume (the GPU sweeps 16-256 bins)."""
    monkeypatch.setattr(sys, "path", [str(ROOT / "bench"), *sys.path])  # (bench_regime adds two more)
    import bench_regime
    import data

    monkeypatch.setattr(bench_regime, "SWEEP_BINS", (16,))
    monkeypatch.setattr(bench_regime, "SPAN_SWEEP_BINS", (16,))
    monkeypatch.setattr(bench_regime, "SPAN_SWEEP", ((16, 32, 4),))
    monkeypatch.setattr(bench_regime, "PROGRAMS_SWEEP", (1, 16))
    from mi import kernels

    utils = kernels._module("utils")
    state = lambda: repr((utils.TILED_CONFIGS, utils.TILED_PROGRAMS_PER_SM, utils.SPAN_CONFIG,
                          utils.TILED_PRECISION, utils.TILED_EXP))  # fmt: skip
    before = state()
    x, y = data.make_pair(bench_regime.DRY_CASES["R1"][0])
    bench_regime.sweep(x, y, bench_regime.timer(False), str(tmp_path))
    assert state() == before  # the sweep puts back every configuration it patched
    rows = list(csv.DictReader(open(tmp_path / "bench_regime_sweep.csv")))
    tiled = ["tf32", "tf32x3", "tf32x3-fma"] * 6  # per (block, warps): 3 blocks x 2 warp counts
    want = ["scatter", "span-16", *tiled, "tf32x3-programs1", "tf32x3-programs16"]
    assert [r["precision"] for r in rows] == want, rows
    for r in rows:
        times = [r["fwd_ms"]] if r["precision"].startswith("span") else [r["fwd_ms"], r["bwd_ms"]]
        assert all(float(t) > 0 for t in times), r  # (float() of an exception's name raises)


def test_bench_regime_plot(tmp_path):
    """--plot draws bench_regime.png from a run's CSV (the committed H200 one), named by its card."""
    for name in ("bench_regime.csv", "bench_regime.md"):
        (tmp_path / name).write_bytes((ROOT / "bench" / "results" / name).read_bytes())
    cmd = [sys.executable, str(ROOT / "bench" / "bench_regime.py"), "--plot", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "bench_regime.png").stat().st_size > 10_000


@needs_kernels
def test_host_overhead_counts(tmp_path):
    """bench/host_overhead.py runs, and its counts pin the Triton path's host work: four Triton
    launches per forward+backward (joint histogram and entropies, each way), one host read
    with the value checks and none without (a stray .item() would stall a GPU every call),
    and few aten ops besides: 6-11 with a fixed range, 44-45 with an "auto" one."""
    out = tmp_path / "host.csv"
    cmd = [sys.executable, str(ROOT / "bench" / "host_overhead.py"), "--child", "test", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader(open(out)))
    triton = [r for r in rows if r["backend"] == "triton"]
    assert len(triton) == 4 and len(rows) == 8, rows
    for r in triton:
        assert int(r["triton"]) == 4, r
        assert int(r["syncs"]) == (1 if r["checks"] == "True" else 0), r
        # 54 to 81 at commit 329f83c, 31 to 36 at e30247f, 6 to 11 since; an "auto" range's
        # exact derivative (functional._Live) adds 35 small ops to the backward
        bound = 12 if r["value_range"] == "fixed" else 50
        assert 0 < int(r["ops"]) < bound, r


def test_gpu_only_scripts_import():
    """The GPU-only experiments (no dry run) at least import: their kernels are defined and
    their imports from the library and the benchmark still exist."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    scripts = ["sweep_fwd", "exp_vector_atomics", "time_call_gpu", "profile_gpu", "sass_counts"]
    code = "import " + ", ".join(scripts + ["ncu_kernels", "span_tiles"])
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "bench", env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_bench_pyramid_dry_run(tmp_path):
    """bench/bench_pyramid.py runs (one trial of each part) and writes one row per registration,
    each with a finite error and the level count register used."""
    cmd = [sys.executable, str(ROOT / "bench" / "bench_pyramid.py"), "--dry-run", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "bench_pyramid_dry.csv")))
    assert {r["part"] for r in rows} == {"levels", "affine", "sampling"}, rows
    assert len(rows) == 3 + 2 + 2, rows
    default = [r for r in rows if r["part"] == "levels" and r["setting"] == "default"]
    assert [r["levels"] for r in default] == ["1"], default  # 48x40: no level under 768 voxels
    assert all(float(r["corner_err_px"]) >= 0 and float(r["wall_s"]) > 0 for r in rows), rows
    assert (tmp_path / "bench_pyramid_dry.md").read_text().count("\n| ") == len(rows) + 1
