"""The entry point every backend executes for one task, wherever it runs.

What the tasks of a sweep share (Hydra's context, the app's task function, the base
config) is pickled once per sweep as a :class:`SweepPayload`; each task carries only
its index and overrides (:class:`TaskRunner`, which submitit pickles per task). On the
node the runner composes the task's config through Hydra, as Hydra's own launchers do,
and runs the app's task function through Hydra's ``run_job`` in its run directory,
recorded by :func:`hpcjobs.run.job.recorded`. So a run directory looks the same on a
laptop and on a cluster, whichever Hydra app it belongs to.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from hpcjobs.run import job
from hpcjobs.run.context import CPUS_ENV, SAFEPATH_SET_ENV


def payload_file_name(sweep_id: str) -> str:
    """The payload of one sweep, in its private (0700) submitit folder."""
    return f"sweep_payload.{sweep_id}.pkl"


def code_dir(payload_path: str | Path) -> Path:
    """Where the code the payload's tasks import was copied (hydra.launcher.snapshot=true):
    beside the payload, ``code.<sweep id>/``."""
    path = Path(payload_path)
    return path.with_name("code." + path.name.removeprefix("sweep_payload.").removesuffix(".pkl"))


@dataclass
class SweepPayload:
    """What every task of a sweep shares; pickled once per sweep."""

    hydra_context: HydraContext
    task_function: TaskFunction
    base_config: DictConfig
    singleton_state: dict  # Hydra's ConfigStore, plugins and OmegaConf resolvers at submission


def load_payload(path: str | Path) -> SweepPayload:
    """The sweep's payload; with a code snapshot beside it, the snapshot goes first on sys.path
    before unpickling, which imports the app's modules by name (the launcher also puts it
    first on PYTHONPATH, so that hpcjobs itself comes from there: hpcjobs/launching/snapshot.py)."""
    snapshot = code_dir(path)
    if snapshot.is_dir() and str(snapshot) not in sys.path:
        sys.path.insert(0, str(snapshot))
    # needed at start only: the run's own children start as usual
    if os.environ.pop(SAFEPATH_SET_ENV, None):
        os.environ.pop("PYTHONSAFEPATH", None)
    with open(path, "rb") as f:
        payload: SweepPayload = pickle.load(f)
    return payload


def run_one(payload: SweepPayload, index: int, overrides: Sequence[str]) -> JobReturn:
    """Compose task ``index``'s config as Hydra does and run the app's task function on it."""
    Singleton.set_state(payload.singleton_state)
    setup_globals()
    loader = payload.hydra_context.config_loader
    config = loader.load_sweep_config(payload.base_config, list(overrides))
    with open_dict(config):
        config.hydra.job.id = job.scheduler_job_id(index)
        config.hydra.job.num = index
        config.hydra.sweep.dir = payload.base_config.hydra.sweep.dir
        if job.distributed_place()[0] > 0:
            config.hydra.output_subdir = (
                None  # rank 0 writes .hydra/; the other ranks would race it
            )
    return run_job(
        hydra_context=payload.hydra_context,
        task_function=job.recorded(payload.task_function),
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


@dataclass
class TaskRunner:
    """The callable a backend runs for one task (submitit pickles it per task)."""

    payload_path: str
    index: int
    overrides: tuple
    cpus_per_task: Any = None

    def __call__(self) -> JobReturn:
        if self.cpus_per_task:
            os.environ[CPUS_ENV] = str(self.cpus_per_task)
        job.join_distributed_run()
        return run_one(load_payload(self.payload_path), self.index, self.overrides)
