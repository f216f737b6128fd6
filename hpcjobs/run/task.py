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
from dataclasses import dataclass
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from hpcjobs.run import job
from hpcjobs.run.context import CPUS_ENV


def payload_file_name(sweep_id: str) -> str:
    """The payload of one sweep, in its private (0700) submitit folder."""
    return f"sweep_payload.{sweep_id}.pkl"


@dataclass
class SweepPayload:
    """What every task of a sweep shares; pickled once per sweep."""

    hydra_context: HydraContext
    task_function: TaskFunction
    base_config: DictConfig
    singleton_state: dict  # Hydra's ConfigStore, plugins and OmegaConf resolvers at submission


@dataclass
class TaskRunner:
    """The callable a backend runs for one task (submitit pickles it per task)."""

    payload_path: str
    index: int
    overrides: tuple
    cpus_per_task: Any = None

    def __call__(self) -> JobReturn:
        with open(self.payload_path, "rb") as f:
            payload: SweepPayload = pickle.load(f)
        Singleton.set_state(payload.singleton_state)
        setup_globals()
        if self.cpus_per_task:
            os.environ[CPUS_ENV] = str(self.cpus_per_task)
        loader = payload.hydra_context.config_loader
        config = loader.load_sweep_config(payload.base_config, list(self.overrides))
        with open_dict(config):
            config.hydra.job.id = job.scheduler_job_id(self.index)
            config.hydra.job.num = self.index
            config.hydra.sweep.dir = payload.base_config.hydra.sweep.dir
        return run_job(
            hydra_context=payload.hydra_context,
            task_function=job.recorded(payload.task_function),
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
