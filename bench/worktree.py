"""Run a benchmark script against an earlier commit, in the same run: a git worktree of it."""

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rows_at(ref, script):
    """The rows ``script --child REF --out CSV`` writes when run with the ``mi`` of a git
    worktree of ``ref`` importable (``mi.kernels`` linked in as pip install lays it out)."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), ref], check=True
        )
        try:
            (tree / "mi" / "kernels").symlink_to(tree / "kernels")
            out = Path(tmp) / "rows.csv"
            env = dict(os.environ, PYTHONPATH=str(tree))
            subprocess.run(
                [sys.executable, str(script), "--child", ref, "--out", str(out)], check=True, env=env
            )
            with open(out) as f:
                return list(csv.DictReader(f))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)
