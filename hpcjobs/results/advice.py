"""Whether workers would have saved most of a sweep's time: a hint from what its runs recorded.

A run in a job (or process) of its own pays a start-up before it runs: Python, torch, its
config. Workers (``hydra.launcher.workers``) pay it once each and then run one run after
another. Each run's start-up is measured by the scheduler's accounting where it was
recorded (``acct_elapsed_s``, the job's wall time, less the run's own ``wall_seconds``),
else by the run's process (``startup_seconds``, hpcjobs/run/usage.py). A worker's runs
record neither: there is nothing to save on them.

:func:`hint_for` judges plain numbers: `status` gives it what it read of the ended runs'
metrics.json already (their own start-up; no pandas, no file more), `collect`
(:func:`workers_hint`) its runs table, accounting included. The CLI prints the hint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas only where a table is judged: `status` loads none of it
    import pandas as pd

# "Most of the time": the hint is given when the workers it suggests would save at least this
# share of the runs' core time.
MOST = 0.5
# The workers suggested spend at most about this share of their time starting up.
WORKER_STARTUP_SHARE = 0.1
# `status` judges a sweep once this many of its runs ended (all of them, in a smaller sweep).
ENOUGH_RUNS = 10


@dataclass(frozen=True)
class WorkersHint:
    """Runs whose start-up took most of their time, and the workers that would have run them."""

    runs: int  # the runs it is based on (those whose start-up is known)
    mean_s: float  # a run's job or process, on average, start-up included
    startup_s: float  # of which start-up, on average
    workers: int  # the hydra.launcher.workers suggested
    tasks: int = 0  # the sweep's tasks the workers would run (0: the runs themselves)

    @property
    def of(self) -> int:
        """How many runs the suggested workers would run: the sweep's, else those judged."""
        return self.tasks or self.runs

    @property
    def saved(self) -> float:
        """The share of the runs' core time the suggested workers would not spend starting up."""
        return (self.of - self.workers) * self.startup_s / (self.of * self.mean_s)

    def text(self) -> str:
        share = self.startup_s / self.mean_s
        return (
            f"{self.runs} runs averaged {self.mean_s:.1f} s, of which {self.startup_s:.1f} s"
            f" ({share:.0%}) was start-up: hydra.launcher.workers={self.workers} would start"
            f" {self.workers} process(es) instead of {self.of} and save about"
            f" {self.saved:.0%} of the core time"
        )


def startup_seconds(runs: pd.DataFrame) -> pd.Series:
    """Each run's start-up, in seconds (NaN where unknown, e.g. a worker's run)."""
    from hpcjobs.results.cost import column

    single = column(runs, "acct_attempts").fillna(1) <= 1  # accounting sums every attempt
    by_scheduler = (column(runs, "acct_elapsed_s") - column(runs, "wall_seconds")).where(single)
    return by_scheduler.fillna(column(runs, "startup_seconds")).clip(lower=0)


def workers_hint(runs: pd.DataFrame) -> WorkersHint | None:
    """The hint for the runs of a sweep (:func:`hint_for` on the runs whose start-up is known)."""
    from hpcjobs.results.cost import column

    startup, wall = startup_seconds(runs), column(runs, "wall_seconds")
    known = startup.notna() & wall.notna()
    return hint_for(startup[known].tolist(), wall[known].tolist())


def hint_for(
    startups: Sequence[float], walls: Sequence[float], tasks: int = 0
) -> WorkersHint | None:
    """The hint for runs that started up in ``startups`` seconds and then ran ``walls`` seconds
    (one pair per run), or None where workers would not save most of their core time (at least
    MOST of it). ``tasks``: the sweep's number of tasks, where the runs are some of them (the
    workers are suggested for all of them).

    Workers suggested: enough runs per worker that its one start-up is at most
    WORKER_STARTUP_SHARE of its time, i.e. startup * (1 - share) / share seconds of runs each.
    """
    n = len(startups)
    if n < 2 or n != len(walls):
        return None
    startup_s = math.fsum(max(0.0, s) for s in startups) / n
    run_s = math.fsum(walls) / n
    mean_s = startup_s + run_s
    if mean_s <= 0 or startup_s < MOST * mean_s:  # workers could not save most of it
        return None
    of = max(tasks, n)
    per_worker_s = startup_s * (1 - WORKER_STARTUP_SHARE) / WORKER_STARTUP_SHARE
    runs_per_worker = max(1, math.ceil(per_worker_s / run_s)) if run_s > 0 else of
    workers = max(1, math.ceil(of / runs_per_worker))
    hint = WorkersHint(n, mean_s, startup_s, workers, tasks if tasks > n else 0)
    return hint if hint.saved >= MOST else None
