"""A sweep's scheduler accounting, kept in its run directories (``accounting.json``).

Slurm's accounting (sacct: Elapsed, TotalCPU, MaxRSS, ReqMem, AllocCPUS, GPUs) says what
each task was given and used, but sites purge it after a while. `status` and `collect`
therefore copy it into each run directory once the task has ended: one ``sacct`` call for
the whole sweep (the poll `status` makes anyway, with the steps and a few more fields),
and only while some ended task has no record yet.

A run directory's file lists one entry per attempt, oldest first: each submission (job id),
and each time Slurm requeued one itself (on NODE_FAIL, preemption: the same job id again,
which sacct lists with ``--duplicates``); an attempt is added once, when its task has
ended. A completed run's other files are never touched. Runs that workers execute share
one Slurm job, which accounting cannot divide between them, and local runs have no
accounting: for those, what the process measured (metrics.json) is all there is. When sacct
cannot answer (slurmdbd down), nothing is recorded and a note says so.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from hpcjobs import states
from hpcjobs.clock import now as _now
from hpcjobs.deprecation import renamed
from hpcjobs.launching import backends
from hpcjobs.launching.backends.base import Backend, Poll
from hpcjobs.sweepdir import manifest, runfiles

SOURCE = "sacct"


def _path(base: str, name: str) -> str:
    return f"{base}/{name}"


def is_due(run_dir: str) -> bool:
    """Whether a run directory may lack an ended attempt's accounting: it exists, and its
    accounting.json is missing or older than its metrics.json (a later attempt ran since).
    Two stat calls, no read: cheap at 100,000 tasks."""
    try:
        recorded = os.stat(_path(run_dir, runfiles.ACCOUNTING_FILE)).st_mtime_ns
    except FileNotFoundError:
        return os.path.isdir(run_dir)  # not started: nothing used yet
    try:
        return os.stat(_path(run_dir, runfiles.METRICS_FILE)).st_mtime_ns > recorded
    except FileNotFoundError:
        return False


def due_tasks(sweep: manifest.SweepManifest, backend: Backend) -> list[manifest.TaskRecord]:
    """The tasks whose accounting a poll should ask for (none where the backend keeps none)."""
    if not backend.keeps_accounting:
        return []
    base = str(sweep.sweep_dir)
    # listed before the poll: a run that starts in between is due at the next status
    present = runfiles.ExistingRunDirs(base)
    return [
        t
        for t in sweep.tasks
        if t.job_id and present.may_exist(t.run_dir) and is_due(_path(base, t.run_dir))
    ]


def write_polled(
    sweep: manifest.SweepManifest, poll: Poll, due: Sequence[manifest.TaskRecord]
) -> int:
    """Write what ``poll`` says each due, ended task used into its run directory; the count."""
    written = 0
    for task in due:
        usage = poll.accounting.get(task.job_id or "")
        polled = poll.states.get(task.job_id or "")
        if usage is None or polled is None or polled.state not in states.ENDED:
            continue
        run_dir = sweep.run_dir(task)
        if not run_dir.is_dir():  # cancelled before it started: it used nothing
            continue
        try:
            earlier = runfiles.read_accounting(run_dir) or {}
        except runfiles.CorruptRunFile:
            earlier = {}
        attempts = [
            a
            for a in earlier.get("attempts", [])
            if isinstance(a, dict) and a.get("job_id") != task.job_id
        ]
        attempts += [dataclasses.asdict(u) for u in poll.requeued.get(task.job_id or "", [])]
        attempts.append(dataclasses.asdict(usage))
        runfiles.write_accounting(
            run_dir, {"source": SOURCE, "recorded_at": _now(), "attempts": attempts}
        )
        written += 1
    return written


def fetch_missing(sweep: manifest.SweepManifest) -> tuple[int, str]:
    """Fetch and write the accounting of a sweep's ended tasks that have none yet: one
    controller call for the whole sweep, none when nothing is due. (runs written, a note when it
    could not)."""
    backend = backends.BACKENDS.get(sweep.executor)
    if backend is None or not backend.keeps_accounting or not backend.available():
        return 0, ""
    instance = backends.create(sweep.executor, sweep.launcher)
    due = due_tasks(sweep, instance)
    if not due:
        return 0, ""
    poll = instance.poll([t.job_id for t in due if t.job_id], accounting=True)
    if not poll.accounting and poll.note:
        return 0, unavailable_note(poll.note)
    return write_polled(sweep, poll, due), ""


def unavailable_note(reason: str) -> str:
    return (
        f"scheduler accounting not recorded ({reason.split(';')[0]}):"
        " runs without accounting.json show what their process measured;"
        " `status` or `collect` records it once sacct answers again"
    )


def columns(accounting: dict[str, Any]) -> dict[str, Any]:
    """An accounting.json as runs.csv columns (cost.ACCOUNTING_COLUMNS, and the allocated
    hours): times and hours summed over its attempts, the peak memory the highest, what was
    requested as the latest attempt asked."""
    attempts = [a for a in accounting.get("attempts", []) if isinstance(a, dict)]
    if not attempts:
        return {}
    latest = attempts[-1]

    def numbers(key: str) -> list[float]:
        return [float(a[key]) for a in attempts if isinstance(a.get(key), (int, float))]

    def allocated_hours(per: str) -> float:
        return sum(float(a.get("elapsed_s") or 0) * float(a.get(per) or 0) for a in attempts) / 3600

    cpu, rss = numbers("cpu_s"), numbers("max_rss_mb")
    return {
        "acct_elapsed_s": sum(numbers("elapsed_s")),
        "acct_cpu_s": round(sum(cpu), 3) if cpu else None,
        "acct_max_rss_mb": round(max(rss), 1) if rss else None,
        "acct_req_mem_mb": latest.get("req_mem_mb"),
        "acct_cpus": latest.get("cpus"),
        "acct_gpus": latest.get("gpus"),
        "acct_node": latest.get("node"),
        "acct_state": latest.get("scheduler_state"),
        "acct_attempts": len(attempts),
        "cpu_hours": allocated_hours("cpus"),
        "gpu_hours": allocated_hours("gpus"),
    }


# Old names (hpcjobs/deprecation.py).
record = renamed(write_polled, "record")
record_sweep = renamed(fetch_missing, "record_sweep")
