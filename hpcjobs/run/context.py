"""What a workload gets besides its config: its run directory, progress logging, checkpoints.

The job builds one RunContext per run and passes it as the workload's second argument.
Workloads use it instead of knowing the run directory's file layout.

Checkpoint and resume: a workload saves its state (``save_checkpoint``) at the end of
each epoch, and at the start reads back what an earlier attempt of the same run saved
(``load_checkpoint``: None the first time). Between steps it asks ``should_stop()``:
true once the scheduler has warned that the task will be stopped (Slurm's signal before
the time limit, or a preemption). It then saves and raises :class:`RunInterrupted`; the
job requeues the task, which starts again in the same run directory and resumes::

    state = ctx.load_checkpoint() or {"epoch": 1, "model": init_model()}
    for epoch in range(state["epoch"], cfg.epochs + 1):
        state = train_one_epoch(state)            # long epochs: check ctx.should_stop() per step
        ctx.save_checkpoint({**state, "epoch": epoch + 1})
        if ctx.should_stop():
            raise RunInterrupted(f"stopped after epoch {epoch}")

A state is a dict of tensors, numbers, strings, and lists/tuples/dicts of them. Its
``epoch`` (and ``step``), where present, are recorded as where the run resumed. Torch-free
at import: torch is loaded when a checkpoint is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcjobs.deprecation import moved_names
from hpcjobs.run import checkpoint
from hpcjobs.sweepdir import runfiles

# Set by the launcher for the processes it starts: how many cores one run may use.
CPUS_ENV = "HPCJOBS_CPUS_PER_TASK"
# Set by a worker (hpcjobs/run/worker.py): when its allocation started (time.time()), which
# its runs' time limit counts from; a task of its own counts from its own start.
ALLOCATION_STARTED_ENV = "HPCJOBS_ALLOCATION_STARTED"


class RunInterrupted(BaseException):
    """Raised by a workload that stopped at a safe point, its checkpoint saved, because
    ``should_stop()`` said so. A BaseException, like KeyboardInterrupt: a workload's own
    ``except Exception`` does not swallow it."""


class RunPruned(BaseException):
    """Raised by the job (from ``ctx.log_epoch``) when an adaptive sweep's pruner stops the
    run after an epoch: recorded as ``pruned``, a result rather than a failure. A
    BaseException for the same reason as RunInterrupted."""


def _ignore(_: Mapping[str, Any]) -> None:
    return None


def _never() -> bool:
    return False


@dataclass(frozen=True)
class RunContext:
    run_dir: Path
    # Called once per finished epoch with that epoch's row (epoch, train_loss, ..., seconds);
    # the job appends it to history.csv so progress is visible while the run goes on.
    log_epoch: Callable[[Mapping[str, Any]], None] = field(default=_ignore)
    # CPU threads this run may use (the launcher divides the cores among parallel runs).
    num_threads: int | None = None
    # Bytes of memory the scheduler gave this run's task (None: it did not say), and the
    # node-local scratch folder it provides, if any (hpcjobs/run/scheduler.py reads both).
    memory_bytes: int | None = None
    node_tmpdir: str | None = None
    # Set by the job: whether a stop was requested, and what to note when a run resumes.
    stop_requested: Callable[[], bool] = field(default=_never)
    on_resume: Callable[[Mapping[str, Any]], None] = field(default=_ignore)
    # This process's place in a distributed run (hydra.launcher.tasks_per_node/nodes > 1):
    # every rank runs the workload, which joins the process group torch.distributed finds
    # in the environment (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, set by the job);
    # only rank 0 writes the run's files (its log_epoch and save_checkpoint).
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.run_dir) / runfiles.CHECKPOINT_FILE

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Replace the run's checkpoint with ``state``, atomically (rank 0 only: ranks agree)."""
        if not self.is_main:
            return
        checkpoint.save(self.checkpoint_path, state)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """What an earlier attempt of this run saved (tensors on the CPU), or None."""
        state = checkpoint.load(self.checkpoint_path)
        if state is not None:
            self.on_resume(state)
        return state

    def should_stop(self) -> bool:
        """True once the scheduler has asked this run to stop: save, then raise RunInterrupted."""
        return self.stop_requested()


if not TYPE_CHECKING:  # old homes (hpcjobs/deprecation.py)
    __getattr__ = moved_names(
        __name__, {"SAFEPATH_SET_ENV": "hpcjobs.sweepdir.payloads.SAFEPATH_SET_ENV"}
    )
