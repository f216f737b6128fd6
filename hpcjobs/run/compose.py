"""A sweep's task configs, composed in a long-lived process (a worker) at the cost of an assignment.

Hydra's ``load_sweep_config`` composes every task from scratch: the defaults tree, every
yaml file, the merges, then the overrides (30-120 ms a task, most of what a short run costs
in a worker). A sweep varies values (``seed=0..999``, ``optimizer.lr=...``) under a few
config-group choices (``optimizer=adam|sgd``). Here each combination of group choices is
composed through Hydra once, and each task's value overrides are then applied to a copy
the way Hydra's composition applies them (``compat.apply_overrides``). The task function
gets the config without its ``hydra`` node, as Hydra's ``run_job`` gives it, so the config
is the same either way: tests/test_compose.py checks ``config_digest`` of every run of a
sweep composed both ways.

What is not plain values under group choices is composed through Hydra as before: an
override of a ``hydra.*`` key, and apps whose config reads Hydra's runtime state
(the ``${hydra:...}`` resolver).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hpcjobs import compat
from hpcjobs.config import planning

# Hydra's resolver of its per-task runtime state (${hydra:job.num}, ...).
_HYDRA_RESOLVER = "${hydra:"


@dataclass(frozen=True)
class ComposedTask:
    full: DictConfig  # with its hydra node; shared by the tasks of one group combination
    config: DictConfig  # what the task function gets: the task's own copy, without the hydra node
    task_overrides: list[str]  # hydra.overrides.task
    override_dirname: str  # hydra.job.override_dirname


class TaskComposer:
    """Composes the tasks of one sweep payload; holds one composed config per group combination."""

    def __init__(self, config_loader: Any, base_config: DictConfig) -> None:
        self._loader = config_loader
        self._base = base_config
        self._planner = planning.Planner(config_loader, base_config)
        self._composed: dict[tuple[str, ...], tuple[DictConfig, DictConfig] | None] = {}

    def compose(self, overrides: Sequence[str]) -> ComposedTask | None:
        """The task's config as Hydra composes it from these overrides; None where only Hydra's
        own composition is sure to give the same config."""
        if any(_HYDRA_RESOLVER in text for text in overrides):
            return None
        parsed = [self._planner.parse(text) for text in overrides]
        if any(p.is_hydra_override() for p in parsed):
            return None
        combo = tuple(t for t, p in zip(overrides, parsed) if self._planner.is_group_override(p))
        if combo not in self._composed:
            self._composed[combo] = self._compose_once(combo)
        composed = self._composed[combo]
        if composed is None:
            return None
        full, app = composed
        config = copy.deepcopy(app)
        compat.apply_overrides(
            config, [p for p in parsed if not self._planner.is_group_override(p)]
        )
        dirname = full.hydra.job.config.override_dirname
        return ComposedTask(
            full=full,
            config=config,
            task_overrides=list(overrides),
            override_dirname=compat.overrides_dirname(
                parsed,
                exclude_keys=list(dirname.exclude_keys),
                item_sep=dirname.item_sep,
                kv_sep=dirname.kv_sep,
            ),
        )

    def _compose_once(self, combo: tuple[str, ...]) -> tuple[DictConfig, DictConfig] | None:
        full = self._loader.load_sweep_config(self._base, list(combo))
        with read_write(full.hydra), open_dict(full.hydra):
            full.hydra.sweep.dir = self._base.hydra.sweep.dir  # resolved once, at submission
        app = copy.deepcopy(full)
        with read_write(app), open_dict(app):
            del app["hydra"]
        if _HYDRA_RESOLVER in OmegaConf.to_yaml(app, resolve=False):
            return None  # resolved from Hydra's per-task runtime state: leave it to Hydra
        return full, app
