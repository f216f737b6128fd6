"""The Hydra application: compose a run config, validate it, run the job.

``python -m hpcjobs [overrides]`` runs one configuration here (Hydra's run mode);
with ``--multirun`` Hydra's sweeper expands the overrides and the hpcjobs launcher
runs :func:`task` once per configuration, on Slurm or in local processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import hpcjobs.config.schema  # noqa: F401  (registers hpcjobs_schema in Hydra's ConfigStore)
from hpcjobs.run import job

CONFIG_DIR = str(Path(__file__).parent / "conf")


@job.runs_workload
def task(cfg: DictConfig) -> dict[str, Any]:
    """Hydra's task function: one configuration, in its own run directory."""
    hydra_cfg = HydraConfig.get()
    single_run = hydra_cfg.mode == RunMode.RUN
    # In a sweep a failed run is recorded and the others go on; alone, it is an error.
    return job.run_workload(cfg, Path(hydra_cfg.runtime.output_dir), reraise=single_run)


# Decorating `task` itself would hide it behind the wrapper; launchers pickle the task
# function by reference, so `task` stays importable as itself.
hydra_main = hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")(task)
