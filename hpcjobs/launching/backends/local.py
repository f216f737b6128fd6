"""Local processes (submitit's LocalExecutor): a sliding window of ``max_parallel`` runs.

``submit`` blocks until every task has ended, printing a line per finished task. Local
tasks have no job id to follow later: their run directories are their state.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn

from hpcjobs.config.planning import PlannedTask
from hpcjobs.launching.backends.base import (Backend, Poll, RunnerFactory, failed_return, failure_reason, log,
                                             log_task_end)


class LocalBackend(Backend):
    name = "local"
    blocking = True

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        self._returns: dict[int, JobReturn] = {}

    def submit(self, tasks: Sequence[PlannedTask], make_runner: RunnerFactory) -> dict[int, str]:
        import submitit

        cores = os.cpu_count() or 1
        # One run per core by default, so runs don't fight over cores; each gets its share.
        max_parallel = self.params.get("max_parallel") or cores
        cpus_per_task = self.params.get("cpus_per_task") or max(1, cores // max_parallel)
        executor = submitit.LocalExecutor(folder=self.folder)
        executor.update_parameters(timeout_min=self.params.get("timeout_min", 60))
        log.info("running %d tasks locally, %d at a time, %d CPU thread(s) each (logs: %s)",
                 len(tasks), max_parallel, cpus_per_task, Path(self.folder).parent)

        waiting = deque(tasks)
        running: dict[Any, PlannedTask] = {}
        failed = 0
        poll = float(self.params.get("poll_interval_s", 0.5))
        started = time.monotonic()
        while waiting or running:
            while waiting and len(running) < max_parallel:
                task = waiting.popleft()
                running[executor.submit(make_runner(task, cpus_per_task))] = task
            time.sleep(poll)
            for job in [j for j in running if j.done()]:
                task = running.pop(job)
                ret = _job_return(job, task)
                self._returns[task.index] = ret
                reason = failure_reason(ret)
                failed += reason is not None
                log_task_end(len(self._returns), len(tasks), task, reason)
        log.info("%d tasks finished in %.1f s: %d completed, %d failed",
                 len(tasks), time.monotonic() - started, len(tasks) - failed, failed)
        return {}

    def wait(self, tasks: Sequence[PlannedTask], job_ids: Mapping[int, str]) -> list[JobReturn]:
        return [self._returns[t.index] for t in tasks]  # submit() has run them all

    def poll(self, job_ids: Sequence[str]) -> Poll:
        return Poll({}, [])  # nothing to ask: the run directories say how each run stands

    def log_paths(self, job_id: str) -> tuple[Path, Path] | None:
        return None


def _job_return(job: Any, task: PlannedTask) -> JobReturn:
    """The task's JobReturn; a process that died without one becomes a FAILED return."""
    try:
        ret = job.result()
        assert isinstance(ret, JobReturn)
        return ret
    except Exception as exc:  # the process crashed, was killed, or timed out
        return failed_return(task, exc, job.paths.stderr)
