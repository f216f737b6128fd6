"""Where each task of a sweep stands: the backend's view merged with the run files.

The backend (Slurm) says whether a task is pending, running or how it ended; the run
directory says whether the run itself succeeded (a run that raised is recorded as
failed while its Slurm job exits cleanly). Tasks a backend does not follow (local
processes) are judged by their run directories alone. One poll costs one controller
call for the whole sweep (Slurm: ``sacct``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcjobs import states
from hpcjobs.launching import backends, manifest
from hpcjobs.launching.backends.base import TaskState, format_elapsed
from hpcjobs.run import runfiles

ERROR_LINES = 3
LOG_TAIL_LINES = 3


@dataclass
class TaskStatus:
    index: int
    state: str  # one of states.TASK_STATES (local sweeps too)
    run_dir: Path
    overrides: list[str]
    job_id: str | None = None
    scheduler_state: str = ""  # the backend's own word for it, e.g. 'CANCELLED by 0'
    elapsed: str = ""
    node: str = ""
    error: str = ""  # the first lines of what went wrong
    log_path: Path | None = None
    attempts: int = 0  # submissions so far (the first and each retry)


@dataclass
class SweepStatus:
    sweep_dir: Path
    experiment: str
    executor: str
    tasks: list[TaskStatus]
    commands: list[str] = field(default_factory=list)  # controller calls made by this poll
    note: str = ""

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
        return {t.index: t.state for t in self.tasks if t.state in states.RETRYABLE and t.state in wanted}


def _tail(path: Path | None, lines: int) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _error_from_metrics(metrics: dict | None) -> str:
    if not metrics or metrics.get("status") not in (states.FAILED, states.INTERRUPTED) \
            or "error_type" not in metrics:
        return ""
    message = f"{metrics.get('error_type', 'Error')}: {metrics.get('error_message', '')}"
    return "\n".join(message.splitlines()[:ERROR_LINES])


def _read_metrics(run_dir: Path) -> dict | None:
    try:
        return runfiles.read_metrics(run_dir)
    except runfiles.CorruptRunFile:
        return None


def _state_from_run_files(metrics: dict | None, run_dir: Path, launcher_alive: bool | None) -> str:
    """A task no backend follows (local processes): its run files, and whether its launcher lives."""
    status = (metrics or {}).get("status")
    if status in (states.COMPLETED, states.FAILED, states.INTERRUPTED):
        return status  # how it ended, in its own words
    started = status == states.RUNNING or run_dir.exists()
    if launcher_alive is False:  # nobody will run or finish it: a retry will
        return states.INTERRUPTED
    return states.RUNNING if started else states.PENDING


def sweep_status(sweep_dir: Path) -> SweepStatus:
    sweep = manifest.read(Path(sweep_dir))
    backend = backends.create(sweep.executor, {"submitit_folder": str(Path(sweep.sweep_dir) / ".submitit" / "%j"),
                                               **sweep.launcher})
    poll = backend.poll([t.job_id for t in sweep.tasks if t.job_id])
    alive = manifest.launcher_alive(sweep) if backend.blocking else None
    tasks = []
    for record in sweep.tasks:
        run_dir = sweep.run_dir(record)
        metrics = _read_metrics(run_dir)
        status = TaskStatus(record.index, states.PENDING, run_dir, record.overrides, record.job_id,
                            attempts=len(record.attempts))
        status.error = _error_from_metrics(metrics)
        polled = poll.states.get(record.job_id) if record.job_id else None
        if polled is not None:
            _merge(status, polled, metrics, backend.log_paths(polled.job_id))
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
        tasks.append(status)
    return SweepStatus(Path(sweep.sweep_dir), sweep.experiment, sweep.executor, tasks, poll.commands, poll.note)


def _merge(status: TaskStatus, polled: TaskState, metrics: dict | None, logs: tuple[Path, Path] | None) -> None:
    """The backend's state of a task, corrected by what its run files recorded."""
    status.state, status.scheduler_state = polled.state, polled.scheduler_state
    status.elapsed, status.node = polled.elapsed, polled.node
    status.log_path = logs[1] if logs else None
    recorded = (metrics or {}).get("status")
    if polled.scheduler_state.startswith("UNKNOWN") and recorded in (states.COMPLETED, states.FAILED):
        status.state = recorded  # gone from the controller's memory, but its run files say how it ended
    elif polled.state == states.COMPLETED and recorded == states.INTERRUPTED:
        status.state = states.INTERRUPTED  # stopped at a safe point, not requeued (the cap): its exit was clean
    elif polled.state == states.COMPLETED and recorded != states.COMPLETED:
        status.state = states.FAILED
        status.error = status.error or "the task ended without recording metrics.json"
    if status.state in states.UNSUCCESSFUL and not status.error:
        status.error = _tail(status.log_path, LOG_TAIL_LINES) or polled.scheduler_state
