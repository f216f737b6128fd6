"""Local processes (submitit's LocalExecutor): workers by default, else one process per run.

A local sweep runs on workers unless told otherwise (:func:`default_workers`): a few
processes that import torch and compose the configs once and pull the runs one after
another (hpcjobs/run/worker.py), instead of a fresh process per run, whose start-up
(~3 s: Python, torch, Hydra) costs more than a short run itself. ``hydra.launcher.workers=0``
(and a distributed run) gets one process per run, a sliding window of ``max_parallel``.

``submit`` blocks until every task has ended, printing a line per finished task; a worker
that dies while it runs a run is replaced where the caller says so (``replace_dead``).
Local tasks have no job id to follow later: their run directories are their state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcjobs.interrupts import sigterm_as_keyboard_interrupt
from hpcjobs.launching.backends.base import (
    Backend,
    Job,
    OnSubmitted,
    Poll,
    ReplaceDead,
    RunnerFactory,
    failed_return,
    failure_reason,
    log,
    log_task_end,
)
from hpcjobs.launching.settings import LauncherSettings
from hpcjobs.launching.snapshot import exported

if TYPE_CHECKING:  # imported where used: `status` loads no Hydra
    from hydra.core.utils import JobReturn

LOCAL_SIGNAL_DELAY_S = 30  # submitit.LocalExecutor's default signal_delay_s


def default_workers(settings: LauncherSettings, cores: int) -> int:
    """``hydra.launcher.workers`` of a local sweep that leaves it unset (null).

    0 (one process per run) for a run that must have its process to itself: a distributed
    run (``tasks_per_node`` or ``nodes`` > 1), whose ranks are processes of their own.
    Else one worker per run that may run at once: ``max_parallel`` where given, else as many
    as the cores allow for the runs' ``cpus_per_task`` (cores // cpus_per_task; one run per
    core when that is unset too), at least one.
    """
    if int(settings.tasks_per_node or 1) > 1 or int(settings.nodes or 1) > 1:
        return 0
    if settings.max_parallel:
        return int(settings.max_parallel)
    return max(1, cores // int(settings.cpus_per_task or 1))


class LocalBackend(Backend):
    name = "local"
    blocking = True
    job_keys = frozenset({"cpus_per_task", "tasks_per_node", "timeout_min"})

    def __init__(
        self,
        settings: LauncherSettings | Mapping[str, Any],
        environment: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(settings, environment)
        # Unset workers: the local default (a study's launcher always sets them).
        self.workers_defaulted = self.settings.workers is None
        if self.workers_defaulted:
            self.settings = dataclasses.replace(
                self.settings, workers=default_workers(self.settings, os.cpu_count() or 1)
            )
        self._returns: dict[int, JobReturn] = {}

    def worker_timeout_min(self, n_tasks: int) -> float:
        """Default workers budget timeout_min per run: a worker may run every task of its pool
        (nothing queues here by time limit), and none is left unclaimed for want of time. The
        limit is the worker's: a run that hangs holds its worker until then (Ctrl-C stops it)."""
        timeout = float(self.settings.timeout_min or 60)
        return timeout * max(1, n_tasks) if self.workers_defaulted else timeout

    def submit(
        self,
        tasks: Sequence[Job],
        make_runner: RunnerFactory,
        on_submitted: OnSubmitted,
        on_poll: Callable[[], None] | None = None,
        replace_dead: ReplaceDead | None = None,
    ) -> dict[int, str]:
        import submitit

        on_submitted({t.index: None for t in tasks})  # all of them, run by this process

        cores = os.cpu_count() or 1
        # One run per core by default, so runs don't fight over cores; each gets its share.
        # Workers (hydra.launcher.workers) all run at once: they are the parallelism.
        settings = self.settings
        max_parallel = len(tasks) if settings.workers else settings.max_parallel or cores
        # A distributed run (tasks_per_node > 1) is that many processes, torch.distributed ranks.
        ranks = int(settings.tasks_per_node or 1)
        cpus_per_task = settings.cpus_per_task or max(1, cores // (max_parallel * ranks))
        executor = submitit.LocalExecutor(folder=self.folder)
        executor.update_parameters(timeout_min=settings.timeout_min, tasks_per_node=ranks)
        what = f"{len(tasks)} workers" if settings.workers else f"{len(tasks)} tasks"
        log.info(
            "running %s locally, %d at a time, %s%d CPU thread(s) each (logs: %s)",
            what,
            max_parallel,
            f"{ranks} ranks of " if ranks > 1 else "",
            cpus_per_task,
            Path(self.folder).parent,
        )

        waiting = deque(tasks)
        running: dict[Any, Job] = {}
        failed = 0
        poll = float(settings.poll_interval_s)
        started = time.monotonic()
        # kill or a closing terminal stops the sweep as Ctrl-C does; tasks inherit self.environment
        with sigterm_as_keyboard_interrupt(), exported(self.environment):
            try:
                while waiting or running:
                    while waiting and len(running) < max_parallel:
                        task = waiting.popleft()
                        running[executor.submit(make_runner(task, cpus_per_task))] = task
                    time.sleep(poll)
                    if on_poll:
                        on_poll()
                    for job in [j for j in running if j.done()]:
                        task = running.pop(job)
                        ret = _job_return(job, task)
                        reason = failure_reason(ret)
                        if reason is not None and replace_dead and replace_dead(task, reason):
                            waiting.appendleft(task)  # its replacement, started at once
                            continue
                        self._returns[task.index] = ret
                        failed += reason is not None
                        if not settings.workers:  # workers' runs are reported by on_poll
                            log_task_end(len(self._returns), len(tasks), task, reason)
            except KeyboardInterrupt:
                _stop(list(running))  # no run outlives its launcher
                log.warning(
                    "interrupted: %d run(s) stopped, %d not started;"
                    " `python -m hpcjobs retry` finishes the sweep",
                    len(running),
                    len(waiting),
                )
                raise
        if on_poll:
            on_poll()
        if settings.workers:
            log.info("%s finished in %.1f s", what, time.monotonic() - started)
        else:
            log.info(
                "%s finished in %.1f s: %d completed, %d failed",
                what,
                time.monotonic() - started,
                len(tasks) - failed,
                failed,
            )
        return {}

    def wait(self, tasks: Sequence[Job], job_ids: Mapping[int, str]) -> list[JobReturn]:
        return [self._returns[t.index] for t in tasks]  # submit() has run them all

    def poll(self, job_ids: Sequence[str], accounting: bool = False) -> Poll:
        return Poll({}, [])  # nothing to ask: the run directories say how each run stands

    def log_paths(self, job_id: str) -> tuple[Path, Path] | None:
        return None

    def warning_s(self) -> float:
        # submitit's local controller signals signal_delay_s (30 s) before the time limit;
        # with a limit under 30 s it never signals.
        return (
            LOCAL_SIGNAL_DELAY_S
            if float(self.settings.timeout_min or 60) * 60 > LOCAL_SIGNAL_DELAY_S
            else 0.0
        )


def _stop(jobs: list[Any], grace_s: float = 10.0) -> None:
    """Stop running local jobs: SIGTERM, which each job's controller passes to its run (the run
    records itself interrupted), then, for what still runs after ``grace_s``, SIGKILL to the
    run and its controller (a killed controller would leave its run behind)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for job in jobs:
            if not job.done():
                controller = int(job.job_id)  # a local job's id is its controller's pid
                for pid in (_children(controller) if sig == signal.SIGKILL else []) + [controller]:
                    with contextlib.suppress(OSError):
                        os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while any(not job.done() for job in jobs) and time.monotonic() < deadline:
            time.sleep(0.1)
        if all(job.done() for job in jobs):
            return


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


class ProcessDied(Exception):
    """A local job's process ended without a result: killed, or crashed."""


def _job_return(job: Any, task: Job) -> JobReturn:
    """The task's JobReturn; a process that died without one becomes a FAILED return."""
    from hydra.core.utils import JobReturn

    if not job.paths.result_pickle.exists():  # its controller has exited: none will come
        # (submitit's results() would wait 15 s for it)
        died = ProcessDied("killed (the OOM killer, `kill -9`) or crashed (a segfault)")
        return failed_return(task, died, job.paths.stderr)
    try:
        ret = job.results()[0]  # rank 0's (a distributed run has one result per rank)
        assert isinstance(ret, JobReturn)
        return ret
    except Exception as exc:  # the process crashed, was killed, or timed out
        return failed_return(task, exc, job.paths.stderr)
