"""A worker: one job (a Slurm array task, or a local process) that runs many of a sweep's tasks.

``hydra.launcher.workers=N`` submits N workers instead of one job per task. Each reads
the sweep's manifest once, then claims the pool's tasks one at a time (an O_EXCL file,
hpcjobs/run/pool.py) and runs each in-process, in its own run directory, exactly as a
task of its own would (hpcjobs/run/task.py): torch is imported once, a workload may keep
its data loaded between runs, and every run keeps its metrics, history and failure
record, so `status`, `collect`, `report` and `retry` see no difference.

It knows its walltime: before claiming, it compares the time left in its allocation with
the longest run it (or the pool) has seen, and stops claiming when the next run might not
fit: no run is cut off by the time limit, and what is left stays unclaimed for the other
workers or `retry`. If its time limit (or a preemption) comes during a run anyway, the
run stops at a safe point and the worker requeues itself; started again, it first
resumes the run it had claimed, from its checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

from hpcjobs import states
from hpcjobs.launching import manifest
from hpcjobs.run import job, pool, requeue, runfiles, study
from hpcjobs.run.context import ALLOCATION_STARTED_ENV, CPUS_ENV
from hpcjobs.run.task import SweepRuns, load_payload

log = logging.getLogger(__name__)

# Claim the next run only if the time left is this much more than the longest run so far.
FIT_MARGIN = 1.25
# How a worker takes a task (WorkerRunner._tasks): its own run again after a requeue, an
# unclaimed one, or one from a worker that died (adaptive sweeps).
RESUME, CLAIM, TAKE_OVER = "resume", "claim", "take over"


def worker_job_id(worker: int) -> str | None:
    """This worker's id as its scheduler knows it (Slurm: ARRAYID_INDEX)."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" and os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return (
        os.environ.get("SLURM_JOB_ID")
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
        else f"local_worker_{worker}"
    )


def fits(time_left: float, durations: list[float]) -> bool:
    """Whether a run is expected to end in ``time_left`` seconds, judged by the runs so far.

    The longest run so far, with a margin: runs of one sweep differ (another optimizer,
    another batch size), and a run cut off is worse than one left for the next worker.
    With no run finished yet there is nothing to judge by: the first run is tried.
    """
    return not durations or time_left >= max(durations) * FIT_MARGIN


@dataclass
class WorkerRunner:
    """The callable a backend runs for worker ``worker`` of pool ``pool_id`` (pickled per worker)"""

    sweep_dir: str
    pool_id: str
    worker: int
    timeout_min: float
    # Seconds before the time limit at which Slurm warns (hydra.launcher.signal_grace_s):
    # a run must end before the warning to be sure it is not interrupted.
    grace_s: float = 0.0
    cpus_per_task: Any = None

    def __post_init__(self) -> None:
        # task -> the takeover number of the dead worker's claim
        self._seen_claim: dict[int, int] = {}

    def __call__(self) -> JobReturn:
        # The time limit counts from when the job's process started, imports included.
        started = manifest.process_started_at(os.getpid()) or time.time()
        os.environ[ALLOCATION_STARTED_ENV] = str(started)  # its runs' time limit counts from here
        if self.cpus_per_task:
            os.environ[CPUS_ENV] = str(self.cpus_per_task)
        deadline = started + self.timeout_min * 60 - self.grace_s
        sweep = manifest.read(Path(self.sweep_dir))
        where = pool.pool_dir(sweep.sweep_dir, self.pool_id)
        journal = pool.Journal(where, self.worker)
        before = pool.read_pool(where)
        mine = before.workers.get(self.worker)
        journal.write(
            "start",
            worker=self.worker,
            job_id=worker_job_id(self.worker),
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_started=manifest.process_start(os.getpid()),
        )
        durations = before.durations()
        payloads: dict[str, SweepRuns] = {}
        returns: dict[int, JobReturn] = {}
        spec = study.StudySpec.from_dict(sweep.study) if sweep.study else None
        trials = (
            study.Trials(
                sweep.sweep_dir, spec, study.worker_seed(spec, self._pool_number(), self.worker)
            )
            if spec
            else None
        )
        stop_reason = "no task left"
        in_run = False
        with (
            requeue.stop_flag() as stop,
            _terminate_flag(lambda: in_run and spec is not None) as terminating,
            study.heartbeat(study.beat_path(where, self.worker), spec.heartbeat_s)
            if spec
            else contextlib.nullcontext(),
        ):  # only a study's workers take over from a silent one

            def quitting() -> bool:
                return stop() or terminating() or time.time() > deadline

            for record, how in self._tasks(sweep, where, mine, spec, quitting):
                left = deadline - time.time()
                if not fits(left, durations):
                    stop_reason = (
                        f"{left:.0f} s left, the longest run so far took {max(durations):.0f} s"
                        " (the rest stays unclaimed: `retry` runs it)"
                    )
                    break
                if stop() or terminating():
                    stop_reason = (
                        "the scheduler asked this worker to stop"
                        if stop()
                        else "Slurm is ending this job (SIGTERM: cancelled, or preempted)"
                    )
                    break
                takeover = self._claim(where, record, how, mine)
                if takeover is None:
                    continue  # another worker has it
                run_dir = sweep.run_dir(record)
                trial, overrides = None, list(record.overrides)
                if trials is not None:
                    claimed = _start_trial(trials, record, run_dir, takeover, journal)
                    if claimed is None:
                        continue
                    trial, overrides = claimed
                else:
                    journal.write("claim", task=record.index, takeover=takeover)
                t0 = time.time()
                payload = self._payload(sweep, record, payloads)
                observing = (
                    job.observing_epochs(trials.observer(trial))
                    if trials is not None and trial is not None
                    else contextlib.nullcontext()
                )
                try:
                    in_run = True
                    with observing:
                        ret = payload.run(record.index, overrides, run_dir)
                    in_run = False
                # Ctrl-C / SIGTERM (local), or a requeue: the run recorded itself
                except BaseException:
                    state = _recorded_state(sweep, record)
                    # requeued: the claim stays open, resumed on restart
                    if state != states.REQUEUED:
                        journal.write(
                            "end",
                            task=record.index,
                            state=state,
                            seconds=round(time.time() - t0, 3),
                        )
                    raise
                seconds = time.time() - t0
                state = _recorded_state(sweep, record, ret)
                value = (
                    trials.tell(trial, run_dir)
                    if trials is not None and trial is not None
                    else None
                )
                journal.write(
                    "end",
                    task=record.index,
                    state=state,
                    seconds=round(seconds, 3),
                    **({"value": value} if value is not None else {}),
                )
                returns[record.index] = ret
                if state == states.INTERRUPTED:  # stopped by the scheduler, not requeued
                    stop_reason = "its run was stopped by the scheduler"
                    break
                durations.append(seconds)
        journal.write("stop", reason=stop_reason)
        log.info("worker %d stopped: %s (%d runs)", self.worker, stop_reason, len(returns))
        ret = JobReturn(overrides=[], status=JobStatus.COMPLETED)
        ret.return_value = returns
        return ret

    def _pool_number(self) -> int:
        digits = self.pool_id.removeprefix("pool")
        return int(digits) if digits.isdigit() else 0

    def _claim(
        self, where: Path, record: manifest.TaskRecord, how: str, mine: pool.WorkerView | None
    ) -> int | None:
        """Claim what _tasks offered: its takeover number (0: first claim); None if taken."""
        # this worker's own run, unless another took it over while this one was away
        if how == RESUME:
            assert mine is not None
            return (
                mine.running_takeover
                if pool.takeovers(where, record.index) <= mine.running_takeover
                else None
            )
        if how == TAKE_OVER:
            return pool.take_over(
                where, record.index, self.worker, self._seen_claim.pop(record.index, 0)
            )
        return 0 if pool.claim(where, record.index, self.worker) else None

    def _tasks(
        self,
        sweep: manifest.SweepManifest,
        where: Path,
        mine: pool.WorkerView | None,
        spec: study.StudySpec | None,
        quitting: Callable[[], bool],
    ) -> Iterator[tuple[manifest.TaskRecord, str]]:
        """The pool's tasks, and how to take each: the one this worker ran before a requeue
        first, then the unclaimed ones in order. An adaptive sweep's worker first takes over
        a trial another worker gave up (cancelled, preempted) or died running, and stays while
        other workers run trials, to take over theirs if need be; once every trial has ended
        it runs the re-runs of the best."""
        tasks = [t for t in sweep.tasks if t.pool == self.pool_id]
        if mine is not None and mine.running is not None:
            yield from ((t, RESUME) for t in tasks if t.index == mine.running)
        if spec is None:
            # cheap, before O_EXCL
            yield from ((t, CLAIM) for t in tasks if not pool.is_claimed(where, t.index))
            return
        trials = [t for t in tasks if t.role != study.BEST_ROLE]
        reruns = [t for t in tasks if t.role == study.BEST_ROLE]  # they need every trial's result
        wait_s = max(0.2, min(5.0, spec.heartbeat_s / 2))
        while not quitting():
            view = pool.read_pool(where)
            handed = self._handed_back(view, where, tasks, spec)
            if handed:
                yield from ((t, TAKE_OVER) for t in handed)
                continue
            offered = next((t for t in trials if not pool.is_claimed(where, t.index)), None)
            if offered is None and all(_settled(view, t) for t in trials):
                offered = next((t for t in reruns if not pool.is_claimed(where, t.index)), None)
            if offered is not None:
                yield offered, CLAIM
                continue
            if all(_settled(view, t) for t in tasks):
                return
            time.sleep(wait_s)

    def _handed_back(
        self,
        view: pool.PoolView,
        where: Path,
        tasks: list[manifest.TaskRecord],
        spec: study.StudySpec,
    ) -> list[manifest.TaskRecord]:
        """Tasks another worker claimed and will not finish: it stopped the run (cancelled,
        preempted) or stopped beating (killed, its node lost)."""
        found, now = [], time.time()
        for task in tasks:
            worker = view.claimed_by.get(task.index)
            if worker is None or worker == self.worker:
                continue
            end = view.ended.get(task.index)
            if end is not None and end.get("state") == states.INTERRUPTED:
                why = "stopped its run (cancelled or preempted)"
            elif end is None and study.is_stale(
                study.beat_path(where, worker), spec.heartbeat_s, now
            ):
                why = "stopped beating while it ran it"
            else:
                continue
            log.warning(
                "worker %d: worker %d %s: taking over task %d", self.worker, worker, why, task.index
            )
            self._seen_claim[task.index] = view.takeover.get(task.index, 0)
            found.append(task)
        return found

    def _payload(
        self,
        sweep: manifest.SweepManifest,
        record: manifest.TaskRecord,
        loaded: dict[str, SweepRuns],
    ) -> SweepRuns:
        name = record.payload or sweep.payload or ""
        if name not in loaded:
            folder = Path(sweep.sweep_dir) / ".submitit"
            loaded[name] = SweepRuns(load_payload(folder / name))
        return loaded[name]


def _start_trial(
    trials: study.Trials,
    record: manifest.TaskRecord,
    run_dir: Path,
    takeover: int,
    journal: pool.Journal,
) -> tuple[Any, list[str]] | None:
    """An adaptive sweep's claimed task: its trial (None for a best re-run) and overrides,
    journalled with the claim; None when there is nothing to run (recorded as failed)."""
    try:
        trial, overrides = trials.start(
            run_dir, record.role or study.TRIAL_ROLE, list(record.overrides)
        )
    except study.NoTrialCompleted as e:
        runfiles.write_metrics(
            run_dir,
            {"status": states.FAILED, "error_type": type(e).__name__, "error_message": str(e)},
        )
        journal.write("claim", task=record.index, takeover=takeover)
        journal.write("end", task=record.index, state=states.FAILED, seconds=0.0)
        return None
    journal.write(
        "claim",
        task=record.index,
        takeover=takeover,
        trial=trial.number if trial is not None else None,
        overrides=overrides,
    )
    log.info(
        "task %d: %s: %s",
        record.index,
        f"trial {trial.number}"
        if trial is not None
        else f"the best trial again, {record.overrides[-1]}",
        " ".join(overrides),
    )
    return trial, overrides


def _settled(view: pool.PoolView, task: manifest.TaskRecord) -> bool:
    """Whether an adaptive sweep's task ended for good (an interrupted one is handed out again)."""
    end = view.ended.get(task.index)
    return end is not None and end.get("state") != states.INTERRUPTED


@contextlib.contextmanager
def _terminate_flag(
    interrupt_run: Callable[[], bool] = lambda: False,
) -> Iterator[requeue.StopFlag]:
    """On Slurm, SIGTERM says the job ends (scancel, preemption) in KillWait seconds: the run
    under way may finish, but no new one starts. (submitit's own handler only logs it; a local
    worker's SIGTERM stops its run as Ctrl-C does, see hpcjobs/interrupts.py.) Where
    ``interrupt_run()`` (an adaptive sweep's run), the run stops at once instead, recorded as
    interrupted with its last epoch's checkpoint: another worker continues its trial now,
    rather than after the run was killed or finished here."""
    flag = requeue.StopFlag()
    if (
        os.environ.get("SUBMITIT_EXECUTOR") != "slurm"
        or threading.current_thread() is not threading.main_thread()
    ):
        yield flag
        return

    def note(signum: int, frame: Any) -> None:
        flag.signalled_at = flag.signalled_at or time.time()
        if interrupt_run():
            raise KeyboardInterrupt("SIGTERM from Slurm: the trial is handed to another worker")

    previous = signal.signal(signal.SIGTERM, note)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def _recorded_state(
    sweep: manifest.SweepManifest, record: manifest.TaskRecord, ret: JobReturn | None = None
) -> str:
    """How the run ended, as its metrics.json says (the job wrote it); else from Hydra's return."""
    try:
        status = (runfiles.read_metrics(sweep.run_dir(record)) or {}).get("status")
    except runfiles.CorruptRunFile:
        status = None
    if status in states.ENDED or status == states.REQUEUED:
        return str(status)
    if ret is not None and ret.status == JobStatus.COMPLETED:
        return states.COMPLETED
    return states.FAILED if ret is not None else states.INTERRUPTED
