"""Backends: where a sweep's tasks run, behind one interface (``base.Backend``).

    local   local processes, a few at a time (submitit's LocalExecutor)
    slurm   Slurm array jobs (submitit's SlurmExecutor), followed with sacct

A new backend is a ``Backend`` subclass in this folder, listed in ``BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpcjobs.errors import ConfigError, choices_hint
from hpcjobs.launching.backends.base import Backend
from hpcjobs.launching.backends.local import LocalBackend
from hpcjobs.launching.backends.slurm import SlurmBackend
from hpcjobs.launching.settings import LauncherSettings

__all__ = ["AUTO", "BACKENDS", "Backend", "LocalBackend", "SlurmBackend", "create", "resolve"]

BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (LocalBackend, SlurmBackend)}
AUTO = "auto"


def resolve(requested: str) -> str:
    """The backend a sweep will use: 'auto' is Slurm where sbatch exists, else local."""
    if requested == AUTO:
        return SlurmBackend.name if SlurmBackend.available() else LocalBackend.name
    if requested not in BACKENDS:
        raise ConfigError(f"hydra.launcher.executor={requested}: {choices_hint([AUTO, *BACKENDS])}")
    return requested


def create(
    name: str,
    settings: LauncherSettings | Mapping[str, Any],
    environment: Mapping[str, str] | None = None,
) -> Backend:
    """The backend called ``name`` ('auto' resolved), made with the launcher settings (typed, or
    hydra.launcher's keys as sweep.json records them) and the environment its jobs start with."""
    return BACKENDS[resolve(name)](settings, environment)
