"""Resources per configuration: a sweep's tasks grouped by the launcher settings they ask for.

A Slurm array asks the same resources for every one of its tasks. A sweep whose
configurations set their own (``hydra.launcher.gres: ${resources.gres}`` with
``resources=cpu,gpu1,gpu2``: each configuration's value is resolved when the sweep is
planned, hpcjobs/config/planning.py) is split into groups of tasks that ask the same; each
group is one submission (Slurm: its own arrays; with workers, its own pool). One sweep
directory, one sweep.json (each task's group recorded with it), one `status`, `collect`, `retry`.

Which keys may differ between configurations is the backend's to say (``Backend.job_keys``:
what it asks per job). A key some other backend reads per job (``gres`` in a local sweep) is
ignored, as the whole sweep's is; a key that is the sweep's alone (``workers``, ``wait``) must
not differ, and a sweep where it does is refused before anything is submitted.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpcjobs.errors import ConfigError
from hpcjobs.launching import backends
from hpcjobs.launching.backends.base import Backend
from hpcjobs.launching.settings import LauncherSettings

if TYPE_CHECKING:  # `status` shows groups and loads no Hydra
    from hpcjobs.config.planning import PlannedTask

# What planning resolves per configuration: every launcher key but the sweep's own paths.
RESOLVED_KEYS = tuple(
    f.name
    for f in dataclasses.fields(LauncherSettings)
    if f.name not in ("_target_", "submitit_folder")
)
DEFAULT = "default"  # how the group of tasks that ask the sweep's own settings is shown


@dataclass
class Group:
    """Tasks that ask the same launcher settings: the sweep's, ``changes`` applied."""

    id: str | None  # as sweep.json records it; None: the sweep's own settings (no changes)
    changes: dict[str, Any]
    tasks: list[PlannedTask] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.id or DEFAULT

    def settings(self, sweep: LauncherSettings) -> LauncherSettings:
        return dataclasses.replace(sweep, **self.changes)


def describe_changes(changes: Mapping[str, Any]) -> str:
    """'gres=gpu:typeb:2 partition=gpub'; "the sweep's settings" for none."""
    shown = " ".join(f"{k}={_text(v)}" for k, v in sorted(changes.items()))
    return shown or "the sweep's settings"


def group_tasks(
    tasks: Sequence[PlannedTask],
    backend: Backend,
    known: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Group]:
    """The tasks by the launcher settings they ask ``backend`` for, in the order of each group's
    first task; each group checked by the backend. ``known``: the groups an existing sweep has
    (sweep.json's ``groups``): a group that asks the same keeps its id.

    Raises ConfigError naming the configurations, before anything is submitted.
    """
    per_job = type(backend).job_keys
    read_per_job_elsewhere = set().union(*(b.job_keys for b in backends.BACKENDS.values()))
    known = known or {}
    ids = {_identity(changes): gid for gid, changes in known.items()}
    found: dict[str, Group] = {}
    sweep_wide: dict[str, list[PlannedTask]] = {}
    # planning hands tasks that resolve alike one shared dict: each is looked at once
    seen: dict[int, tuple[dict[str, Any], str, list[str]]] = {}
    for task in tasks:
        if id(task.launcher) not in seen:
            changes = {k: v for k, v in task.launcher.items() if k in per_job}
            wide = [
                k for k in task.launcher if k not in per_job and k not in read_per_job_elsewhere
            ]
            seen[id(task.launcher)] = (changes, _identity(changes), wide)
        changes, identity, wide = seen[id(task.launcher)]
        for key in wide:
            sweep_wide.setdefault(key, []).append(task)
        if identity not in found:
            if not changes:
                gid = None
            else:
                gid = ids.get(identity) or _new_id(
                    set(known) | {g.id for g in found.values() if g.id}
                )
            found[identity] = Group(gid, changes)
        found[identity].tasks.append(task)
    if sweep_wide:
        lines = [
            f"  hydra.launcher.{key} differs in {len(where)} configuration(s),"
            f" e.g. {where[0].label}"
            for key, where in sorted(sweep_wide.items())
        ]
        raise ConfigError(
            "Launcher settings that are the whole sweep's differ between its configurations;"
            " nothing was submitted:\n"
            + "\n".join(lines)
            + f"\n  Only what each job asks for may differ ({', '.join(sorted(per_job))}):"
            " set the others once for the sweep (on the command line or in the experiment)."
        )
    groups = list(found.values())
    for group in groups:
        check(group, backend)
    return groups


def check(group: Group, backend: Backend) -> None:
    """The group's settings as the backend checks them; the error names its configurations."""
    if not group.changes:
        return  # the sweep's own: checked when the backend was made
    try:
        backends.create(backend.name, group.settings(backend.settings)).check()
    except ConfigError as e:
        raise ConfigError(
            f"The resources of {len(group.tasks)} configuration(s)"
            f" ({describe_changes(group.changes)}, e.g. {group.tasks[0].label}) are refused;"
            f" nothing was submitted:\n{e}"
        ) from None


def with_shared_workers(backend: Backend, changes: Iterable[Mapping[str, Any]]) -> Backend:
    """The sweep's backend, its workers the fewest that any of its resources groups allows
    where the backend chose them (local, ``workers`` unset: cores // cpus_per_task, 0 for a
    distributed run). ``workers`` is the sweep's, one number for each group's pool (sweep.json
    records one), so a group that asks more CPUs per run must not get the sweep's count."""
    if not backend.workers_defaulted:
        return backend
    unset = dataclasses.replace(backend.settings, workers=None)
    fewest = min(
        [int(backend.settings.workers or 0)]
        + [
            int(
                backends.create(backend.name, dataclasses.replace(unset, **c)).settings.workers or 0
            )
            for c in changes
        ]
    )
    if fewest == backend.settings.workers:
        return backend
    made = backends.create(
        backend.name, dataclasses.replace(backend.settings, workers=fewest), backend.environment
    )
    made.workers_defaulted = True
    return made


def backend_for(
    backend: Backend, settings: LauncherSettings, environment: Mapping[str, str] | None = None
) -> Backend:
    """A group's backend: its settings, with the sweep's workers where the backend chose
    them (see with_shared_workers), still marked as chosen."""
    if backend.workers_defaulted:
        settings = dataclasses.replace(settings, workers=backend.settings.workers)
    made = backends.create(backend.name, settings, environment)
    made.workers_defaulted = backend.workers_defaulted
    return made


def one_group(tasks: Sequence[PlannedTask]) -> list[Group]:
    """All tasks in the sweep's own settings (a sweep whose configurations set none)."""
    return [Group(None, {}, list(tasks))]


def _identity(changes: Mapping[str, Any]) -> str:
    return json.dumps(changes, sort_keys=True, default=str)


def _new_id(taken: set[str]) -> str:
    n = 1
    while f"r{n}" in taken:
        n += 1
    return f"r{n}"


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
