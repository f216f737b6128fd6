"""The run config's schema: the public names, their types and their valid ranges.

Registered in Hydra's ConfigStore as ``hpcjobs_schema`` and listed first in
``conf/config.yaml``'s defaults, so composition itself rejects an unknown key or a
value of the wrong type. Ranges and choices that a type cannot express are declared
next to each field (``_check``) and enforced by :func:`validate`, which the launcher
runs on every configuration before it submits anything.

Data flows config -> launcher -> job -> workload: this module imports none of them
(and no torch), so the login node can validate a sweep cheaply.
"""

from __future__ import annotations

import dataclasses
import math
import functools
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import hydra.utils
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig

from hpcjobs.errors import ConfigError, choices_hint


def _check(
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
    return {"check": dict(min=min, max=max, min_open=min_open, max_open=max_open, choices=choices, why=why,
                          custom=custom)}


def _positive_ints(value: Any) -> str | None:
    if not isinstance(value, (list, ListConfig)) or len(value) == 0 or any(int(v) < 1 for v in value):
        return "must be a non-empty list of positive filter counts"
    return None


# --------------------------------------------------------------------------- groups


@dataclass
class ModelConf:
    name: str = "cnn"
    # filters of the conv 3x3 + ReLU + max-pool 2 blocks; one entry per block
    channels: list[int] = field(default_factory=lambda: [32, 64, 128], metadata=_check(custom=_positive_ints))
    kernel_size: int = field(default=3, metadata=_check(min=1, max=15))
    hidden: int = field(default=128, metadata=_check(min=1))  # dense layer width
    dropout: float = field(default=0.0, metadata=_check(min=0, max=1, max_open=True))


@dataclass
class AugmentConf:
    # Keras ImageDataGenerator's knobs, applied to whole batches on the training device.
    rotation: float = field(default=0.0, metadata=_check(min=0, max=180, why="degrees"))
    shift: float = field(default=0.0, metadata=_check(min=0, max=1, max_open=True, why="fraction of the image size"))
    shear: float = field(default=0.0, metadata=_check(min=0, max=90, max_open=True, why="degrees"))
    zoom: float = field(default=0.0, metadata=_check(min=0, max=1, max_open=True, why="scale in [1-zoom, 1+zoom]"))
    hflip: bool = False


DATA_SOURCES = ("digits", "imagefolder", "synthetic")


@dataclass
class DataConf:
    name: str = field(default="digits", metadata=_check(choices=DATA_SOURCES))
    root: Optional[str] = None  # imagefolder: directory holding train/ validation/ [test/]
    # Images are resized to image_size x image_size; three 2x pools need at least 8.
    image_size: int = field(default=8, metadata=_check(min=8, max=1024))
    channels: int = field(default=1, metadata=_check(min=1, max=3))  # 1 = grayscale, 3 = RGB
    num_classes: int = field(default=10, metadata=_check(min=2))  # synthetic only; others read it
    num_samples: int = field(default=1024, metadata=_check(min=3))  # synthetic only
    # digits/synthetic: one fixed split, drawn with split_seed (not the run's seed) so that
    # runs with different seeds are scored on the same test images.
    val_fraction: float = field(default=0.15, metadata=_check(min=0, max=0.5, min_open=True))
    test_fraction: float = field(default=0.15, metadata=_check(min=0, max=0.5, min_open=True))
    split_seed: int = field(default=0, metadata=_check(min=0))
    augment: AugmentConf = field(default_factory=AugmentConf)


OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")


@dataclass
class OptimizerConf:
    name: str = field(default="adam", metadata=_check(choices=OPTIMIZERS))
    lr: float = field(default=1e-3, metadata=_check(min=0, min_open=True, why="learning rate"))
    momentum: float = field(default=0.0, metadata=_check(min=0, max=1, max_open=True))  # sgd/momentum
    nesterov: bool = False
    weight_decay: float = field(default=0.0, metadata=_check(min=0))
    beta1: float = field(default=0.9, metadata=_check(min=0, max=1, max_open=True))  # adam/adamw
    beta2: float = field(default=0.999, metadata=_check(min=0, max=1, max_open=True))


PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainerConf:
    epochs: int = field(default=10, metadata=_check(min=1))
    batch_size: int = field(default=64, metadata=_check(min=1))
    # As in Keras' fit(): cap the batches per epoch / per validation pass; null = one full pass.
    steps_per_epoch: Optional[int] = field(default=None, metadata=_check(min=1))
    val_steps: Optional[int] = field(default=None, metadata=_check(min=1))
    precision: str = field(default="fp32", metadata=_check(choices=PRECISIONS))
    device: str = field(default="auto", metadata=_check(choices=DEVICES))  # auto: cuda if visible
    # Threads decoding image files when an imagefolder is loaded; 0 = in the main thread.
    num_workers: int = field(default=0, metadata=_check(min=0))
    # Threads torch uses for CPU ops; null = leave it to the launcher (cores / parallel runs).
    num_threads: Optional[int] = field(default=None, metadata=_check(min=1))


@dataclass
class RunConf:
    """The whole run config, minus ``hydra``."""

    experiment_name: str = "default"
    seed: int = field(default=0, metadata=_check(min=0))
    # The function run for each configuration: `_target_` names it; `preflight` optionally
    # names a torch-free check run before submission; other keys are the workload's own.
    workload: dict[str, Any] = field(default_factory=lambda: {"_target_": "hpcjobs.workloads.cnn.run"})
    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)


ConfigStore.instance().store(name="hpcjobs_schema", node=RunConf)


# --------------------------------------------------------------------------- validation


def _rule_error(key: str, value: Any, rule: dict[str, Any]) -> str | None:
    """What is wrong with ``key=value`` under a field's rule, or None."""
    if value is None:
        return None
    unit = f" ({rule['why']})" if rule["why"] else ""
    if rule["custom"] is not None:
        problem = rule["custom"](value)
        return f"{key}={_show(value)}: {problem}" if problem else None
    if rule["choices"] is not None:
        return None if value in rule["choices"] else f"{key}={value}: {choices_hint(rule['choices'])}"
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


@functools.lru_cache(maxsize=None)
def _rules(schema: type = RunConf, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every checked field of the schema by dotted key, e.g. 'optimizer.lr' -> its rule."""
    rules: dict[str, dict[str, Any]] = {}
    types = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(types[f.name]):
            rules.update(_rules(types[f.name], f"{prefix}{f.name}."))
        elif "check" in f.metadata:
            rules[f"{prefix}{f.name}"] = f.metadata["check"]
    return rules


def is_hpcjobs_config(cfg: DictConfig) -> bool:
    """Whether a config is hpcjobs' (it names a workload); any other Hydra app's is left alone."""
    return "workload" in cfg


def field_error(cfg: DictConfig, key: str) -> str | None:
    """The rule violation of one dotted key in a composed config, or None (also for free keys)."""
    rule = _rules().get(key) if is_hpcjobs_config(cfg) else None
    if rule is None:
        return None
    from omegaconf import OmegaConf

    return _rule_error(key, OmegaConf.select(cfg, key, default=None), rule)


def config_errors(cfg: DictConfig) -> list[str]:
    """Every range/choice violation in a composed run config, as 'key=value: rule' lines."""
    if not is_hpcjobs_config(cfg):
        return []
    errors = [e for e in (field_error(cfg, key) for key in _rules()) if e]
    model = cfg.get("model")
    data = cfg.get("data")
    if data is not None:
        if data.val_fraction + data.test_fraction >= 0.9:
            errors.append(
                f"data.val_fraction + data.test_fraction = {data.val_fraction + data.test_fraction:g}:"
                " must leave at least 10% of the images for training"
            )
        if model is not None and isinstance(model.get("channels"), ListConfig):
            min_size = 2 ** len(model.channels)
            if data.image_size < min_size:
                errors.append(
                    f"data.image_size={data.image_size}: {len(model.channels)} pooling blocks need"
                    f" images of at least {min_size}x{min_size}"
                )
        if data.name == "imagefolder" and not data.root:
            errors.append("data.root is not set: data=imagefolder needs data.root=DIR holding train/ and validation/")
    workload = cfg.get("workload")
    if not isinstance(workload, DictConfig) or not workload.get("_target_"):
        errors.append("workload has no _target_: set it to the dotted name of the function to run (workload=cnn)")
    elif workload.get("preflight"):
        # The workload's own login-node checks (e.g. that an image folder is well formed).
        errors += hydra.utils.get_method(workload.preflight)(cfg)
    return errors


def validate(cfg: DictConfig, label: str = "") -> None:
    """Raise ConfigError listing every invalid value of a composed run config."""
    errors = config_errors(cfg)
    if errors:
        where = f" ({label})" if label else ""
        lines = "\n  ".join(errors)
        raise ConfigError(f"Invalid configuration{where}:\n  {lines}")


# --------------------------------------------------------------------------- override keys

# Config groups: `optimizer=adam` picks a file; Hydra itself lists the valid options.
CONFIG_GROUPS = ("workload", "model", "data", "optimizer", "trainer", "experiment")


def unknown_key(key: str, schema: type = RunConf, free: tuple[str, ...] = ("workload",),
                node_name: str = "") -> str | None:
    """Why ``key`` (dotted) names no field of ``schema``, with the valid names; None if it does.

    Keys below a free-form node (the workload's own options) are the workload's business.
    ``node_name`` is where ``schema`` sits in the whole config (e.g. 'hydra.launcher').
    """
    parts = key.split(".")
    node: Any = schema
    for depth, part in enumerate(parts):
        if depth == 0 and part in free:
            return None
        if not dataclasses.is_dataclass(node):
            return None  # below a list/dict field: not ours to check
        fields = {f.name: f for f in dataclasses.fields(node) if not f.name.startswith("_")}
        if part not in fields:
            where = ".".join(p for p in (node_name, *parts[:depth]) if p) or "the config"
            full_key = f"{node_name}.{key}" if node_name else key
            return f"unknown key '{full_key}': no '{part}' in {where}; {choices_hint(fields)}"
        node = typing.get_type_hints(node)[part]
    return None
