"""A worker: one job (a Slurm array task, or a local process) that runs many of a sweep's tasks.

``hydra.launcher.workers=N`` submits N workers instead of one job per task. Each reads
the sweep's manifest once, then claims the pool's tasks one at a time (an exclusive link,
hpcjobs/sweepdir/pools.py) and runs each in-process, in its own run directory, exactly as a
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

from hpcjobs import heartbeat, processes, states
from hpcjobs.run import job, requeue, scheduler, study
from hpcjobs.run.context import ALLOCATION_STARTED_ENV, CPUS_ENV
from hpcjobs.run.task import SweepRuns, exit_as_submitit_expects, load_payload
from hpcjobs.sweepdir import manifest, payloads, pools, runfiles

log = logging.getLogger(__name__)

# Claim the next run only if the time left is this much more than the longest run so far.
FIT_MARGIN = 1.25
# How a worker takes a task (GridTasks.offers): its own run again after a requeue, an
# unclaimed one, or one from a worker that died (adaptive sweeps).
RESUME, CLAIM, TAKE_OVER = "resume", "claim", "take over"


def worker_job_id(worker: int) -> str:
    """This worker's id as its scheduler knows it (Slurm: ARRAYID_INDEX; else local_worker_<k>)."""
    return scheduler.job_id(f"local_worker_{worker}")


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

    def __call__(self) -> JobReturn:
        with exit_as_submitit_expects():
            return self._run()

    def _run(self) -> JobReturn:
        # The time limit counts from when the job's process started, imports included.
        started = processes.process_started_at(os.getpid()) or time.time()
        os.environ[ALLOCATION_STARTED_ENV] = str(started)  # its runs' time limit counts from here
        if self.cpus_per_task:
            os.environ[CPUS_ENV] = str(self.cpus_per_task)
        deadline = started + self.timeout_min * 60 - self.grace_s
        sweep = manifest.read(Path(self.sweep_dir))
        where = pools.pool_dir(sweep.sweep_dir, self.pool_id)
        journal = pools.Journal(where, self.worker)
        before = pools.read_pool(where)
        mine = before.workers.get(self.worker)
        journal.write(
            "start",
            worker=self.worker,
            job_id=worker_job_id(self.worker),
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_started=processes.process_start(os.getpid()),
        )
        durations = before.durations()
        loaded: dict[Path, SweepRuns] = {}
        returns: dict[int, JobReturn] = {}
        source = StudyTasks(self, sweep) if sweep.study else GridTasks(self)
        stop_reason = "no task left"
        in_run = False
        with (
            contextlib.closing(journal),
            requeue.stop_flag() as stop,
            _terminate_flag(lambda: in_run and source.hands_back_interrupted_runs) as terminating,
            source.heartbeat(where),
        ):

            def quitting() -> bool:
                return stop() or terminating() or time.time() > deadline

            for record, how in source.offers(sweep, where, mine, quitting):
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
                takeover = source.claim(where, record, how, mine)
                if takeover is None:
                    continue  # another worker has it
                run_dir = sweep.run_dir(record)
                if how == RESUME and not sweep.study:
                    finished = _finished_before(run_dir)
                    if finished is not None:  # the worker died (or was requeued) before its end
                        journal.write("end", task=record.index, state=finished)
                        continue
                run = source.start(record, run_dir, takeover, journal)
                if run is None:
                    continue
                t0 = time.time()
                payload = self._payload(sweep, record, loaded)
                try:
                    in_run = True
                    with source.observing(run):
                        ret = payload.run(record.index, run.overrides, run_dir)
                    in_run = False
                except (
                    BaseException
                ):  # Ctrl-C / SIGTERM (local), or a requeue: the run recorded itself
                    state = _recorded_state(sweep, record)
                    if (
                        state != states.REQUEUED
                    ):  # requeued: the claim stays open, resumed on restart
                        journal.write(
                            "end",
                            task=record.index,
                            state=state,
                            seconds=round(time.time() - t0, 3),
                        )
                    raise
                seconds = time.time() - t0
                # how the run itself recorded its end, else read back from its metrics.json
                state = _ended_as(payload.last_status) or _recorded_state(sweep, record, ret)
                journal.write(
                    "end",
                    task=record.index,
                    state=state,
                    seconds=round(seconds, 3),
                    **source.outcome(run, run_dir),
                )
                returns[record.index] = _result_only(ret)
                if state == states.INTERRUPTED:  # stopped by the scheduler, not requeued
                    stop_reason = "its run was stopped by the scheduler"
                    break
                durations.append(seconds)
        journal.write("stop", reason=stop_reason)
        journal.close()
        log.info("worker %d stopped: %s (%d runs)", self.worker, stop_reason, len(returns))
        ret = JobReturn(overrides=[], status=JobStatus.COMPLETED)
        ret.return_value = returns
        return ret

    def _pool_number(self) -> int:
        digits = self.pool_id.removeprefix("pool")
        return int(digits) if digits.isdigit() else 0

    def _payload(
        self,
        sweep: manifest.SweepManifest,
        record: manifest.TaskRecord,
        loaded: dict[Path, SweepRuns],
    ) -> SweepRuns:
        key = Path(record.payload or sweep.payload or "")  # found once per payload: a few stats
        if key not in loaded:
            loaded[key] = SweepRuns(
                load_payload(payloads.find(sweep, record)),
                compact=sweep.launcher.get("run_files") == "compact",
            )
        return loaded[key]


@dataclass
class Run:
    """A claimed task as the worker runs it: its overrides, and its trial in an adaptive sweep."""

    overrides: list[str]
    trial: Any = None  # an Optuna trial (None: a grid task, or a re-run of the best trial)


class GridTasks:
    """Where a grid sweep's worker takes its runs from: the pool's tasks, in order, each claimed
    once by whichever worker gets there first, and run with the overrides it was planned with.

    One subclass per kind of sweep, as submitit's InfoWatcher has one per backend: the worker's
    loop (WorkerRunner) is the same for every kind.
    """

    # Whether SIGTERM (scancel, preemption) stops a run at once, for another worker to take
    # over; a grid worker lets it finish instead, and starts no new one.
    hands_back_interrupted_runs = False

    def __init__(self, runner: WorkerRunner) -> None:
        self.pool_id, self.worker = runner.pool_id, runner.worker

    def heartbeat(self, where: Path) -> contextlib.AbstractContextManager[Any]:
        """While the worker runs: nothing (only a study's workers take over from a silent one)."""
        return contextlib.nullcontext()

    def offers(
        self,
        sweep: manifest.SweepManifest,
        where: Path,
        mine: pools.WorkerView | None,
        quitting: Callable[[], bool],
    ) -> Iterator[tuple[manifest.TaskRecord, str]]:
        """The pool's tasks, and how to take each: the one this worker ran before a requeue
        first, then the others, in :meth:`more`'s order."""
        tasks = [t for t in sweep.tasks if t.pool == self.pool_id]
        if mine is not None and mine.running is not None:
            yield from ((t, RESUME) for t in tasks if t.index == mine.running)
        yield from self.more(tasks, where, quitting)

    def more(
        self, tasks: list[manifest.TaskRecord], where: Path, quitting: Callable[[], bool]
    ) -> Iterator[tuple[manifest.TaskRecord, str]]:
        """The unclaimed ones, in order."""
        # cheap, before the exclusive claim
        yield from ((t, CLAIM) for t in tasks if not pools.is_claimed(where, t.index))

    def claim(
        self, where: Path, record: manifest.TaskRecord, how: str, mine: pools.WorkerView | None
    ) -> int | None:
        """Claim what offers() offered: its takeover number (0: first claim); None if taken."""
        if (
            how == RESUME
        ):  # this worker's own run, unless another took it over while this one was away
            assert mine is not None
            return (
                mine.running_takeover
                if pools.takeovers(where, record.index) <= mine.running_takeover
                else None
            )
        return 0 if pools.claim(where, record.index, self.worker) else None

    def start(
        self, record: manifest.TaskRecord, run_dir: Path, takeover: int, journal: pools.Journal
    ) -> Run | None:
        """The claimed task's run, journalled with the claim; None when there is nothing to run."""
        journal.write("claim", task=record.index, takeover=takeover)
        return Run(list(record.overrides))

    def observing(self, run: Run) -> contextlib.AbstractContextManager[Any]:
        """Around the run: what watches its epochs (nothing, in a grid)."""
        return contextlib.nullcontext()

    def outcome(self, run: Run, run_dir: Path) -> dict[str, Any]:
        """What the journal's end event says besides the state and the time ({}: nothing)."""
        return {}


class StudyTasks(GridTasks):
    """Where an adaptive sweep's worker takes its runs from: each task asks the study for its
    trial's values when it starts. The worker first takes over a trial another worker gave up
    (cancelled, preempted) or died running, and stays while other workers run trials, to take
    over theirs if need be; once every trial has ended it runs the re-runs of the best."""

    hands_back_interrupted_runs = True

    def __init__(self, runner: WorkerRunner, sweep: manifest.SweepManifest) -> None:
        super().__init__(runner)
        self.spec = study.StudySpec.from_dict(sweep.study or {})
        self.trials = study.Trials(
            sweep.sweep_dir,
            self.spec,
            study.worker_seed(self.spec, runner._pool_number(), runner.worker),
        )
        self._seen_claim: dict[
            int, int
        ] = {}  # task -> the takeover number of the dead worker's claim

    def heartbeat(self, where: Path) -> contextlib.AbstractContextManager[Any]:
        return heartbeat.heartbeat(study.beat_path(where, self.worker), self.spec.heartbeat_s)

    def more(
        self, tasks: list[manifest.TaskRecord], where: Path, quitting: Callable[[], bool]
    ) -> Iterator[tuple[manifest.TaskRecord, str]]:
        trials = [t for t in tasks if t.role != study.BEST_ROLE]
        reruns = [t for t in tasks if t.role == study.BEST_ROLE]  # they need every trial's result
        wait_s = max(0.2, min(5.0, self.spec.heartbeat_s / 2))
        while not quitting():
            view = pools.read_pool(where)
            handed = self._handed_back(view, where, tasks)
            if handed:
                yield from ((t, TAKE_OVER) for t in handed)
                continue
            offered = next((t for t in trials if not pools.is_claimed(where, t.index)), None)
            if offered is None and all(_settled(view, t) for t in trials):
                offered = next((t for t in reruns if not pools.is_claimed(where, t.index)), None)
            if offered is not None:
                yield offered, CLAIM
                continue
            if all(_settled(view, t) for t in tasks):
                return
            time.sleep(wait_s)

    def claim(
        self, where: Path, record: manifest.TaskRecord, how: str, mine: pools.WorkerView | None
    ) -> int | None:
        if how == TAKE_OVER:
            return pools.take_over(
                where, record.index, self.worker, self._seen_claim.pop(record.index, 0)
            )
        return super().claim(where, record, how, mine)

    def _handed_back(
        self, view: pools.PoolView, where: Path, tasks: list[manifest.TaskRecord]
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
            elif end is None and heartbeat.is_stale(
                study.beat_path(where, worker), self.spec.heartbeat_s, now
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

    def start(
        self, record: manifest.TaskRecord, run_dir: Path, takeover: int, journal: pools.Journal
    ) -> Run | None:
        """Its trial (None for a best re-run) and overrides, journalled with the claim; None when
        there is nothing to run (recorded as failed)."""
        try:
            trial, overrides = self.trials.start(
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
        return Run(overrides, trial)

    def observing(self, run: Run) -> contextlib.AbstractContextManager[Any]:
        """Each epoch's row goes to the trial (its pruner may stop the run)."""
        if run.trial is None:
            return contextlib.nullcontext()
        return job.observing_epochs(self.trials.observer(run.trial))

    def outcome(self, run: Run, run_dir: Path) -> dict[str, Any]:
        """The value the trial was told (none for a re-run of the best, or a run without one)."""
        value = self.trials.tell(run.trial, run_dir) if run.trial is not None else None
        return {"value": value} if value is not None else {}


def _settled(view: pools.PoolView, task: manifest.TaskRecord) -> bool:
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
    if not scheduler.on_slurm() or threading.current_thread() is not threading.main_thread():
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


def _result_only(ret: JobReturn) -> JobReturn:
    """What a worker keeps of a run until it stops, and hands back (pickled by submitit): its
    result and status, not its configs, which nothing on the launcher's side reads (Hydra reads
    return values) and which would be kept, thousands of them, for the worker's life."""
    ret.cfg = ret.hydra_cfg = None
    return ret


def _ended_as(status: str | None) -> str | None:
    """A run's recorded status as the journal's end event says it; None: not an end."""
    return status if status in states.ENDED or status == states.REQUEUED else None


def _finished_before(run_dir: Path) -> str | None:
    """The state of a run that its metrics.json says finished (completed, pruned), else None.

    A run resumed by its worker started again may have finished before the worker journalled
    its end: it is not run again. hpcjobs' workloads would return their record anyway; any other
    Hydra app's task function would run afresh (Hydra's semantics) over its completed record.
    (An adaptive sweep's trial goes on through the study, which is told its value.)"""
    try:
        status = (runfiles.read_metrics(run_dir) or {}).get("status")
    except runfiles.CorruptRunFile:
        return None
    return str(status) if status in states.FINISHED else None


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
