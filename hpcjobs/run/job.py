"""What runs inside one task: the environment, the call, and the record in the run directory.

This is the only runtime module that knows about Slurm/submitit environment variables.
:func:`record_run` runs a call in a run directory and records its outcome there —
``status: completed`` with its metrics, or ``status: failed`` with the exception — so
that one failed configuration never takes the sweep down with it. hpcjobs' own app
calls the workload named by ``cfg.workload._target_`` through :func:`run_task`; any
other Hydra app's task function is wrapped by :func:`recorded`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import numbers
import os
import random
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra.utils
from hydra.core.hydra_config import HydraConfig
from hydra.types import TaskFunction
from omegaconf import DictConfig

from hpcjobs import states
from hpcjobs.run import runfiles
from hpcjobs.config import schema
from hpcjobs.run.context import CPUS_ENV, RunContext

log = logging.getLogger(__name__)

TRACEBACK_LINES = 30

# Slurm's ids, recorded so a run can be matched with sacct/squeue and its log files.
_SLURM_IDS = {
    "slurm_job_id": "SLURM_JOB_ID",
    "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
    "slurm_array_task_id": "SLURM_ARRAY_TASK_ID",
    "slurm_node": "SLURMD_NODENAME",
}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def scheduler_job_id(index: int) -> str:
    """This task's id as its scheduler knows it (what ``hydra.job.id`` is set to).

    Slurm: ``ARRAYID_TASKID`` for an array task (as sweep.json and sacct name it), the job
    id for a plain job (a sweep of one task). Elsewhere: ``local_<task index>``.
    """
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":  # even inside a Slurm allocation
        return f"local_{index}"
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID") or f"local_{index}"


def cpus_for_run() -> int | None:
    for var in (CPUS_ENV, "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """Where and as what this run executes (goes into metrics.json)."""
    identity: dict[str, Any] = {"seed": cfg.seed} if "seed" in cfg else {}  # another app may have none
    identity["hostname"] = socket.gethostname()
    for key, var in _SLURM_IDS.items():
        if var in os.environ:
            identity[key] = os.environ[var]
    return identity


def _call_workload(cfg: DictConfig, ctx: RunContext) -> Mapping[str, Any]:
    fn = hydra.utils.get_method(cfg.workload._target_)
    # A workload takes (cfg, ctx); a one-argument function taking only cfg is fine too.
    takes_ctx = len(inspect.signature(fn).parameters) >= 2
    result = fn(cfg, ctx) if takes_ctx else fn(cfg)
    if not isinstance(result, Mapping):
        raise TypeError(
            f"workload {cfg.workload._target_} returned {type(result).__name__}; it must return a dict of metrics"
        )
    return result


def as_metrics(value: Any) -> dict[str, Any]:
    """What a task function returned, as metrics: a dict as it is, a number as ``value``."""
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items() if k != "status"}  # the job says how the run ended
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return {"value": value.item() if hasattr(value, "item") else value}  # numpy/torch scalars too
    return {}


def _failure(exc: BaseException) -> dict[str, Any]:
    tail = traceback.format_exception(type(exc), exc, exc.__traceback__)
    lines = "".join(tail).rstrip().splitlines()[-TRACEBACK_LINES:]
    return {
        "status": states.FAILED,
        "error_type": type(exc).__name__,
        "error_message": str(exc),
        "traceback": "\n".join(lines),
    }


def record_run(call: Callable[[RunContext], Any], cfg: DictConfig, run_dir: Path, *, reraise: bool
               ) -> tuple[Any, dict[str, Any]]:
    """Run ``call(ctx)`` in ``run_dir`` and record its outcome there; return (its value, the metrics).

    metrics.json says ``running`` while it runs, then ``completed`` with what it returned
    (see :func:`as_metrics`) or ``failed`` with the exception. With ``reraise=False`` a
    failure is recorded and returned as data; with ``reraise=True`` it is recorded, then raised.
    """
    run_dir = Path(run_dir)
    identity = {**run_identity(cfg), "started_at": _now()}
    started = time.time()
    runfiles.write_metrics(run_dir, {"status": states.RUNNING, **identity})

    history: list[Mapping[str, Any]] = []

    def log_epoch(row: Mapping[str, Any]) -> None:
        history.append(dict(row))
        runfiles.write_history(run_dir, history)

    ctx = RunContext(run_dir=run_dir, log_epoch=log_epoch, num_threads=cpus_for_run())
    try:
        value = call(ctx)
    except Exception as exc:
        outcome = _failure(exc)
        log.error("run failed: %s: %s", outcome["error_type"], outcome["error_message"])
        metrics = _finish(run_dir, {**outcome, **identity}, started)
        if reraise:
            raise
        return None, metrics
    return value, _finish(run_dir, {"status": states.COMPLETED, **identity, **as_metrics(value)}, started)


def run_task(cfg: DictConfig, run_dir: Path, *, reraise: bool) -> dict[str, Any]:
    """Run hpcjobs' configured workload once in ``run_dir``; return its recorded metrics."""

    def call(ctx: RunContext) -> Mapping[str, Any]:
        random.seed(int(cfg.get("seed") or 0))  # torch and numpy generators are the workload's to seed
        # Validated before submission already; checked again here because cross-field rules
        # are checked there on one configuration per group combination, not on every one.
        # The workload gets the config typed by its schema (defaults for keys a yaml omits).
        return _call_workload(schema.validate(cfg), ctx)

    return record_run(call, cfg, run_dir, reraise=reraise)[1]


# Set on a task function that records its own run (hpcjobs' app); any other is wrapped.
_RECORDS_ITS_RUN = "__hpcjobs_records_its_run__"


def records_its_run(task_function: TaskFunction) -> TaskFunction:
    """Mark a Hydra task function that writes its own metrics.json (see :func:`recorded`)."""
    setattr(task_function, _RECORDS_ITS_RUN, True)
    return task_function


def recorded(task_function: TaskFunction) -> TaskFunction:
    """Any Hydra app's task function, recording each run in its run directory.

    What it returns (a dict of numbers, or a number) becomes the run's metrics; an
    exception is recorded as the run's failure and raised again, as Hydra expects.
    The value returned to Hydra is the task function's own.
    """
    if getattr(task_function, _RECORDS_ITS_RUN, False):
        return task_function

    @functools.wraps(task_function)
    def task(cfg: DictConfig) -> Any:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        return record_run(lambda ctx: task_function(cfg), cfg, run_dir, reraise=True)[0]

    return task


def _finish(run_dir: Path, metrics: dict[str, Any], started: float) -> dict[str, Any]:
    metrics["wall_seconds"] = round(time.time() - started, 3)
    metrics["finished_at"] = _now()
    runfiles.write_metrics(run_dir, metrics)
    return metrics
