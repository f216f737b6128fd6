"""What a run costs beyond its own work: the first command against its floor, the per-run
overhead inside a worker, the files each run leaves, and `status` of a huge sweep.

From the repository root (the dev cluster up for the `status` part: scripts/dev-cluster up):

    python benchmarks/overhead.py                         # every part
    python benchmarks/overhead.py --parts noop sleep files
    python benchmarks/overhead.py --parts phases          # where a run's time goes in a worker
    python benchmarks/overhead.py --quick                 # small sizes: checks the benchmark runs
    python benchmarks/overhead.py --baseline DIR [--rounds 3]   # noop + inproc, against DIR's code

Parts, each timed as whole processes from start to end, in one run (issue 17's goals):
  readme  the README's first command
          (`experiment=cnn_sweep --multirun hydra/launcher=hpcjobs_local`), as it runs (local
          workers) and with one process per run (`hydra.launcher.workers=0`), back to back,
          each against its floor: the runs' own training seconds (metrics.json train_seconds) /
          cores + one start-up (a one-run `noop` sweep's whole command). Goal <= 1.3x.
  noop    N `noop` runs (returns at once) on 2 local workers: the per-run overhead inside a
          worker, (wall - start-up) x workers / N, where the start-up is the same command with
          2 runs. Goal <= 5 ms. Also from the workers' journals: each worker's time from its
          first claim to its stop, summed over workers, / N (no start-up to subtract, so it does
          not move with the start-up's noise on a loaded machine).
  inproc  the `noop` sweep's N runs again (a copy of its manifest and payload, no run done),
          driven by one worker in one process, timed from inside: wall and CPU time per run
          (the CPU time hardly moves with the machine's load; no start-up in it).
  phases  the same in-process worker, its time per run split by phase (perf_counter around
          each function that makes one: composition, Hydra's fields, the run's files, the
          checks, the log line, the claim and journal): where a run's milliseconds go.
  sleep   200 runs of `+sleep_s=0.1` on 2 local workers against the ideal 200 x 0.1 s / 2
          + start-up. Goal <= 1.1x.
  files   inodes (files and folders; hard links counted once, as a quota counts them) and bytes
          each run of the `noop` sweep leaves: in its run directory (goal <= 5 inodes per run),
          and with the sweep's own files (manifest, journals, logs) spread over its runs. Then
          the same sweep with hydra.launcher.run_files=compact (where the code has it).
  status  one `python -m hpcjobs status` and one `--help` of a 100,000-task sweep on 4 Slurm
          workers, as whole processes, right after submission (the workers are held with
          --begin=now+1hour so that they do not compete with what is measured). Goal < 1 s.
With --baseline DIR (a checkout of the code to compare with, e.g. `git worktree add DIR main`):
the `noop` and `inproc` parts only, run alternately with PYTHONPATH set to DIR's code and to
this repository's, --rounds times in one run; each figure's median for both, their ratio, and
the load average at the start and the end (a loaded machine moves both alike).
Exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import uuid
from pathlib import Path

import _common  # first: this checkout's hpcjobs on sys.path

from hpcjobs.sweepdir import pools

REPO = _common.REPO
WORKERS = 2


def hpcjobs(workdir: Path, *args: str) -> float:
    """Run `python -m hpcjobs ARGS` in workdir; its wall time. Exits on failure."""
    return timed(workdir, *args)[0]


def timed(workdir: Path, *args: str) -> tuple[float, float]:
    """Run `python -m hpcjobs ARGS` in workdir; its wall time and CPU time. Exits on failure."""
    ran = _common.hpcjobs(workdir, *args)
    return ran.wall_s, ran.cpu_s


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


def in_workers_ms(sweep_dir: Path, n: int) -> float:
    """Time inside the workers per run: first claim to stop, summed over the workers, / n."""
    total = 0.0
    for journal in (pools.pool_dir(sweep_dir, "pool0") / "workers").glob("*.jsonl"):
        events = list(pools.read_events(journal))
        claims = [e["time"] for e in events if e["event"] == "claim"]
        stops = [e["time"] for e in events if e["event"] == "stop"]
        if claims and stops:
            total += stops[-1] - claims[0]
    return total / n * 1000


def noop_part(workdir: Path, quick: bool) -> tuple[float, float, Path, int]:
    n = 200 if quick else 1000
    startup, _ = noop_sweep(workdir, "noop_startup", WORKERS)
    wall, sweep_dir = noop_sweep(workdir, "noop", n)
    per_run_ms = (wall - startup) * WORKERS / n * 1000
    inside_ms = in_workers_ms(sweep_dir, n)
    print(
        f"  {n} noop runs on {WORKERS} workers: {wall:.1f} s (start-up {startup:.1f} s):"
        f" {per_run_ms:.1f} ms per run in a worker; {inside_ms:.1f} ms by the workers' journals",
        flush=True,
    )
    return per_run_ms, inside_ms, sweep_dir, n


INPROC = """
import sys, time
from hpcjobs.run.worker import WorkerRunner
runner = WorkerRunner(sys.argv[1], "pool0", 0, 600)
wall, cpu = time.perf_counter(), time.process_time()
runner()
print(time.perf_counter() - wall, time.process_time() - cpu)
"""


def copy_sweep(noop_dir: Path, copy: Path) -> None:
    """The sweep's manifest and payload, no run done: its runs to run again elsewhere."""
    copy.mkdir()
    for name in ("sweep.json", "multirun.yaml"):
        shutil.copy(noop_dir / name, copy / name)
    (copy / ".submitit").mkdir()
    for payload in (noop_dir / ".submitit").glob("*.pkl"):
        shutil.copy(payload, copy / ".submitit" / payload.name)


def inproc_part(workdir: Path, noop_dir: Path, n: int) -> tuple[float, float]:
    copy = workdir / "noop_inproc"
    copy_sweep(noop_dir, copy)
    proc = _common.python(workdir, "-c", INPROC, str(copy)).proc
    if proc.returncode != 0:
        raise SystemExit(f"in-process worker failed:\n{proc.stderr[-3000:]}")
    wall, cpu = (float(x) / n * 1000 for x in proc.stdout.split()[-2:])
    print(f"  {n} noop runs in one worker, in-process: {wall:.2f} ms, {cpu:.2f} ms CPU per run")
    return wall, cpu


# Each phase: the functions that make it (module, attribute); none calls another of the list.
PHASES = """
import collections, functools, logging, os, sys, time
from hpcjobs.config import schema
from hpcjobs.run import job, task, worker
from hpcjobs.run.compose import TaskComposer
from hpcjobs.sweepdir import pools, runfiles
spent = collections.Counter()
def timed(owner, name, phase):
    original = getattr(owner, name)
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[phase] += time.perf_counter() - start
    setattr(owner, name, wrapper)
for owner, name, phase in [
    (TaskComposer, "compose", "compose the config (copies, values assigned, typed)"),
    (task.SweepRuns, "_set_hydra_config", "Hydra's per-task fields"),
    (task.OmegaConf, "to_yaml", "the config's YAML (config.yaml, digest)"),
    (task.os, "makedirs", "mkdir run dir and .hydra/"),
    (task, "_write_once", ".hydra/config.yaml (atomic)"),
    (runfiles, "write_metrics", "metrics.json: running, then final (fsync)"),
    (schema, "checked", "checks: ranges, cross-field rules"),
    (job, "_call_workload", "the workload itself (noop)"),
    (logging.Logger, "handle", "the run's log line (app.log opened)"),
    (pools, "claim", "the claim (a hard link)"),
    (pools, "is_claimed", "is it claimed? (a stat)"),
    (pools.Journal, "write", "journal lines (claim, end)"),
]:
    timed(owner, name, phase)
runner = worker.WorkerRunner(sys.argv[1], "pool0", 0, 600)
start = time.perf_counter()
runner()
total = time.perf_counter() - start
print("PHASES", repr((total, dict(spent))))
"""


def phases_part(workdir: Path, noop_dir: Path, n: int) -> list[tuple[str, float]]:
    """The in-process worker's time per run by phase (ms), and what no phase accounts for."""
    copy = workdir / "noop_phases"
    copy_sweep(noop_dir, copy)
    proc = _common.python(workdir, "-c", PHASES, str(copy)).proc
    if proc.returncode != 0:
        raise SystemExit(f"in-process worker failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PHASES "))
    total, spent = ast.literal_eval(line.removeprefix("PHASES "))
    rows = sorted(((k, v / n * 1000) for k, v in spent.items()), key=lambda r: -r[1])
    rows.append(
        (
            "the rest (the worker's loop, Hydra's singletons, ...)",
            (total - sum(spent.values())) / n * 1000,
        )
    )
    rows.append(("a run in all", total / n * 1000))
    for phase, ms in rows:
        print(f"  {phase:<56} {ms:6.3f} ms")
    return rows


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


def count_files(sweep_dir: Path) -> tuple[int, int, int, int]:
    """(inodes, of them in run directories, names, bytes) under sweep_dir: a hard link is a
    name, not another inode. Run directories: the sweep's top-level <N>/ folders."""
    seen: set[int] = set()
    in_runs, names, size = 0, 0, 0
    for root, dirs, files in os.walk(sweep_dir):
        names += len(dirs) + len(files)
        top = Path(root).relative_to(sweep_dir).parts[:1]
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                size += st.st_size if name in files else 0
                in_runs += (top or (name,))[0].isdigit()
    return len(seen), in_runs, names, size


def files_part(sweep_dir: Path, n: int, label: str = "noop runs") -> tuple[float, float, float]:
    """(inodes per run directory, inodes per run with the sweep's own, bytes per run)."""
    inodes, in_runs, names, size = count_files(sweep_dir)
    print(
        f"  {n} {label}: {inodes} inodes ({names} names), {size / 1e6:.1f} MB in the sweep"
        f" directory: {in_runs / n:.2f} inodes per run directory, {inodes - in_runs} the"
        f" sweep's own; {inodes / n:.2f} inodes and {size / n / 1e3:.1f} KB per run in all",
        flush=True,
    )
    return in_runs / n, inodes / n, size / n


def compact_part(workdir: Path, n: int) -> tuple[float, float] | None:
    """The `noop` sweep again with run_files=compact; None where the code has no such setting."""
    try:
        _, sweep_dir = noop_sweep(workdir, "noop_compact", n, "hydra.launcher.run_files=compact")
    except SystemExit as e:
        # the code measured (PYTHONPATH) predates the setting; any other failure is one
        if "unknown key 'hydra.launcher.run_files'" not in str(e):
            raise
        print("  run_files=compact: not run (the code measured has no such setting)")
        return None
    per_run, _, size = files_part(sweep_dir, n, "noop runs, run_files=compact")
    return per_run, size


def status_part(workdir: Path, quick: bool) -> tuple[float, float, float, float]:
    n = 10_000 if quick else 100_000
    name = f"bench_overhead_{uuid.uuid4().hex[:6]}"
    sweep_dir = workdir / name
    try:
        hpcjobs(workdir, "--multirun", "workload=noop", "hydra/launcher=hpcjobs_slurm",
                f"experiment_name={name}", f"seed=range(0,{n})", f"hydra.sweep.dir={sweep_dir}",
                "hydra.launcher.workers=4",
                "+hydra.launcher.additional_parameters.begin=now+3600")  # fmt: skip
        status, status_cpu = timed(workdir, "status", str(sweep_dir))
        help_, help_cpu = timed(workdir, "--help")
        print(
            f"  {n:,}-task sweep on 4 workers: status {status:.2f} s ({status_cpu:.2f} s CPU),"
            f" --help {help_:.2f} s ({help_cpu:.2f} s CPU)",
            flush=True,
        )
    finally:
        subprocess.run(["scancel", "-n", name], capture_output=True)
    return status, status_cpu, help_, help_cpu


def compare_part(
    workdir: Path, baseline: Path, rounds: int, quick: bool
) -> list[tuple[str, str, str, bool]]:
    """The noop and inproc parts, alternately on the baseline's code and on this repository's."""
    figures: dict[str, list[tuple[float, ...]]] = {"baseline": [], "this": []}
    before = os.getloadavg()
    for r in range(rounds):
        for label, code in (("baseline", baseline), ("this", REPO)):
            os.environ["PYTHONPATH"] = str(code)  # the commands it runs import hpcjobs from there
            where = workdir / f"{label}{r}"
            where.mkdir()
            print(f"round {r + 1}, {label} ({code}):", flush=True)
            per_run_ms, inside_ms, noop_dir, n = noop_part(where, quick)
            figures[label].append((per_run_ms, inside_ms, *inproc_part(where, noop_dir, n)))
    after = os.getloadavg()
    print(f"  load average {before[0]:.1f} at the start, {after[0]:.1f} at the end")
    rows = []
    names = (
        "per-run overhead in a worker",
        "  the same, by the journals",
        "a run in-process, wall",
        "a run in-process, CPU",
    )
    for i, name in enumerate(names):
        old, new = (statistics.median(f[i] for f in figures[k]) for k in ("baseline", "this"))
        goal = i == 0
        rows.append(
            (
                f"{name} (median of {rounds})",
                f"{old:.2f} -> {new:.2f} ms ({new / old:.2f}x)",
                "<= 5 ms" if goal else "-",
                new <= 5 if goal else True,
            )
        )
    return rows


def main() -> None:
    parts = ["readme", "noop", "inproc", "phases", "sleep", "files", "status"]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", nargs="+", default=parts, choices=parts)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: checks the benchmark runs"
    )
    parser.add_argument(
        "--baseline", type=Path, help="a checkout of the code to compare with (noop, inproc)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --baseline: rounds of both")
    args = parser.parse_args()
    if args.baseline is not None:
        with tempfile.TemporaryDirectory(prefix="overhead_", ignore_cleanup_errors=True) as tmp:
            rows = compare_part(Path(tmp), args.baseline.resolve(), args.rounds, args.quick)
        print_rows(rows)
        raise SystemExit(0 if all(met for *_, met in rows) else 1)
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
        if {"noop", "files", "inproc", "phases"} & set(args.parts):
            per_run_ms, inside_ms, noop_dir, n = noop_part(workdir, args.quick)
            if "noop" in args.parts:
                rows.append(
                    (
                        "per-run overhead in a worker",
                        f"{per_run_ms:.1f} ms",
                        "<= 5 ms",
                        per_run_ms <= 5,
                    )
                )
                rows.append(("  the same, by the journals", f"{inside_ms:.1f} ms", "-", True))
            if "inproc" in args.parts:
                wall, cpu = inproc_part(workdir, noop_dir, n)
                rows.append(("a run in-process, wall", f"{wall:.2f} ms", "-", True))
                rows.append(("a run in-process, CPU", f"{cpu:.2f} ms", "-", True))
            if "phases" in args.parts:
                for phase, ms in phases_part(workdir, noop_dir, n):
                    rows.append((f"  {phase}", f"{ms:.3f} ms", "-", True))
            if "files" in args.parts:
                per_run, inodes, size = files_part(noop_dir, n)
                rows.append(("inodes per run directory", f"{per_run:.2f}", "<= 5", per_run <= 5))
                rows.append(("inodes per run, sweep's own too", f"{inodes:.2f}", "-", True))
                rows.append(("bytes per run", f"{size / 1e3:.1f} KB", "-", True))
                compact = compact_part(workdir, n)
                if compact is not None:
                    rows.append(("inodes per run, compact", f"{compact[0]:.2f}", "-", True))
                    rows.append(("bytes per run, compact", f"{compact[1] / 1e3:.1f} KB", "-", True))
        if "sleep" in args.parts:
            wall, ideal = sleep_part(workdir, args.quick)
            rows.append(
                ("0.1 s runs / ideal", f"{wall / ideal:.2f}x", "<= 1.1x", wall / ideal <= 1.1)
            )
        if "status" in args.parts:
            status, status_cpu, help_, help_cpu = status_part(workdir, args.quick)
            size = "10k" if args.quick else "100k"
            rows.append((f"status of a {size}-task sweep", f"{status:.2f} s", "< 1 s", status < 1))
            rows.append(("  its CPU time", f"{status_cpu:.2f} s", "-", True))
            rows.append(("--help", f"{help_:.2f} s", "-", True))
            rows.append(("  its CPU time", f"{help_cpu:.2f} s", "-", True))

    print_rows(rows)
    raise SystemExit(0 if all(met for *_, met in rows) else 1)


def print_rows(rows: list[tuple[str, str, str, bool]]) -> None:
    width = max(32, *(len(what) for what, *_ in rows))
    print(f"\n{'what':<{width}} {'measured':>10} {'goal':>8}")
    for what, measured, goal, met in rows:
        print(
            f"{what:<{width}} {measured:>10} {goal:>8}"
            f" {'' if goal == '-' else 'ok' if met else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
