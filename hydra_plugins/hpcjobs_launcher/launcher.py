"""The hpcjobs Hydra launcher: validate every configuration, write the manifest, run.

Hydra's sweeper hands :meth:`HpcjobsLauncher.launch` a batch of override lists. The
launcher composes each configuration, validates all of them (nothing is submitted if
any is invalid), writes ``sweep.json`` and hands the tasks to a submitit executor. Each
task, wherever it runs, calls Hydra's ``run_job`` with the app's task function, so a
run directory looks the same on a laptop and on a cluster.
"""


import hashlib
import logging
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from hpcjobs import manifest, schema
from hpcjobs.context import CPUS_ENV
from hpcjobs.errors import ConfigError, LauncherError

log = logging.getLogger(__name__)

EXECUTORS = ("auto", "local", "slurm")


@dataclass
class Task:
    """One configuration of the sweep, ready to submit."""

    index: int
    overrides: list[str]
    config: DictConfig  # the full composed config, hydra node included
    run_dir: Path

    @property
    def label(self) -> str:
        return f"#{self.index} " + (" ".join(filter_overrides(self.overrides)) or "(no overrides)")


@dataclass
class TaskRunner:
    """The callable submitit pickles for each task; runs on the worker (node or process)."""

    hydra_context: HydraContext
    task_function: TaskFunction
    config: DictConfig
    singleton_state: dict[Any, Any]
    cpus_per_task: int | None

    def __call__(self) -> JobReturn:
        Singleton.set_state(self.singleton_state)  # Hydra's ConfigStore & plugins, as at submission
        setup_globals()
        if self.cpus_per_task:
            os.environ[CPUS_ENV] = str(self.cpus_per_task)
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=self.config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )


def resolve_executor(requested: str) -> str:
    """'auto' becomes 'slurm' where sbatch exists, else 'local'."""
    if requested not in EXECUTORS:
        raise ConfigError(f"hydra.launcher.executor={requested}: valid choices: {', '.join(EXECUTORS)}")
    if requested != "auto":
        return requested
    return "slurm" if shutil.which("sbatch") else "local"


def config_hash(run_config: DictConfig) -> str:
    text = OmegaConf.to_yaml(run_config, resolve=True, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _without_hydra(config: DictConfig) -> DictConfig:
    run_config = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    assert isinstance(run_config, DictConfig)
    return run_config


class HpcjobsLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        self.params = params
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    # ------------------------------------------------------------------ planning

    def _compose(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Task]:
        assert self.config is not None and self.hydra_context is not None
        # Resolve the sweep directory once, here: `${now:...}` must not be re-evaluated on a node.
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        tasks = []
        for offset, overrides in enumerate(job_overrides):
            index = initial_job_idx + offset
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = str(index)
                config.hydra.job.num = index
                config.hydra.sweep.dir = str(sweep_dir)
                config.hydra.sweep.subdir = str(config.hydra.sweep.subdir)
            tasks.append(Task(index, list(overrides), config, sweep_dir / config.hydra.sweep.subdir))
        return tasks

    @staticmethod
    def _validate(tasks: Sequence[Task]) -> None:
        """Raise one ConfigError for the whole sweep, each distinct problem listed once."""
        problems: dict[str, list[Task]] = {}
        for task in tasks:
            for error in schema.config_errors(_without_hydra(task.config)):
                problems.setdefault(error, []).append(task)
        if not problems:
            return
        lines = []
        for error, where in problems.items():
            scope = "every configuration" if len(where) == len(tasks) else f"{len(where)} of {len(tasks)}"
            lines.append(f"  {error}\n      in {scope}, e.g. {where[0].label}")
        raise ConfigError(
            f"Invalid configuration; nothing was submitted ({len(tasks)} configurations checked):\n"
            + "\n".join(lines)
        )

    def _write_manifest(self, tasks: Sequence[Task], executor: str) -> manifest.SweepManifest:
        assert self.config is not None
        sweep_dir = Path(str(tasks[0].config.hydra.sweep.dir))
        records = [
            manifest.TaskRecord(
                index=t.index,
                overrides=t.overrides,
                run_dir=str(t.run_dir.relative_to(sweep_dir)),
                config_hash=config_hash(_without_hydra(t.config)),
            )
            for t in tasks
        ]
        if manifest.exists(sweep_dir):  # a later batch of the same sweep
            sweep = manifest.read(sweep_dir)
            known = {t.index for t in records}
            sweep.tasks = [t for t in sweep.tasks if t.index not in known] + records
        else:
            sweep = manifest.SweepManifest(
                experiment=str(self.config.get("experiment_name", "default")),
                sweep_dir=str(sweep_dir),
                executor=executor,
                git_commit=manifest.git_commit(),
                launcher=OmegaConf.to_container(self.config.hydra.launcher, resolve=True),  # type: ignore[arg-type]
                tasks=records,
            )
        manifest.write(sweep)
        manifest.record(sweep_dir)
        return sweep

    # ------------------------------------------------------------------ launching

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        setup_globals()
        executor = resolve_executor(self.params.get("executor", "auto"))
        if self.params.get("executor") == "auto":
            log.info("hpcjobs launcher: %s", "sbatch found: Slurm" if executor == "slurm" else
                     "no sbatch on PATH: local processes (hydra/launcher=hpcjobs_slurm to insist)")
        tasks = self._compose(job_overrides, initial_job_idx)
        if not tasks:
            return []
        self._validate(tasks)
        if self.params.get("dry_run"):
            for task in tasks:
                log.info("dry run: %s -> %s", task.label, task.run_dir)
            log.info("dry run: %d tasks, nothing submitted", len(tasks))
            return []
        self._write_manifest(tasks, executor)
        if executor == "local":
            return self._run_local(tasks)
        raise LauncherError("the Slurm executor is not available in this version; use hydra/launcher=hpcjobs_local")

    def _runner(self, task: Task, cpus_per_task: int | None) -> TaskRunner:
        assert self.hydra_context is not None and self.task_function is not None
        return TaskRunner(self.hydra_context, self.task_function, task.config, Singleton.get_state(), cpus_per_task)

    def _run_local(self, tasks: Sequence[Task]) -> list[JobReturn]:
        import submitit

        cores = os.cpu_count() or 1
        max_parallel = self.params.get("max_parallel") or cores
        cpus_per_task = self.params.get("cpus_per_task") or max(1, cores // max_parallel)
        folder = str(self.params["submitit_folder"])
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=self.params.get("timeout_min", 60))
        log.info("running %d tasks locally, %d at a time, %d CPU thread(s) each (logs: %s)",
                 len(tasks), max_parallel, cpus_per_task, Path(folder).parent)

        waiting = deque(tasks)
        running: dict[Any, Task] = {}
        returns: dict[int, JobReturn] = {}
        failed = 0
        poll = float(self.params.get("poll_interval_s", 0.5))
        started = time.monotonic()
        while waiting or running:
            while waiting and len(running) < max_parallel:
                task = waiting.popleft()
                running[executor.submit(self._runner(task, cpus_per_task))] = task
            time.sleep(poll)
            for submitted in [j for j in running if j.done()]:
                task = running.pop(submitted)
                ret = self._job_return(submitted, task)
                returns[task.index] = ret
                ok = ret.status == JobStatus.COMPLETED and _run_status(ret) == "completed"
                failed += not ok
                log.info("[%*d/%d] %s %s%s", len(str(len(tasks))), len(returns), len(tasks),
                         "done  " if ok else "FAILED", task.label, _outcome(ret))
        log.info("%d tasks finished in %.1f s: %d completed, %d failed",
                 len(tasks), time.monotonic() - started, len(tasks) - failed, failed)
        return [returns[t.index] for t in tasks]

    @staticmethod
    def _job_return(submitted: Any, task: Task) -> JobReturn:
        """The task's JobReturn; a worker that died without one becomes a FAILED return."""
        try:
            ret = submitted.result()
            assert isinstance(ret, JobReturn)
            return ret
        except Exception as exc:  # the process crashed, was killed, or timed out
            failed = JobReturn(overrides=task.overrides, status=JobStatus.FAILED)
            failed.return_value = LauncherError(
                f"task {task.label} ended without a result ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}); "
                f"its log is in {submitted.paths.stderr}"
            )
            return failed


def _run_status(ret: JobReturn) -> str | None:
    value = ret._return_value  # the task function's dict; `.return_value` raises on failure
    return value.get("status") if isinstance(value, dict) else None


def _outcome(ret: JobReturn) -> str:
    value = ret._return_value
    if isinstance(value, dict):
        if value.get("status") == "failed":
            return f": {value.get('error_type')}: {value.get('error_message')}"
        metric = next((k for k in ("test_accuracy", "score") if k in value), None)
        return f": {metric}={value[metric]:.4g}" if metric else ""
    return f": {value}" if isinstance(value, BaseException) else ""
