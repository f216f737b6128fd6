"""Where each task of a sweep stands: the backend's view merged with the run files.

The backend (Slurm) says whether a task is pending, running or how it ended; the run
directory says whether the run itself succeeded (a run that raised is recorded as
failed while its Slurm job exits cleanly). Tasks a backend does not follow (local
processes) are judged by their run directories alone. One poll costs one controller
call for the whole sweep (Slurm: ``sacct``); while some ended task has no accounting
record yet, that same call brings its accounting, which is kept in its run directory
(hpcjobs/results/accounting.py). A sweep submitted without a code snapshot gets a
warning when the code it runs has changed since (hpcjobs/launching/provenance.py).

An adaptive sweep's tasks draw their values when a worker starts them: each task shows the
overrides its worker claimed it with (the pool's journals), and the sweep its trials by
state and the best so far, from the values the workers journaled when each trial ended:
no study to load, no run file to read, so a poll costs what a grid sweep's does.

A sweep whose configurations ask their own resources (hpcjobs/launching/groups.py) is shown
by group too: what each asks (partition, GPU type), its tasks, and the arrays they run in.
"""

from __future__ import annotations

import math
import os
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcjobs import processes, states
from hpcjobs.gcpause import gc_paused
from hpcjobs.launching import backends, groups, provenance
from hpcjobs.launching.backends.base import Poll, TaskState, format_elapsed
from hpcjobs.results import accounting, advice
from hpcjobs.run.study import BEST_ROLE, best_of
from hpcjobs.sweepdir import manifest, pools, runfiles

ERROR_LINES = 3
LOG_TAIL_LINES = 3
UNREACHABLE_NOTE = (
    "the controller (slurmctld) is unreachable: sacct shows the states it last reported;"
    " runs whose files say they completed are shown completed"
)


@dataclass
class TaskStatus:
    index: int
    state: str  # one of states.TASK_STATES (local sweeps too)
    run_path: str  # its run directory (text: a Path per task would cost seconds at 100,000 tasks)
    overrides: list[str]
    job_id: str | None = None
    scheduler_state: str = ""  # the backend's own word for it, e.g. 'CANCELLED by 0'
    elapsed: str = ""
    node: str = ""
    error: str = ""  # the first lines of what went wrong
    log_path: Path | None = None
    attempts: int = 0  # submissions so far (the first and each retry)
    # The attempts of its latest submission that ended because their node failed (Slurm's
    # NODE_FAIL), oldest first: each names the node and when; Slurm may have requeued it since.
    node_failures: Sequence[TaskState] = ()
    # An adaptive sweep's: the trial the task runs (None for a re-run of the best, or not started),
    # its role ("trial" or "best") and, once it completed, the study's objective value.
    trial: int | None = None
    role: str | None = None
    value: float | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.run_path)


@dataclass
class StudyProgress:
    """Where an adaptive sweep's study stands: its trial tasks by state and the best so far."""

    n_trials: int
    metric: str
    direction: str
    counts: dict[str, int]  # trial tasks by state (states.TASK_STATES order)
    best_trial: int | None = None
    best_value: float | None = None
    # its sampled overrides (the base ones left out)
    best_params: list[str] = field(default_factory=list)
    best_task: int | None = None
    reruns: int = 0  # re-runs of the best (rerun_best_seeds)
    reruns_ended: int = 0

    @property
    def ended(self) -> int:
        return sum(n for state, n in self.counts.items() if state in states.ENDED)


@dataclass
class GroupStatus:
    """The tasks of one resources group: what they ask and the jobs they run in."""

    name: str  # its id in sweep.json; groups.DEFAULT for the sweep's own settings
    asks: str  # its changes to the sweep's launcher settings, e.g. "gres=gpu:typeb:2 ..."
    partition: str  # as Slurm was asked ("" where none was named: the cluster's default)
    gres: str
    tasks: int
    ended: int
    arrays: list[str]  # the job ids of its tasks' latest submissions (Slurm: array job ids)


@dataclass
class SweepStatus:
    sweep_dir: Path
    experiment: str
    executor: str
    tasks: list[TaskStatus]
    commands: list[str] = field(default_factory=list)  # controller calls made by this poll
    note: str = ""
    warnings: list[str] = field(default_factory=list)  # e.g. the code changed since submission
    accounted: int = 0  # run directories whose accounting this poll recorded
    study: StudyProgress | None = None  # an adaptive sweep's
    # Where its configurations ask their own resources: by group, the sweep's own first.
    groups: list[GroupStatus] = field(default_factory=list)
    # whether workers would have saved most of the time, judged on the runs ended so far
    workers_hint: advice.WorkersHint | None = None

    @property
    def counts(self) -> dict[str, int]:
        counter = Counter(t.state for t in self.tasks)
        return {state: counter[state] for state in states.TASK_STATES if counter[state]}

    @property
    def ended(self) -> int:
        return sum(t.state in states.ENDED for t in self.tasks)

    @property
    def done(self) -> bool:
        return self.ended == len(self.tasks)

    def retryable(self, only: Sequence[str] = ()) -> dict[int, str]:
        """Task index -> its state, for the tasks a retry would submit again (never a completed,
        pending or running one); ``only`` narrows it to some of those states."""
        wanted = set(only) or states.RETRYABLE
        return {
            t.index: t.state
            for t in self.tasks
            if t.state in states.RETRYABLE and t.state in wanted
        }


def _tail(path: Path | None, lines: int) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _error_from_metrics(metrics: dict | None) -> str:
    if (
        not metrics
        or metrics.get("status") not in (states.FAILED, states.INTERRUPTED)
        or "error_type" not in metrics
    ):
        return ""
    message = f"{metrics.get('error_type', 'Error')}: {metrics.get('error_message', '')}"
    return "\n".join(message.splitlines()[:ERROR_LINES])


def _read_metrics(run_dir: Path | str) -> dict | None:
    try:
        return runfiles.read_metrics(run_dir)
    except runfiles.CorruptRunFile:
        return None


def _state_from_run_files(metrics: dict | None, run_dir: str, launcher_alive: bool | None) -> str:
    """A task no backend follows (local processes): its run files; whether its launcher lives."""
    status = (metrics or {}).get("status")
    if status in (states.COMPLETED, states.PRUNED, states.FAILED, states.INTERRUPTED):
        return status  # how it ended, in its own words
    started = status == states.RUNNING or os.path.exists(run_dir)
    if launcher_alive is False:  # nobody will run or finish it: a retry will
        return states.INTERRUPTED
    return states.RUNNING if started else states.PENDING


def sweep_status(sweep_dir: Path) -> SweepStatus:
    with gc_paused():  # one object per task: 100,000 of them would set off the GC again and again
        return _sweep_status(Path(sweep_dir))


def _sweep_status(sweep_dir: Path) -> SweepStatus:
    sweep = manifest.read(sweep_dir)
    backend = backends.create(
        sweep.executor,
        {"submitit_folder": str(Path(sweep.sweep_dir) / ".submitit" / "%j"), **sweep.launcher},
    )
    used = {t.pool for t in sweep.tasks if t.pool}
    pool_states = {
        p.id: _PoolState(p, pools.read_pool(pools.pool_dir(sweep.sweep_dir, p.id)))
        for p in sweep.pools
        if p.id in used
    }
    workers = [j for p in pool_states.values() for j in p.job_ids()]
    due = accounting.due_tasks(sweep, backend)
    poll = backend.poll([t.job_id for t in sweep.tasks if t.job_id] + workers, accounting=bool(due))
    accounted = accounting.write_polled(sweep, poll, due)
    note = poll.note + (
        "; accounting of ended tasks not recorded (their runs keep what their process measured)"
        if due and poll.note and not poll.accounting
        else ""
    )
    alive = manifest.launcher_alive(sweep) if backend.blocking else None
    down: bool | None = None  # whether the controller is unreachable: asked once, if it matters

    def controller_down() -> bool:
        nonlocal down
        if down is None:  # a partial poll: squeue could not reach it (poll.note says so)
            down = poll.partial or not backend.reachable()
        return down

    for p in pool_states.values():
        p.judge(poll, alive, backend)
    tasks = []
    startups: list[float] = []  # the ended runs' own start-up and wall time (advice.hint_for)
    walls: list[float] = []
    present = runfiles.ExistingRunDirs(sweep.sweep_dir)  # after the poll: a run it saw is there
    for record in sweep.tasks:
        if record.pool in pool_states:
            tasks.append(pool_states[record.pool].task_status(sweep, record))
            continue
        run_dir = _join(sweep.sweep_dir, record.run_dir)
        metrics = _read_metrics(run_dir) if present.may_exist(record.run_dir) else None
        status = TaskStatus(
            record.index,
            states.PENDING,
            run_dir,
            record.overrides,
            record.job_id,
            attempts=len(record.attempts),
        )
        status.error = _error_from_metrics(metrics)
        polled = poll.states.get(record.job_id) if record.job_id else None
        if polled is not None:
            # a task still queued has no log to point to (and 100,000 paths cost a second)
            logs = backend.log_paths(polled.job_id) if polled.state != states.PENDING else None
            _merge(status, polled, metrics, logs)
            recorded = (metrics or {}).get("status")
            if (
                status.state in (states.PENDING, states.RUNNING)
                and recorded in (states.COMPLETED, states.PRUNED)
                and controller_down()
            ):
                # sacct answers without slurmctld, with what it last reported: the run's own
                # files are newer (its job's end reaches the accounting once it is back)
                status.state = recorded
        elif not record.attempts and not backend.blocking and metrics is None:
            status.state = states.NOT_SUBMITTED  # the scheduler refused it (or it was never sent)
            status.error = "never queued: `retry` submits it"
        else:  # a task no backend follows (local processes): its run directory says it all
            status.state = _state_from_run_files(metrics, run_dir, alive)
            if status.state == states.INTERRUPTED and not status.error:
                status.error = "its launcher is gone (killed or interrupted): `retry` finishes it"
            if metrics and isinstance(metrics.get("wall_seconds"), (int, float)):
                status.elapsed = format_elapsed(int(metrics["wall_seconds"]))
            status.node = str((metrics or {}).get("hostname", ""))
        if metrics and status.state in (states.COMPLETED, states.PRUNED):
            # a run that failed in its first line says nothing about what workers would save
            _add_startup(metrics, startups, walls)
        tasks.append(status)
    pinged = down is not None and not poll.partial
    commands = [*poll.commands, "scontrol ping"] if pinged else poll.commands
    if pinged and down:  # (a partial poll's note says it already)
        note = "; ".join(filter(None, [note, UNREACHABLE_NOTE]))
    waiting = sum(
        t.state in (states.PENDING, states.NOT_SUBMITTED, states.UNCLAIMED) for t in tasks
    )
    warnings = provenance.changed_since_submission(sweep, waiting)
    return SweepStatus(
        Path(sweep.sweep_dir),
        sweep.experiment,
        sweep.executor,
        tasks,
        commands,
        note,
        warnings,
        accounted,
        study_progress(sweep, tasks) if sweep.study else None,
        group_status(sweep, tasks) if sweep.groups else [],
        advice.hint_for(startups, walls, tasks=len(tasks))
        if len(startups) >= min(advice.ENOUGH_RUNS, len(tasks))
        else None,
    )


def group_status(sweep: manifest.SweepManifest, tasks: Sequence[TaskStatus]) -> list[GroupStatus]:
    """The sweep's tasks by resources group, in the order of each group's first task."""
    worker_ids = {p.id: [j for j in p.job_ids if j] for p in sweep.pools}
    members: dict[str | None, list[tuple[manifest.TaskRecord, TaskStatus]]] = {}
    for record, task in zip(sweep.tasks, tasks, strict=True):  # built one for one
        members.setdefault(record.group, []).append((record, task))
    shown = []
    for group, pairs in members.items():
        launcher = sweep.launcher_of(group)
        # each job id, and each pool's workers, once: 100,000 tasks share a few pools
        job_ids = {r.job_id for r, _ in pairs if r.job_id}
        for pool in {r.pool for r, _ in pairs if not r.job_id and r.pool}:
            job_ids.update(worker_ids.get(pool, []))
        shown.append(
            GroupStatus(
                group or groups.DEFAULT,
                groups.describe_changes(sweep.groups.get(group or "", {})),
                str(launcher.get("partition") or ""),
                str(launcher.get("gres") or ""),
                len(pairs),
                sum(t.state in states.ENDED for _, t in pairs),
                sorted({j.split("_")[0] for j in job_ids}, key=lambda j: (len(j), j)),
            )
        )
    return shown


def _add_startup(metrics: dict, startups: list[float], walls: list[float]) -> None:
    """A run's start-up and wall time as its process recorded them (a run of its own: a worker's
    runs record no start-up), for the workers hint. What metrics.json says, already read: the
    scheduler's accounting (collect's better measure) would be a file more per task."""
    startup, wall = metrics.get("startup_seconds"), metrics.get("wall_seconds")
    if isinstance(startup, (int, float)) and isinstance(wall, (int, float)):
        startups.append(float(startup))
        walls.append(float(wall))


def study_progress(sweep: manifest.SweepManifest, tasks: Sequence[TaskStatus]) -> StudyProgress:
    """An adaptive sweep's trials by state and its best so far, from its tasks' states and the
    values their workers journaled (the study's own best, without loading the study)."""
    study = sweep.study or {}
    trials = [(r, t) for r, t in zip(sweep.tasks, tasks, strict=True) if t.role != BEST_ROLE]
    counter = Counter(t.state for _, t in trials)
    progress = StudyProgress(
        int(study.get("n_trials", len(trials))),
        str(study.get("metric", "objective")),
        str(study.get("direction", "maximize")),
        {state: counter[state] for state in states.TASK_STATES if counter[state]},
    )
    reruns = [t for t in tasks if t.role == BEST_ROLE]
    progress.reruns, progress.reruns_ended = (
        len(reruns),
        sum(t.state in states.ENDED for t in reruns),
    )
    found = best_of(
        [(r, t) for r, t in trials if t.state == states.COMPLETED],
        progress.direction,
        lambda rt: rt[1].trial,
        lambda rt: rt[1].value,
    )
    if found is not None:
        record, best = found
        base = set(record.overrides)
        progress.best_trial, progress.best_value, progress.best_task = (
            best.trial,
            best.value,
            best.index,
        )
        progress.best_params = [o for o in best.overrides if o not in base]
    return progress


class _PoolState:
    """The tasks of one worker pool: its journals, and its workers' states from the backend."""

    def __init__(self, record: manifest.WorkerPool, view: pools.PoolView) -> None:
        self.record, self.view = record, view
        self.worker_state: dict[int, TaskState | None] = {}  # None: alive, no backend word on it
        self.backend: backends.Backend | None = None  # judge() sets it
        self._log_paths: dict[int, tuple[Path, Path] | None] = {}
        self.unclaimed = (states.PENDING, "")  # the state of a task no worker has claimed (yet)

    def job_id(self, worker: int) -> str | None:
        seen = self.view.workers.get(worker)
        return (
            seen.job_id if seen and seen.job_id and not seen.job_id.startswith("local") else None
        ) or (self.record.job_ids[worker] if worker < len(self.record.job_ids) else None)

    def log_path(self, worker: int) -> Path | None:
        """The worker's stderr, where the backend keeps logs: asked only for a task that a
        worker claimed (a sweep just submitted has none, and then status needs no submitit)."""
        job_id = self.job_id(worker)
        if job_id is None or self.backend is None:
            return None
        if worker not in self._log_paths:
            self._log_paths[worker] = self.backend.log_paths(job_id)
        logs = self._log_paths[worker]
        return logs[1] if logs else None

    def job_ids(self) -> list[str]:
        return [j for k in range(self.record.workers) if (j := self.job_id(k))]

    def judge(self, poll: Poll, launcher_alive: bool | None, backend: backends.Backend) -> None:
        """Each worker's state: the backend's word (Slurm), else its process (local)."""
        self.backend = backend
        for k in range(self.record.workers):
            job_id = self.job_id(k)
            if job_id is not None:
                polled = poll.states.get(job_id)
                # not polled: just queued, or (a partial poll) unknown, taken as alive
                self.worker_state[k] = polled or (
                    None if poll.partial else TaskState(job_id, states.PENDING)
                )
                continue
            seen = self.view.workers.get(k)
            gone = TaskState(f"local_worker_{k}", states.INTERRUPTED, "its process is gone")
            if seen is None or seen.stopped is not None:  # not started (yet), or stopped claiming
                ended = seen is not None or launcher_alive is False
                self.worker_state[k] = (
                    gone if ended else TaskState(f"local_worker_{k}", states.PENDING)
                )
            elif seen.host == socket.gethostname() and seen.pid_started is not None:
                alive = processes.process_start(seen.pid) == seen.pid_started
                self.worker_state[k] = (
                    TaskState(f"local_worker_{k}", states.RUNNING) if alive else gone
                )
            else:
                # another host: assume so
                self.worker_state[k] = TaskState(f"local_worker_{k}", states.RUNNING)
        # What a task no worker has claimed is: the same for all of them.
        if not backend.blocking and not any(self.record.job_ids):
            self.unclaimed = (
                states.NOT_SUBMITTED,
                "its workers were never queued: `retry` submits it",
            )
        elif all(w is not None and w.state in states.ENDED for w in self.worker_state.values()):
            reasons = sorted({w.stopped for w in self.view.workers.values() if w.stopped})
            self.unclaimed = (
                states.UNCLAIMED,
                "its workers stopped before claiming it"
                + (f" ({reasons[0]})" if reasons else "")
                + ": `retry` runs it",
            )

    def task_status(self, sweep: manifest.SweepManifest, record: manifest.TaskRecord) -> TaskStatus:
        run_dir = _join(sweep.sweep_dir, record.run_dir)
        end = self.view.ended.get(record.index)
        if end is None and record.role is None and record.index not in self.view.claimed_by:
            # No worker has claimed it (most tasks of a sweep just submitted): nothing to read
            state, error = self.unclaimed
            return TaskStatus(
                record.index,
                state,
                run_dir,
                record.overrides,
                error=error,
                attempts=len(record.attempts),
            )
        status = TaskStatus(
            record.index, states.PENDING, run_dir, record.overrides, attempts=len(record.attempts)
        )
        # an adaptive sweep's: the values its worker drew, and how they did
        if record.role is not None:
            status.role = record.role
            claimed = self.view.trials.get(record.index)
            if claimed is not None:
                status.overrides = [str(o) for o in claimed.get("overrides") or record.overrides]
                status.trial = (
                    claimed.get("trial") if isinstance(claimed.get("trial"), int) else None
                )
            value = (end or {}).get("value")
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                status.value = float(value)
        worker = self.view.claimed_by.get(record.index)
        if worker is not None:
            status.job_id = self.job_id(worker) or f"worker {worker}"
            status.node = self.view.workers[worker].host
            status.log_path = self.log_path(worker)
        if end is not None:
            status.state = str(end.get("state") or states.FAILED)
            if isinstance(end.get("seconds"), (int, float)):
                status.elapsed = format_elapsed(int(end["seconds"]))
        elif worker is not None:
            polled = self.worker_state.get(worker)
            status.scheduler_state = polled.scheduler_state if polled else ""
            if polled is None or polled.state not in states.ENDED:
                # a requeued worker is pending again
                status.state = polled.state if polled else states.RUNNING
            else:  # its worker is gone: the run files say whether the run ended before it
                recorded = (_read_metrics(run_dir) or {}).get("status")
                status.state = (
                    recorded
                    if recorded in (states.COMPLETED, states.PRUNED, states.FAILED)
                    else polled.state
                    if polled.state in states.UNSUCCESSFUL
                    else states.INTERRUPTED
                )
                if status.state not in states.FINISHED:
                    status.error = (
                        f"its worker ({status.job_id}) ended while it ran: `retry` resumes it"
                    )
        else:
            status.state, status.error = self.unclaimed
        if status.state in states.UNSUCCESSFUL and not status.error:
            status.error = _error_from_metrics(_read_metrics(run_dir))
        return status


def _join(sweep_dir: str, run_dir: str) -> str:
    """os.path.join(sweep_dir, run_dir) for the manifest's paths, at a third of its cost."""
    if run_dir.startswith("/") or not sweep_dir:
        return os.path.join(sweep_dir, run_dir)
    return sweep_dir + run_dir if sweep_dir.endswith("/") else f"{sweep_dir}/{run_dir}"


def _merge(
    status: TaskStatus, polled: TaskState, metrics: dict | None, logs: tuple[Path, Path] | None
) -> None:
    """The backend's state of a task, corrected by what its run files recorded."""
    status.state, status.scheduler_state = polled.state, polled.scheduler_state
    status.elapsed, status.node = polled.elapsed, polled.node
    status.node_failures = polled.node_failures()
    status.log_path = logs[1] if logs else None
    recorded = (metrics or {}).get("status")
    if polled.scheduler_state.startswith("UNKNOWN") and recorded in (
        states.COMPLETED,
        states.PRUNED,
        states.FAILED,
    ):
        status.state = (
            recorded  # gone from the controller's memory, but its run files say how it ended
        )
    elif polled.state == states.COMPLETED and recorded == states.INTERRUPTED:
        # stopped at a safe point, not requeued (the cap): its exit was clean
        status.state = states.INTERRUPTED
    elif polled.state == states.COMPLETED and recorded == states.PRUNED:
        status.state = states.PRUNED  # the pruner stopped it: a clean exit, and a result
    elif polled.state == states.COMPLETED and recorded != states.COMPLETED:
        status.state = states.FAILED
        status.error = status.error or "the task ended without recording metrics.json"
    if status.state in states.UNSUCCESSFUL and not status.error:
        status.error = _tail(status.log_path, LOG_TAIL_LINES) or polled.scheduler_state
