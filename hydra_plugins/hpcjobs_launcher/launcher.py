"""The hpcjobs Hydra launcher: validate every configuration, write the manifest, submit.

Hydra's sweeper hands :meth:`HpcjobsLauncher.launch` a batch of override lists. The
launcher plans and validates all of them (nothing is submitted if any is invalid,
see hpcjobs/planning.py), writes ``sweep.json``, then hands the tasks to submitit:

- local: a sliding window of at most ``max_parallel`` processes, until all end;
- Slurm: one ``sbatch --array`` per MaxArraySize tasks, then return at once (detach),
  or, with ``wait=true``, follow the arrays with one ``sacct`` per poll.

What each task needs that is common to the sweep (Hydra's context, the task function,
the base config) is pickled once per sweep; each array task carries only its index and
overrides, and composes its own config where it runs via Hydra's ``run_job``, so a run
directory looks the same on a laptop and on a cluster.
"""

import logging
import os
import pickle
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hpcjobs import atomic
from hpcjobs.launching import manifest
from hpcjobs.config import planning
from hpcjobs.launching.backends import slurm_controller as slurm
from hpcjobs.run.context import CPUS_ENV
from hpcjobs.errors import ConfigError, LauncherError
from hpcjobs.config.planning import PlannedTask

log = logging.getLogger(__name__)

EXECUTORS = ("auto", "local", "slurm")
PAYLOAD_FILE = "sweep_payload.pkl"  # in the private submitit folder
# Launcher keys that become sbatch options, with submitit's name for them.
SLURM_PARAMETERS = {
    "job_name": "job_name", "partition": "partition", "account": "account", "qos": "qos",
    "timeout_min": "time", "nodes": "nodes", "tasks_per_node": "ntasks_per_node",
    "cpus_per_task": "cpus_per_task", "gpus_per_node": "gpus_per_node", "gres": "gres",
    "mem_gb": "mem", "constraint": "constraint", "exclude": "exclude", "comment": "comment",
    "array_parallelism": "array_parallelism", "setup": "setup",
    "additional_parameters": "additional_parameters",
}
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class SweepPayload:
    """What every task of a sweep shares; pickled once per sweep."""

    hydra_context: HydraContext
    task_function: TaskFunction
    base_config: DictConfig
    singleton_state: dict


@dataclass
class TaskRunner:
    """The callable submitit pickles for each task; runs on the worker (node or process)."""

    payload_path: str
    index: int
    overrides: tuple
    cpus_per_task: Any = None

    def __call__(self) -> JobReturn:
        with open(self.payload_path, "rb") as f:
            payload: SweepPayload = pickle.load(f)
        Singleton.set_state(payload.singleton_state)  # Hydra's ConfigStore & plugins, as at submission
        setup_globals()
        if self.cpus_per_task:
            os.environ[CPUS_ENV] = str(self.cpus_per_task)
        loader = payload.hydra_context.config_loader
        config = loader.load_sweep_config(payload.base_config, list(self.overrides))
        with open_dict(config):
            config.hydra.job.id = os.environ.get("SLURM_ARRAY_JOB_ID", "local") + f"_{self.index}"
            config.hydra.job.num = self.index
            config.hydra.sweep.dir = payload.base_config.hydra.sweep.dir
        return run_job(
            hydra_context=payload.hydra_context,
            task_function=payload.task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )


def resolve_executor(requested: str) -> str:
    """'auto' becomes 'slurm' where sbatch exists, else 'local'."""
    if requested not in EXECUTORS:
        raise ConfigError(f"hydra.launcher.executor={requested}: valid choices: {', '.join(EXECUTORS)}")
    if requested != "auto":
        return requested
    return "slurm" if slurm.available() else "local"


def check_sbatch_strings(params: dict) -> None:
    """Config strings end up in the sbatch script: one may not smuggle in extra lines."""
    problems = []
    for key in ("job_name", "partition", "account", "qos", "gres", "constraint", "exclude", "comment"):
        value = params.get(key)
        if value is not None and _CONTROL_CHARS.search(str(value)):
            problems.append(f"hydra.launcher.{key}={value!r}: contains a newline or control character")
    for i, line in enumerate(params.get("setup") or []):
        if _CONTROL_CHARS.search(str(line).replace("\t", " ")):
            problems.append(f"hydra.launcher.setup[{i}]={line!r}: one shell line per list entry, no newlines")
    for key, value in (params.get("additional_parameters") or {}).items():
        if _CONTROL_CHARS.search(f"{key}{value}") or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", str(key)):
            problems.append(f"hydra.launcher.additional_parameters.{key}={value!r}: not a valid sbatch option")
    if problems:
        raise ConfigError("Unsafe launcher settings; nothing was submitted:\n  " + "\n  ".join(problems))


def _private_dir(path: Path) -> Path:
    """Create a folder only its owner can enter: it will hold pickled payloads."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


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

    # ------------------------------------------------------------------ launch

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        executor = resolve_executor(self.params.get("executor", "auto"))
        if self.params.get("executor") == "auto":
            log.info("hpcjobs launcher: %s", "sbatch found: submitting to Slurm" if executor == "slurm" else
                     "no sbatch on PATH: running local processes")
        if executor == "slurm":
            check_sbatch_strings(self.params)
        # `${now:...}` in the sweep dir is resolved once, here, and pinned for every task.
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        with read_write(self.config.hydra.sweep), open_dict(self.config):
            self.config.hydra.sweep.dir = str(sweep_dir)
        tasks = planning.plan_tasks(self.hydra_context.config_loader, self.config, job_overrides, initial_job_idx)
        if not tasks:
            return []
        submitit_root = Path(str(self.params["submitit_folder"])).parent
        if self.params.get("dry_run"):
            self._log_dry_run(tasks, executor, sweep_dir, submitit_root)
            return []
        _private_dir(submitit_root)
        payload_path = submitit_root / PAYLOAD_FILE
        if not payload_path.exists():  # the same for every batch of a sweep
            import cloudpickle  # submitit's own serializer: handles OmegaConf's resolver closures

            payload = SweepPayload(self.hydra_context, self.task_function, self.config, Singleton.get_state())
            atomic.write_bytes(payload_path, cloudpickle.dumps(payload))
        sweep = self._write_manifest(tasks, executor, sweep_dir)
        if executor == "local":
            return self._run_local(tasks, str(payload_path))
        return self._submit_slurm(tasks, str(payload_path), sweep)

    def _write_manifest(self, tasks: Sequence[PlannedTask], executor: str, sweep_dir: Path) -> manifest.SweepManifest:
        assert self.config is not None
        records = [manifest.TaskRecord(t.index, list(t.overrides), t.run_subdir, t.config_hash) for t in tasks]
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

    # ------------------------------------------------------------------ local

    def _run_local(self, tasks: Sequence[PlannedTask], payload_path: str) -> list[JobReturn]:
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
        running: dict[Any, PlannedTask] = {}
        returns: dict[int, JobReturn] = {}
        failed = 0
        poll = float(self.params.get("poll_interval_s", 0.5))
        started = time.monotonic()
        width = len(str(len(tasks)))
        while waiting or running:
            while waiting and len(running) < max_parallel:
                task = waiting.popleft()
                runner = TaskRunner(payload_path, task.index, task.overrides, cpus_per_task)
                running[executor.submit(runner)] = task
            time.sleep(poll)
            for job in [j for j in running if j.done()]:
                task = running.pop(job)
                ret = _job_return(job, task)
                returns[task.index] = ret
                ok = _run_status(ret) == "completed"
                failed += not ok
                log.info("[%*d/%d] %s %s%s", width, len(returns), len(tasks),
                         "done  " if ok else "FAILED", task.label, _outcome(ret))
        log.info("%d tasks finished in %.1f s: %d completed, %d failed",
                 len(tasks), time.monotonic() - started, len(tasks) - failed, failed)
        return [returns[t.index] for t in tasks]

    # ------------------------------------------------------------------ Slurm

    def _slurm_executor(self, folder: str) -> Any:
        import submitit

        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
        params = {name: self.params[key] for key, name in SLURM_PARAMETERS.items() if self.params.get(key) is not None}
        # Hydra hands lists and dicts over as ListConfig/DictConfig; submitit wants plain ones.
        params["setup"] = list(params.get("setup", []))
        params["additional_parameters"] = dict(params.get("additional_parameters", {}))
        executor.update_parameters(**params)
        return executor

    def _submit_slurm(self, tasks: Sequence[PlannedTask], payload_path: str, sweep: manifest.SweepManifest
                      ) -> list[JobReturn]:
        folder = str(self.params["submitit_folder"])
        executor = self._slurm_executor(folder)
        chunk = max(1, slurm.max_array_size())
        started = time.monotonic()
        job_ids: dict[int, str] = {}
        for start in range(0, len(tasks), chunk):
            part = tasks[start:start + chunk]
            with executor.batch():
                jobs = [executor.submit(TaskRunner(payload_path, t.index, t.overrides, None)) for t in part]
            for task, job in zip(part, jobs):
                job_ids[task.index] = job.job_id
        arrays = slurm.array_ids(job_ids.values())
        for record in sweep.tasks:
            record.job_id = job_ids.get(record.index, record.job_id)
        manifest.write(sweep)
        log.info("submitted %d tasks as %d Slurm array job(s) %s in %.2f s (MaxArraySize %d)",
                 len(tasks), len(arrays), ",".join(arrays), time.monotonic() - started, chunk)
        if not self.params.get("wait"):
            return []
        return self._wait_slurm(tasks, job_ids, folder)

    def _wait_slurm(self, tasks: Sequence[PlannedTask], job_ids: dict[int, str], folder: str) -> list[JobReturn]:
        """Follow the arrays with one sacct call per poll; return each task's JobReturn."""
        from submitit.core.utils import JobPaths

        poll = float(self.params.get("poll_interval_s", 5.0) or 5.0)
        reported: set[int] = set()
        while True:
            states = slurm.task_states(list(job_ids.values())).states
            for task in tasks:
                state = states[job_ids[task.index]]
                if state.state in states.ENDED and task.index not in reported:
                    reported.add(task.index)
                    log.info("[%d/%d] %s %s", len(reported), len(tasks), state.state, task.label)
            if len(reported) == len(tasks):
                break
            time.sleep(poll)
        returns = []
        for task in tasks:
            paths = JobPaths(folder, job_id=job_ids[task.index], task_id=0)
            returns.append(_job_return_from_files(paths, task, states[job_ids[task.index]].slurm_state))
        return returns

    # ------------------------------------------------------------------ dry run

    def _log_dry_run(self, tasks: Sequence[PlannedTask], executor: str, sweep_dir: Path, submitit_root: Path) -> None:
        width = max(len(t.run_subdir) for t in tasks)
        lines = [f"dry run: {len(tasks)} tasks would run ({executor}); nothing was submitted",
                 f"{'run_dir':<{width}}  config_hash   overrides"]
        lines += [f"{t.run_subdir:<{width}}  {t.config_hash}  {' '.join(t.overrides)}" for t in tasks]
        if executor == "slurm":
            executor_obj = self._slurm_executor(str(submitit_root / "%j"))
            chunk = max(1, slurm.max_array_size())
            executor_obj.parameters["map_count"] = min(len(tasks), chunk)
            n_arrays = -(-len(tasks) // chunk)
            lines += [f"sbatch script ({n_arrays} array job(s) of at most {chunk} tasks):",
                      executor_obj._make_submission_file_text(executor_obj._submitit_command_str, "dry-run")]
        lines.append(f"sweep directory would be: {sweep_dir}")
        log.info("\n".join(lines))


def _job_return(job: Any, task: PlannedTask) -> JobReturn:
    """The task's JobReturn; a worker that died without one becomes a FAILED return."""
    try:
        ret = job.result()
        assert isinstance(ret, JobReturn)
        return ret
    except Exception as exc:  # the process crashed, was killed, or timed out
        return _failed_return(task, exc, job.paths.stderr)


def _job_return_from_files(paths: Any, task: PlannedTask, slurm_state: str) -> JobReturn:
    """Read a Slurm task's result pickle directly (never submitit's watcher, which can hang)."""
    if paths.result_pickle.exists():
        with open(paths.result_pickle, "rb") as f:
            outcome, value = pickle.load(f)
        if outcome == "success" and isinstance(value, JobReturn):
            return value
        return _failed_return(task, LauncherError(str(value).strip().splitlines()[-1]), paths.stderr)
    return _failed_return(task, LauncherError(f"Slurm state {slurm_state}, no result"), paths.stderr)


def _failed_return(task: PlannedTask, exc: BaseException, log_path: Any) -> JobReturn:
    message = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    failed = JobReturn(overrides=list(task.overrides), status=JobStatus.FAILED)
    failed.return_value = LauncherError(
        f"task {task.label} ended without a result ({type(exc).__name__}: {message}); its log: {log_path}"
    )
    return failed


def _run_status(ret: JobReturn) -> Any:
    value = ret._return_value  # the task function's dict; `.return_value` raises on failure
    return value.get("status") if isinstance(value, dict) else None


def _outcome(ret: JobReturn) -> str:
    """Why a task failed, for its progress line ('' when it completed)."""
    value = ret._return_value
    if isinstance(value, dict) and value.get("status") == "failed":
        return f": {value.get('error_type')}: {value.get('error_message')}"
    return f": {value}" if isinstance(value, BaseException) else ""

