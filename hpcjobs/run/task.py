"""The entry point every backend executes for one task, wherever it runs.

What the tasks of a sweep share (Hydra's context, the app's task function, the base
config) is pickled once per sweep as a :class:`SweepPayload`; each task carries only
its index and overrides (:class:`TaskRunner`, which submitit pickles per task). On the
node the runner composes the task's config through Hydra, as Hydra's own launchers do,
and runs the app's task function through Hydra's ``run_job`` in its run directory,
recorded by :func:`hpcjobs.run.job.writing_metrics`. So a run directory looks the same on a
laptop and on a cluster, whichever Hydra app it belongs to.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    configure_log,
    env_override,
    run_job,
    setup_globals,
)
from omegaconf import DictConfig, OmegaConf, open_dict

from hpcjobs import atomic, compat
from hpcjobs.deprecation import moved_names, renamed
from hpcjobs.errors import JobEnds
from hpcjobs.run import job
from hpcjobs.run.compose import ComposedTask, TaskComposer
from hpcjobs.run.context import CPUS_ENV
from hpcjobs.sweepdir.payloads import SAFEPATH_SET_ENV, SweepPayload, code_dir


def load_payload(path: str | Path) -> SweepPayload:
    """The sweep's payload; with a code snapshot beside it, the snapshot goes first on sys.path
    before unpickling, which imports the app's modules by name (the launcher also puts it
    first on PYTHONPATH, so that hpcjobs itself comes from there: hpcjobs/launching/snapshot.py)."""
    snapshot = code_dir(path)
    if snapshot.is_dir() and str(snapshot) not in sys.path:
        sys.path.insert(0, str(snapshot))
    # needed at start only: the run's own children start as usual
    if os.environ.pop(SAFEPATH_SET_ENV, None):
        os.environ.pop("PYTHONSAFEPATH", None)
    with open(path, "rb") as f:
        payload: SweepPayload = pickle.load(f)
    return payload


def run_sweep_task(payload: SweepPayload, index: int, overrides: Sequence[str]) -> JobReturn:
    """Compose task ``index``'s config as Hydra does and run the app's task function on it."""
    Singleton.set_state(payload.singleton_state)
    setup_globals()
    loader = payload.hydra_context.config_loader
    config = loader.load_sweep_config(payload.base_config, list(overrides))
    with open_dict(config):
        config.hydra.job.id = job.scheduler_job_id(index)
        config.hydra.job.num = index
        config.hydra.sweep.dir = payload.base_config.hydra.sweep.dir
        if job.distributed_place()[0] > 0:
            config.hydra.output_subdir = (
                None  # rank 0 writes .hydra/; the other ranks would race it
            )
    return run_job(
        hydra_context=payload.hydra_context,
        task_function=job.writing_metrics(payload.task_function),
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


class SweepRuns:
    """Runs a sweep's tasks one after another in this process (a worker), each as Hydra would.

    Each run of hpcjobs' own app costs what its own work costs plus a few milliseconds, not
    a Hydra composition and job setup (30-120 ms): configs come from a :class:`TaskComposer`,
    Hydra's logging is configured once and its file handler moved from run directory to run
    directory, and a run writes .hydra/config.yaml but not hydra.yaml (the sweep's, the same
    for every run: multirun.yaml at the sweep root holds it) nor overrides.yaml (sweep.json
    has each task's). Its files are written in as few syscalls as is safe: only metrics.json's
    last write, the run's result, waits for the disk (fsync). Anything
    else (another Hydra app, Hydra callbacks, hydra.job.chdir, an override of a hydra key) runs
    through :func:`run_sweep_task`, exactly as a task of its own.
    """

    def __init__(self, payload: SweepPayload, compact: bool = False) -> None:
        self.payload = payload
        # hydra.launcher.run_files=compact: a run leaves metrics.json only (its config inside),
        # and logs to the worker's log
        self.compact = compact
        self._composer = (
            TaskComposer(payload.hydra_context.config_loader, payload.base_config)
            if job.is_workload_app(payload.task_function)
            else None
        )
        self._hydra_of: DictConfig | None = None  # the composed config HydraConfig holds now
        self._log_dir: Path | None = None  # where Hydra's file log handlers write now
        self.last_status: str | None = None

    def run(self, index: int, overrides: Sequence[str], run_dir: Path) -> JobReturn:
        """Run task ``index`` in ``run_dir``; :attr:`last_status` is then how its metrics.json
        says it ended (None where Hydra's run_job ran it: read it back from there)."""
        self.last_status = None
        Singleton.set_state(self.payload.singleton_state)
        setup_globals()
        composed = self._composer.compose(overrides) if self._composer is not None else None
        if composed is None or not _plain_job(composed.full):
            self._hydra_of = self._log_dir = None  # run_job replaces both
            return run_sweep_task(self.payload, index, overrides)
        self._set_hydra_config(composed, index, run_dir)
        hydra_dir = composed.full.hydra.output_subdir
        keeps_hydra_dir = hydra_dir is not None and not self.compact
        # the run directory and its .hydra/ in one call
        os.makedirs(run_dir / hydra_dir if keeps_hydra_dir else run_dir, exist_ok=True)
        self._log_to(run_dir, composed.full)
        # The config's text once: config.yaml, and the digest that tells this run's attempts apart
        text = OmegaConf.to_yaml(composed.config)
        kept = cast(dict, OmegaConf.to_container(composed.config)) if self.compact else None
        if keeps_hydra_dir:
            # What Hydra users look for. hydra.yaml is the sweep's (multirun.yaml), and the
            # overrides are sweep.json's: neither is worth an inode per run.
            _write_once(run_dir / hydra_dir / "config.yaml", text)
        ret = JobReturn(
            overrides=composed.task_overrides, cfg=composed.config, working_dir=os.getcwd()
        )
        with env_override(dict(composed.full.hydra.job.env_set)):
            metrics = job.run_workload(
                composed.config,
                run_dir,
                reraise=False,
                digest=job.text_digest(text),
                config=kept,
                typed=composed.typed,
            )
        ret.return_value = metrics
        ret.status = JobStatus.COMPLETED
        self.last_status = metrics.get("status")
        ret.task_name = JobRuntime.instance().get("name")
        for handler in logging.getLogger().handlers:
            handler.flush()
        return ret

    def _set_hydra_config(self, composed: ComposedTask, index: int, run_dir: Path) -> None:
        """HydraConfig.get() as Hydra's run_job sets it for this task (its job and runtime)."""
        hydra_config = HydraConfig.instance()
        if self._hydra_of is not composed.full:
            # copies the hydra node: once per group combination
            hydra_config.set_config(composed.full)
            self._hydra_of = composed.full
        # Its copy of the hydra node is read directly; interpolations in it resolve from the root,
        # the composed config itself: both get the task's fields, set in place (not by
        # assignment under read_write: compat.set_in_place says why).
        fields = {
            "job.id": job.scheduler_job_id(index),
            "job.num": index,
            "job.override_dirname": composed.override_dirname,
            "runtime.output_dir": str(run_dir.absolute()),
            "overrides.task": composed.task_overrides,
        }
        for node in (hydra_config.cfg.hydra, composed.full.hydra):  # type: ignore[union-attr]
            compat.set_in_place(node, fields)

    def _log_to(self, run_dir: Path, full: DictConfig) -> None:
        """Hydra's job logging, configured once; later runs move its file handlers to their dirs."""
        if self._log_dir is None:
            # A DictConfig, though Hydra's dataclass types the field as a dict.
            configure_log(cast(DictConfig, HydraConfig.get().job_logging), full.hydra.verbose)
            if self.compact:  # no log file per run: its lines go to the worker's log only
                _drop_file_handlers(str(run_dir.absolute()) + os.sep)
        elif self._log_dir != run_dir and not self.compact:
            old = str(self._log_dir.absolute()) + os.sep
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(
                    old
                ):
                    handler.close()  # reopened on its next record, at the new path
                    handler.baseFilename = str(
                        run_dir.absolute() / handler.baseFilename[len(old) :]
                    )
        self._log_dir = run_dir


def _drop_file_handlers(under: str) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(under):
            root.removeHandler(handler)
            handler.close()
            with contextlib.suppress(OSError):  # opened, and nothing written: not left behind
                if os.path.getsize(handler.baseFilename) == 0:
                    os.unlink(handler.baseFilename)


def _write_once(path: Path, text: str) -> None:
    """Write a run's record of its config unless an earlier attempt wrote it: attempts of one
    run share its config (run_workload checks the digest), and a run directory that holds another
    configuration's run is refused there, its files kept as they were.

    Atomic but not fsynced (as Hydra writes it: not at all atomically): the config is also in
    sweep.json's overrides and the payload, and metrics.json, the run's result, is fsynced.
    An empty file, what a crash of the machine may leave, is written again."""
    try:
        if os.stat(path).st_size > 0:
            return
    except FileNotFoundError:
        pass
    atomic.write_text(path, text, durable=False)


def _plain_job(full: DictConfig) -> bool:
    """A job that run_job would run with nothing more than its config, logging and files."""
    return not full.hydra.get("callbacks") and not full.hydra.job.get("chdir")


@dataclass
class TaskRunner:
    """The callable a backend runs for one task (submitit pickles it per task)."""

    payload_path: str
    index: int
    overrides: tuple
    cpus_per_task: Any = None

    def __call__(self) -> JobReturn:
        with exit_as_submitit_expects():
            if self.cpus_per_task:
                os.environ[CPUS_ENV] = str(self.cpus_per_task)
            job.join_distributed_run()
            return run_sweep_task(load_payload(self.payload_path), self.index, self.overrides)


@contextlib.contextmanager
def exit_as_submitit_expects() -> Iterator[None]:
    """The job's entry point (what submitit calls, in the process it started): a JobEnds raised
    in the block ends the process with its status, as submitit and Slurm expect. submitit
    writes no result for a process that exits (SystemExit passes its ``except Exception``): a
    requeued task exits with status 1 and the message on stderr, another rank of a stopped
    distributed run with status 0."""
    try:
        yield
    except JobEnds as end:
        raise SystemExit(end.exit_status) from None


# Old names (hpcjobs/deprecation.py).
run_one = renamed(run_sweep_task, "run_one")
if not TYPE_CHECKING:
    __getattr__ = moved_names(
        __name__, {"payload_file_name": "hpcjobs.sweepdir.payloads.file_name"}
    )
