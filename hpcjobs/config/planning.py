"""Turn a sweep's override lists into validated tasks, composing as little as possible.

Hydra's own way — compose every configuration on the login node — costs ~34 ms per
configuration (17 s for 500). Here each distinct combination of *config group* choices
(``optimizer=adam``, ``data=digits``) is composed once; every distinct *value* override
(``optimizer.lr=0.01``, ``seed=7``) is then assigned, with OmegaConf's type checking,
into that composed config and checked against its field's declared range. A 1,000-seed
sweep therefore composes once and checks 1,000 values in milliseconds, and a bad value
is still caught before anything is submitted. Each task composes its full config again
where it runs, and re-validates it there.

The launcher keys a caller asks for (``launcher_keys``) are resolved per configuration too:
``hydra.launcher.gpus_per_node: ${resources.gpus}`` under ``resources=cpu,gpu1`` gives each
task its own value (:attr:`PlannedTask.launcher`, only where it differs from the sweep's).
A value override is applied for it only when the launcher's interpolations reach its key.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, ValueType
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from hpcjobs import compat
from hpcjobs.config import schema
from hpcjobs.errors import ConfigError
from hpcjobs.gcpause import gc_paused

# The default `hydra.sweep.subdir`: a task's run directory is its number. Any other
# pattern (e.g. ${hydra.job.override_dirname}) is resolved by composing each task.
DEFAULT_SUBDIR = "${hydra.job.num}"

# `key=number`, the bulk of a large sweep (seed=range(0,100000)), parsed without Hydra's
# ANTLR grammar (~0.2 ms an override). Only forms whose meaning is certain: plain dotted
# keys; decimal ints without leading zeros or underscores; floats with digits on both
# sides of the point. Anything else goes to Hydra's parser (tests/test_planning.py
# checks that both agree).
_PLAIN_KEY = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_FAST_INT = re.compile(rf"({_PLAIN_KEY})=(-?(?:0|[1-9][0-9]*))")
_FAST_FLOAT = re.compile(rf"({_PLAIN_KEY})=(-?(?:0|[1-9][0-9]*)\.[0-9]+(?:[eE][-+]?[0-9]+)?)")


@dataclass(frozen=True)
class PlannedTask:
    index: int  # Hydra's job number
    overrides: tuple[str, ...]
    run_subdir: str  # relative to the sweep directory
    config_hash: str  # equal hashes <=> equal configurations (same base, same overrides)
    # hydra.launcher keys this configuration resolves to other values than the sweep's (its
    # resources, e.g. {"gres": "gpu:typeb:2"}); empty for most sweeps. Not hashed.
    launcher: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        shown = [o for o in self.overrides if not o.startswith("hydra")]
        return f"#{self.index} " + (" ".join(shown) or "(no overrides)")


def _first_line(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__


class _Planner:
    def __init__(
        self, config_loader: Any, base_config: DictConfig, launcher_keys: Collection[str] = ()
    ) -> None:
        self.config_loader = config_loader
        self.base_config = base_config
        self.launcher_keys = tuple(launcher_keys)
        # the sweep's own values of those keys, as the launcher was made with them
        self.base_launcher = _launcher_values(base_config, self.launcher_keys)
        self.parser = OverridesParser.create(config_loader=config_loader)
        # Config groups: those chosen in the base config, and every group on the search path
        # (a group whose default is '???' or absent is chosen only by the override itself).
        self.groups = set(base_config.hydra.runtime.choices.keys()) | all_groups(config_loader)
        self._parsed: dict[str, Override] = {}
        # keys a `+key=value` override added to the current composed config
        self.added: set[str] = set()
        # Keys of the current composed config known to hold an int or float value as given:
        # another value of the same type needs its rule checked, not another assignment.
        self.numeric: dict[str, type] = {}
        # the current config's checked fields (schema.rules)
        self.rules: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, list[PlannedTask]] = {}

    def parse(self, text: str) -> Override:
        if text not in self._parsed:
            self._parsed[text] = fast_parse(text) or self.parser.parse_override(text)
        return self._parsed[text]

    def is_group_override(self, override: Override) -> bool:
        key = override.key_or_group
        return (
            key in self.groups
            or "/" in key
            or override.package is not None
            or key.startswith("hydra")
        )

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        return self.config_loader.load_sweep_config(self.base_config, list(overrides))

    def error(self, message: str, task: PlannedTask) -> None:
        self.errors.setdefault(message, []).append(task)


# The task-side composer (hpcjobs/run/compose.py) splits overrides by the same rules.
Planner = _Planner


def fast_parse(text: str) -> Override | None:
    """``key=<int or float>`` as Hydra's parser reads it, or None for anything else."""
    for pattern, kind in ((_FAST_INT, int), (_FAST_FLOAT, float)):
        match = pattern.fullmatch(text)
        if match:
            key, raw = match.groups()
            return Override(
                type=OverrideType.CHANGE,
                key_or_group=key,
                value_type=ValueType.ELEMENT,
                _value=kind(raw),
                package=None,
                input_line=text,
            )
    return None


def all_groups(config_loader: Any, parent: str = "") -> set[str]:
    groups: set[str] = set()
    for name in config_loader.list_groups(parent):
        path = f"{parent}/{name}" if parent else name
        if path != "hydra":
            groups |= {path} | all_groups(config_loader, path)
    return groups


def plan_tasks(
    config_loader: Any,
    base_config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int = 0,
    launcher_keys: Collection[str] = (),
) -> list[PlannedTask]:
    """Validated tasks for a batch of override lists; ConfigError lists every problem.

    ``launcher_keys``: the ``hydra.launcher`` keys to resolve per configuration
    (:attr:`PlannedTask.launcher`); a value that does not resolve is a problem of its tasks.
    """
    with (
        gc_paused()
    ):  # one object per task: 100,000 of them would set off the cyclic GC again and again
        return _plan_tasks(
            config_loader, base_config, job_overrides, initial_job_idx, launcher_keys
        )


# One task of a combination of group choices: (index, its overrides, its value overrides).
_Member = tuple[int, tuple[str, ...], list[str]]


def _plan_tasks(
    config_loader: Any,
    base_config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    launcher_keys: Collection[str],
) -> list[PlannedTask]:
    planner = _Planner(config_loader, base_config, launcher_keys)
    sweep = cast(dict, OmegaConf.to_container(base_config.hydra.sweep, resolve=False))
    subdir_pattern = sweep.get("subdir")
    tasks: list[PlannedTask] = []
    for combo, members in _by_group_choices(planner, job_overrides, initial_job_idx).items():
        tasks += _plan_combination(planner, combo, members, subdir_pattern)
    if planner.errors:
        raise _invalid(planner.errors, len(job_overrides))
    return sorted(tasks, key=lambda t: t.index)


def _by_group_choices(
    planner: _Planner, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> dict[tuple[str, ...], list[_Member]]:
    """The tasks by their combination of group choices, each with its plain value overrides."""
    by_combo: dict[tuple[str, ...], list[_Member]] = {}
    for offset, overrides in enumerate(job_overrides):
        try:
            parsed = [planner.parse(o) for o in overrides]
        except HydraException as e:
            raise ConfigError(
                f"cannot parse overrides {list(overrides)}: {_first_line(e)}"
            ) from None
        combo = tuple(o for o, p in zip(overrides, parsed) if planner.is_group_override(p))
        values = [o for o, p in zip(overrides, parsed) if not planner.is_group_override(p)]
        by_combo.setdefault(combo, []).append((initial_job_idx + offset, tuple(overrides), values))
    return by_combo


def _plan_combination(
    planner: _Planner,
    combo: tuple[str, ...],
    members: Sequence[_Member],
    subdir_pattern: Any,
) -> list[PlannedTask]:
    """One combination of group choices, composed once: its tasks, their problems noted in
    ``planner.errors``; none when the combination does not compose."""
    try:
        config = planner.compose(combo)
    except HydraException as e:
        message = f"{' '.join(combo)}: {_first_line(e)}"
        for index, overrides, _ in members:
            planner.error(message, PlannedTask(index, overrides, "", ""))
        return []
    planner.added.clear()
    planner.numeric.clear()
    combo_hash = hashlib.sha256(
        OmegaConf.to_yaml(schema.run_part(config), resolve=False, sort_keys=True).encode()
    ).hexdigest()
    launchers = _launchers(planner, config, members)
    tasks = [
        PlannedTask(
            index,
            overrides,
            _run_subdir(planner, subdir_pattern, index, overrides),
            _task_hash(combo_hash, values),
            launcher if isinstance(launcher, dict) else {},
        )
        for (index, overrides, values), launcher in zip(members, launchers)
    ]
    for task, launcher in zip(tasks, launchers):
        if isinstance(launcher, str):
            planner.error(launcher, task)
    _check_combination(planner, combo, config, members, tasks)
    return tasks


# --------------------------------------------------------------------------- launcher per task

# The dotted keys an interpolation names: ${resources.gpus}, ${oc.select:a.b,${c}} (a.b and c;
# a resolver's own name too, which names no key and is harmless).
_REFERENCE = re.compile(r"(?<![\w.])[A-Za-z_][\w-]*(?:\.[\w-]+)*")


def _launcher_values(config: DictConfig, keys: Sequence[str]) -> dict[str, Any]:
    """The resolved values of ``hydra.launcher``'s ``keys`` in a composed config.

    Raises OmegaConfBaseException (with the key in ``.full_key``) for one that does not resolve.
    """
    if not keys or "hydra" not in config or "launcher" not in config.hydra:
        return {}
    node = config.hydra.launcher
    values = {}
    for key in keys:
        if key in node:
            value = node[key]
            values[key] = (
                OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            )
    return values


def _launcher_references(config: DictConfig, keys: Sequence[str]) -> set[str]:
    """The run-config keys the launcher's interpolations reach, through other interpolations too."""
    raw = OmegaConf.to_container(config, resolve=False)
    assert isinstance(raw, dict)
    found: set[str] = set()
    todo = [str(v) for k, v in (raw.get("hydra", {}).get("launcher") or {}).items() if k in keys]
    while todo:
        text = todo.pop()
        if "${" not in text:
            continue
        for ref in _REFERENCE.findall(text):
            if ref in found or ref.startswith("hydra."):  # Hydra's own nodes: the sweep's
                continue
            found.add(ref)
            node: Any = raw
            for part in ref.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            todo.append(str(node))  # its own interpolations, if it has any (a dict: its text)
    return found


def _reached(references: set[str]) -> Callable[[str], bool]:
    """Whether a value override's key is a reference, inside one, or holds one."""
    holders = {".".join(r.split(".")[:n]) for r in references for n in range(1, r.count(".") + 2)}

    def reaches(key: str) -> bool:
        parts = key.split(".")
        return key in holders or any(
            ".".join(parts[:n]) in references for n in range(1, len(parts))
        )

    return reaches


_NO_CHANGES: dict[str, Any] = {}


def _launchers(
    planner: _Planner, config: DictConfig, members: Sequence[_Member]
) -> list[dict[str, Any] | str]:
    """Per task of the combination, the launcher values it resolves to where they differ from
    the sweep's (tasks that resolve alike share one dict), or what is wrong with one."""
    if not planner.launcher_keys:
        return [_NO_CHANGES] * len(members)
    references = _launcher_references(config, planner.launcher_keys)
    if not references:  # nothing a value override could change: one for the combination
        return [_resolved_launcher(planner, config, ())] * len(members)
    # only the value overrides the launcher's interpolations reach: most tasks share one
    reaches, by_key = _reached(references), {}
    by_values: dict[tuple[str, ...], dict[str, Any] | str] = {}
    launchers = []
    for _, _, values in members:
        reaching: tuple[str, ...] = ()
        for v in values:
            key = planner.parse(v).key_or_group
            if key not in by_key:
                by_key[key] = reaches(key)
            if by_key[key]:
                reaching += (v,)
        if reaching not in by_values:
            by_values[reaching] = _resolved_launcher(planner, config, reaching)
        launchers.append(by_values[reaching])
    return launchers


def _resolved_launcher(
    planner: _Planner, config: DictConfig, values: Sequence[str]
) -> dict[str, Any] | str:
    """The launcher values (those that differ from the sweep's) of ``config`` with ``values``
    applied; or what is wrong where one does not resolve."""
    try:
        if values:
            config = copy.deepcopy(config)
            compat.apply_overrides(config, [planner.parse(v) for v in values])
        resolved = _launcher_values(config, planner.launcher_keys)
    except (OmegaConfBaseException, HydraException) as e:
        key = getattr(e, "full_key", None) or "hydra.launcher"
        return (
            f"{key}: {_first_line(e)} (a launcher setting of this configuration;"
            " fix the value it is set or interpolated from)"
        )
    return {k: v for k, v in resolved.items() if planner.base_launcher.get(k, v) != v}


def _task_hash(combo_hash: str, values: Sequence[str]) -> str:
    return hashlib.sha256((combo_hash + "\n" + "\n".join(sorted(values))).encode()).hexdigest()[:12]


def _run_subdir(
    planner: _Planner, subdir_pattern: Any, index: int, overrides: Sequence[str]
) -> str:
    if subdir_pattern == DEFAULT_SUBDIR:
        return str(index)
    # a pattern that depends on the overrides: compose this task to resolve it
    full = planner.compose(overrides)
    with open_dict(full):
        full.hydra.job.num = index
        full.hydra.job.id = str(index)
    return str(full.hydra.sweep.subdir)


def _check_combination(
    planner: _Planner,
    combo: tuple[str, ...],
    config: DictConfig,
    members: Sequence[_Member],
    tasks: Sequence[PlannedTask],
) -> None:
    """Every value override of the combination's tasks, typed and range-checked; the cross-field
    rules (and the workload's preflight) on one complete configuration, its first task's."""
    # Values are checked in the config typed by the workload's schema (hpcjobs' apps),
    # or in Hydra's own config (any other app: its structured configs type it).
    try:
        target = schema.typed(config) if schema.is_hpcjobs_config(config) else config
    except ConfigError as e:
        for task in tasks:
            planner.error(
                f"{' '.join(combo) or '(defaults)'}: {str(e).splitlines()[-1].strip()}", task
            )
        return
    planner.rules = (
        schema.rules(schema.workload_schema(target)) if schema.is_hpcjobs_config(target) else {}
    )
    _check_values(planner, target, members, tasks)
    _assign(planner, target, members[0][2])
    for error in schema.config_errors(target):
        planner.error(error, tasks[0])


def _invalid(errors: dict[str, list[PlannedTask]], n: int) -> ConfigError:
    """Every problem once, with how many of the n configurations it affects and an example."""
    lines = []
    for message, where in errors.items():
        scope = "every configuration" if len(where) == n else f"{len(where)} of {n}"
        lines.append(f"  {message}\n      in {scope}, e.g. {where[0].label}")
    return ConfigError(
        f"Invalid configuration; nothing was submitted ({n} configurations checked):\n"
        + "\n".join(lines)
    )


_ABSENT = object()


def _assign(planner: _Planner, config: DictConfig, values: Sequence[str]) -> None:
    """Apply value overrides to ``config``, which earlier values of the same sweep may have changed.

    ``+key=v`` appends a key the composed config lacks. Once one value of a sweep
    (``+tag=a,b``) has added it, the next one replaces it: it is applied as ``++key=v``.
    """
    overrides = []
    for text in values:
        override = planner.parse(text)
        if (
            override.is_add()
            and OmegaConf.select(config, override.key_or_group, default=_ABSENT) is not _ABSENT
            and override.key_or_group in planner.added
        ):
            override = planner.parse("+" + text)
        elif override.is_add():
            planner.added.add(override.key_or_group)
        overrides.append(override)
    compat.apply_overrides(config, overrides)


def _check_values(
    planner: _Planner,
    config: DictConfig,
    members: Sequence[_Member],
    tasks: Sequence[PlannedTask],
) -> None:
    """Assign each distinct value override once, typed, and check its field's rule."""
    checked: dict[str, str | None] = {}
    for (_, _, values), task in zip(members, tasks):
        for value in values:
            if value not in checked:
                checked[value] = _value_error(planner, config, value)
            if checked[value]:
                planner.error(checked[value], task)  # type: ignore[arg-type]


def _value_error(planner: _Planner, config: DictConfig, text: str) -> str | None:
    override = planner.parse(text)
    if override.is_delete():
        return None
    key = override.key_or_group
    value = (
        override.value()
        if override.type == OverrideType.CHANGE and override.value_type == ValueType.ELEMENT
        else None
    )
    if planner.numeric.get(key) is type(value) and type(value) in (int, float):
        rule = planner.rules.get(key)  # typed like the last one: only its rule to check
        return None if rule is None else schema.rule_error(key, value, rule)
    try:
        _assign(planner, config, [text])
    except HydraException as e:
        unknown = schema.unknown_key(config, key) if schema.is_hpcjobs_config(config) else None
        return unknown or f"{text}: {_first_line(e)}"
    try:  # reading it back resolves it: an interpolation to nowhere (`key=${nowhere}`) fails here
        if type(value) in (int, float) and type(
            OmegaConf.select(config, key, default=None)
        ) is type(value):
            planner.numeric[key] = type(value)
        return schema.field_error(config, key)
    except OmegaConfBaseException as e:
        return f"{text}: {_first_line(e)}"
