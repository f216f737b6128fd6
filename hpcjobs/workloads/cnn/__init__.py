"""The seed image classifier: a small CNN trained with pure PyTorch.

``run`` is the workload (``workload=cnn``); its config's types, ranges and cross-field
rules (``preflight``) are in ``config.py``. This module must not import torch: the
login node imports the package to validate a sweep, and torch takes a second or more
to import. ``run`` imports the trainer lazily.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from hpcjobs.run.context import RunContext
from hpcjobs.workloads.cnn.config import preflight

__all__ = ["preflight", "run"]


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """Train on cfg and return the test metrics (see train.train_and_evaluate)."""
    from hpcjobs.workloads.cnn.train import train_and_evaluate

    return train_and_evaluate(cfg, ctx)
