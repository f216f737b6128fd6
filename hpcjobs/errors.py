"""Typed errors. Each message says what is wrong and what to change.

The library raises these; only the CLI prints them. They derive from Hydra's
``CompactHydraException`` so that, when one is raised inside a Hydra run (the
launcher, the task function), Hydra prints the message alone rather than a
traceback.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any


def _hydra_errors() -> ModuleType:
    """Hydra's ``hydra.errors``, without importing Hydra when it is not imported yet.

    Importing the package imports Hydra's config machinery and OmegaConf (0.2-0.4 s), which
    `status` and `collect` do not need; ``hydra/errors.py`` itself imports nothing of Hydra.
    So it is executed on its own, and handed to Hydra as its ``hydra.errors`` when Hydra is
    imported: one CompactHydraException class either way, which Hydra prints compactly.
    """
    if "hydra" in sys.modules or "hydra.errors" in sys.modules:
        import hydra.errors

        return hydra.errors
    spec = importlib.util.find_spec("hydra")  # finds the package, does not import it
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    path = os.path.join(folders[0], "errors.py") if folders else ""
    if not os.path.isfile(path):
        import hydra.errors

        return hydra.errors
    module_spec = importlib.util.spec_from_file_location("hydra.errors", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.meta_path.insert(0, _Loaded(module))
    return module


class _Loaded(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Hands an already executed module to the import of its name (once), which then sets it
    as its package's attribute, as for any submodule."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.module.__name__:
            return None
        sys.meta_path.remove(self)
        return importlib.machinery.ModuleSpec(fullname, self, origin=self.module.__file__)

    def create_module(self, spec: Any) -> ModuleType:
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        pass  # executed already


if TYPE_CHECKING:
    from hydra.errors import CompactHydraException
else:
    CompactHydraException = _hydra_errors().CompactHydraException


class HpcjobsError(CompactHydraException):
    """Base class of every error hpcjobs raises on purpose."""


class ConfigError(HpcjobsError):
    """A configuration value is invalid; raised before anything is submitted."""


class DataError(ConfigError):
    """A data source is missing or malformed (e.g. an image folder without train/)."""


class SweepDirError(HpcjobsError):
    """A sweep or run directory is missing or is not one hpcjobs wrote."""


class LauncherError(HpcjobsError):
    """The launcher could not submit or follow the sweep's jobs."""


class CheckpointError(HpcjobsError):
    """A run directory cannot be resumed: an unreadable checkpoint, or another configuration's."""


class RunStopped(HpcjobsError):
    """A run stopped at a safe point with its checkpoint saved, and was not requeued."""


class ExportError(HpcjobsError):
    """Runs cannot be exported to an experiment tracker (its target is unusable)."""


class MissingExtra(ExportError):
    """An optional feature's packages are not installed; the message names the extra."""


class JobEnds(BaseException):
    """The job this process runs ends here, with ``exit_status`` (as SystemExit's code: a number,
    or a message that is printed, with status 1).

    Raised inside a job; only an entry point turns it into the process's exit: the runner a
    backend executes (hpcjobs/run/task.py, which submitit calls) or the CLI. A BaseException,
    as SystemExit is: Hydra's run_job and a workload's ``except Exception`` let it through.
    """

    exit_status: int | str = 1

    def __init__(self, exit_status: int | str | None = None) -> None:
        if exit_status is not None:
            self.exit_status = exit_status
        super().__init__(self.exit_status)


class TaskRequeued(JobEnds):
    """The task was put back in the scheduler's queue (its checkpoint saved): this attempt ends."""

    exit_status = "requeued: the task starts again and resumes from its checkpoint"


class OtherRankStopped(JobEnds):
    """A rank > 0 of a distributed run stopped with the others; rank 0 records it and requeues."""

    exit_status = 0


def choices_hint(valid: Iterable[object]) -> str:
    """'valid choices: a, b, c' for error messages, sorted and deduplicated."""
    return "valid choices: " + ", ".join(sorted({str(v) for v in valid}))
