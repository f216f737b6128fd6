"""The run config's schema: what hpcjobs needs, and how a workload types the rest.

hpcjobs itself needs three keys (:class:`RunConf`): ``experiment_name``, ``seed`` and
``workload``. Everything else belongs to the workload: its yaml configs hold the
values, and the dataclass its ``workload.schema`` names (a RunConf subclass) declares
their types and, next to each field, the ranges and choices a type cannot express
(``check(...)``). hpcjobs.workloads.cnn.config is the example; a user's workload
declares its own the same way. :func:`validate` merges a composed config onto its
schema (wrong types and misspelt keys fail), checks every declared range, then runs
the workload's ``preflight`` (cross-field rules); the launcher runs it before it
submits anything and each run runs it again before it starts.

Data flows config -> launcher -> job -> workload: this module imports none of them
(and no torch), so the login node can validate a sweep cheaply.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hydra.utils
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from hpcjobs.errors import ConfigError, choices_hint


def check(
    *,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    choices: tuple[str, ...] | None = None,
    why: str = "",
    custom: Callable[[Any], str | None] | None = None,
) -> dict[str, Any]:
    """Field metadata read by :func:`validate`; ``*_open`` excludes the bound itself.

    ``custom(value)`` returns what is wrong with a value the other rules cannot express.
    """
    return {
        "check": dict(
            min=min,
            max=max,
            min_open=min_open,
            max_open=max_open,
            choices=choices,
            why=why,
            custom=custom,
        )
    }


@dataclass
class RunConf:
    """What hpcjobs itself needs of a run config; a workload's schema subclasses it."""

    experiment_name: str = (
        "default"  # names output folders, Slurm jobs and results/<experiment_name>/
    )
    seed: int = field(default=0, metadata=check(min=0))
    # The function run for each configuration: `_target_` names it; `schema` optionally names
    # its config dataclass (a RunConf subclass); `preflight` optionally names a torch-free
    # check of the whole config run before submission and before each run; `select_metric` and
    # `report_metric` optionally name the metrics results are ranked by and reported on
    # (hpcjobs/results/selection.py). Other keys: free.
    workload: dict[str, Any] = field(
        default_factory=lambda: {"_target_": "hpcjobs.workloads.noop.run"}
    )
    # A completed run's checkpoint.pt is deleted (it can be large); true keeps it, to fine-tune.
    keep_checkpoint: bool = False


# --------------------------------------------------------------------------- validation


def is_hpcjobs_config(cfg: DictConfig) -> bool:
    """Whether a config is hpcjobs' (it names a workload); any other Hydra app's is left alone."""
    return "workload" in cfg


def workload_schema(cfg: DictConfig) -> type:
    """The dataclass that types this run config: the workload's ``schema``, else RunConf."""
    workload = cfg.get("workload")
    name = _get(workload, "schema") if isinstance(workload, DictConfig) else None
    if not name:
        return RunConf
    return _import_schema(str(name))


def _get(node: DictConfig, key: str) -> Any:
    """node.get(key), None where it lacks the key: asked of its keys first, since get() and `in`
    of a key a struct node lacks raise and catch an error inside OmegaConf (0.04 ms; a worker
    asks a few of every run's config)."""
    return node.get(key) if key in node.keys() else None  # noqa: SIM118 (`in node` raises)


@functools.cache
def _import_schema(name: str) -> type:
    try:
        schema = hydra.utils.get_class(name)
    except Exception as e:  # ImportError, AttributeError, ValueError: Hydra wraps them differently
        raise ConfigError(
            f"workload.schema={name}: cannot import it"
            f" ({e}); name a dataclass, e.g. mypkg.MyRunConf"
        ) from None
    if not (dataclasses.is_dataclass(schema) and issubclass(schema, RunConf)):
        raise ConfigError(
            f"workload.schema={name}: must be a dataclass that subclasses hpcjobs.RunConf"
        )
    return schema


def run_part(cfg: DictConfig) -> DictConfig:
    """The config without Hydra's own node (what the task function receives)."""
    if "hydra" not in cfg:
        return cfg
    part = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])
    assert isinstance(part, DictConfig)
    return part


def typed(cfg: DictConfig) -> DictConfig:
    """The run config merged onto its schema: typed values, defaults for keys the yaml omits.

    Nested schema nodes are closed (a misspelt ``trainer.epoch`` fails); the top level
    stays open, so ``+tag=a`` adds a key as in any Hydra app. Raises ConfigError.
    """
    try:
        # merge() copies its first config: the cached one stays as it is
        merged = OmegaConf.merge(_structured(workload_schema(cfg)), run_part(cfg))
    except (ValidationError, ConfigKeyError) as e:
        key = f"{e.full_key}: " if getattr(e, "full_key", None) else ""
        raise ConfigError(f"Invalid configuration:\n  {key}{str(e).splitlines()[0]}") from None
    assert isinstance(merged, DictConfig)
    return merged


@functools.cache
def _structured(schema: type) -> DictConfig:
    """The schema as an open config, built once per schema (1-2 ms; a worker types every run)."""
    config = OmegaConf.structured(schema)
    OmegaConf.set_struct(config, False)
    return config


def rule_error(key: str, value: Any, rule: dict[str, Any]) -> str | None:
    """What is wrong with ``key=value`` under a field's rule, or None."""
    if value is None:
        return None
    unit = f" ({rule['why']})" if rule["why"] else ""
    if rule["custom"] is not None:
        problem = rule["custom"](value)
        return f"{key}={_show(value)}: {problem}" if problem else None
    if rule["choices"] is not None:
        return (
            None if value in rule["choices"] else f"{key}={value}: {choices_hint(rule['choices'])}"
        )
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key}={value}: must be a finite number{unit}"
    lo, hi = rule["min"], rule["max"]
    if lo is not None and (value < lo or (rule["min_open"] and value == lo)):
        return f"{key}={value}: must be {'>' if rule['min_open'] else '>='} {lo}{unit}"
    if hi is not None and (value > hi or (rule["max_open"] and value == hi)):
        return f"{key}={value}: must be {'<' if rule['max_open'] else '<='} {hi}{unit}"
    return None


def _show(value: Any) -> str:
    return str(list(value)) if isinstance(value, ListConfig) else str(value)


@functools.cache
def rules(schema: type, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every checked field of a schema by dotted key, e.g. 'optimizer.lr' -> its rule."""
    found: dict[str, dict[str, Any]] = {}
    types = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(types[f.name]):
            found.update(rules(types[f.name], f"{prefix}{f.name}."))
        elif "check" in f.metadata:
            found[f"{prefix}{f.name}"] = f.metadata["check"]
    return found


def field_error(cfg: DictConfig, key: str) -> str | None:
    """The rule violation of one dotted key in a typed run config, or None (also for free keys)."""
    return value_error(cfg, key, OmegaConf.select(cfg, key, default=None))


def value_error(cfg: DictConfig, key: str, value: Any) -> str | None:
    """What is wrong with ``key=value`` (a value of the key's type) in a typed config, or None."""
    rule = rules(workload_schema(cfg)).get(key) if is_hpcjobs_config(cfg) else None
    return None if rule is None else rule_error(key, value, rule)


def config_errors(cfg: DictConfig) -> list[str]:
    """Every problem of a typed run config, as 'key=value: what to change' lines ([] = fine).

    The declared ranges and choices of its schema, then the workload's own ``preflight``
    (rules that tie several keys together, files that must exist).
    """
    if not is_hpcjobs_config(cfg):
        return []
    errors = [
        e
        for key, rule in rules(workload_schema(cfg)).items()
        if (e := rule_error(key, OmegaConf.select(cfg, key, default=None), rule))
    ]
    workload = cfg.workload
    if not _get(workload, "_target_"):
        errors.append(
            "workload has no _target_: set it to the dotted"
            " name of the function to run (workload=cnn)"
        )
    elif _get(workload, "preflight"):
        errors += hydra.utils.get_method(workload.preflight)(cfg)
    return errors


def validate(cfg: DictConfig, label: str = "") -> DictConfig:
    """The typed run config; ConfigError listing every invalid value if there is one."""
    if not is_hpcjobs_config(cfg):
        return run_part(cfg)
    return checked(typed(cfg), label)


def checked(config: DictConfig, label: str = "") -> DictConfig:
    """A typed run config (:func:`typed`'s, or one typed as it types) once :func:`config_errors`
    finds nothing in it; else ConfigError listing every invalid value."""
    errors = config_errors(config)
    if errors:
        where = f" ({label})" if label else ""
        lines = "\n  ".join(errors)
        raise ConfigError(f"Invalid configuration{where}:\n  {lines}")
    return config


# --------------------------------------------------------------------------- override keys


def unknown_key(cfg: DictConfig, key: str, node_name: str = "") -> str | None:
    """Why a dotted ``key`` names nothing in a composed config, with the valid names; or None.

    ``cfg`` is typed (:func:`typed`, or Hydra's own config). Below a node that takes any
    key (the workload's free options, a dict field) every key is fine. ``node_name`` is
    where ``cfg`` sits in the whole config (e.g. 'hydra.launcher').
    """
    node: Any = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return None  # below a list or a value: not ours to check
        if part not in node:
            if not _closed(node):
                return None
            where = ".".join(p for p in (node_name, *parts[:depth]) if p) or "the config"
            full_key = f"{node_name}.{key}" if node_name else key
            valid = [k for k in node if not str(k).startswith("_")]
            return f"unknown key '{full_key}': no '{part}' in {where}; {choices_hint(valid)}"
        node = node._get_node(part)
    return None


def _closed(node: DictConfig) -> bool:
    """A node typed by a dataclass refuses keys it does not declare; a dict field takes any."""
    return dataclasses.is_dataclass(OmegaConf.get_type(node))
