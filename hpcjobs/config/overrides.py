"""Command-line overrides checked before Hydra runs anything.

Hydra would answer a misspelt key with "Key 'epoch' is not in struct" and suggest
appending it with '+'; here the message names the valid keys instead. A single run
(no --multirun) is validated whole before Hydra creates its run directory; a sweep is
validated by the launcher, every configuration before any is submitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from hpcjobs.config import planning, schema
from hpcjobs.errors import ConfigError


def precheck(
    overrides: Sequence[str],
    *,
    config_dir: str,
    config_name: str,
    user_config_dir: str | None,
    single_run: bool,
) -> list[str]:
    """The overrides to hand to Hydra; ConfigError: an unknown key or (one run) any invalid value.

    A key the workload's schema declares but no yaml lists (``net.activation=gelu``) is
    set as ``++net.activation=gelu``: Hydra, which composes yaml only, would refuse it.
    What Hydra itself reports well (a syntax error, an unknown config group option) is
    left to Hydra. Nothing has run when this raises.
    """
    overrides = list(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return overrides
    extra = [f"hydra.searchpath=[file://{user_config_dir}]"] if user_config_dir else []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            groups = planning.all_groups(GlobalHydra.instance().config_loader())
            if user_config_dir:  # the user's own config groups (--config-dir) are folders there
                groups |= {p.name for p in Path(user_config_dir).iterdir() if p.is_dir()}
            choices = [
                text for text, o in zip(overrides, parsed) if _is_choice(o.key_or_group, groups)
            ]
            try:
                base = compose(config_name, overrides=choices + extra, return_hydra_config=True)
            except (HydraException, ValueError):
                return overrides
            values = [
                (i, o) for i, o in enumerate(parsed) if not _is_choice(o.key_or_group, groups)
            ]
            for i in _check_keys(base, [o for _, o in values]):
                overrides[values[i][0]] = "++" + overrides[values[i][0]]
            if single_run:
                try:
                    whole = compose(config_name, overrides=overrides + extra)
                except (HydraException, ValueError):
                    return overrides
                schema.validate(whole)
    finally:
        GlobalHydra.instance().clear()
    return overrides


def _is_choice(key: str, groups: set[str]) -> bool:
    return key in groups or "/" in key


def _check_keys(base: DictConfig, values: Sequence) -> list[int]:
    """Raise ConfigError naming every unknown key; the positions of keys only the schema has."""
    composed = schema.run_part(base)
    run_config = schema.typed(base) if schema.is_hpcjobs_config(base) else composed
    problems, schema_only = [], []
    for position, override in enumerate(values):
        key = override.key_or_group
        if (
            override.is_add()
            or override.is_force_add()
            or override.is_delete()
            or override.package is not None
        ):
            continue  # adding or deleting a key: Hydra checks it
        if key.startswith("hydra.launcher."):
            # Launcher schemas are dataclasses (ours and Hydra's): misspelt keys have an answer.
            problem = schema.unknown_key(
                base.hydra.launcher, key.removeprefix("hydra.launcher."), node_name="hydra.launcher"
            )
        elif key.startswith("hydra."):
            continue
        else:
            problem = schema.unknown_key(run_config, key)
            if not problem and OmegaConf.select(composed, key, default=_ABSENT) is _ABSENT:
                schema_only.append(position)
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError("\n".join(problems) + "\n(nothing was run or submitted)")
    return schema_only


_ABSENT = object()
