"""What a sweep's tasks run: the pickled payloads in its private folder, and their code snapshots.

The launcher pickles what a sweep's tasks share once (:class:`SweepPayload`) into
``<sweep_dir>/.submitit/sweep_payload.<sweep id>.pkl`` (a folder only its owner may enter);
with ``hydra.launcher.snapshot=true`` the code the tasks import is copied beside it, into
``code.<sweep id>/`` (hpcjobs/launching/snapshot.py). sweep.json names each task's payload
(its own, or the sweep's); a task, a worker and `retry` find it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcjobs.errors import SweepDirError
from hpcjobs.sweepdir.manifest import SweepManifest, TaskRecord

if TYPE_CHECKING:
    from hydra.types import HydraContext, TaskFunction
    from omegaconf import DictConfig

PRIVATE_DIR = ".submitit"  # <sweep_dir>/.submitit: the payloads, and submitit's own files per job
_PREFIX, _SUFFIX = "sweep_payload.", ".pkl"
# Set by the launcher beside PYTHONSAFEPATH=1 when it set that, for a sweep's code snapshot
# (hpcjobs/launching/snapshot.py): the task unsets both once its imports are in place.
SAFEPATH_SET_ENV = "HPCJOBS_SET_PYTHONSAFEPATH"


@dataclass
class SweepPayload:
    """What every task of a sweep shares; pickled once per sweep (hpcjobs.run.task loads it)."""

    hydra_context: HydraContext
    task_function: TaskFunction
    base_config: DictConfig
    singleton_state: dict  # Hydra's ConfigStore, plugins and OmegaConf resolvers at submission


def file_name(sweep_id: str) -> str:
    """The payload of one sweep, in its private (0700) submitit folder."""
    return f"{_PREFIX}{sweep_id}{_SUFFIX}"


def code_dir(payload_path: str | Path) -> Path:
    """Where the code the payload's tasks import was copied (hydra.launcher.snapshot=true):
    beside the payload, ``code.<sweep id>/``."""
    path = Path(payload_path)
    return path.with_name("code." + path.name.removeprefix(_PREFIX).removesuffix(_SUFFIX))


def find(sweep: SweepManifest, task: TaskRecord) -> Path:
    """What a task runs, as pickled at submission (private submitit folder)."""
    folder = Path(sweep.sweep_dir) / PRIVATE_DIR
    name = task.payload or sweep.payload
    payload = folder / name if name else None
    if payload is None or not payload.is_file():
        found = sorted(folder.glob(f"{_PREFIX.rstrip('.')}*{_SUFFIX}"))
        if len(found) != 1:
            raise SweepDirError(
                f"{folder}: cannot tell which pickled payload the tasks run ({len(found)} found): "
                "submit the sweep again instead"
            )
        payload = found[0]
    return payload
