"""The one interface between hpcjobs and whatever runs a sweep's tasks.

A backend submits a batch of tasks, reports their states (one call for the whole
sweep), cancels them, knows where their logs are, and describes a submission for a dry
run. The launcher, `status` and the CLI talk only to this interface; adding a backend
means one module in this folder and one line in ``backends/__init__.py``.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from hpcjobs import compat, states
from hpcjobs.errors import ConfigError, LauncherError
from hpcjobs.launching.settings import LauncherSettings

# hydra.launcher.run_files: what a worker's run leaves (hpcjobs/run/task.py, SweepRuns)
RUN_FILES = ("full", "compact")

if TYPE_CHECKING:  # imported where used: `status` loads no Hydra
    from hydra.core.utils import JobReturn

log = logging.getLogger(__name__)


class Job(Protocol):
    """What a backend submits as one job: a task of the sweep (hpcjobs.config.planning.PlannedTask),
    or a worker of a pool (hpcjobs.launching.submission.WorkerSlot)."""

    @property
    def index(
        self,
    ) -> int: ...  # its key among the jobs submitted together: a task's index, a worker's number

    @property
    def overrides(self) -> tuple[str, ...]: ...  # a task's overrides (a worker has none of its own)

    @property
    def label(self) -> str: ...  # how progress lines and errors name it


# Makes the callable a backend runs for one job (and the CPUs it may use, where the backend says).
RunnerFactory = Callable[[Job, "int | None"], Callable[[], "JobReturn"]]
# Told each task's job id (None where the backend keeps none) as soon as it is accepted.
OnSubmitted = Callable[[Mapping[int, "str | None"]], None]
# Told of a job that ended without a result (its process died) and why: True to start it
# again (a dead worker's replacement). Only a blocking backend, which watches its jobs, asks.
ReplaceDead = Callable[[Job, str], bool]


class SubmissionError(LauncherError):
    """The scheduler accepted some of the tasks and refused the rest."""

    def __init__(self, message: str, submitted: Mapping[int, str]) -> None:
        super().__init__(message)
        self.submitted = dict(submitted)


def format_elapsed(seconds: int) -> str:
    days, rest = divmod(int(seconds), 86400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{clock}" if days else clock


@dataclass(frozen=True)
class TaskState:
    job_id: str  # the backend's id of the task (Slurm: ARRAYID_INDEX)
    state: str  # one of states.TASK_STATES
    scheduler_state: str = ""  # as the scheduler said it, e.g. "CANCELLED by 0", "OUT_OF_MEMORY"
    elapsed: str = ""  # [D-]HH:MM:SS
    node: str = ""
    exit_code: str = ""
    ended_at: str = ""  # when it ended, as the scheduler says (Slurm: 2026-12-05T17:42:03)
    # Its earlier attempts, oldest first, when the scheduler requeued it itself (Slurm, on
    # NODE_FAIL or preemption): the same job id, run again; each with its own state and node.
    earlier: tuple[TaskState, ...] = ()

    def node_failures(self) -> list[TaskState]:
        """The attempts (earlier ones and this one) that ended because their node failed."""
        return [a for a in (*self.earlier, self) if a.state == states.NODE_FAIL]


@dataclass(frozen=True)
class Usage:
    """What the scheduler's accounting says one task was given and used (Slurm: sacct).

    Kept in the run directory once the task has ended (accounting.json), because
    schedulers purge their accounting after a while.
    """

    job_id: str  # as the scheduler knows it (Slurm: ARRAYID_INDEX)
    scheduler_state: str  # e.g. "COMPLETED", "CANCELLED by 0"
    elapsed_s: float  # wall time of the allocation
    cpu_s: float | None  # CPU time of all its processes (TotalCPU); None: not known
    max_rss_mb: float | None  # peak resident memory of its largest step; None: not sampled
    req_mem_mb: float | None  # memory requested for the whole task
    cpus: int | None  # CPUs allocated
    gpus: int  # GPUs allocated
    node: str
    ended_at: str = ""  # when the attempt ended (a requeued task has several attempts)


@dataclass
class Poll:
    states: dict[str, TaskState]  # by job id
    commands: list[str]  # the controller commands this poll ran
    note: str = ""  # e.g. why accounting was not used
    # Asked for with poll(..., accounting=True): what each task was given and used, by job id.
    accounting: dict[str, Usage] = field(default_factory=dict)
    # And what the earlier attempts of a task the scheduler requeued itself used, oldest first.
    requeued: dict[str, list[Usage]] = field(default_factory=dict)
    # True when the scheduler could not say some job ids (its controller unreachable): those are
    # left out of states, unknown (not ended: never to be run again on this poll's word).
    partial: bool = False


class Backend(abc.ABC):
    """Where a sweep's tasks run, with the ``hydra.launcher`` settings it was made with.

    ``environment``: variables every job starts with (the code snapshot's import path).
    """

    name: ClassVar[str]
    # True when submit() returns only once every task has ended (local processes).
    blocking: ClassVar[bool] = False
    # True when poll(..., accounting=True) can say what each task used (Slurm's sacct).
    keeps_accounting: ClassVar[bool] = False
    # True when hydra.launcher.workers was unset and the backend chose them (local sweeps).
    workers_defaulted: bool = False
    # The hydra.launcher keys it asks for each job (resources): the ones that may differ between
    # a sweep's configurations (hpcjobs/launching/groups.py); the others are the sweep's.
    job_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        settings: LauncherSettings | Mapping[str, Any],
        environment: Mapping[str, str] | None = None,
    ) -> None:
        # a mapping: hydra.launcher's keys (sweep.json's record)
        self.settings = LauncherSettings.of(settings)
        self.folder = str(self.settings.submitit_folder or "")  # %j: the job id
        self.environment: dict[str, str] = dict(environment or {})

    def with_environment(self, environment: Mapping[str, str]) -> Backend:
        """This backend, made again with the environment its jobs start with; workers the
        backend chose stay marked as chosen (``workers_defaulted``: a local worker's time limit
        and sweep.json's record depend on it)."""
        made = type(self)(self.settings, environment)
        made.workers_defaulted = self.workers_defaulted
        return made

    @property
    def params(self) -> dict[str, Any]:
        """The settings as a dict (what backends read before they read ``settings``)."""
        return self.settings.as_dict()

    def check_common(self) -> None:
        """The settings every backend refuses alike (called by check())."""
        workers, ranks = self.settings.workers, int(self.settings.tasks_per_node or 1)
        if workers is not None and int(workers) < 0:
            raise ConfigError(
                f"hydra.launcher.workers={workers}: must be >= 0 (0: one job per task;"
                " null: the backend's default)"
            )
        if ranks < 1:
            raise ConfigError(f"hydra.launcher.tasks_per_node={ranks}: must be >= 1")
        for key in ("cpus_per_task", "nodes"):
            value = getattr(self.settings, key)
            if value is not None and int(value) < 1:
                raise ConfigError(f"hydra.launcher.{key}={value}: must be >= 1 (or null)")
        run_files = self.settings.run_files
        if run_files not in RUN_FILES:
            raise ConfigError(
                f"hydra.launcher.run_files={run_files}: choose {' or '.join(RUN_FILES)}"
            )
        if run_files == "compact" and not workers:
            raise ConfigError(
                "hydra.launcher.run_files=compact is what runs in workers leave: set"
                " hydra.launcher.workers=N too (a run in a job of its own leaves Hydra's files)"
            )
        if workers and (ranks > 1 or int(self.settings.nodes or 1) > 1):
            raise ConfigError(
                "hydra.launcher.workers runs single-process runs one after another; a distributed"
                " run (tasks_per_node or nodes > 1) needs a job of its own: unset one of them"
            )

    @classmethod
    def available(cls) -> bool:
        """Whether this machine can submit to the backend."""
        return True

    def check(self) -> None:
        """Raise ConfigError for a setting this backend refuses; nothing is submitted yet."""
        self.check_common()

    @abc.abstractmethod
    def submit(
        self,
        tasks: Sequence[Job],
        make_runner: RunnerFactory,
        on_submitted: OnSubmitted,
        on_poll: Callable[[], None] | None = None,
        replace_dead: ReplaceDead | None = None,
    ) -> dict[int, str]:
        """Start every job; return each job's id by its index (empty if it has none).

        ``on_submitted`` hears of jobs as the scheduler accepts them, so that a submission
        refused part-way (SubmissionError) leaves an exact record of what was queued.
        ``on_poll`` is called between checks while a blocking backend runs them (workers' progress);
        ``replace_dead`` decides whether a job that died is started again (a blocking backend's).
        """

    @abc.abstractmethod
    def wait(self, tasks: Sequence[Job], job_ids: Mapping[int, str]) -> list[JobReturn]:
        """Block until every task has ended; each task's JobReturn, in task order."""

    @abc.abstractmethod
    def poll(self, job_ids: Sequence[str], accounting: bool = False) -> Poll:
        """The state of each job id the backend still knows (one controller call for all);
        with ``accounting``, in the same call, what each task used (Poll.accounting)."""

    def cancel(self, job_ids: Sequence[str]) -> None:
        raise LauncherError(f"the {self.name} backend cannot cancel tasks")

    def reachable(self) -> bool:
        """Whether the scheduler's controller answers now (a poll's states may be its accounting's
        stale copy when it does not)."""
        return True

    def log_paths(self, job_id: str) -> tuple[Path, Path] | None:
        """(stdout, stderr) of a task, or None where the backend keeps no log."""
        return compat.submitit_log_paths(self.folder, job_id) if self.folder else None

    def worker_timeout_min(self, n_tasks: int) -> float:
        """A worker's time limit, in a pool of ``n_tasks``: timeout_min (the job's)."""
        return float(self.settings.timeout_min or 60)

    def warning_s(self) -> float:
        """How long before a task's time limit it is warned (its stop signal); 0: never."""
        return 0.0

    def describe(self, n_tasks: int) -> str:
        """What a submission of ``n_tasks`` would look like, for a dry run ('' = nothing to add)."""
        return ""


# --------------------------------------------------------------------------- JobReturns


def failed_return(task: Job, exc: BaseException, log_path: Any) -> JobReturn:
    """A FAILED JobReturn for a task that ended without one (crashed, killed, timed out)."""
    from hydra.core.utils import JobReturn, JobStatus

    message = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    failed = JobReturn(overrides=list(task.overrides), status=JobStatus.FAILED)
    failed.return_value = LauncherError(
        f"task {task.label} ended without a result"
        f" ({type(exc).__name__}: {message}); its log: {log_path}"
    )
    return failed


def failure_reason(ret: JobReturn) -> str | None:
    """Why a task did not complete, or None if it did.

    A JobReturn is FAILED when the task function raised; hpcjobs' own app records a
    failed workload and returns it as data (``status: failed``), so the sweep goes on.
    """
    from hydra.core.utils import JobStatus

    value = compat.job_return_value(ret)
    if ret.status == JobStatus.FAILED:
        return f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else "failed"
    if isinstance(value, Mapping) and value.get("status") == states.FAILED:
        return f"{value.get('error_type')}: {value.get('error_message')}"
    return None


def log_task_end(done: int, total: int, task: Job, reason: str | None) -> None:
    """One progress line; ``reason``: why the task did not complete (None: it did; "pruned")."""
    width = len(str(total))
    word = "done  " if reason is None else "pruned" if reason == states.PRUNED else "FAILED"
    log.info(
        "[%*d/%d] %s %s%s",
        width,
        done,
        total,
        word,
        task.label,
        f": {reason}" if reason and reason != states.PRUNED else "",
    )
