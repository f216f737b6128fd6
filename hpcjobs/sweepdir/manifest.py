"""The sweep manifest: ``<sweep_dir>/sweep.json``, its schema and its I/O.

Written by the launcher at submission; read by the workers (which tasks their pool has),
and by `status`, `collect` and `retry` later, from any shell: the experiment, the
command, where each task's run directory is, its overrides and config hash, and the
executor's job ids. Written atomically; readers get a typed error naming the file.

One line per task. A task's ``attempts`` (its submissions) are records, except those that
many tasks share (a worker pool's: no job id of their own), which are written once in
``submissions`` and named in each task by their index there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcjobs import __version__, atomic
from hpcjobs.clock import now as _now
from hpcjobs.errors import SweepDirError
from hpcjobs.gcpause import gc_paused
from hpcjobs.processes import process_start
from hpcjobs.sweepdir import written

# 2: attempts that tasks share are written once (``submissions``). A sweep keeps the version
# it was created with: the workers of an older sweep may run its older code (a snapshot), which
# reads version 1 only.
SCHEMA_VERSION = 2
MANIFEST_FILE = "sweep.json"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One submission of a task: the first, or a retry. Never changed once made: the tasks of
    one submission share one (read() makes one per distinct submission, not one per task)."""

    job_id: str | None  # the backend's id (Slurm: ARRAYID_INDEX); None where it keeps none (local)
    submitted_at: str = field(default_factory=lambda: _now())
    why: str = "submitted"  # "submitted", or "retry: <the state it was retried from>"
    pool: str | None = None  # the worker pool that was to run it (hydra.launcher.workers), if any
    # Nodes a retry asked the scheduler not to use, and why (they failed this sweep's tasks:
    # hpcjobs/launching/failing_nodes.py); added to the sweep's own exclude for this attempt.
    excluded: dict[str, str] | None = None


@dataclass(slots=True)
class TaskRecord:
    index: int  # Hydra's job number: the task's position in the sweep
    overrides: list[str]
    run_dir: str  # relative to the sweep directory
    config_hash: str  # sha256 prefix of the task's resolved config (without hydra)
    job_id: str | None = None  # the latest attempt's id once submitted (Slurm: ARRAYID_INDEX)
    attempts: list[Attempt] = field(default_factory=list)  # every submission, oldest first
    # Its pickled payload in .submitit/ (what it runs), when not the sweep's own: a task added
    # to the sweep by a later command runs that command's code and config.
    payload: str | None = None
    # The worker pool of its latest attempt, when workers run it: which worker claimed it, and
    # when, is in that pool's files (hpcjobs/sweepdir/pools.py); job_id is then None.
    pool: str | None = None
    # In an adaptive sweep: "trial" (its values are sampled when a worker starts it; the run
    # directory's trial.json has them) or "best" (re-runs the best trial with its own seed).
    role: str | None = None
    # Its resources group, when its configuration asks other launcher settings than the
    # sweep's (SweepManifest.groups); None: the sweep's own (and every task of an older sweep).
    group: str | None = None

    def submitted(
        self,
        job_id: str | None,
        why: str = "submitted",
        pool: str | None = None,
        excluded: dict[str, str] | None = None,
    ) -> None:
        self.job_id, self.pool = job_id, pool
        self.attempts.append(Attempt(job_id, why=why, pool=pool, excluded=excluded or None))


@dataclass
class WorkerPool:
    """Workers that pull a set of the sweep's tasks and run them one after another.

    ``hydra.launcher.workers=N``: N jobs (Slurm: one array of N tasks; local: N processes),
    each claiming the next unclaimed task of the pool (hpcjobs/run/worker.py).
    """

    id: str  # "pool0", "pool1", ...: its files are in <sweep_dir>/.pools/<id>/
    workers: int
    # by worker number; None where the backend keeps none
    job_ids: list[str | None] = field(default_factory=list)
    submitted_at: str = field(default_factory=lambda: _now())
    why: str = "submitted"
    group: str | None = None  # the resources group of its tasks (SweepManifest.groups)


@dataclass
class SweepManifest:
    experiment: str
    sweep_dir: str  # absolute
    executor: str  # the backend's name (hpcjobs.launching.backends.BACKENDS)
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    cwd: str = field(default_factory=os.getcwd)
    created_at: str = field(default_factory=lambda: _now())
    git_commit: str | None = None
    launcher: dict[str, Any] = field(default_factory=dict)
    # Resources per configuration (hpcjobs/launching/groups.py): by group id, the launcher
    # settings its tasks ask on top of ``launcher``, e.g. {"r1": {"gres": "gpu:typeb:2"}}.
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: list[TaskRecord] = field(default_factory=list)
    # What the tasks run (hpcjobs.run.task.SweepPayload), in the private submitit folder;
    # a retry submits the same.
    payload: str | None = None
    pools: list[WorkerPool] = field(default_factory=list)  # oldest first
    # What code each submitting command ran, oldest first: package versions, git commits and
    # their uncommitted changes (patches in code/<id>/), the snapshot if one was taken
    # (hpcjobs/launching/provenance.py).
    provenance: list[dict[str, Any]] = field(default_factory=list)
    # An adaptive sweep's study (hpcjobs.run.study.StudySpec): its tasks ask it for their values.
    study: dict[str, Any] | None = None
    # The process that launched the sweep: while it lives, local tasks may still be running.
    launcher_host: str = field(default_factory=socket.gethostname)
    launcher_pid: int = field(default_factory=os.getpid)
    launcher_started: str | None = field(default_factory=lambda: process_start(os.getpid()))
    schema_version: int = SCHEMA_VERSION

    def run_dir(self, task: TaskRecord) -> Path:
        return Path(self.sweep_dir) / task.run_dir

    def new_pool(
        self, workers: int, why: str = "submitted", group: str | None = None
    ) -> WorkerPool:
        pool = WorkerPool(f"pool{len(self.pools)}", workers, [None] * workers, why=why, group=group)
        self.pools.append(pool)
        return pool

    def launcher_of(self, group: str | None) -> dict[str, Any]:
        """The launcher settings a group's tasks ask: the sweep's, the group's changes applied."""
        return {**self.launcher, **self.groups.get(group, {})} if group else dict(self.launcher)


def launcher_alive(manifest: SweepManifest) -> bool | None:
    """Whether the process that launched the sweep still runs; None if that cannot be told here."""
    if manifest.launcher_host != socket.gethostname() or manifest.launcher_started is None:
        return None
    return process_start(manifest.launcher_pid) == manifest.launcher_started


def write(manifest: SweepManifest) -> Path:
    with gc_paused():
        return _write(manifest)


def _write(manifest: SweepManifest) -> Path:
    path = Path(manifest.sweep_dir).absolute() / MANIFEST_FILE
    data = {
        f.name: getattr(manifest, f.name)
        for f in dataclasses.fields(SweepManifest)
        if f.name != "tasks"
    }
    # unset fields left out, as a task's: code that predates a field still reads the pool
    data["pools"] = [
        {k: v for k, v in dataclasses.asdict(p).items() if v is not None} for p in manifest.pools
    ]
    # One line per task, not indented: 100,000 tasks stay well under a second to write and to
    # read (indenting them, or dataclasses.asdict, takes seconds). In JSON text a '"' inside a
    # string is escapped, so '}, {"index"' only ever separates two tasks.
    shared = manifest.schema_version >= 2
    submissions: dict[Attempt, int] = {}
    tasks = json.dumps(
        [_task_dict(t, submissions if shared else None) for t in manifest.tasks], default=str
    )[1:-1]
    tasks = tasks.replace('}, {"index"', '},\n    {"index"')
    if shared:
        data["submissions"] = [_attempt_dict(a) for a in submissions]
    head = json.dumps(data, indent=2, default=str)[:-2]
    atomic.write_text(path, f'{head},\n  "tasks": [\n    {tasks}\n  ]\n}}\n')
    written.remember(path, manifest)
    return path


def _task_dict(task: TaskRecord, submissions: dict[Attempt, int] | None) -> dict[str, Any]:
    """A task's record without its unset (None) fields, which read() restores. An attempt that
    many tasks share (a pool's: no job id of its own) is its index in ``submissions`` (None:
    a version 1 manifest, every attempt written out)."""
    d = {k: v for k in _TASK_SLOTS if (v := getattr(task, k)) is not None}
    d["attempts"] = [
        submissions.setdefault(a, len(submissions))
        if submissions is not None and a.job_id is None and a.excluded is None
        else _attempt_dict(a)
        for a in task.attempts
    ]
    if task.attempts:  # the latest attempt's, as read() restores them
        latest = task.attempts[-1]
        if task.job_id == latest.job_id:
            d.pop("job_id", None)
        if task.pool == latest.pool:
            d.pop("pool", None)
    return d


def _attempt_dict(attempt: Attempt) -> dict[str, Any]:
    return {k: v for k in _ATTEMPT_SLOTS if (v := getattr(attempt, k)) is not None}


def read(sweep_dir: Path) -> SweepManifest:
    with gc_paused():  # millions of new objects would set off the cyclic GC again and again
        return _read(Path(sweep_dir))


def _read(sweep_dir: Path) -> SweepManifest:
    path = Path(sweep_dir) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepDirError(
            f"{path} not found: {sweep_dir} is not a sweep directory written by hpcjobs"
        ) from None
    except json.JSONDecodeError as e:
        raise SweepDirError(
            f"{path} is corrupt ({e}); the run directories are still there"
        ) from None
    data.setdefault("schema_version", 1)
    if not isinstance(data["schema_version"], int) or data["schema_version"] > SCHEMA_VERSION:
        raise SweepDirError(
            f"{path} is of schema version {data['schema_version']}, newer than this hpcjobs"
            f" ({__version__}) reads ({SCHEMA_VERSION}): update hpcjobs"
        )
    known = {f.name for f in dataclasses.fields(SweepManifest)}
    pools = [WorkerPool(**p) for p in data.pop("pools", [])]
    tasks = []
    # The attempts that tasks share (a pool's), each once; a task names them by index. Older
    # manifests repeat them in every task: one Attempt per distinct one all the same (at
    # 100,000 tasks, making one each was a third of the read).
    shared = [_new_attempt(a) for a in data.pop("submissions", [])]
    seen: dict[tuple, Attempt] = {}
    for t in data.pop("tasks", []):
        try:
            attempts = [
                shared[a] if type(a) is int and a >= 0 else _attempt(a, seen)
                for a in t.pop("attempts", ())
            ]
        except (IndexError, AttributeError, TypeError):
            raise SweepDirError(
                f"{path} is corrupt (task {t.get('index')}: an attempt that is neither one"
                f" of its {len(shared)} submissions nor a record); the run directories are"
                " still there"
            ) from None
        if attempts:  # the latest attempt's, where the task's own are left out
            job_id, pool = t.get("job_id", attempts[-1].job_id), t.get("pool", attempts[-1].pool)
        else:
            job_id, pool = t.get("job_id"), t.get("pool")
            if job_id:  # written before attempts were recorded
                attempts = [Attempt(job_id, submitted_at=data.get("created_at") or _now())]
        if not _REQUIRED <= t.keys() <= _TASK_FIELDS:
            tasks.append(TaskRecord(**t, attempts=attempts))  # the error __init__ gives
            continue
        # Positional: a third of the time keyword arguments take, at 100,000 tasks
        tasks.append(
            TaskRecord(
                t["index"],
                t["overrides"],
                t["run_dir"],
                t["config_hash"],
                job_id,
                attempts,
                t.get("payload"),
                pool,
                t.get("role"),
                t.get("group"),
            )
        )
    # Not the reader's own process: an older manifest that does not say who launched it.
    data.setdefault("launcher_host", "")
    data.setdefault("launcher_pid", 0)
    data.setdefault("launcher_started", None)
    # Where the manifest is now, not where it was written: a sweep copied off the cluster
    # (or renamed) still finds its run directories.
    data["sweep_dir"] = str(Path(sweep_dir).absolute())
    return SweepManifest(**{k: v for k, v in data.items() if k in known}, tasks=tasks, pools=pools)


def _attempt(a: dict[str, Any], seen: dict[tuple, Attempt]) -> Attempt:
    if "excluded" in a or "job_id" in a:  # an array task's id is its own: nothing to share
        return _new_attempt(a)
    key = tuple(a.items())
    attempt = seen.get(key)
    if attempt is None:
        attempt = seen[key] = _new_attempt(a)
    return attempt


def _new_attempt(a: dict[str, Any]) -> Attempt:
    return Attempt(
        a.get("job_id"),
        a.get("submitted_at") or "",
        a.get("why", "submitted"),
        a.get("pool"),
        a.get("excluded"),
    )


_TASK_SLOTS = [f.name for f in dataclasses.fields(TaskRecord)]
_ATTEMPT_SLOTS = [f.name for f in dataclasses.fields(Attempt)]
_TASK_FIELDS = set(_TASK_SLOTS) - {"attempts"}
_REQUIRED = {"index", "overrides", "run_dir", "config_hash"}


def exists(sweep_dir: Path) -> bool:
    return (Path(sweep_dir) / MANIFEST_FILE).is_file()
