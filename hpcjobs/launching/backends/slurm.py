"""Slurm array jobs through submitit: one ``sbatch --array`` per MaxArraySize tasks.

``submit`` returns as soon as every task is queued (detach); ``wait`` follows the
arrays with one ``sacct`` call per poll. The controller queries themselves (sacct,
squeue, scontrol) are in ``slurm_controller``.
"""

from __future__ import annotations

import math
import pickle
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hpcjobs import compat, states
from hpcjobs.errors import ConfigError, LauncherError
from hpcjobs.launching.backends import slurm_controller as controller
from hpcjobs.launching.backends.base import (
    Backend,
    Job,
    OnSubmitted,
    Poll,
    ReplaceDead,
    RunnerFactory,
    SubmissionError,
    TaskState,
    failed_return,
    log,
)
from hpcjobs.launching.polling import DEFAULT_CEILING_S, Backoff

if TYPE_CHECKING:  # imported where used: `status` loads no Hydra
    from hydra.core.utils import JobReturn

# Launcher keys that become sbatch options, with submitit's name for them.
SLURM_PARAMETERS = {
    "job_name": "job_name",
    "partition": "partition",
    "account": "account",
    "qos": "qos",
    "timeout_min": "time",
    "nodes": "nodes",
    "tasks_per_node": "ntasks_per_node",
    "cpus_per_task": "cpus_per_task",
    "gpus_per_node": "gpus_per_node",
    "gres": "gres",
    "mem_gb": "mem",
    "constraint": "constraint",
    "exclude": "exclude",
    "comment": "comment",
    "array_parallelism": "array_parallelism",
    "setup": "setup",
    "additional_parameters": "additional_parameters",
    "signal_grace_s": "signal_delay_s",  # sbatch --signal=USR2@N: the warning before the time limit
}
SIGNAL_MAY_COME_EARLY_S = 60  # measured on the dev cluster (../shared/slurm-notes.md)
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class SlurmBackend(Backend):
    name = "slurm"
    keeps_accounting = True
    job_keys = frozenset(SLURM_PARAMETERS)

    @classmethod
    def available(cls) -> bool:
        return controller.available()

    def check(self) -> None:
        """Config strings end up in the sbatch script: one may not smuggle in extra lines."""
        self.check_common()
        settings = self.settings
        for key, least in (("gpus_per_node", 0), ("mem_gb", 0)):
            value = getattr(settings, key)
            if value is not None and (float(value) < least or (key == "mem_gb" and value == 0)):
                raise ConfigError(
                    f"hydra.launcher.{key}={value}: must be {'> 0' if key == 'mem_gb' else '>= 0'}"
                    " (or null: the cluster's default)"
                )
        problems = []
        for key in (
            "job_name",
            "partition",
            "account",
            "qos",
            "gres",
            "constraint",
            "exclude",
            "comment",
        ):
            value = getattr(settings, key)
            if value is not None and _CONTROL_CHARS.search(str(value)):
                problems.append(
                    f"hydra.launcher.{key}={value!r}: contains a newline or control character"
                )
        for i, line in enumerate(settings.setup or []):
            if _CONTROL_CHARS.search(str(line).replace("\t", " ")):
                problems.append(
                    f"hydra.launcher.setup[{i}]={line!r}: one"
                    " shell line per list entry, no newlines"
                )
        for key, value in (settings.additional_parameters or {}).items():
            if _CONTROL_CHARS.search(f"{key}{value}") or not re.fullmatch(
                r"[A-Za-z][A-Za-z0-9_-]*", str(key)
            ):
                problems.append(
                    f"hydra.launcher.additional_parameters.{key}={value!r}:"
                    " not a valid sbatch option"
                )
        if problems:
            raise ConfigError(
                "Unsafe launcher settings; nothing was submitted:\n  " + "\n  ".join(problems)
            )

    def _executor(self, folder: str) -> Any:
        import submitit

        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
        params = {
            name: getattr(self.settings, key)
            for key, name in SLURM_PARAMETERS.items()
            if getattr(self.settings, key) is not None
        }
        # sbatch --mem takes whole units: 2.5 GB is 2560M (a bare 4.0 is refused)
        if "mem" in params:
            params["mem"] = f"{math.ceil(float(params['mem']) * 1024)}M"
        # Hydra hands lists and dicts over as ListConfig/DictConfig; submitit wants plain ones.
        # The tasks' environment is exported in the script too: sbatch --export=NONE sites.
        params["setup"] = list(params.get("setup", [])) + [
            f"export {key}={shlex.quote(value)}" for key, value in self.environment.items()
        ]
        params["additional_parameters"] = dict(params.get("additional_parameters", {}))
        # A rank that crashes (segfault, OOM kill) must end its job's step: srun otherwise
        # waits for the others (KillOnBadExit=0, WaitTime=0: Slurm's defaults), which block in
        # their next collective until its timeout (gloo's 30 minutes), holding every node.
        # The job then ends FAILED, and `retry` resumes it from its checkpoint.
        params["srun_args"] = ["--kill-on-bad-exit=1"]
        executor.update_parameters(**params)
        return executor

    def submit(
        self,
        tasks: Sequence[Job],
        make_runner: RunnerFactory,
        on_submitted: OnSubmitted,
        on_poll: Callable[[], None] | None = None,
        replace_dead: ReplaceDead | None = None,  # not watched: detached, and Slurm requeues
    ) -> dict[int, str]:
        executor = self._executor(self.folder)
        chunk = self.array_size()
        started = time.monotonic()
        job_ids: dict[int, str] = {}
        for start in range(0, len(tasks), chunk):
            part = tasks[start : start + chunk]
            try:
                with executor.batch():
                    jobs = [executor.submit(make_runner(t, None)) for t in part]
            except Exception as e:  # sbatch refused this array (a job limit, a QOS, the controller)
                reason = (str(e).strip().splitlines() or [type(e).__name__])[-1]
                queued = (
                    f"{len(job_ids)} of {len(tasks)} tasks were queued"
                    if job_ids
                    else "no task was queued"
                )
                raise SubmissionError(
                    f"Slurm refused an array of {len(part)} tasks: {reason}\n  {queued};"
                    " `python -m hpcjobs retry` submits the rest once the queue has room",
                    job_ids,
                ) from None
            accepted = {task.index: job.job_id for task, job in zip(part, jobs)}
            job_ids.update(accepted)
            on_submitted(accepted)
        arrays = controller.array_ids(job_ids.values())
        log.info(
            "submitted %d %s as %d Slurm array job(s) %s in %.2f s (MaxArraySize %d)",
            len(tasks),
            "workers" if self.settings.workers else "tasks",
            len(arrays),
            ",".join(arrays),
            time.monotonic() - started,
            chunk,
        )
        return job_ids

    def array_size(self) -> int:
        """Tasks per array: the cluster's MaxArraySize, or hydra.launcher.max_array_size if less."""
        cap = controller.max_array_size()
        asked = self.settings.max_array_size
        return max(1, min(cap, int(asked)) if asked else cap)

    def wait(self, tasks: Sequence[Job], job_ids: Mapping[int, str]) -> list[JobReturn]:
        """Follow the arrays with one sacct call per poll, backing off while nothing changes
        (hpcjobs/launching/polling.py); return each task's JobReturn."""
        backoff = Backoff(
            float(self.settings.poll_interval_s or 5.0),
            float(self.settings.poll_max_interval_s or DEFAULT_CEILING_S),
        )
        reported: set[int] = set()
        by_id: dict[str, TaskState] = {}
        while True:
            # a task the poll could not say (the controller restarting) keeps its last state
            by_id.update(self.poll(list(job_ids.values())).states)
            for task in tasks:
                state = by_id.get(job_ids[task.index])
                if state is None:
                    continue
                if state.state in states.ENDED and task.index not in reported:
                    reported.add(task.index)
                    log.info("[%d/%d] %s %s", len(reported), len(tasks), state.state, task.label)
            if len(reported) == len(tasks):
                break
            time.sleep(backoff.after(sorted((s.job_id, s.state) for s in by_id.values())))
        return [
            self._job_return(task, job_ids[task.index], by_id[job_ids[task.index]].scheduler_state)
            for task in tasks
        ]

    def _job_return(self, task: Job, job_id: str, scheduler_state: str) -> JobReturn:
        """Read a task's result pickle directly (never submitit's watcher, which can hang)."""
        from hydra.core.utils import JobReturn

        result = compat.submitit_result_pickle(self.folder, job_id)
        stderr = compat.submitit_log_paths(self.folder, job_id)[1]
        if result.exists():
            with open(result, "rb") as f:
                outcome, value = pickle.load(f)
            if outcome == "success" and isinstance(value, JobReturn):
                return value
            return failed_return(task, LauncherError(str(value).strip().splitlines()[-1]), stderr)
        return failed_return(
            task, LauncherError(f"Slurm state {scheduler_state}, no result"), stderr
        )

    def poll(self, job_ids: Sequence[str], accounting: bool = False) -> Poll:
        return controller.task_states(job_ids, accounting)

    def cancel(self, job_ids: Sequence[str]) -> None:
        controller.scancel(job_ids)

    def reachable(self) -> bool:
        return controller.ping()

    def warning_s(self) -> float:
        # Slurm checks time limits every 30 s and may send the warning up to a minute early.
        return float(self.settings.signal_grace_s or 0) + SIGNAL_MAY_COME_EARLY_S

    def describe(self, n_tasks: int) -> str:
        executor = self._executor(self.folder)
        chunk = self.array_size()
        executor.parameters["map_count"] = min(n_tasks, chunk)
        n_arrays = -(-n_tasks // chunk)
        return (
            f"sbatch script ({n_arrays} array job(s) of at most {chunk} tasks):\n"
            + compat.sbatch_script(executor)
        )
