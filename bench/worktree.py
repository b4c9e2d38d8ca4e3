"""Run a benchmark script against an earlier commit, in the same run: a git worktree of it."""

import contextlib
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def checkout(ref):
    """A temporary git worktree of ``ref`` with ``mi.kernels`` linked in as pip install lays it
    out: put it on PYTHONPATH to import that commit's ``mi``. Removed on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), ref], check=True
        )
        try:
            (tree / "mi" / "kernels").symlink_to(tree / "kernels")
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)


def rows_at(ref, script):
    """The rows ``script --child REF --out CSV`` writes when run with the ``mi`` of a git
    worktree of ``ref`` importable."""
    with checkout(ref) as tree, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.csv"
        env = dict(os.environ, PYTHONPATH=str(tree))
        subprocess.run([sys.executable, str(script), "--child", ref, "--out", str(out)], check=True, env=env)
        with open(out) as f:
            return list(csv.DictReader(f))


def version(paths=("mi", "kernels")):
    """This tree's short commit, with "+changes" when ``paths`` differ from it."""
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    status = ["git", "-C", str(ROOT), "status", "--porcelain", *paths]
    dirty = subprocess.run(status, capture_output=True, text=True).stdout.strip()
    return (rev.stdout.strip() or "this tree") + ("+changes" if dirty else "")


def write(rows, path, columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def main(script, description, measure, columns, default_out):
    """The command line of a script that measures the ``mi`` on sys.path (``measure(version)``
    -> rows): ``--out``, ``--baseline REF`` (the same rows for REF first, from a worktree)
    and the internal ``--child``. Returns (rows, output path), or (None, path) in a child."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--baseline", help="a git ref to measure in the same run (e.g. an earlier commit)")
    ap.add_argument("--out", type=Path, default=default_out)
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure the mi on sys.path
    args = ap.parse_args()
    if args.child:
        write(measure(args.child), args.out, columns)
        return None, args.out
    rows = (rows_at(args.baseline, script) if args.baseline else []) + measure(version())
    write(rows, args.out, columns)
    return rows, args.out
