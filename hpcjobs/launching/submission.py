"""Submitting tasks of a sweep, the first time or again, recorded in sweep.json as it happens.

The launcher submits a new sweep's tasks; `retry` resubmits the ones that did not
complete. Both go through :func:`submit`, which records each task's attempt (job id,
when, why) as soon as the backend says the scheduler accepted it, so a submission
refused part-way leaves a manifest that says exactly which tasks are queued.

What the submitted jobs run is the caller's to say (:class:`Runners`): like submitit's
executor, this stage submits callables without knowing them, and it never imports the
run stage (which runs on another machine; the two meet in the sweep directory).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hydra.core.utils import JobReturn, JobStatus

from hpcjobs import compat, processes, states
from hpcjobs.config.planning import PlannedTask
from hpcjobs.launching import backends, failing_nodes, groups
from hpcjobs.launching.backends.base import Backend, Job, log, log_task_end
from hpcjobs.launching.settings import LauncherSettings
from hpcjobs.sweepdir import manifest, payloads, pools, runfiles


class TaskRunnerFactory(Protocol):
    """Makes what a job of one task runs (hpcjobs.run.task.TaskRunner)."""

    def __call__(
        self, payload_path: str, index: int, overrides: tuple, cpus_per_task: Any = None
    ) -> Callable[[], JobReturn]: ...


class WorkerRunnerFactory(Protocol):
    """Makes what a worker of a pool runs (hpcjobs.run.worker.WorkerRunner)."""

    def __call__(
        self,
        sweep_dir: str,
        pool_id: str,
        worker: int,
        timeout_min: float,
        grace_s: float = 0.0,
        cpus_per_task: Any = None,
    ) -> Callable[[], JobReturn]: ...


@dataclass(frozen=True)
class Runners:
    """What the submitted jobs run, handed in by the caller (the Hydra launcher, `retry`):
    ``Runners(task=TaskRunner, worker=WorkerRunner)``."""

    task: TaskRunnerFactory
    worker: WorkerRunnerFactory


def submit(
    backend: Backend,
    sweep: manifest.SweepManifest,
    tasks: Sequence[PlannedTask],
    payload: Path,
    runners: Runners,
    why: str = "submitted",
    excluded: Mapping[str, str] | None = None,
) -> dict[int, str]:
    """Hand ``tasks`` to ``backend``; each accepted task gets an attempt in ``sweep`` (saved now).

    With ``hydra.launcher.workers=N`` the backend runs N workers that pull the tasks
    (:func:`submit_pool`); then no task has a job id of its own ({} is returned).
    ``excluded``: nodes the backend's settings exclude for this attempt, and why (a retry's).
    """
    if backend.settings.workers:
        submit_pool(backend, sweep, tasks, runners, why, excluded)
        return {}
    records = {t.index: t for t in sweep.tasks}

    def on_submitted(job_ids: Mapping[int, str | None]) -> None:
        for index, job_id in job_ids.items():
            records[index].submitted(job_id, why, excluded=dict(excluded or {}))
        manifest.write(sweep)

    return backend.submit(
        tasks,
        lambda task, cpus: runners.task(str(payload), task.index, task.overrides, cpus),
        on_submitted,
    )


@dataclass(frozen=True)
class WorkerSlot:
    """What a backend submits for worker ``index`` of a pool: a job that runs many tasks."""

    index: int  # the worker's number in its pool
    overrides: tuple[str, ...] = ()  # none of its own: each task it runs has its own

    @property
    def label(self) -> str:
        return f"worker {self.index}"


def submit_pool(
    backend: Backend,
    sweep: manifest.SweepManifest,
    tasks: Sequence[PlannedTask],
    runners: Runners,
    why: str | Mapping[int, str] = "submitted",
    excluded: Mapping[str, str] | None = None,
) -> manifest.WorkerPool:
    """Submit ``tasks`` as a new pool of at most ``hydra.launcher.workers`` workers.

    The pool's tasks are recorded in the manifest before any worker starts (the workers
    read them there); each worker's job id as the backend accepts it. ``why``: the
    attempt's reason, for all tasks or by task index (a retry's).
    """
    n = max(1, min(int(backend.settings.workers or 1), len(tasks)))
    records = {t.index: t for t in sweep.tasks}
    # a pool per resources group: its workers ask what its tasks need
    (group, *others) = {records[t.index].group for t in tasks} if tasks else {None}
    assert not others, "a pool's tasks ask the same resources"
    pool = sweep.new_pool(n, why if isinstance(why, str) else "retry", group)
    for task in tasks:
        records[task.index].submitted(
            None,
            why if isinstance(why, str) else why[task.index],
            pool=pool.id,
            excluded=dict(excluded or {}),
        )
    manifest.write(sweep)
    slots = [WorkerSlot(k) for k in range(n)]

    def on_submitted(job_ids: Mapping[int, str | None]) -> None:
        for k, job_id in job_ids.items():
            pool.job_ids[k] = job_id
        manifest.write(sweep)

    timeout_min = backend.worker_timeout_min(len(tasks))
    if timeout_min != float(backend.settings.timeout_min or 60):  # the jobs' limit too
        # this very backend: it keeps the workers' returns, which wait() asks it for
        backend.settings = dataclasses.replace(backend.settings, timeout_min=timeout_min)

    def make_worker(slot: Job, cpus: int | None) -> Callable[[], JobReturn]:
        return runners.worker(
            sweep.sweep_dir, pool.id, slot.index, timeout_min, backend.warning_s(), cpus
        )

    backend.submit(
        slots,
        make_worker,
        on_submitted,
        on_poll=_progress(sweep, pool, len(tasks)),
        replace_dead=_replacing(sweep, pool, len(tasks)),
    )
    return pool


def _replacing(
    sweep: manifest.SweepManifest, worker_pool: manifest.WorkerPool, total: int
) -> Callable[[Job, str], bool]:
    """Whether a worker that died is replaced (where the backend watches its workers: local).

    A worker that died while it ran a run (a segfault, the OOM killer, ``kill -9``) costs
    that run only: the run is recorded failed, with why, and a new worker takes its place
    for the rest. Bounded: a run so recorded is never handed out again, so a run that kills
    every worker it lands on lands on one; and a worker that died outside a run (at its
    start, say) is not replaced, so a worker that cannot start is not started forever.
    An adaptive sweep's workers hand a dead worker's trial to one of them instead
    (hpcjobs/run/study.py): there, none is replaced.
    """
    where = pools.pool_dir(sweep.sweep_dir, worker_pool.id)
    records = {t.index: t for t in sweep.tasks}
    pooled = [t.index for t in sweep.tasks if t.pool == worker_pool.id]
    replaced = 0

    def replace(slot: Job, reason: str) -> bool:
        nonlocal replaced
        if sweep.study:
            return False
        seen = pools.read_pool(where).workers.get(slot.index)
        index = seen.running if seen is not None else None
        if index is None or index not in records or replaced >= total:
            return False
        run_dir = sweep.run_dir(records[index])
        state = _record_worker_death(run_dir, f"its worker process died while it ran it: {reason}")
        # the dead worker's journal: it writes no more, and its replacement resumes nothing
        pools.Journal(where, slot.index).write("end", task=index, state=state)
        if all(pools.is_claimed(where, i) for i in pooled):
            log.warning(
                "worker %d died while it ran task %d (recorded %s)", slot.index, index, state
            )
            return False  # nothing left for a replacement
        replaced += 1
        log.warning(
            "worker %d died while it ran task %d (recorded %s); a new worker takes its place",
            slot.index,
            index,
            state,
        )
        return True

    return replace


def _record_worker_death(run_dir: Path, message: str) -> str:
    """Record in its metrics.json that a run's worker died under it; the run's state. A run that
    had ended already (its worker died just after) keeps its record: it is never rewritten."""
    try:
        metrics = runfiles.read_metrics(run_dir) or {}
    except runfiles.CorruptRunFile:
        metrics = {}  # torn by the death: what it said is lost either way
    recorded = metrics.get("status")
    if recorded in states.ENDED:
        return str(recorded)
    metrics.pop("schema_version", None)
    run_dir.mkdir(parents=True, exist_ok=True)
    runfiles.write_metrics(
        run_dir,
        {**metrics, "status": states.FAILED, "error_type": "WorkerDied", "error_message": message},
    )
    return states.FAILED


def _progress(
    sweep: manifest.SweepManifest, worker_pool: manifest.WorkerPool, total: int
) -> Callable[[], None]:
    """A line per run as workers end them (a blocking backend calls it while it waits)."""
    where = pools.pool_dir(sweep.sweep_dir, worker_pool.id)
    records = {t.index: t for t in sweep.tasks}
    reported: set[int] = set()
    journals = pools.PoolReader(where)  # read as they grow: a poll parses the new lines only

    def report() -> None:
        view = journals.read()
        # only the runs ended since the last poll: sorting every ended run at each poll cost
        # 0.1 s a poll at 100,000 runs
        for index in sorted(view.ended.keys() - reported):
            end = view.ended[index]
            if index in records:
                reported.add(index)
                task = planned(records[index])
                if index in view.trials:  # an adaptive sweep's trial: the values it was given
                    task = dataclasses.replace(
                        task, overrides=tuple(view.trials[index]["overrides"])
                    )
                state = str(end.get("state"))
                log_task_end(
                    len(reported), total, task, None if state == states.COMPLETED else state
                )

    return report


def wait(
    backend: Backend,
    sweep: manifest.SweepManifest,
    tasks: Sequence[PlannedTask],
    job_ids: Mapping[int, str],
) -> list[JobReturn]:
    """Every task's JobReturn, in task order, once all have ended (Hydra's launcher contract)."""
    returns = wait_by_index(backend, sweep, tasks, job_ids)
    return [returns[t.index] for t in tasks if t.index in returns]


def wait_by_index(
    backend: Backend,
    sweep: manifest.SweepManifest,
    tasks: Sequence[PlannedTask],
    job_ids: Mapping[int, str],
) -> dict[int, JobReturn]:
    """:func:`wait`'s JobReturns by task index (a task no worker claimed has none)."""
    pooled = {t.index: t.pool for t in sweep.tasks if t.pool}
    if not any(t.index in pooled for t in tasks):
        return {t.index: ret for t, ret in zip(tasks, backend.wait(tasks, job_ids))}
    returns: dict[int, JobReturn] = {}
    for worker_pool in sweep.pools:
        if not any(pooled.get(t.index) == worker_pool.id for t in tasks):
            continue
        slots = [WorkerSlot(k) for k in range(worker_pool.workers)]
        ids = {k: job_id for k, job_id in enumerate(worker_pool.job_ids) if job_id}
        for ret in backend.wait([s for s in slots if s.index in ids] if ids else slots, ids):
            value = compat.job_return_value(ret)
            if isinstance(value, Mapping):
                returns.update(value)
    views: dict[str, pools.PoolView] = {}
    for t in tasks:  # ended under a worker that died since (replaced): its run files say how
        pool_id = pooled.get(t.index)
        if t.index not in returns and pool_id:
            if pool_id not in views:
                views[pool_id] = pools.read_pool(pools.pool_dir(sweep.sweep_dir, pool_id))
            end = views[pool_id].ended.get(t.index)
            if end is not None:
                returns[t.index] = _ended_return(sweep, t, end)
    left = [t for t in tasks if t.index not in returns]
    if left:  # not a failure: nothing ran them yet (like a detached sweep's tasks, not returned)
        log.warning(
            "%d task(s) left unclaimed: the workers stopped first (time left, or they ended); "
            "`python -m hpcjobs retry %s` runs them",
            len(left),
            sweep.sweep_dir,
        )
    return returns


def _ended_return(
    sweep: manifest.SweepManifest, task: PlannedTask, end: Mapping[str, Any]
) -> JobReturn:
    """The JobReturn of a pooled task that ended (``end``: its journal's end event), from its run
    files: its worker's return died with the worker."""
    try:
        metrics = runfiles.read_metrics(Path(sweep.sweep_dir) / task.run_subdir) or {}
    except runfiles.CorruptRunFile:
        metrics = {}
    # As a worker returns its runs: the run's record as data, failed ones too (the sweep goes on)
    ret = JobReturn(overrides=list(task.overrides), status=JobStatus.COMPLETED)
    ret.return_value = {"status": end.get("state"), **metrics}
    return ret


def planned(record: manifest.TaskRecord) -> PlannedTask:
    """A manifest's task as it was planned (validated before its first submission)."""
    return PlannedTask(record.index, tuple(record.overrides), record.run_dir, record.config_hash)


def resubmit(
    sweep_dir: Path,
    reasons: Mapping[int, str],
    launcher_changes: Mapping[str, Any],
    runners: Runners,
    excluded: Mapping[str, str] | None = None,
) -> tuple[Backend, manifest.SweepManifest, dict[int, str]]:
    """Submit the given tasks of a sweep again (task index -> why), with changed launcher settings.

    Each task runs again in its own run directory, from its checkpoint where it left one, with
    its resources group's settings (sweep.json's ``groups``) and then ``launcher_changes``.
    ``excluded``: nodes to keep this retry off (node -> why: hpcjobs/launching/failing_nodes.py),
    added to the exclude of every group for these attempts only and recorded with them; the
    sweep's own settings (sweep.json's launcher and groups) keep what the user set.
    Raises SweepDirError when the sweep cannot be resubmitted from here.
    """
    sweep = manifest.read(sweep_dir)
    unknown = sorted(set(launcher_changes) - set(sweep.launcher))
    if unknown:
        from hpcjobs.errors import ConfigError, choices_hint

        raise ConfigError(
            f"unknown launcher setting(s) {', '.join(unknown)}: {choices_hint(sweep.launcher)}"
        )
    sweep.launcher = {**sweep.launcher, **launcher_changes}
    backend = backends.create(
        sweep.executor,
        LauncherSettings.from_mapping(failing_nodes.apply(sweep.launcher, excluded or {})),
    )
    backend.check()
    # local workers the backend chooses: as the first submission chose them, for every group
    backend = groups.with_shared_workers(backend, sweep.groups.values())
    records = [t for t in sweep.tasks if t.index in reasons]
    # Each resources group with its own settings, the changes asked now on top of them.
    made: dict[str | None, Backend] = {None: backend}
    for name in sorted({r.group for r in records if r.group}):
        settings = failing_nodes.apply(
            {**sweep.launcher_of(name), **launcher_changes}, excluded or {}
        )
        made[name] = groups.backend_for(backend, LauncherSettings.from_mapping(settings))
        made[name].check()
    if backend.blocking:  # the runs are this process's children now: it is their launcher
        sweep.launcher_pid, sweep.launcher_started = processes.this_process()
    job_ids: dict[int, str] = {}
    if backend.settings.workers:  # a pool per resources group pulls its tasks, whatever code
        for group, group_backend in made.items():
            members = [r for r in records if r.group == group]
            if members:
                submit_pool(
                    group_backend,
                    sweep,
                    [planned(r) for r in members],
                    runners,
                    {r.index: f"retry: {reasons[r.index]}" for r in members},
                    excluded,
                )
        return backend, sweep, job_ids
    # One submission per group, payload and reason: each attempt's why exact, each task its own
    # code and resources.
    batches: dict[tuple[str, Path, str], list[PlannedTask]] = {}
    for record in records:
        key = (record.group or "", payloads.find(sweep, record), reasons[record.index])
        batches.setdefault(key, []).append(planned(record))
    for (name, payload, why), batch in sorted(batches.items()):
        job_ids.update(
            submit(made[name or None], sweep, batch, payload, runners, f"retry: {why}", excluded)
        )
    return backend, sweep, job_ids
