"""What a run used, as its own process measures it: CPU time, peak memory, peak GPU memory.

Every run records these in metrics.json (next to ``wall_seconds``). They are the only
measure for runs the scheduler's accounting cannot tell apart — local runs, and runs that
workers (hydra.launcher.workers) execute one after another in one Slurm job — and a
fallback when accounting is unavailable or did not sample a short task's memory.

CPU time is this process's (all threads) and its reaped children's (e.g. data-loader
workers), counted from the run's start: in a worker, a difference of the process's totals.
Peak RSS is the process's high-water mark (in a worker, since the worker started). A run in
a process of its own also records its start-up, ``startup_seconds``: from the process's
start to the run's (Python, imports, unpickling, composing the config), what workers pay
once instead of once per run (hpcjobs/results/advice.py weighs it). Peak GPU memory is read
from torch only when torch is already imported and has initialised CUDA: measuring never
imports torch.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from types import ModuleType
from typing import Any

from hpcjobs import processes

# The metrics.json fields this module writes (collect keeps them out of the metric statistics).
FIELDS = ("cpu_seconds", "max_rss_mb", "cpus", "max_gpu_mem_mb", "gpus_used", "startup_seconds")
# What the job records of every run besides its results: when it ran, for how long, what it
# used. Two runs of one configuration differ in these, and only in these (and the workload's
# own timings), whatever the workload.
TIMING_FIELDS = ("started_at", "finished_at", "wall_seconds", *FIELDS)


def _cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _max_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return (
        max(
            resource.getrusage(who).ru_maxrss
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        )
        / 1024
    )


def _cuda() -> ModuleType | None:
    """torch.cuda if torch is imported and CUDA initialised in this process, else None."""
    torch = sys.modules.get("torch")
    try:
        return torch.cuda if torch is not None and torch.cuda.is_initialized() else None
    except Exception:  # a broken or partial torch import must not fail the run's record
        return None


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Meter:
    """Started with a run; ``measure()`` gives what it has used so far."""

    def __init__(self, cpus: int | None = None, own_process: bool = False) -> None:
        self.started = time.time()
        self.cpus = cpus or available_cpus()
        # A run in a process of its own: what the process took to get to it (Linux /proc).
        began = processes.process_started_at(os.getpid()) if own_process else None
        self.startup_s = round(self.started - began, 3) if began is not None else None
        self._cpu_at_start = _cpu_seconds()
        cuda = _cuda()
        if cuda is not None:  # a worker's earlier run: count this run's peak only
            for device in range(cuda.device_count()):
                cuda.reset_peak_memory_stats(device)

    def measure(self) -> dict[str, Any]:
        measured: dict[str, Any] = {
            "cpu_seconds": round(_cpu_seconds() - self._cpu_at_start, 3),
            "max_rss_mb": round(_max_rss_mb(), 1),
            "cpus": self.cpus,
        }
        if self.startup_s is not None:
            measured["startup_seconds"] = self.startup_s
        cuda = _cuda()
        if cuda is not None:
            try:
                peaks = [cuda.max_memory_allocated(device) for device in range(cuda.device_count())]
            except Exception:  # a device lost mid-run: the run's record matters more
                peaks = []
            if peaks:
                measured["max_gpu_mem_mb"] = round(max(peaks) / 2**20, 1)
                measured["gpus_used"] = sum(1 for p in peaks if p > 0)
        return measured
