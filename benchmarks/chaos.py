"""Chaos soak: a sweep on workers across the dev cluster's nodes, with faults at random times.

From the repository root, the dev cluster up (scripts/dev-cluster up):

    python benchmarks/chaos.py                # 500 noop runs (0.5 s each) on 8 workers, 8 faults
    python benchmarks/chaos.py --quick        # 60 runs on 4 workers, 4 faults
    python benchmarks/chaos.py --quick --no-baseline   # the faults only (a test runs this)
    python benchmarks/chaos.py --json out.json --seed 7

The same sweep runs twice in one run: undisturbed, then with faults injected at random times
(seeded) while it runs: a worker's process `kill -9`'d, a worker's job `scancel`'ed, a node set
DOWN then resumed, slurmctld restarted; each kind at least once. Then `retry` until nothing is
left. Reported: the faults injected, the runs completed exactly once (a completed metrics.json,
one `end: completed` in the pools' journals, the claim file of the pool that ran it, and the
worker job that ran it known to sacct), runs lost (not completed at the end; goal 0), completed
runs run again (a claim after their completed end, or a second one; goal 0), and the wall time
of each sweep (submission until nothing is left) as a ratio. The chaos part holds the
disruption lock and leaves every daemon running and every node up
(tests/integration/disruption.py). Only this script's own jobs are killed or cancelled; a node
down stops whatever runs there.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import _common  # first: this checkout's hpcjobs on sys.path

REPO = _common.REPO
sys.path.insert(0, str(REPO / "tests"))

from integration import disruption as cluster  # noqa: E402

from hpcjobs import processes, states  # noqa: E402
from hpcjobs.results import status  # noqa: E402
from hpcjobs.sweepdir import manifest, pools  # noqa: E402

KINDS = ("kill -9 worker", "scancel worker", "node down/up", "slurmctld restart")
NODE_DOWN_S = 5.0


def hpcjobs(workdir: Path, *argv: str) -> None:
    _common.hpcjobs(workdir, *argv)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def journals(sweep_dir: Path) -> list[tuple[str, int, dict]]:
    """Every journal event of every pool: (pool, worker, event)."""
    events = []
    for path in sorted((sweep_dir / pools.POOLS_DIR).glob("*/workers/*.jsonl")):
        if path.stem.isdigit():
            pool = path.parent.parent.name
            events += [(pool, int(path.stem), e) for e in pools.read_events(path)]
    return events


def live_workers(sweep_dir: Path) -> list[tuple[str, int, int]]:
    """(job id, pid, worker) of each worker whose latest start is its process, alive now, and
    that has a run under way (a fault there costs something)."""
    latest: dict[tuple[str, int], dict] = {}
    running: dict[tuple[str, int], bool] = {}
    for pool, worker, e in journals(sweep_dir):
        key = (pool, worker)
        if e.get("event") == "start":
            latest[key], running[key] = e, False
        elif e.get("event") == "claim":
            running[key] = True
        elif e.get("event") in ("end", "stop"):
            running[key] = False
    found = []
    for key, start in latest.items():
        pid = int(start.get("pid") or 0)
        if running.get(key) and pid and processes.process_start(pid) == start.get("pid_started"):
            found.append((str(start.get("job_id")), pid, key[1]))
    return found


def node_of(job_id: str) -> str:
    proc = run("squeue", "-h", "-j", job_id, "-o", "%N")
    return proc.stdout.strip() if proc.returncode == 0 else ""


def inject(kind: str, sweep_dir: Path, daemons: cluster.Daemons, rng: random.Random) -> str | None:
    """One fault on this sweep; what was done, or None if nothing fit yet (no worker running)."""
    if kind == "slurmctld restart":
        t = time.monotonic()
        daemons.restart("slurmctld")
        return f"slurmctld restarted ({time.monotonic() - t:.1f} s)"
    workers = live_workers(sweep_dir)
    if not workers:
        return None
    job_id, pid, worker = rng.choice(workers)
    if kind == "kill -9 worker":
        os.kill(pid, signal.SIGKILL)
        return f"kill -9 worker {worker} (job {job_id}, pid {pid})"
    if kind == "scancel worker":
        run("scancel", job_id)  # this sweep's own job
        return f"scancel worker {worker} (job {job_id})"
    node = node_of(job_id)
    if not node or node not in cluster.node_names():
        return None
    run("scontrol", "update", f"nodename={node}", "state=down", "reason=chaos")
    time.sleep(NODE_DOWN_S)
    run("scontrol", "update", f"nodename={node}", "state=resume")
    return f"node {node} down for {NODE_DOWN_S:.0f} s under worker {worker} (job {job_id})"


def sweep(workdir: Path, name: str, args: argparse.Namespace) -> Path:
    _common.noop_sweep_on_slurm(
        workdir,
        name,
        args.tasks,
        f"hydra.launcher.workers={args.workers}",
        "hydra.launcher.timeout_min=30",
        f"+sleep_s={args.sleep}",
    )
    return workdir / name


def retry_until_done(
    workdir: Path, sweep_dir: Path, timeout: float
) -> tuple[status.SweepStatus, int]:
    st, retries = _common.wait_done(sweep_dir, timeout), 0
    while st.retryable() and retries < 10:
        hpcjobs(workdir, "retry", str(sweep_dir))
        retries += 1
        st = _common.wait_done(sweep_dir, timeout)
    return st, retries


def audit(sweep_dir: Path) -> dict:
    """Each run, from its files, the pools' journals and claims, and sacct."""
    final = manifest.read(sweep_dir)
    st = status.sweep_status(sweep_dir)
    ends: dict[int, list[tuple[float, str, str]]] = {}  # task -> (time, pool, job id) completed
    claims: dict[int, list[float]] = {}
    job_of: dict[tuple[str, int], str] = {}
    for pool, worker, e in journals(sweep_dir):
        kind = e.get("event")
        if kind == "start":
            job_of[pool, worker] = str(e.get("job_id"))
        elif kind == "claim":
            claims.setdefault(int(e["task"]), []).append(float(e["time"]))
        elif kind == "end" and e.get("state") == states.COMPLETED:
            ends.setdefault(int(e["task"]), []).append(
                (float(e["time"]), pool, job_of.get((pool, worker), ""))
            )
    worker_jobs = sorted({j for p in final.pools for j in p.job_ids if j})
    acct = run(
        "sacct",
        "-n",
        "-X",
        "-P",
        "-D",
        "-j",
        ",".join(sorted({j.split("_")[0] for j in worker_jobs})),
        "-o",
        "JobID,State",
    )
    attempts = Counter(
        line.split("|")[1].split()[0] for line in acct.stdout.splitlines() if "|" in line
    )
    in_sacct = {line.split("|")[0] for line in acct.stdout.splitlines()}
    once, lost, rerun, problems = 0, 0, 0, []
    for task in final.tasks:
        try:
            recorded = json.loads((sweep_dir / task.run_dir / "metrics.json").read_text())["status"]
        except (OSError, ValueError, KeyError):
            recorded = None
        done = ends.get(task.index, [])
        if recorded != states.COMPLETED:
            lost += 1
            problems.append(f"task {task.index}: {recorded or 'no metrics.json'}")
            continue
        if len(done) > 1 or (done and any(t > done[0][0] for t in claims.get(task.index, []))):
            rerun += 1
            problems.append(f"task {task.index}: run again after it completed")
            continue
        if done:
            _, pool, job = done[0]
            claimed = (sweep_dir / pools.POOLS_DIR / pool / "claims").glob(f"{task.index}*")
            if not any(p.name.split("~")[0] == str(task.index) for p in claimed):
                problems.append(f"task {task.index}: no claim in pool {pool}")
                continue
            if job not in in_sacct:
                problems.append(f"task {task.index}: its worker job {job} unknown to sacct")
                continue
        once += 1  # (no journaled end: its worker died between metrics.json and the journal)
    return {
        "tasks": len(final.tasks),
        "completed_exactly_once": once,
        "lost": lost,
        "completed_rerun": rerun,
        "final_states": st.counts,
        "pools": len(final.pools),
        "worker_job_attempts": dict(attempts),
        "problems": problems[:20],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=0.5, help="each run's seconds")
    parser.add_argument("--faults", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="60 runs, 4 workers, 4 faults")
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the undisturbed sweep (no ratio; faults spread over an estimate of its time)",
    )
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.workers, args.faults, args.sleep = 60, 4, 4, 0.3
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="hpcjobs-chaos-"))
    load = os.getloadavg()[0]
    print(
        f"{args.tasks} noop runs of {args.sleep} s on {args.workers} workers;"
        f" load {load:.1f}; {workdir}",
        flush=True,
    )

    injected: list[str] = []
    # The lock for both parts: no other test's fault lands in the baseline either.
    with cluster.disrupting() as daemons:
        calm: Path | None = None
        if args.no_baseline:  # the runs' time on the workers, and a worker's start-up
            calm_s = args.tasks * args.sleep / args.workers + 10
        else:
            start = time.monotonic()
            calm = sweep(workdir, "undisturbed", args)
            calm_st, _ = retry_until_done(workdir, calm, 1800)
            calm_s = time.monotonic() - start
            print(f"  undisturbed: {calm_s:.1f} s, {calm_st.counts}", flush=True)

        kinds = list(KINDS) + [rng.choice(KINDS) for _ in range(max(0, args.faults - len(KINDS)))]
        rng.shuffle(kinds)
        # at random times within the part of the undisturbed sweep its workers were running
        times = sorted(rng.uniform(0.15, 0.85) * calm_s for _ in kinds)
        start = time.monotonic()
        chaos = sweep(workdir, "chaos", args)
        pending = list(zip(times, kinds))
        while pending:
            at, kind = pending[0]
            if time.monotonic() - start < at:
                time.sleep(0.2)
                continue
            if status.sweep_status(chaos).done:
                break  # nothing runs any more: the rest would hit nothing
            done = inject(kind, chaos, daemons, rng)
            if done is None:  # no worker under way yet: try again in a second
                pending[0] = (at + 1, kind)
                continue
            pending.pop(0)
            injected.append(f"{time.monotonic() - start:6.1f} s  {done}")
            print(f"  fault: {injected[-1]}", flush=True)
        try:
            chaos_st, retries = retry_until_done(workdir, chaos, 1800)
        finally:
            # A worker requeued after a node failure can come back "launch failed requeued held"
            # (slurmctld saw a duplicate job id on the node): never leave one of ours queued.
            own = {j for p in manifest.read(chaos).pools for j in p.job_ids if j}
            if own:
                run("scancel", *sorted({j.split("_")[0] for j in own}))
        chaos_s = time.monotonic() - start
    print(
        f"  with faults: {chaos_s:.1f} s after {retries} retry(ies), {chaos_st.counts}",
        flush=True,
    )
    report = {
        "tasks": args.tasks,
        "workers": args.workers,
        "run_seconds": args.sleep,
        "seed": args.seed,
        "load_average": round(load, 2),
        "faults": injected,
        "retries": retries,
        "undisturbed_s": None if calm is None else round(calm_s, 1),
        "chaos_s": round(chaos_s, 1),
        "ratio": None if calm is None else round(chaos_s / calm_s, 2),
        "audit": audit(chaos),
        "undisturbed_audit": None if calm is None else audit(calm),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    bad = report["audit"]
    return 0 if bad["lost"] == 0 and bad["completed_rerun"] == 0 and not bad["problems"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
