"""The scheduler's stop signal, and requeueing the task that stopped for it.

Slurm sends SIGUSR2 ``hydra.launcher.signal_grace_s`` seconds before a task's time limit
(sbatch ``--signal``), on ``scancel --signal=USR2``, and on preemption where the site
sends it; submitit's local executor sends it before the time limit too. submitit's own
handler would call the callable's ``checkpoint()`` and requeue at once, in the middle of
whatever step the run is in. While a run executes, :func:`stop_flag` replaces it with a
handler that only notes the signal (doing real work in a handler can deadlock on I/O or
CUDA locks); the workload sees it between steps, saves its checkpoint and stops; then
the job requeues the task (:func:`requeue`) or records why not.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hpcjobs import compat
from hpcjobs.deprecation import renamed
from hpcjobs.errors import TaskRequeued
from hpcjobs.run import scheduler

# Slurm checks time limits every 30 s and sends the warning when it falls due before the
# next check, so it can come up to ~60 s before grace_s; measured on the dev cluster.
SIGNAL_EARLY_S = 90


@dataclass
class StopFlag:
    signalled_at: float | None = None  # time.time() of the first stop signal

    def __call__(self) -> bool:
        return self.signalled_at is not None


@contextlib.contextmanager
def stop_flag() -> Iterator[StopFlag]:
    """While the block runs, the stop signal sets the flag it yields; the previous handler
    (submitit's) comes back afterwards. Outside the main thread signals cannot be caught:
    the flag then never rises."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def note(signum: int, frame: Any) -> None:
        if flag.signalled_at is None:
            flag.signalled_at = time.time()

    sig = compat.submitit_stop_signal()
    previous = signal.signal(sig, note)
    try:
        yield flag
    finally:
        signal.signal(sig, previous)


def is_time_limit(
    signalled_at: float, started_at: float, timeout_min: float, grace_s: float
) -> bool:
    """Whether a stop signal warned of the task's time limit rather than a preemption.

    As submitit does, from the time the task had left when the signal came (counted from
    when this attempt started, against hydra.launcher.timeout_min): near the limit, a
    timeout; long before it, a preemption.
    """
    left = timeout_min * 60 - (signalled_at - started_at)
    return left <= grace_s + SIGNAL_EARLY_S


can_requeue = renamed(scheduler.can_requeue, "can_requeue", __name__)  # its old home


def requeue() -> None:
    """Put this task back in the queue; it starts again in the same run directory.

    Slurm: ``scontrol requeue ARRAYID_INDEX`` (this array task only), then TaskRequeued, which
    the job's entry point turns into this process's exit. Local: exit code 144, on which
    submitit's local controller restarts the task (submitit exits at once).
    """
    compat.submitit_requeue()
    raise TaskRequeued()
