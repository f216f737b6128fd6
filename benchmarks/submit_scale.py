"""How fast a sweep gets queued on Slurm: hpcjobs vs Hydra's submitit launcher.

Run on the dev cluster (scripts/dev-cluster up), from the repository root:

    pip install hydra-submitit-launcher      # the baseline; only this benchmark needs it
    python benchmarks/submit_scale.py [--sizes 500 1000] [--repeat 1]

For each size N it times, in one run on the same cluster:
  - hpcjobs:  `python -m hpcjobs workload=noop --multirun hydra/launcher=hpcjobs_slurm
               seed=range(0,N)` from process start until the command is back at the prompt
               (every task queued, every configuration validated);
  - Hydra:    the same sweep with `hydra/launcher=submitit_slurm hydra/sweeper=basic`, from
               process start until all N tasks are in squeue (Hydra then blocks until the
               tasks end; the benchmark stops it there);
and prints the ratio, the files each wrote per task at submission, and the controller
commands one `hpcjobs status` poll runs for the N-task sweep. Every benchmark job is
cancelled afterwards. Numbers are medians over --repeat runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import _common

CONTROLLER_COMMANDS = ("sacct", "squeue", "scontrol", "sbatch", "scancel", "sinfo")


def queued(job_name: str) -> int:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-n", job_name, "-o", "%i"], capture_output=True, text=True
    )
    return len(out.stdout.split())


def cancel(job_name: str) -> None:
    subprocess.run(["scancel", "-n", job_name], capture_output=True)


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def time_hpcjobs(n: int, workdir: Path) -> tuple[float, int]:
    name = f"bench_hpcjobs_{uuid.uuid4().hex[:6]}"
    elapsed = _common.noop_sweep_on_slurm(workdir, name, n).wall_s
    files = count_files(workdir / name)
    cancel(name)
    return elapsed, files


def time_hydra(n: int, workdir: Path) -> tuple[float, int]:
    name = f"bench_hydra_{uuid.uuid4().hex[:6]}"
    start = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpcjobs",
            "workload=noop",
            "--multirun",
            "hydra/launcher=submitit_slurm",
            "hydra/sweeper=basic",
            f"experiment_name={name}",
            f"seed=range(0,{n})",
            f"hydra.launcher.name={name}",
            f"hydra.sweep.dir={workdir}/{name}",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Hydra's launcher blocks until the tasks end: stop the clock when all N are queued
    # (or have started: count what squeue shows plus what already ran).
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"Hydra's launcher exited early:\n{proc.stderr.read()}")
        seen = queued(name)
        if seen >= n or (seen and seen + _started(name) >= n):
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    files = count_files(workdir / name)
    proc.terminate()
    proc.wait(timeout=30)
    cancel(name)
    return elapsed, files


def _started(job_name: str) -> int:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "--name", job_name, "-S", "now-1hour", "-o", "JobID,State"],
        capture_output=True,
        text=True,
    )
    return sum(1 for line in out.stdout.splitlines() if "[" not in line and "PENDING" not in line)


def status_calls(n: int, workdir: Path) -> tuple[dict[str, int], float]:
    """Submit an N-task sweep, then count the controller commands one status poll runs."""
    name = f"bench_status_{uuid.uuid4().hex[:6]}"
    _common.noop_sweep_on_slurm(workdir, name, n, "hydra.launcher.array_parallelism=4")
    shims = workdir / "shims"
    shims.mkdir(exist_ok=True)
    log = workdir / "calls.log"
    for command in CONTROLLER_COMMANDS:
        real = shutil.which(command)
        if real:
            shim = shims / command
            shim.write_text(f'#!/bin/sh\necho {command} >> "{log}"\nexec "{real}" "$@"\n')
            shim.chmod(0o755)
    log.write_text("")
    shimmed = {"PATH": f"{shims}:{os.environ['PATH']}"}
    elapsed = _common.hpcjobs(workdir, "status", str(workdir / name), env=shimmed).wall_s
    cancel(name)
    calls: dict[str, int] = {}
    for line in log.read_text().split():
        calls[line] = calls.get(line, 0) + 1
    return calls, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("sbatch") is None:
        raise SystemExit("no sbatch: start the dev cluster first (scripts/dev-cluster up)")

    print(
        f"{'tasks':>6} {'hpcjobs s':>10} {'hydra s':>9}"
        f" {'ratio':>6} {'files/task hpcjobs':>19} {'hydra':>6}"
    )
    for n in args.sizes:
        ours, theirs, ours_files, theirs_files = [], [], 0, 0
        for _ in range(args.repeat):
            # Cancelled tasks may still write their logs while the directory is removed.
            with tempfile.TemporaryDirectory(
                prefix="submit_scale_", ignore_cleanup_errors=True
            ) as tmp:
                elapsed, ours_files = time_hpcjobs(n, Path(tmp))
                ours.append(elapsed)
                elapsed, theirs_files = time_hydra(n, Path(tmp))
                theirs.append(elapsed)
        a, b = statistics.median(ours), statistics.median(theirs)
        print(
            f"{n:>6} {a:>10.2f} {b:>9.2f} {a / b:>6.3f}"
            f" {ours_files / n:>19.2f} {theirs_files / n:>6.2f}",
            flush=True,
        )
    # Cancelled tasks may still write their logs while the directory is removed.
    with tempfile.TemporaryDirectory(prefix="submit_scale_", ignore_cleanup_errors=True) as tmp:
        n = max(args.sizes)
        calls, elapsed = status_calls(n, Path(tmp))
        print(f"one `status` poll of a {n}-task sweep: {calls} ({elapsed:.2f} s)")


if __name__ == "__main__":
    main()
