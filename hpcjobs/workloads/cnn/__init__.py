"""The seed image classifier: a small CNN trained with pure PyTorch.

``run`` is the workload (``workload=cnn``); ``preflight`` is its login-node check. This
module must not import torch: the login node imports it to run ``preflight``, and
torch takes a second or more to import. ``run`` imports the trainer lazily.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from hpcjobs.run.context import RunContext
from hpcjobs.errors import DataError


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """Train on cfg and return the test metrics (see train.train_and_evaluate)."""
    from hpcjobs.workloads.cnn.train import train_and_evaluate

    return train_and_evaluate(cfg, ctx)


def preflight(cfg: DictConfig) -> list[str]:
    """Torch-free checks of the data config, as 'key=value: what to fix' lines ([] = fine)."""
    from hpcjobs.workloads.cnn import imagefolder

    data = cfg.data
    errors: list[str] = []
    if data.name == "digits" and data.channels != 1:
        errors.append(f"data.channels={data.channels}: digits images are grayscale; set data.channels=1")
    if data.name == "imagefolder":
        if data.channels not in (1, 3):
            errors.append(f"data.channels={data.channels}: image folders load as grayscale (1) or RGB (3)")
        if data.root:  # an unset root is reported by hpcjobs.config.schema.config_errors
            try:
                imagefolder.scan(data.root)
            except DataError as exc:
                errors.append(str(exc))
    opt = cfg.optimizer
    if opt.name == "sgd" and opt.nesterov and opt.momentum == 0:
        errors.append("optimizer.nesterov=true needs optimizer.momentum > 0 (or optimizer=momentum)")
    return errors
