"""What runs inside one task: the environment, the call, and the record in the run directory.

What the scheduler says about the job, it asks hpcjobs/run/scheduler.py; requeueing is requeue.py's.
:func:`run_and_record` runs a call in a run directory and records its outcome there —
``status: completed`` with its metrics, or ``status: failed`` with the exception, and
either way what the run used (wall and CPU time, peak memory: hpcjobs/run/usage.py) — so
that one failed configuration never takes the sweep down with it. A run stopped and
started again (requeued, retried) resumes in the same directory. hpcjobs' own app
calls the workload named by ``cfg.workload._target_`` through :func:`run_workload`; any
other Hydra app's task function is wrapped by :func:`writing_metrics`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import inspect
import logging
import numbers
import os
import random
import socket
import time
import traceback
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import hydra.utils
from hydra.core.hydra_config import HydraConfig
from hydra.types import TaskFunction
from omegaconf import DictConfig, OmegaConf

from hpcjobs import interrupts, states
from hpcjobs.clock import now as _now
from hpcjobs.config import schema
from hpcjobs.deprecation import renamed
from hpcjobs.errors import CheckpointError, OtherRankStopped, RunStopped
from hpcjobs.run import checkpoint, requeue, scheduler, usage
from hpcjobs.run.context import (
    ALLOCATION_STARTED_ENV,
    CPUS_ENV,
    RunContext,
    RunInterrupted,
    RunPruned,
)
from hpcjobs.sweepdir import runfiles

log = logging.getLogger(__name__)

TRACEBACK_LINES = 30


def scheduler_job_id(index: int) -> str:
    """This task's id as its scheduler knows it (what ``hydra.job.id`` is set to).

    Slurm: ``ARRAYID_TASKID`` for an array task (as sweep.json and sacct name it), the job
    id for a plain job (a sweep of one task). Elsewhere: ``local_<task index>``.
    """
    return scheduler.job_id(f"local_{index}")


def join_distributed_run() -> None:
    """In a task of several ranks (hydra.launcher.tasks_per_node or nodes > 1: srun's tasks
    on Slurm, processes locally), export what torch.distributed's ``env://`` needs
    (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK), from submitit's view of the job.
    Each rank then sees every GPU of its node and takes cuda:LOCAL_RANK."""
    import submitit

    try:
        env = submitit.JobEnvironment()
        tasks = env.num_tasks
    except RuntimeError:  # not in a submitit job (a test calling the runner directly)
        return
    if tasks > 1:
        # submitit draws the port from 20000-60000, mostly inside Linux's ephemeral range
        # (32768-60999), where a connection of any process on the first node may hold it
        # (EADDRINUSE: rank 0 fails, the others wait for it until the time limit). A port
        # below that range, the same on every rank (from the job id), unless the user set one.
        os.environ.setdefault("MASTER_PORT", str(rendezvous_port(str(env.job_id))))
        submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True
        )


class Place(NamedTuple):
    """Where a process stands in a distributed run."""

    rank: int
    local_rank: int
    world_size: int


def rendezvous_port(job_id: str) -> int:
    """A distributed run's MASTER_PORT: 20000-32767, below Linux's ephemeral ports, by job id."""
    return 20000 + zlib.crc32(job_id.encode()) % 12768


def distributed_place() -> Place:
    """(rank, local rank, world size) of this process; (0, 0, 1) outside a distributed run."""

    def number(var: str, default: int) -> int:
        value = os.environ.get(var, "")
        return int(value) if value.isdigit() else default

    return Place(number("RANK", 0), number("LOCAL_RANK", 0), number("WORLD_SIZE", 1))


def cpus_for_run() -> int | None:
    # the launcher's share of the cores, else Slurm's allocation
    value = os.environ.get(CPUS_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else scheduler.cpus_per_task()


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """Where and as what this run executes (goes into metrics.json)."""
    # another app may have none
    identity: dict[str, Any] = {"seed": cfg.seed} if "seed" in cfg else {}
    identity["hostname"] = socket.gethostname()
    identity.update(scheduler.slurm_ids())
    return identity


def _call_workload(cfg: DictConfig, ctx: RunContext) -> Mapping[str, Any]:
    fn, takes_ctx = _workload(cfg.workload._target_)
    result = fn(cfg, ctx) if takes_ctx else fn(cfg)
    if not isinstance(result, Mapping):
        raise TypeError(
            f"workload {cfg.workload._target_} returned"
            f" {type(result).__name__}; it must return a dict of metrics"
        )
    return result


@functools.lru_cache(maxsize=64)
def _workload(target: str) -> tuple[Callable[..., Any], bool]:
    """The workload function a target names, and whether it takes the context: looked up once
    per process (a worker runs the same workload again and again)."""
    fn = hydra.utils.get_method(target)
    # A workload takes (cfg, ctx); a one-argument function taking only cfg is fine too.
    return fn, len(inspect.signature(fn).parameters) >= 2


def as_metrics(value: Any) -> dict[str, Any]:
    """What a task function returned, as metrics: a dict as it is, a number as ``value``."""
    if isinstance(value, Mapping):
        # the job says how the run ended
        return {str(k): v for k, v in value.items() if k != "status"}
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        # numpy/torch scalars too
        return {"value": value.item() if hasattr(value, "item") else value}
    return {}


def _failure(exc: BaseException) -> dict[str, Any]:
    tail = traceback.format_exception(type(exc), exc, exc.__traceback__)
    lines = "".join(tail).rstrip().splitlines()[-TRACEBACK_LINES:]
    return {
        "status": states.FAILED,
        "error_type": type(exc).__name__,
        "error_message": str(exc),
        "traceback": "\n".join(lines),
    }


# How a run interrupted from outside (Ctrl-C, a local sweep's SIGTERM) is recorded.
INTERRUPTED = {
    "status": states.INTERRUPTED,
    "error_type": "KeyboardInterrupt",
    "error_message": "interrupted; `python -m hpcjobs retry` resumes it",
}

# When the task's hydra.launcher does not say (a launcher without these settings): the
# defaults of hpcjobs_slurm. How many timeout requeues a task gets (preemptions: no cap).
MAX_TIMEOUT_REQUEUES = 3
SIGNAL_GRACE_S = 120


# Called with each epoch's row (and the run's config) once history.csv has it (an adaptive
# sweep's worker reports it to its trial); it may raise RunPruned. Set around one run by
# :func:`observing_epochs`.
EpochObserver = Callable[[Mapping[str, Any], DictConfig], None]
_epoch_observer: contextvars.ContextVar[EpochObserver | None] = contextvars.ContextVar(
    "epoch_observer", default=None
)


@contextlib.contextmanager
def observing_epochs(observer: EpochObserver) -> Iterator[None]:
    """Within the block, every run recorded here passes each epoch's row to ``observer``."""
    token = _epoch_observer.set(observer)
    try:
        yield
    finally:
        _epoch_observer.reset(token)


# What says, while its block runs, whether the scheduler asked the run to stop.
StopFlag = contextlib.AbstractContextManager[Callable[[], bool]]


def run_and_record(
    call: Callable[[RunContext], Any],
    cfg: DictConfig,
    run_dir: Path,
    *,
    reraise: bool,
    resumable: bool = False,
    digest: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Run ``call(ctx)`` in ``run_dir``, record its outcome there; return (its value, the metrics).

    metrics.json says ``running`` while it runs, then ``completed`` with what it returned
    (see :func:`as_metrics`) or ``failed`` with the exception. With ``reraise=False`` a
    failure is recorded and returned as data; with ``reraise=True`` it is recorded, then raised.

    An attempt after an earlier one that did not complete (requeued, interrupted, failed or
    killed) is a restart: metrics.json counts ``restarts``, history.csv keeps the earlier
    epochs, and the workload finds the earlier attempt's checkpoint. Once the run completes
    its checkpoint is deleted, unless the config says ``keep_checkpoint``.

    Two kinds of run: ``resumable`` (hpcjobs' workloads, which take the context; see
    :func:`_run_resumable`) and any other Hydra app's (:func:`_run_app_function`).

    ``digest``: :func:`config_digest` of ``cfg``, where the caller has it already.
    ``config``: the config to keep in metrics.json (a compact run, which has no .hydra/).
    """
    if resumable:
        return _run_resumable(call, cfg, run_dir, reraise=reraise, digest=digest, config=config)
    return _run_app_function(call, cfg, run_dir, reraise=reraise, config=config)


def _run_resumable(
    call: Callable[[RunContext], Any],
    cfg: DictConfig,
    run_dir: Path,
    *,
    reraise: bool,
    digest: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """:func:`run_and_record` for hpcjobs' workloads: a run directory is one run, however many
    attempts it takes.

    A completed run is not run again (its recorded metrics are returned); a directory holding
    another configuration's run is refused (CheckpointError). The scheduler's stop signal only
    sets a flag the workload reads (``ctx.should_stop()``); when it then raises
    RunInterrupted, the task is requeued, or, past the timeout cap or without a scheduler,
    recorded as interrupted (RunStopped raised).
    """
    run_dir, place = Path(run_dir), distributed_place()
    if place.rank > 0:  # another rank of a distributed run: it trains; rank 0 keeps the record
        return _run_as_other_rank(call, run_dir, place, requeue.stop_flag())
    digest = digest or config_digest(cfg)
    earlier = _earlier_attempt(run_dir, digest)
    if earlier is not None and earlier.get("status") in states.FINISHED:
        log.info("%s %s already; not run again", run_dir, earlier["status"])
        recorded = {k: v for k, v in earlier.items() if k != "schema_version"}
        return recorded, recorded
    return _attempt(
        call, cfg, run_dir, digest, earlier, place, requeue.stop_flag(), reraise, config
    )


def _run_app_function(
    call: Callable[[RunContext], Any],
    cfg: DictConfig,
    run_dir: Path,
    *,
    reraise: bool,
    config: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """:func:`run_and_record` for any other Hydra app: Hydra's semantics (a run again in the same
    directory starts afresh) and submitit's handling of the stop signal."""
    run_dir, place = Path(run_dir), distributed_place()
    if place.rank > 0:
        return _run_as_other_rank(call, run_dir, place, contextlib.nullcontext(_never))
    earlier = _earlier_attempt(run_dir, None)
    if earlier is not None and earlier.get("status") in states.FINISHED:
        earlier = None  # run again: a new run, as Hydra's own launchers do
    return _attempt(
        call,
        cfg,
        run_dir,
        config_digest(cfg),
        earlier,
        place,
        contextlib.nullcontext(_never),
        reraise,
        config,
    )


def _attempt(
    call: Callable[[RunContext], Any],
    cfg: DictConfig,
    run_dir: Path,
    digest: str,
    earlier: Mapping[str, Any] | None,
    place: Place,
    stop_flag: StopFlag,
    reraise: bool,
    config: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """One attempt, on rank 0: metrics.json says ``running``, then how the call ended."""
    rank, local_rank, world_size = place
    identity = {
        **run_identity(cfg),
        "config_digest": digest,
        "started_at": _now(),
        **_restarts(earlier),
    }
    if config is not None:
        identity[runfiles.CONFIG_KEY] = config
    if world_size > 1:
        identity["world_size"] = world_size
    # a worker's runs share its process (it sets ALLOCATION_STARTED_ENV): no start-up of their own
    meter = usage.Meter(cpus_for_run(), own_process=ALLOCATION_STARTED_ENV not in os.environ)
    # Superseded by the run's last write; lost in a crash of the machine, the next attempt reads
    # it as an earlier one all the same (corrupt): no fsync, a third of a short run's cost.
    runfiles.write_metrics(run_dir, {"status": states.RUNNING, **identity}, durable=False)
    history: list[Mapping[str, Any]] = (
        list(runfiles.read_history(run_dir)) if earlier is not None else []
    )
    with (
        stop_flag as stop_requested,
        interrupts.sigterm_as_keyboard_interrupt(enabled=not scheduler.on_slurm()),
    ):
        ctx = RunContext(
            run_dir=run_dir,
            log_epoch=_epoch_logger(run_dir, history, cfg),
            num_threads=cpus_for_run(),
            memory_bytes=scheduler.memory_per_task(),
            node_tmpdir=scheduler.node_tmpdir(),
            stop_requested=stop_requested,
            on_resume=functools.partial(_note_resume, run_dir, identity),
            rank=rank,
            local_rank=local_rank,
            world_size=world_size,
        )
        try:
            value = call(ctx)
        except RunInterrupted as stop:
            _stopped(run_dir, identity, meter, stop, stop_requested)
        # a result, not a failure: its history stays, its checkpoint goes
        except RunPruned as pruned:
            log.info("run pruned: %s", pruned)
            metrics = _finish(
                run_dir, {"status": states.PRUNED, **identity, "pruned_reason": str(pruned)}, meter
            )
            checkpoint.remove(ctx.checkpoint_path)
            return None, metrics
        except KeyboardInterrupt:  # Ctrl-C, or a local sweep's launcher stopping its runs
            _finish(run_dir, {**INTERRUPTED, **identity}, meter)
            raise
        except Exception as exc:
            # e.g. a library's cleanup failing as the interrupt passed
            if _raised_while_interrupted(exc):
                _finish(run_dir, {**INTERRUPTED, **identity}, meter)
                raise KeyboardInterrupt from exc
            outcome = _failure(exc)
            log.error("run failed: %s: %s", outcome["error_type"], outcome["error_message"])
            metrics = _finish(run_dir, {**outcome, **identity}, meter)
            if reraise:
                raise
            return None, metrics
    metrics = _finish(run_dir, {"status": states.COMPLETED, **identity, **as_metrics(value)}, meter)
    if not cfg.get("keep_checkpoint", False):  # after the record: a kill in between loses nothing
        checkpoint.remove(ctx.checkpoint_path)
    return value, metrics


def _epoch_logger(
    run_dir: Path, history: list[Mapping[str, Any]], cfg: DictConfig
) -> Callable[[Mapping[str, Any]], None]:
    """ctx.log_epoch: each row into history.csv (over ``history``, the earlier attempts' rows),
    then to the epoch observer, if one is set."""
    observer = _epoch_observer.get()

    def log_epoch(row: Mapping[str, Any]) -> None:
        epoch = _epoch_of(row)
        if epoch is not None:  # an epoch redone after a restart replaces its earlier row
            history[:] = [r for r in history if (_epoch_of(r) or 0) < epoch]
        history.append(dict(row))
        runfiles.write_history(run_dir, history)
        if observer is not None:
            observer(row, cfg)

    return log_epoch


def _note_resume(run_dir: Path, identity: dict[str, Any], state: Mapping[str, Any]) -> None:
    """ctx.on_resume: where the run resumed (its epoch, its step), into metrics.json."""
    for key in ("epoch", "step"):
        if isinstance(state.get(key), int):
            identity[f"resumed_from_{key}"] = state[key]
    runfiles.write_metrics(run_dir, {"status": states.RUNNING, **identity}, durable=False)


def _raised_while_interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while a KeyboardInterrupt was being handled (its context chain
    holds one): the run was interrupted, and the library code it was in failed to unwind."""
    seen: set[int] = set()
    context = exc.__context__
    while context is not None and id(context) not in seen:
        if isinstance(context, KeyboardInterrupt):
            return True
        seen.add(id(context))
        context = context.__context__
    return False


def _run_as_other_rank(
    call: Callable[[RunContext], Any], run_dir: Path, place: Place, stop_flag: StopFlag
) -> tuple[Any, dict[str, Any]]:
    """Rank > 0: run the same call, writing nothing; rank 0 records the run, requeues the task."""
    rank, local_rank, world_size = place
    with stop_flag as stop_requested:
        ctx = RunContext(
            run_dir=run_dir,
            num_threads=cpus_for_run(),
            memory_bytes=scheduler.memory_per_task(),
            node_tmpdir=scheduler.node_tmpdir(),
            stop_requested=stop_requested,
            rank=rank,
            local_rank=local_rank,
            world_size=world_size,
        )
        try:
            return call(ctx), {}
        except RunInterrupted:  # every rank stopped at the same step; rank 0 saved and requeues
            raise OtherRankStopped() from None


def config_digest(cfg: DictConfig) -> str:
    """A short fingerprint of a run's config: attempts of one run share it."""
    return text_digest(OmegaConf.to_yaml(cfg))


def text_digest(config_yaml: str) -> str:
    """:func:`config_digest` of the config whose ``OmegaConf.to_yaml`` is ``config_yaml``."""
    return hashlib.sha256(config_yaml.encode()).hexdigest()[:16]


def _never() -> bool:
    return False


def _earlier_attempt(run_dir: Path, digest: str | None) -> dict[str, Any] | None:
    """metrics.json of an earlier attempt in this run directory ({} if unreadable), or None;
    with ``digest``, CheckpointError if that attempt ran another configuration."""
    try:
        earlier = runfiles.read_metrics(run_dir)
    except runfiles.CorruptRunFile:
        return {}
    if (
        digest is not None
        and earlier is not None
        and earlier.get("config_digest", digest) != digest
    ):
        raise CheckpointError(
            f"{run_dir} holds a run of another configuration (config_digest"
            f" {earlier['config_digest']}, this one {digest}); give this run its own directory"
        )
    return earlier


def _restarts(earlier: Mapping[str, Any] | None) -> dict[str, Any]:
    if earlier is None:
        return {"restarts": 0}
    counts = {"restarts": int(earlier.get("restarts", 0)) + 1}
    if earlier.get("timeout_requeues"):
        counts["timeout_requeues"] = earlier["timeout_requeues"]
    return counts


def _epoch_of(row: Mapping[str, Any]) -> int | None:
    try:
        return int(row["epoch"])
    except (KeyError, TypeError, ValueError):
        return None


def _launcher_setting(key: str, default: Any) -> Any:
    """A hydra.launcher setting of the sweep this task belongs to (its composed config)."""
    if not HydraConfig.initialized():
        return default
    value = HydraConfig.get().launcher.get(key)
    return default if value is None else value


def _stopped(
    run_dir: Path,
    identity: dict[str, Any],
    meter: usage.Meter,
    stop: RunInterrupted,
    flag: Callable[[], bool],
) -> NoReturn:
    """The workload stopped at a safe point, checkpoint saved: requeue the task, or say why not."""
    signalled_at = getattr(flag, "signalled_at", None) or time.time()
    # a worker's runs share one
    allocation_started = float(os.environ.get(ALLOCATION_STARTED_ENV) or meter.started)
    timed_out = requeue.is_time_limit(
        signalled_at,
        allocation_started,
        float(_launcher_setting("timeout_min", 60)),
        float(_launcher_setting("signal_grace_s", SIGNAL_GRACE_S)),
    )
    record = {**identity, "stop_reason": "time limit" if timed_out else "preemption"}
    cap = int(_launcher_setting("max_timeout_requeues", MAX_TIMEOUT_REQUEUES))
    if timed_out:
        record["timeout_requeues"] = int(identity.get("timeout_requeues", 0)) + 1
    if timed_out and record["timeout_requeues"] > cap:
        why = (
            f"its time limit came {record['timeout_requeues']} times;"
            f" hydra.launcher.max_timeout_requeues={cap}"
        )
    elif not scheduler.can_requeue():
        why = "no scheduler that could requeue it runs it"
    else:
        log.warning("stop signal (%s): %s; requeueing", record["stop_reason"], stop)
        _finish(run_dir, {"status": states.REQUEUED, **record}, meter)
        requeue.requeue()  # raises TaskRequeued
    more_time = " with more time (hydra.launcher.timeout_min)" if timed_out else ""
    message = (
        f"stopped at a safe point ({stop}) and not requeued: {why}. Its checkpoint is kept:"
        f" `python -m hpcjobs retry`{more_time} resumes it"
    )
    log.error("%s", message)
    _finish(
        run_dir,
        {
            "status": states.INTERRUPTED,
            **record,
            "error_type": "RunStopped",
            "error_message": message,
        },
        meter,
    )
    raise RunStopped(message)


def run_workload(
    cfg: DictConfig,
    run_dir: Path,
    *,
    reraise: bool,
    digest: str | None = None,
    config: Mapping[str, Any] | None = None,
    typed: DictConfig | None = None,
) -> dict[str, Any]:
    """Run hpcjobs' configured workload once in ``run_dir``; return its recorded metrics
    (``digest`` and ``config``: as :func:`run_and_record` takes them; ``typed``: ``cfg`` typed
    by its schema already, as schema.typed types it, e.g. by a worker's TaskComposer)."""

    def call(ctx: RunContext) -> Mapping[str, Any]:
        # torch and numpy generators are the workload's to seed
        random.seed(int(cfg.get("seed") or 0))
        # Validated before submission already; checked again here because cross-field rules
        # are checked there on one configuration per group combination, not on every one.
        # The workload gets the config typed by its schema (defaults for keys a yaml omits).
        return _call_workload(schema.validate(cfg) if typed is None else schema.checked(typed), ctx)

    metrics = run_and_record(
        call, cfg, run_dir, reraise=reraise, resumable=True, digest=digest, config=config
    )[1]
    shown = {k: v for k, v in metrics.items() if k.startswith("test_") or k == "score"}
    log.info(
        "run %s%s; metrics: %s",
        metrics["status"],
        f" {shown}" if shown else "",
        run_dir / runfiles.METRICS_FILE,
    )
    return metrics


# Set on a task function that writes its own metrics.json (hpcjobs' app); any other is wrapped.
# (The attribute keeps its first name: code frozen by an older snapshot sets that one.)
_WRITES_OWN_METRICS = "__hpcjobs_records_its_run__"


def writes_own_metrics(task_function: TaskFunction) -> TaskFunction:
    """Mark a Hydra task function that writes its own metrics.json (see :func:`writing_metrics`)."""
    setattr(task_function, _WRITES_OWN_METRICS, True)
    return task_function


# Set on hpcjobs' own app only: in a sweep its task function is run_workload(cfg, run_dir), which
# a worker may then call itself (hpcjobs/run/task.py: SweepRuns).
_RUNS_WORKLOAD = "__hpcjobs_runs_task__"


def runs_workload(task_function: TaskFunction) -> TaskFunction:
    """Mark hpcjobs' app: in a sweep it does nothing but :func:`run_workload` in its run
    directory."""
    setattr(task_function, _RUNS_WORKLOAD, True)
    return writes_own_metrics(task_function)


def is_workload_app(task_function: TaskFunction) -> bool:
    """Whether ``task_function`` is marked by :func:`runs_workload`."""
    return bool(getattr(task_function, _RUNS_WORKLOAD, False))


def writing_metrics(task_function: TaskFunction) -> TaskFunction:
    """Any Hydra app's task function, writing each run's metrics.json in its run directory.

    What it returns (a dict of numbers, or a number) becomes the run's metrics; an
    exception is recorded as the run's failure and raised again, as Hydra expects.
    The value returned to Hydra is the task function's own.
    """
    if getattr(task_function, _WRITES_OWN_METRICS, False):
        return task_function

    @functools.wraps(task_function)
    def task(cfg: DictConfig) -> Any:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        return run_and_record(lambda ctx: task_function(cfg), cfg, run_dir, reraise=True)[0]

    return task


def _finish(run_dir: Path, metrics: dict[str, Any], meter: usage.Meter) -> dict[str, Any]:
    metrics["wall_seconds"] = round(time.time() - meter.started, 3)
    metrics.update(meter.measure())  # CPU time, peak memory (and GPU memory): what the process saw
    metrics["finished_at"] = _now()
    runfiles.write_metrics(run_dir, metrics)
    return metrics


# Old names (hpcjobs/deprecation.py): each warns, then calls its new name.
record_run = renamed(run_and_record, "record_run")
run_task = renamed(run_workload, "run_task")
records_its_run = renamed(writes_own_metrics, "records_its_run")
runs_task = renamed(runs_workload, "runs_task")
is_run_task_app = renamed(is_workload_app, "is_run_task_app")
recorded = renamed(writing_metrics, "recorded")
