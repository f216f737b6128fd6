"""How long `export` takes on a big sweep, against `collect` on the same runs in the same run.

Run from the repository root (no cluster needed; the extras tensorboard and mlflow):

    python benchmarks/export_scale.py [--runs 1000] [--dir DIR]

It generates N run directories with collect_scale.py's generator (20 epochs of history each,
~2% failed) and times, one after the other in this process with the page cache warm:

  collect            collect.collect([sweep]) (no scheduler accounting): the baseline
  tensorboard        export --to tensorboard into an empty log directory
  tensorboard again  the same export again: every run unchanged
  mlflow             export --to mlflow into an empty SQLite store (the store's creation included)
  mlflow again       the same export again: every run unchanged

It prints each time, its ratio to collect's and runs/second. No goal: a figure for
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from collect_scale import generate  # noqa: E402

from hpcjobs.results import collect, export  # noqa: E402


def timed(label: str, fn, baseline: float | None, runs: int) -> float:
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    ratio = f"{seconds / baseline:6.1f}x collect" if baseline else "      baseline"
    counts = f"  ({result.counts})" if hasattr(result, "counts") else ""
    print(f"{label:<18} {seconds:8.2f} s  {ratio}  {runs / seconds:8.0f} runs/s{counts}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--dir", type=Path, help="work here instead of a temporary directory")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="export-scale-"))
    try:
        sweep = generate(root / "multirun", args.runs)
        collect.collect([sweep], record_accounting=False)  # warm the page cache, untimed
        print(f"{args.runs} runs, load average {os.getloadavg()[0]:.2f}")
        base = timed(
            "collect", lambda: collect.collect([sweep], record_accounting=False), None, args.runs
        )
        for tracker in ("tensorboard", "mlflow"):
            out = root / tracker
            for label in (tracker, f"{tracker} again"):
                timed(
                    label,
                    lambda out=out, to=tracker: export.export([sweep], to, out),
                    base,
                    args.runs,
                )
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
