"""Submitting tasks of a sweep, the first time or again, recorded in sweep.json as it happens.

The launcher submits a new sweep's tasks; `retry` resubmits the ones that did not
complete. Both go through :func:`submit`, which records each task's attempt (job id,
when, why) as soon as the backend says the scheduler accepted it, so a submission
refused part-way leaves a manifest that says exactly which tasks are queued.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpcjobs.config.planning import PlannedTask
from hpcjobs.errors import SweepDirError
from hpcjobs.launching import backends, manifest
from hpcjobs.launching.backends.base import Backend
from hpcjobs.run.task import TaskRunner


def submit(backend: Backend, sweep: manifest.SweepManifest, tasks: Sequence[PlannedTask], payload: Path,
           why: str = "submitted") -> dict[int, str]:
    """Hand ``tasks`` to ``backend``; each accepted task gets an attempt in ``sweep`` (written at once)."""
    records = {t.index: t for t in sweep.tasks}

    def on_submitted(job_ids: Mapping[int, str | None]) -> None:
        for index, job_id in job_ids.items():
            records[index].submitted(job_id, why)
        manifest.write(sweep)

    return backend.submit(tasks, lambda task, cpus: TaskRunner(str(payload), task.index, task.overrides, cpus),
                          on_submitted)


def planned(record: manifest.TaskRecord) -> PlannedTask:
    """A manifest's task as it was planned (validated before its first submission)."""
    return PlannedTask(record.index, tuple(record.overrides), record.run_dir, record.config_hash)


def resubmit(sweep_dir: Path, reasons: Mapping[int, str], launcher_changes: Mapping[str, Any]
             ) -> tuple[Backend, manifest.SweepManifest, dict[int, str]]:
    """Submit the given tasks of a sweep again (task index -> why), with changed launcher settings.

    Each task runs again in its own run directory, from its checkpoint where it left one.
    Raises SweepDirError when the sweep cannot be resubmitted from here.
    """
    sweep = manifest.read(sweep_dir)
    unknown = sorted(set(launcher_changes) - set(sweep.launcher))
    if unknown:
        from hpcjobs.errors import ConfigError, choices_hint

        raise ConfigError(f"unknown launcher setting(s) {', '.join(unknown)}: {choices_hint(sweep.launcher)}")
    params = {**sweep.launcher, **launcher_changes}
    sweep.launcher = params
    backend = backends.create(sweep.executor, params)
    backend.check()
    records = [t for t in sweep.tasks if t.index in reasons]
    if backend.blocking:  # the runs are this process's children now: it is their launcher
        sweep.launcher_pid, sweep.launcher_started = manifest.this_process()
    job_ids: dict[int, str] = {}
    # One submission per payload and reason: each attempt's why exact, each task its own code.
    groups: dict[tuple[Path, str], list[PlannedTask]] = {}
    for record in records:
        groups.setdefault((sweep_payload(sweep, record), reasons[record.index]), []).append(planned(record))
    for (payload, why), group in sorted(groups.items()):
        job_ids.update(submit(backend, sweep, group, payload, why=f"retry: {why}"))
    return backend, sweep, job_ids


def sweep_payload(sweep: manifest.SweepManifest, task: manifest.TaskRecord) -> Path:
    """What a task runs, as pickled at submission (private submitit folder)."""
    folder = Path(sweep.sweep_dir) / ".submitit"
    name = task.payload or sweep.payload
    payload = folder / name if name else None
    if payload is None or not payload.is_file():
        found = sorted(folder.glob("sweep_payload*.pkl"))
        if len(found) != 1:
            raise SweepDirError(
                f"{folder}: cannot tell which pickled payload the tasks run ({len(found)} found): "
                "submit the sweep again instead"
            )
        payload = found[0]
    return payload
