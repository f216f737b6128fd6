"""What runs inside one task: the environment, the workload call, the metrics files.

This is the only runtime module that knows about Slurm/submitit environment variables.
It calls the workload named by ``cfg.workload._target_`` with the run's config and a
:class:`~hpcjobs.run.context.RunContext`, and records the outcome in the run directory —
``status: completed`` with the workload's metrics, or ``status: failed`` with the
exception — so that one failed configuration never takes the sweep down with it.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import socket
import time
import traceback
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra.utils
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


def cpus_for_run() -> int | None:
    for var in (CPUS_ENV, "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """Where and as what this run executes (goes into metrics.json)."""
    identity: dict[str, Any] = {"seed": cfg.get("seed"), "hostname": socket.gethostname()}
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


def _failure(exc: BaseException) -> dict[str, Any]:
    tail = traceback.format_exception(type(exc), exc, exc.__traceback__)
    lines = "".join(tail).rstrip().splitlines()[-TRACEBACK_LINES:]
    return {
        "status": states.FAILED,
        "error_type": type(exc).__name__,
        "error_message": str(exc),
        "traceback": "\n".join(lines),
    }


def run_task(cfg: DictConfig, run_dir: Path, *, reraise: bool) -> dict[str, Any]:
    """Run the configured workload once in ``run_dir`` and record its outcome.

    With ``reraise=False`` (sweeps) a failure is recorded and returned as data; with
    ``reraise=True`` (a single run in the foreground) it is recorded, then raised.
    """
    run_dir = Path(run_dir)
    seed = int(cfg.get("seed") or 0)
    random.seed(seed)  # torch and numpy generators are the workload's to seed
    identity = {**run_identity(cfg), "started_at": _now()}
    started = time.time()
    runfiles.write_metrics(run_dir, {"status": states.RUNNING, **identity})

    history: list[Mapping[str, Any]] = []

    def log_epoch(row: Mapping[str, Any]) -> None:
        history.append(dict(row))
        runfiles.write_history(run_dir, history)

    ctx = RunContext(run_dir=run_dir, log_epoch=log_epoch, num_threads=cpus_for_run())
    try:
        # Validated before submission already; checked again here because cross-field rules
        # are checked there on one configuration per group combination, not on every one.
        schema.validate(cfg)
        result = dict(_call_workload(cfg, ctx))
    except Exception as exc:
        outcome = _failure(exc)
        log.error("run failed: %s: %s", outcome["error_type"], outcome["error_message"])
        metrics = {**outcome, **identity}
        if reraise:
            _finish(run_dir, metrics, started)
            raise
    else:
        result.pop("status", None)  # the job, not the workload, says how the run ended
        metrics = {"status": states.COMPLETED, **identity, **result}
    return _finish(run_dir, metrics, started)


def _finish(run_dir: Path, metrics: dict[str, Any], started: float) -> dict[str, Any]:
    metrics["wall_seconds"] = round(time.time() - started, 3)
    metrics["finished_at"] = _now()
    runfiles.write_metrics(run_dir, metrics)
    return metrics
