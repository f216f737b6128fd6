"""Launching a sweep: from validated tasks to submitted jobs, whichever Hydra app and sweeper ask.

The Hydra launcher plugin (hydra_plugins/hpcjobs_launcher/launcher.py) adapts Hydra's
Launcher interface to these steps; the decisions are made here:

- the sweep directory: resolved once, claimed when time-stamped, pinned in the config
  (:func:`pin_sweep_dir`), with Hydra's ``multirun.yaml`` (:func:`prepare`);
- the backend: made from the typed settings, checked before anything is written (:func:`prepare`);
- adding to an existing sweep: only one on the same backend and not a study
  (:func:`sweep_to_add_to`); configurations that completed there are skipped unless
  ``rerun_completed`` (:func:`not_completed`);
- what the tasks run: pickled once per sweep, with its code snapshot and a record of the
  code it was submitted with (:func:`write_payload`);
- sweep.json: every task recorded before its job is submitted (:func:`manifest_with_tasks`),
  with its resources group where its configuration asks its own (hpcjobs/launching/groups.py);
- submitting, one submission per resources group, and waiting where the backend blocks or
  ``hydra.launcher.wait`` says (:func:`submit`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hpcjobs import atomic, compat, processes, states
from hpcjobs.config.planning import PlannedTask
from hpcjobs.deprecation import renamed
from hpcjobs.errors import ConfigError
from hpcjobs.launching import backends, groups, provenance, snapshot, submission
from hpcjobs.launching.backends.base import Backend
from hpcjobs.launching.claim import claim
from hpcjobs.launching.settings import LauncherSettings
from hpcjobs.sweepdir import manifest, payloads, runfiles

log = logging.getLogger(__name__)


def pin_sweep_dir(config: DictConfig) -> Path:
    """Resolve ``hydra.sweep.dir`` once and pin it in the config, for every task of the sweep.

    A time-stamped directory (``${now:...}``, Hydra's default) belongs to one sweep:
    another one started in the same second gets ``<dir>_2`` instead (hpcjobs.launching.claim).
    A fixed directory is the user's choice; runs into it follow Hydra's rules.
    """
    pattern = str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("dir", ""))  # type: ignore[union-attr]
    sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
    if "${now:" in pattern:
        claimed = claim(sweep_dir)
        if claimed != sweep_dir:
            log.info(
                "hpcjobs: %s belongs to another sweep started at the same time; this one is %s",
                sweep_dir,
                claimed,
            )
        sweep_dir = claimed
    with read_write(config.hydra.sweep), open_dict(config):
        config.hydra.sweep.dir = str(sweep_dir)
    return sweep_dir


def prepare(settings: LauncherSettings, config: DictConfig) -> tuple[Backend, Path]:
    """The backend (checked) and the sweep directory (pinned, claimed, with multirun.yaml)."""
    for problem in compat.version_problems():
        log.warning("hpcjobs: %s", problem)
    requested = settings.executor or backends.AUTO
    backend = backends.create(requested, settings)
    if requested == backends.AUTO:
        log.info(
            "hpcjobs launcher: %s",
            "sbatch found: submitting to Slurm"
            if backend.name == "slurm"
            else "no sbatch on PATH: running local processes",
        )
    backend.check()
    sweep_dir = pin_sweep_dir(config)
    # a new fixed hydra.sweep.dir: Hydra's sweeper may not have
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not (sweep_dir / "multirun.yaml").exists():  # Hydra's sweeper wrote it for the path it had
        OmegaConf.save(config, sweep_dir / "multirun.yaml")
    # Hydra resolved the launcher settings before the sweep dir was pinned (and claimed): the
    # backend for this sweep keeps its jobs' files in the pinned one.
    pinned = dataclasses.replace(
        settings, submitit_folder=str(config.hydra.launcher.submitit_folder)
    )
    return backends.create(backend.name, pinned), sweep_dir


def sweep_to_add_to(sweep_dir: Path, backend: Backend) -> manifest.SweepManifest:
    """The existing sweep that ``hydra.sweep.dir`` names, if this sweep may add tasks to it."""
    existing = manifest.read(sweep_dir)
    if existing.executor != backend.name:
        raise ConfigError(
            f"{sweep_dir} is a sweep on {existing.executor}: add to it with "
            f"hydra/launcher=hpcjobs_{existing.executor}, or give this one its own directory"
        )
    if existing.study:
        raise ConfigError(
            f"{sweep_dir} holds an adaptive sweep (a study): give this sweep its own directory"
        )
    return existing


def not_completed(
    tasks: Sequence[PlannedTask], sweep: manifest.SweepManifest, rerun_completed: bool
) -> list[PlannedTask]:
    """The tasks whose configuration ``sweep`` has not completed (all, with rerun_completed)."""
    completed = set()
    for record in sweep.tasks:
        with contextlib.suppress(runfiles.CorruptRunFile):
            if (runfiles.read_metrics(sweep.run_dir(record)) or {}).get(
                "status"
            ) == states.COMPLETED:
                completed.add(record.config_hash)
    done = [t for t in tasks if t.config_hash in completed]
    if not done:
        return list(tasks)
    if rerun_completed:
        log.info(
            "%d configuration(s) completed already in %s: run again in new run directories "
            "(rerun_completed=true)",
            len(done),
            sweep.sweep_dir,
        )
        return list(tasks)
    log.info(
        "%d of %d configuration(s) completed already in %s: skipped "
        "(hydra.launcher.rerun_completed=true runs them again, in new run directories)",
        len(done),
        len(tasks),
        sweep.sweep_dir,
    )
    return [t for t in tasks if t.config_hash not in completed]


@dataclass
class Payload:
    """What a sweep's tasks run, as :func:`write_payload` wrote it (its later batches share it)."""

    path: Path
    # what the tasks need to import its snapshot
    environment: dict[str, str] = field(default_factory=dict)
    code_record: dict[str, Any] | None = (
        None  # the code it was submitted with (sweep.json's provenance)
    )


def write_payload(
    sweep_dir: Path,
    backend: Backend,
    hydra_context: HydraContext,
    task_function: TaskFunction,
    config: DictConfig,
    take_snapshot: bool,
) -> Payload:
    """Pickle what the tasks share, once per sweep, into its private folder; with
    ``take_snapshot``, copy the code they import beside it; record which code that is."""
    import cloudpickle  # submitit's own serializer: handles OmegaConf's resolver closures

    # Named uniquely: tasks of an earlier sweep into the same directory, still
    # queued, must keep reading their own payload, not this one.
    sweep_id = uuid.uuid4().hex[:12]
    # Where every reader looks (payloads.find), whatever hydra.launcher.submitit_folder says.
    payload_path = _private_dir(sweep_dir / payloads.PRIVATE_DIR) / payloads.file_name(sweep_id)
    frozen, cwd, environment = None, Path.cwd(), {}
    if take_snapshot:  # the tasks import a copy of the code, taken now
        frozen = payloads.code_dir(payload_path)
        hydra_context = snapshot.take(frozen, hydra_context, cwd)
        environment = snapshot.environment(frozen, cwd)
    payload = payloads.SweepPayload(hydra_context, task_function, config, Singleton.get_state())
    atomic.write_bytes(payload_path, cloudpickle.dumps(payload))
    code_record = provenance.capture_code(sweep_dir, sweep_id, _relative(frozen, sweep_dir), cwd)
    return Payload(payload_path, environment, code_record)


def manifest_with_tasks(
    tasks: Sequence[PlannedTask],
    backend: Backend,
    sweep_dir: Path,
    config: DictConfig,
    adding: bool,
    payload: str,
    code_record: dict | None,
    study: dict | None = None,
    roles: Mapping[int, str] | None = None,
    resources: Sequence[groups.Group] = (),
) -> manifest.SweepManifest:
    """sweep.json with ``tasks`` in it: a new sweep's, or an existing one's (``adding``) with
    them added; written now unless a worker pool's submission writes it (with the pool).
    ``resources``: the tasks' groups where their configurations ask their own settings."""
    roles = roles or {}
    group_of = {t.index: g.id for g in resources if g.id for t in g.tasks}
    records = [
        manifest.TaskRecord(
            t.index,
            list(t.overrides),
            t.run_subdir,
            t.config_hash,
            payload=payload,
            role=roles.get(t.index),
            group=group_of.get(t.index),
        )
        for t in tasks
    ]
    if adding and manifest.exists(sweep_dir):
        sweep = manifest.read(sweep_dir)
        known = {t.index for t in records}
        sweep.tasks = [t for t in sweep.tasks if t.index not in known] + records
        sweep.launcher_host = socket.gethostname()  # this process runs the new tasks
        sweep.launcher_pid, sweep.launcher_started = processes.this_process()
    else:
        sweep = manifest.SweepManifest(
            # hpcjobs' apps name their experiment; any other Hydra app is named by its job name.
            experiment=str(config.get("experiment_name") or config.hydra.job.name),
            sweep_dir=str(sweep_dir),
            executor=backend.name,
            git_commit=provenance.git_commit(),
            # As the backend runs it: an adaptive sweep's default number of workers included;
            # a local sweep's default left unset, so that `retry` applies the rule again.
            launcher={
                **OmegaConf.to_container(config.hydra.launcher, resolve=True),  # type: ignore[dict-item]
                "workers": None if backend.workers_defaulted else backend.settings.workers,
            },
            tasks=records,
            payload=payload,
            study=study,
        )
    sweep.groups.update({g.id: g.changes for g in resources if g.id})
    for record in records:  # most tasks run the sweep's own payload: said once, not per task
        if record.payload == sweep.payload:
            record.payload = None
    if code_record is not None:  # this command's code (a later batch of it runs the same)
        sweep.provenance.append(code_record)
    if not backend.settings.workers:  # a pool's submission writes it, with the pool (submit_pool)
        manifest.write(sweep)
    return sweep


def submit(
    backend: Backend,
    sweep: manifest.SweepManifest,
    tasks: Sequence[PlannedTask],
    payload: Payload,
    runners: submission.Runners,
    resources: Sequence[groups.Group] = (),
) -> list[JobReturn]:
    """Submit the tasks, one submission per resources group (all at once where none is given);
    where the backend blocks or ``hydra.launcher.wait`` says, wait for them and return their
    JobReturns, in task order (else none: the sweep goes on detached).

    A blocking backend (local processes) runs one group after the other."""
    submitted = []
    job_ids: dict[int, str] = {}
    for group in resources or groups.one_group(tasks):
        made = group_backend(backend, group).with_environment(payload.environment)
        job_ids.update(submission.submit(made, sweep, group.tasks, payload.path, runners))
        submitted.append((made, group))
    if not (backend.blocking or backend.settings.wait):
        return []
    returns: dict[int, JobReturn] = {}
    for made, group in submitted:
        returns.update(submission.wait_by_index(made, sweep, group.tasks, job_ids))
    log.info(
        "sweep directory: %s (python -m hpcjobs collect|report %s)",
        sweep.sweep_dir,
        sweep.sweep_dir,
    )
    return [returns[t.index] for t in tasks if t.index in returns]


def group_backend(backend: Backend, group: groups.Group) -> Backend:
    """The backend a group's tasks are submitted with: the sweep's, its changes applied."""
    if not group.changes:
        return backend
    return groups.backend_for(backend, group.settings(backend.settings), backend.environment)


def describe_dry_run(
    tasks: Sequence[PlannedTask],
    backend: Backend,
    sweep_dir: Path,
    resources: Sequence[groups.Group] = (),
) -> str:
    """What a dry run prints: the task table, the backend's view of each submission (one per
    resources group: its settings and tasks), the sweep dir."""
    resources = resources or groups.one_group(tasks)
    several = len(resources) > 1 or any(g.id for g in resources)
    group_of = {t.index: g.name for g in resources for t in g.tasks}
    width = max(len(t.run_subdir) for t in tasks)
    gwidth = max(len(g.name) for g in resources)
    column = f"{'resources':<{max(gwidth, 9)}}  " if several else ""
    lines = [
        f"dry run: {len(tasks)} tasks would run ({backend.name}); nothing was submitted",
        f"{'run_dir':<{width}}  {column}config_hash   overrides",
    ]
    for t in tasks:
        shown = f"{group_of[t.index]:<{max(gwidth, 9)}}  " if several else ""
        lines.append(f"{t.run_subdir:<{width}}  {shown}{t.config_hash}  {' '.join(t.overrides)}")
    for group in resources:
        if several:
            lines.append(
                f"resources {group.name} ({len(group.tasks)} task(s): {_indices(group.tasks)}):"
                f" {groups.describe_changes(group.changes)}"
            )
        described = group_backend(backend, group).describe(len(group.tasks))
        if described:
            lines.append(described)
    lines.append(f"sweep directory would be: {sweep_dir}")
    return "\n".join(lines)


def _indices(tasks: Sequence[PlannedTask], shown: int = 20) -> str:
    """'0 3 6' (the first ``shown`` task numbers; '...' for the rest)."""
    numbers = " ".join(str(t.index) for t in tasks[:shown])
    return numbers + (f" ... ({len(tasks) - shown} more)" if len(tasks) > shown else "")


def _relative(path: Path | None, base: Path) -> str | None:
    if path is None:
        return None
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def _private_dir(path: Path) -> Path:
    """Create a folder only its owner can enter: it will hold pickled payloads."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


record_tasks = renamed(manifest_with_tasks, "record_tasks")  # its old name
