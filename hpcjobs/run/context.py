"""What a workload gets besides its config: where its run lives and how to report progress.

The job builds one RunContext per run and passes it as the workload's second argument.
Workloads use it instead of knowing the run directory's file layout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


# Set by the launcher for the processes it starts: how many cores one run may use.
CPUS_ENV = "HPCJOBS_CPUS_PER_TASK"


def _ignore_epoch(row: Mapping[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class RunContext:
    run_dir: Path
    # Called once per finished epoch with that epoch's row (epoch, train_loss, ..., seconds);
    # the job appends it to history.csv so progress is visible while the run goes on.
    log_epoch: Callable[[Mapping[str, Any]], None] = field(default=_ignore_epoch)
    # CPU threads this run may use (the launcher divides the cores among parallel runs).
    num_threads: int | None = None
