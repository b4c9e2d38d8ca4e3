"""The GPU benchmark's dry run (tiny sizes, Triton interpreter on CPU) keeps it from rotting."""

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_dry_run(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--dry-run", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "bench_gpu_dry.csv")))
    mine = [r for r in rows if r["provider"] == "mi"]
    assert mine and all(float(r["fwd_bwd_ms_median"]) > 0 for r in mine), rows
