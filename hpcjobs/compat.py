"""Every use of Hydra's and submitit's internals, in one place.

hpcjobs leans on a few things neither project documents as public API: Hydra's
argument parser, its override application, its basic sweeper and its config loader's
search path, submitit's log-path helper and sbatch-script renderer, and a JobReturn's
raw value. Each is wrapped here, once, so an upgrade that moves one breaks this module
and nothing else. The supported version ranges are the ones pyproject.toml declares;
:func:`version_problems` checks the installed versions against them
(tests/test_compat.py runs every wrapper).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Hydra is imported where it is used: `status` and `collect` load none of it
    from hydra.core.override_parser.types import Override
    from hydra.core.utils import JobReturn
    from omegaconf import DictConfig

# The packages whose internals are used here; their ranges come from hpcjobs' metadata.
PINNED = ("hydra-core", "omegaconf", "submitit")


def basic_sweeper() -> tuple[type, type]:
    """(BasicSweeper, BasicSweeperConf): Hydra's grid sweeper, to subclass.

    Looked up when called, not at import: Hydra's plugin discovery re-executes its core
    plugin modules, and a subclass of a class object it has since replaced breaks super().
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf

    return BasicSweeper, BasicSweeperConf


def hydra_args_parser() -> argparse.ArgumentParser:
    """Hydra's own command-line parser (options such as --multirun, --config-dir)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


def apply_overrides(config: DictConfig, overrides: Sequence[Override]) -> None:
    """Apply parsed value overrides to a composed config, exactly as Hydra's composition does."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    ConfigLoaderImpl._apply_overrides_to_config(list(overrides), config)


def set_in_place(config: DictConfig, values: Mapping[str, Any]) -> None:
    """Set dotted keys of a config that may be read-only (Hydra's node), each to a value of its
    node's type, as an assignment under ``read_write`` does.

    Where the key holds a value, or a list of as many values, the value nodes themselves take
    the new values (checked by their type, as an assignment is). An assignment would flip the
    read-only flag of the node above, and OmegaConf then re-reads the flags of every node below
    it: a worker sets a task's five Hydra fields (hydra.job.num, ...) in two trees per run, and
    that was most of what it cost. Anything else (a new key, a list of another length, a
    container): the assignment.
    """
    from omegaconf import ListConfig, ValueNode, read_write

    for key, value in values.items():
        *path, last = key.split(".")
        parent: Any = config
        for part in path:
            parent = parent._get_node(part)
        node = parent._get_node(last, throw_on_missing_key=False)
        if isinstance(node, ValueNode) and _plain(value):
            node._val = node.validate_and_convert(value)
            continue
        items: Any = node._content if isinstance(node, ListConfig) else None
        if (
            isinstance(items, list)
            and isinstance(value, (list, tuple))
            and len(items) == len(value)
            and all(isinstance(n, ValueNode) and _plain(v) for n, v in zip(items, value))
        ):
            for item, v in zip(items, value):
                item._val = item.validate_and_convert(v)
            continue
        with read_write(parent):
            parent[last] = value


def _plain(value: Any) -> bool:
    """A value an assignment would store as it is after its type's check (no interpolation, not
    None: a node's handling of those depends on its flags)."""
    return value is not None and not (isinstance(value, str) and "${" in value)


def overrides_dirname(
    overrides: Sequence[Override], exclude_keys: list[str], item_sep: str, kv_sep: str
) -> str:
    """hydra.job.override_dirname for a task's overrides, as Hydra's composition computes it."""
    from hydra._internal.config_loader_impl import get_overrides_dirname

    return get_overrides_dirname(
        overrides=list(overrides), exclude_keys=exclude_keys, item_sep=item_sep, kv_sep=kv_sep
    )


def job_return_value(ret: JobReturn) -> Any:
    """What the task function returned, or the exception it raised (``.return_value`` re-raises)."""
    return ret._return_value


def submitit_log_paths(folder: str | Path, job_id: str) -> tuple[Path, Path]:
    """(stdout, stderr) of a submitit job's first task, from its folder pattern: what
    submitit's ``JobPaths(folder, job_id).stdout/.stderr`` are (tests/test_compat.py checks
    it), without its Path work per call: status asks it for thousands of tasks (46 us each)."""
    folder = str(folder)
    # absolute, as submitit makes it (a relative one against the working directory of now)
    absolute = (
        _absolute(folder) if folder.startswith("/") else str(Path(folder).expanduser().absolute())
    )
    base = _submitit_format(f"{absolute}/%j_%t_log", job_id, task_id=0)
    return Path(f"{base}.out"), Path(f"{base}.err")


@functools.lru_cache(maxsize=16)
def _absolute(folder: str) -> str:
    return str(Path(folder).absolute())  # normalized: no '//', no trailing '/'


def _submitit_format(pattern: str, job_id: str, task_id: int) -> str:
    """submitit's tags in a path: %j the job id (ARRAYID_INDEX for an array task), %t the
    task, %A and %a the array's id and the index."""
    text = pattern.replace("%j", job_id).replace("%t", str(task_id))
    array_id, _, index = job_id.partition("_")
    if "%a" in text:
        if not index:
            raise ValueError(f"%a is in {pattern} but job {job_id} is not an array task")
        text = text.replace("%a", index)
    return text.replace("%A", array_id)


def submitit_result_pickle(folder: str | Path, job_id: str) -> Path:
    from submitit.core.utils import JobPaths

    return Path(JobPaths(folder, job_id=job_id, task_id=0).result_pickle)


def submitit_stop_signal() -> int:
    """The signal submitit has Slurm send before the time limit (sbatch --signal; USR2 unless
    SUBMITIT_PREEMPT_SIGNAL says otherwise), and handles in the task."""
    from submitit.core.job_environment import JobEnvironment

    return JobEnvironment._usr_sig()


def submitit_requeue() -> None:
    """Requeue the submitit task this process runs, as submitit's own signal handler does.

    Slurm: ``scontrol requeue`` of the job id submitit names, ``ARRAYID_INDEX`` for an array
    task (the task, not the array); rank 0 only. Local: exits with the code on which
    submitit's local controller restarts the task.
    """
    import submitit

    env = submitit.JobEnvironment()
    if env.global_rank == 0:
        # the countdown is only logged; hpcjobs counts in the run directory
        env._requeue(countdown=0)


def _config_dir(search_path_entry: str) -> str | None:
    """A search path entry's directory ('file:///a/conf' or '/a/conf'); None for pkg:// etc."""
    if search_path_entry.startswith("file://"):
        return search_path_entry[len("file://") :]
    return None if "://" in search_path_entry else search_path_entry


def config_dirs(hydra_context: Any) -> list[str]:
    """The file-system directories on Hydra's config search path."""
    found = (_config_dir(e.path) for e in hydra_context.config_loader.get_search_path().get_path())
    return [d for d in found if d]


def with_config_dirs_moved(hydra_context: Any, moved: dict[str, str]) -> Any:
    """A copy of Hydra's context whose config loader reads each config directory in ``moved``
    (old path -> new path) from its new place. Tasks compose their config again where they
    run, from the search path pickled with the context: this points it at copied files."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.types import HydraContext

    search_path = ConfigSearchPathImpl()
    for element in hydra_context.config_loader.get_search_path().get_path():
        path, directory = element.path, _config_dir(element.path)
        if directory in moved:
            path = path.replace(directory, moved[directory], 1)
        search_path.append(element.provider, path)
    return HydraContext(
        config_loader=ConfigLoaderImpl(config_search_path=search_path),
        callbacks=hydra_context.callbacks,
    )


def sbatch_script(executor: Any) -> str:
    """The sbatch script a submitit SlurmExecutor would submit, for a dry run."""
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


def version_problems(installed: dict[str, str] | None = None) -> list[str]:
    """Installed versions of PINNED packages outside the ranges hpcjobs declares ([] = fine)."""
    from packaging.requirements import Requirement

    try:
        declared = [Requirement(r) for r in metadata.requires("hpcjobs") or []]
    except metadata.PackageNotFoundError:
        return []  # running from a source tree that was never installed: nothing declared
    problems = []
    for req in declared:
        if req.name not in PINNED or req.marker is not None:
            continue
        try:
            version = (installed or {}).get(req.name) or metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req.name} is not installed (hpcjobs needs {req})")
            continue
        if not req.specifier.contains(version, prereleases=True):
            problems.append(
                f"{req.name} {version} is installed; hpcjobs supports {req} (pip install '{req}')"
            )
    return problems
