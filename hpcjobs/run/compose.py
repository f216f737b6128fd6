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

The config typed by its workload's schema (what the workload gets, hpcjobs/config/schema.py)
is made the same way: each combination typed once, then the task's value overrides applied to
a copy by typed assignment, which converts and checks each value as the merge onto the schema
does (a run still checks the result: ranges, cross-field rules). Where the assignment might
not do what the merge does (``~key``, a ``+key`` the schema does not declare, a value under
``workload``, which names the schema), or refuses the value, the run types its config itself;
tests/test_compose.py checks the typed config of every run both ways too.

What is not plain values under group choices is composed through Hydra as before: an
override of a ``hydra.*`` key, and apps whose config reads Hydra's runtime state
(the ``${hydra:...}`` resolver).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hpcjobs import compat
from hpcjobs.config import planning, schema
from hpcjobs.errors import ConfigError

# Hydra's resolver of its per-task runtime state (${hydra:job.num}, ...).
_HYDRA_RESOLVER = "${hydra:"


@dataclass(frozen=True)
class ComposedTask:
    full: DictConfig  # with its hydra node; shared by the tasks of one group combination
    config: DictConfig  # what the task function gets: the task's own copy, without the hydra node
    task_overrides: list[str]  # hydra.overrides.task
    override_dirname: str  # hydra.job.override_dirname
    # config typed by its workload's schema (schema.typed gives the same); None: not typed here
    typed: DictConfig | None = None


class TaskComposer:
    """Composes the tasks of one sweep payload; holds one composed config per group combination."""

    def __init__(self, config_loader: Any, base_config: DictConfig) -> None:
        self._loader = config_loader
        self._base = base_config
        self._planner = planning.Planner(config_loader, base_config)
        self._composed: dict[tuple[str, ...], _Combination | None] = {}

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
        values = [p for p in parsed if not self._planner.is_group_override(p)]
        config = copy.deepcopy(composed.app)
        compat.apply_overrides(config, values)
        dirname = composed.full.hydra.job.config.override_dirname
        return ComposedTask(
            full=composed.full,
            config=config,
            task_overrides=list(overrides),
            override_dirname=compat.overrides_dirname(
                parsed,
                exclude_keys=list(dirname.exclude_keys),
                item_sep=dirname.item_sep,
                kv_sep=dirname.kv_sep,
            ),
            typed=_typed(composed.typed, values),
        )

    def _compose_once(self, combo: tuple[str, ...]) -> _Combination | None:
        full = self._loader.load_sweep_config(self._base, list(combo))
        with read_write(full.hydra), open_dict(full.hydra):
            full.hydra.sweep.dir = self._base.hydra.sweep.dir  # resolved once, at submission
        app = copy.deepcopy(full)
        with read_write(app), open_dict(app):
            del app["hydra"]
        if _HYDRA_RESOLVER in OmegaConf.to_yaml(app, resolve=False):
            return None  # resolved from Hydra's per-task runtime state: leave it to Hydra
        try:
            typed = schema.typed(app) if schema.is_hpcjobs_config(app) else None
        except ConfigError:
            typed = None  # each run types its own (and says what is wrong, if it still is)
        return _Combination(full, app, typed)


@dataclass(frozen=True)
class _Combination:
    """One combination of group choices, composed once."""

    full: DictConfig  # with its hydra node
    app: DictConfig  # without it
    typed: DictConfig | None  # app typed by its workload's schema; None: not typed here


def _typed(typed: DictConfig | None, values: Sequence[Any]) -> DictConfig | None:
    """A copy of the combination's typed config with the task's value overrides applied by typed
    assignment; None where an override is not an assignment the schema takes (a run then types
    its config itself, with the merge, and reports what is wrong)."""
    if typed is None or not all(_assignable(typed, v) for v in values):
        return None
    config = copy.deepcopy(typed)
    try:
        compat.apply_overrides(config, values)
    except Exception:  # OmegaConf's and Hydra's errors alike: the run's merge says it better
        return None
    return config


def _assignable(typed: DictConfig, value: Any) -> bool:
    """Whether applying the override to the typed config does what the merge onto the schema
    does: not ``~key`` (the merge gives the schema's default back; an assignment, no key), and
    a key added with ``+``/``++`` only where the schema takes it (Hydra adds with struct off:
    a key a closed node does not declare would be added, where the merge refuses it), and
    nothing under ``workload`` (which names the schema)."""
    if value.is_delete():
        return False
    if value.key_or_group.split(".")[0] == "workload":
        return False  # workload.schema=... may name another schema: the run types it by that one
    if not (value.is_add() or value.is_force_add()):
        return True
    node: Any = typed
    for depth, part in enumerate(value.key_or_group.split(".")):
        if not isinstance(node, DictConfig):
            return False  # below a list or a value: left to the merge
        if part not in node:
            # The merge refuses a key a dataclass's node does not declare, but at the top level
            # (schema.typed opens it); Hydra's + would add it anywhere.
            return depth == 0 or not dataclasses.is_dataclass(OmegaConf.get_type(node))
        node = node._get_node(part)
    return True
