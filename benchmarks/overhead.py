"""What a run costs beyond its own work: the first command against its floor, the per-run
overhead inside a worker, the files each run leaves, and `status` of a huge sweep.

From the repository root (the dev cluster up for the `status` part: scripts/dev-cluster up):

    python benchmarks/overhead.py                         # every part
    python benchmarks/overhead.py --parts noop sleep files
    python benchmarks/overhead.py --quick                 # small sizes: checks the benchmark runs

Parts, each timed as whole processes from start to end, in one run (issue 17's goals):
  readme  the README's first command
          (`experiment=cnn_sweep --multirun hydra/launcher=hpcjobs_local`), as it runs (local
          workers) and with one process per run (`hydra.launcher.workers=0`), back to back,
          each against its floor: the runs' own training seconds (metrics.json train_seconds) /
          cores + one start-up (a one-run `noop` sweep's whole command). Goal <= 1.3x.
  noop    N `noop` runs (returns at once) on 2 local workers: the per-run overhead inside a
          worker, (wall - start-up) x workers / N, where the start-up is the same command with
          2 runs. Goal <= 5 ms.
  sleep   200 runs of `+sleep_s=0.1` on 2 local workers against the ideal 200 x 0.1 s / 2
          + start-up. Goal <= 1.1x.
  files   inodes (files and folders) and bytes each run of the `noop` sweep leaves in the sweep
          directory (the sweep's own files spread over its runs). Goal <= 5 inodes per run.
  status  one `python -m hpcjobs status` and one `--help` of a 100,000-task sweep on 4 Slurm
          workers, as whole processes, right after submission (the workers are held with
          --begin=now+1hour so that they do not compete with what is measured). Goal < 1 s.
Exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2


def hpcjobs(workdir: Path, *args: str) -> float:
    """Run `python -m hpcjobs ARGS` in workdir; its wall time. Exits on failure."""
    env = {**os.environ, "HPCJOBS_STATE_DIR": str(workdir / "state")}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "hpcjobs", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"hpcjobs {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return elapsed


def local_sweep(workdir: Path, name: str, *overrides: str) -> tuple[float, Path]:
    sweep_dir = workdir / name
    wall = hpcjobs(
        workdir,
        "--multirun",
        "hydra/launcher=hpcjobs_local",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    )
    return wall, sweep_dir


def run_metrics(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]


def noop_sweep(workdir: Path, name: str, n: int, *extra: str) -> tuple[float, Path]:
    return local_sweep(
        workdir,
        name,
        "workload=noop",
        f"seed=range(0,{n})",
        f"hydra.launcher.workers={WORKERS}",
        *extra,
    )


def readme_part(workdir: Path, quick: bool) -> list[tuple[str, float, float]]:
    """The README's first command as it runs by default (local workers) and with one process per
    run (workers=0, the default before), back to back; each against its own floor."""
    startup, _ = noop_sweep(workdir, "readme_startup", 1)
    extra = ["trainer.epochs=2", "seed=0"] if quick else []
    measured = []
    for label, how in (("workers=0", ["hydra.launcher.workers=0"]), ("default", [])):
        name = f"readme_{label.replace('=', '')}"
        wall, sweep_dir = local_sweep(workdir, name, "experiment=cnn_sweep", *extra, *how)
        runs = run_metrics(sweep_dir)
        training = sum(float(m.get("train_seconds", 0)) for m in runs)
        floor = training / (os.cpu_count() or 1) + startup
        print(
            f"  README command ({label}): {wall:.1f} s for {len(runs)} runs; floor {floor:.1f} s"
            f" (training {training:.1f} s / {os.cpu_count()} cores + start-up {startup:.1f} s)",
            flush=True,
        )
        measured.append((label, wall, floor))
    return measured


def noop_part(workdir: Path, quick: bool) -> tuple[float, Path, int]:
    n = 200 if quick else 1000
    startup, _ = noop_sweep(workdir, "noop_startup", WORKERS)
    wall, sweep_dir = noop_sweep(workdir, "noop", n)
    per_run_ms = (wall - startup) * WORKERS / n * 1000
    print(
        f"  {n} noop runs on {WORKERS} workers: {wall:.1f} s (start-up {startup:.1f} s):"
        f" {per_run_ms:.1f} ms per run in a worker",
        flush=True,
    )
    return per_run_ms, sweep_dir, n


def sleep_part(workdir: Path, quick: bool) -> tuple[float, float]:
    n, seconds = (40, 0.1) if quick else (200, 0.1)
    startup, _ = noop_sweep(workdir, "sleep_startup", WORKERS)
    wall, _ = noop_sweep(workdir, "sleep", n, f"+sleep_s={seconds}")
    ideal = n * seconds / WORKERS + startup
    print(
        f"  {n} runs of {seconds} s on {WORKERS} workers: {wall:.1f} s; ideal {ideal:.1f} s",
        flush=True,
    )
    return wall, ideal


def files_part(sweep_dir: Path, n: int) -> tuple[float, float]:
    inodes, size = 0, 0
    for root, dirs, files in os.walk(sweep_dir):
        inodes += len(dirs) + len(files)
        size += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    print(
        f"  {n} noop runs: {inodes} inodes, {size / 1e6:.1f} MB in the sweep directory:"
        f" {inodes / n:.2f} inodes and {size / n / 1e3:.1f} KB per run",
        flush=True,
    )
    return inodes / n, size / n


def status_part(workdir: Path, quick: bool) -> tuple[float, float]:
    n = 10_000 if quick else 100_000
    name = f"bench_overhead_{uuid.uuid4().hex[:6]}"
    sweep_dir = workdir / name
    try:
        hpcjobs(workdir, "--multirun", "workload=noop", "hydra/launcher=hpcjobs_slurm",
                f"experiment_name={name}", f"seed=range(0,{n})", f"hydra.sweep.dir={sweep_dir}",
                "hydra.launcher.workers=4",
                "+hydra.launcher.additional_parameters.begin=now+3600")  # fmt: skip
        status = hpcjobs(workdir, "status", str(sweep_dir))
        help_ = hpcjobs(workdir, "--help")
        print(
            f"  {n:,}-task sweep on 4 workers: status {status:.2f} s, --help {help_:.2f} s",
            flush=True,
        )
    finally:
        subprocess.run(["scancel", "-n", name], capture_output=True)
    return status, help_


def main() -> None:
    parts = ["readme", "noop", "sleep", "files", "status"]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", nargs="+", default=parts, choices=parts)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: checks the benchmark runs"
    )
    args = parser.parse_args()
    if "status" in args.parts and shutil.which("sbatch") is None:
        raise SystemExit(
            "no sbatch: start the dev cluster first (scripts/dev-cluster up), or leave out `status`"
        )

    rows: list[tuple[str, str, str, bool]] = []  # what, measured, goal, met
    with tempfile.TemporaryDirectory(prefix="overhead_", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        if "readme" in args.parts:
            for label, wall, floor in readme_part(workdir, args.quick):
                rows.append(
                    (f"README command ({label}) / floor", f"{wall / floor:.2f}x")
                    + (("<= 1.3x", wall / floor <= 1.3) if label == "default" else ("-", True))
                )
        if {"noop", "files"} & set(args.parts):
            per_run_ms, noop_dir, n = noop_part(workdir, args.quick)
            if "noop" in args.parts:
                rows.append(
                    (
                        "per-run overhead in a worker",
                        f"{per_run_ms:.1f} ms",
                        "<= 5 ms",
                        per_run_ms <= 5,
                    )
                )
            if "files" in args.parts:
                inodes, size = files_part(noop_dir, n)
                rows.append(("inodes per run", f"{inodes:.2f}", "<= 5", inodes <= 5))
                rows.append(("bytes per run", f"{size / 1e3:.1f} KB", "-", True))
        if "sleep" in args.parts:
            wall, ideal = sleep_part(workdir, args.quick)
            rows.append(
                ("0.1 s runs / ideal", f"{wall / ideal:.2f}x", "<= 1.1x", wall / ideal <= 1.1)
            )
        if "status" in args.parts:
            status, help_ = status_part(workdir, args.quick)
            size = "10k" if args.quick else "100k"
            rows.append((f"status of a {size}-task sweep", f"{status:.2f} s", "< 1 s", status < 1))
            rows.append(("--help", f"{help_:.2f} s", "-", True))

    print(f"\n{'what':<32} {'measured':>10} {'goal':>8}")
    for what, measured, goal, met in rows:
        print(
            f"{what:<32} {measured:>10} {goal:>8}"
            f" {'' if goal == '-' else 'ok' if met else 'MISSED'}"
        )
    raise SystemExit(0 if all(met for *_, met in rows) else 1)


if __name__ == "__main__":
    main()
