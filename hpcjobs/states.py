"""The run-state vocabulary: every state a run or a task can be in, and what each means.

The job writes a run's state into ``metrics.json``; a backend (local processes, Slurm)
reports each task's state; `status` merges the two; the collector, the summary, the
report and the CLI count them. This is the only module that spells them; every other
module imports the names and the sets below.
"""

from __future__ import annotations

# Written by the job into metrics.json ("status"), and reported by backends.
RUNNING = "running"
# Stopped at a safe point (checkpoint saved) and put back in the queue by itself: the
# scheduler starts it again, in the same run directory, where it resumes.
REQUEUED = "requeued"
COMPLETED = "completed"  # the task function returned; its metrics are recorded
# Stopped early by an adaptive sweep's pruner (its intermediate values were not promising):
# a result, like completed, never a failure; its history is kept and it is not retried.
PRUNED = "pruned"
FAILED = "failed"  # the task function raised (traceback recorded), or its process died
# Reported by backends only: the scheduler's view of a task.
PENDING = "pending"  # submitted, not started (or requeued)
CANCELLED = "cancelled"  # scancel, or forgotten by Slurm after a cancel while pending
TIMEOUT = "timeout"  # killed at its time limit
PREEMPTED = "preempted"
NODE_FAIL = "node_fail"
# The process that ran it is gone without a word (a local sweep's launcher was killed or
# interrupted): the run will not end by itself; a retry resumes it from its checkpoint.
INTERRUPTED = "interrupted"
NOT_SUBMITTED = "not_submitted"  # the manifest lists it; the scheduler never accepted it
# Left to workers (hydra.launcher.workers) that have all stopped without claiming it: their
# time was running out, or they ended. A retry gives it to new workers.
UNCLAIMED = "unclaimed"
# Inferred by the collector from a run directory without a readable metrics.json.
NOT_STARTED = "not_started"  # the manifest lists it; no run directory yet
NO_METRICS = "no_metrics"  # a run directory, but no metrics.json
CORRUPT = "corrupt"  # a metrics.json that cannot be parsed

# What a task can be, in the order `status` lists them.
TASK_STATES = (
    NOT_SUBMITTED,
    PENDING,
    RUNNING,
    COMPLETED,
    PRUNED,
    FAILED,
    CANCELLED,
    TIMEOUT,
    PREEMPTED,
    NODE_FAIL,
    INTERRUPTED,
    UNCLAIMED,
)
# The task will not change state again on its own.
ENDED = frozenset(
    {COMPLETED, PRUNED, FAILED, CANCELLED, TIMEOUT, PREEMPTED, NODE_FAIL, INTERRUPTED, UNCLAIMED}
)
# Ended without completing: shown with their error, and resubmitted by a retry.
UNSUCCESSFUL = ENDED - {COMPLETED, PRUNED}
# Ended as the run meant to: a result to compare.
FINISHED = frozenset({COMPLETED, PRUNED})
# Counted as failed in summary.csv's n_failed (the collector sees run files only).
FAILED_RUNS = frozenset({FAILED, NO_METRICS, CORRUPT})
# What a retry of the sweep would run again.
RETRYABLE = UNSUCCESSFUL | {NOT_SUBMITTED, NOT_STARTED, NO_METRICS, CORRUPT}
