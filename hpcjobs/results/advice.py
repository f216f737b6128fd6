"""Whether workers would have saved most of a sweep's time: a hint from what its runs recorded.

A run in a job (or process) of its own pays a start-up before it runs: Python, torch, its
config. Workers (``hydra.launcher.workers``) pay it once each and then run one run after
another. Each run's start-up is measured by the scheduler's accounting where it was
recorded (``acct_elapsed_s``, the job's wall time, less the run's own ``wall_seconds``),
else by the run's process (``startup_seconds``, hpcjobs/run/usage.py). A worker's runs
record neither: there is nothing to save on them.

Pure pandas on the runs table (hpcjobs/results/collect.py); the CLI prints the hint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from hpcjobs.results.cost import column

# "Most of the time": the hint is given when the workers it suggests would save at least this
# share of the runs' core time.
MOST = 0.5
# The workers suggested spend at most about this share of their time starting up.
WORKER_STARTUP_SHARE = 0.1


@dataclass(frozen=True)
class WorkersHint:
    """Runs whose start-up took most of their time, and the workers that would have run them."""

    runs: int  # the runs it is based on (those whose start-up is known)
    mean_s: float  # a run's job or process, on average, start-up included
    startup_s: float  # of which start-up, on average
    workers: int  # the hydra.launcher.workers suggested

    @property
    def saved(self) -> float:
        """The share of the runs' core time the suggested workers would not spend starting up."""
        return (self.runs - self.workers) * self.startup_s / (self.runs * self.mean_s)

    def text(self) -> str:
        share = self.startup_s / self.mean_s
        return (
            f"{self.runs} runs averaged {self.mean_s:.1f} s, of which {self.startup_s:.1f} s"
            f" ({share:.0%}) was start-up: hydra.launcher.workers={self.workers} would start"
            f" {self.workers} process(es) instead of {self.runs} and save about"
            f" {self.saved:.0%} of the core time"
        )


def startup_seconds(runs: pd.DataFrame) -> pd.Series:
    """Each run's start-up, in seconds (NaN where unknown, e.g. a worker's run)."""
    single = column(runs, "acct_attempts").fillna(1) <= 1  # accounting sums every attempt
    by_scheduler = (column(runs, "acct_elapsed_s") - column(runs, "wall_seconds")).where(single)
    return by_scheduler.fillna(column(runs, "startup_seconds")).clip(lower=0)


def workers_hint(runs: pd.DataFrame) -> WorkersHint | None:
    """The hint for the runs of a sweep, or None where workers would not save most of their core
    time (at least MOST of it).

    Workers suggested: enough runs per worker that its one start-up is at most
    WORKER_STARTUP_SHARE of its time, i.e. startup * (1 - share) / share seconds of runs each.
    """
    startup, wall = startup_seconds(runs), column(runs, "wall_seconds")
    known = startup.notna() & wall.notna()
    n = int(known.sum())
    if n < 2:
        return None
    startup_s = float(startup[known].mean())
    run_s = float(wall[known].mean())
    mean_s = startup_s + run_s
    if mean_s <= 0 or startup_s < MOST * mean_s:  # workers could not save most of it
        return None
    per_worker_s = startup_s * (1 - WORKER_STARTUP_SHARE) / WORKER_STARTUP_SHARE
    runs_per_worker = max(1, math.ceil(per_worker_s / run_s)) if run_s > 0 else n
    workers = max(1, math.ceil(n / runs_per_worker))
    hint = WorkersHint(n, mean_s, startup_s, workers)
    return hint if hint.saved >= MOST else None
