"""What runs cost and how well their requests fit: CPU/GPU hours, efficiency, right-sizing hints.

Pure pandas on the runs table. Each run is measured by the scheduler's accounting where
it was recorded (accounting.json: ``acct_*`` columns) and otherwise by its own process
(metrics.json: ``wall_seconds``, ``cpu_seconds``, ``max_rss_mb``, ``cpus``, ``gpus_used``).
The derived columns of runs.csv:

usage_source     ``sacct`` or ``process``: which of the two the columns below come from
cpu_hours        allocated core-hours: elapsed x CPUs (what a cluster charges), all attempts
gpu_hours        elapsed x GPUs (allocated by Slurm; with the process, the GPUs it used)
cpu_efficiency   CPU time used / (elapsed x CPUs): 1.0 keeps every allocated core busy
peak_rss_mb      peak resident memory: sacct's MaxRSS, else the process's own peak (sacct
                 samples memory every JobAcctGatherFrequency, 30 s by default: a short task
                 may have no MaxRSS)
mem_efficiency   peak_rss_mb / requested memory (known from accounting only)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from hpcjobs import states
from hpcjobs.run import usage

SACCT, PROCESS = "sacct", "process"
# What accounting.json gives each run (results/accounting.py): summed, maxed or the last attempt's.
ACCOUNTING_COLUMNS = (
    "acct_elapsed_s",
    "acct_cpu_s",
    "acct_max_rss_mb",
    "acct_req_mem_mb",
    "acct_cpus",
    "acct_gpus",
    "acct_node",
    "acct_state",
    "acct_attempts",
)
DERIVED_COLUMNS = (
    "usage_source",
    "cpu_hours",
    "gpu_hours",
    "cpu_efficiency",
    "peak_rss_mb",
    "mem_efficiency",
)
# Never averaged as metrics in summary.csv (cpu_hours and gpu_hours are summed there instead).
RESOURCE_COLUMNS = (
    frozenset(usage.FIELDS) | frozenset(ACCOUNTING_COLUMNS) | frozenset(DERIVED_COLUMNS)
)
SUMMED_COLUMNS = ("cpu_hours", "gpu_hours")
# A request is "far above use" when what would fit is at most half of it.
OVERSIZED = 0.5
MEMORY_HEADROOM = 1.2  # suggest the peak + 20%, in whole GB
CPU_HEADROOM = 1.25
MAX_LEAST_EFFICIENT = 5


def column(runs: pd.DataFrame, name: str) -> pd.Series:
    """A column of the runs table as floats: NaN where a cell is no number, all NaN if absent."""
    if name not in runs:
        return pd.Series(np.nan, index=runs.index, dtype=float)
    return pd.to_numeric(runs[name], errors="coerce").astype(float)


def _used_cpu_s(runs: pd.DataFrame, sacct: pd.Series) -> pd.Series:
    """CPU seconds used: sacct's TotalCPU where accounting was recorded, else the process's own."""
    return column(runs, "acct_cpu_s").where(sacct, column(runs, "cpu_seconds"))


def add_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """runs with the derived columns (see the module docstring); as is if nothing was measured."""
    if runs.empty or ("acct_elapsed_s" not in runs and "cpu_seconds" not in runs):
        return runs
    runs = runs.copy()
    sacct = column(runs, "acct_elapsed_s").notna()
    process = ~sacct & column(runs, "cpu_seconds").notna()
    elapsed = column(runs, "acct_elapsed_s").where(sacct, column(runs, "wall_seconds"))
    cpus = column(runs, "acct_cpus").where(sacct, column(runs, "cpus"))
    gpus = column(runs, "acct_gpus").where(sacct, column(runs, "gpus_used").fillna(0.0))
    used_cpu = _used_cpu_s(runs, sacct)
    measured = sacct | process
    runs["usage_source"] = pd.Series(
        # None makes an object column, as meant; numpy's stubs take no None there.
        np.where(sacct, SACCT, np.where(process, PROCESS, None)),  # type: ignore[call-overload]
        index=runs.index,
    )
    # Accounting sums allocated hours per attempt (CPUs may differ); a process knows one attempt.
    runs["cpu_hours"] = (
        column(runs, "cpu_hours").where(sacct, elapsed * cpus / 3600).where(measured)
    )
    runs["gpu_hours"] = (
        column(runs, "gpu_hours").where(sacct, elapsed * gpus / 3600).where(measured)
    )
    allocated_s = runs["cpu_hours"] * 3600
    runs["cpu_efficiency"] = (used_cpu / allocated_s).where(allocated_s > 0)
    sampled = column(runs, "acct_max_rss_mb")
    runs["peak_rss_mb"] = sampled.where(sampled > 0, column(runs, "max_rss_mb"))
    requested = column(runs, "acct_req_mem_mb")
    runs["mem_efficiency"] = (runs["peak_rss_mb"] / requested).where(requested > 0)
    return runs


# ---------------------------------------------------------------- summaries for the report


def totals(runs: pd.DataFrame) -> dict[str, Any] | None:
    """The sweep's cost in all; None when no run measured anything."""
    if "usage_source" not in runs or runs["usage_source"].isna().all():
        return None
    measured = runs[runs["usage_source"].notna()]
    allocated = float(measured["cpu_hours"].sum())
    used = float(_used_cpu_s(measured, measured["usage_source"] == SACCT).sum()) / 3600
    return {
        "n_measured": len(measured),
        "n_sacct": int((measured["usage_source"] == SACCT).sum()),
        "n_process": int((measured["usage_source"] == PROCESS).sum()),
        "n_runs": len(runs),
        "cpu_hours": allocated,
        "cpu_used_hours": used,
        "cpu_efficiency": used / allocated if allocated > 0 else math.nan,
        "gpu_hours": float(measured["gpu_hours"].sum()),
        "peak_rss_mb": float(measured["peak_rss_mb"].max())
        if measured["peak_rss_mb"].notna().any()
        else math.nan,
        "req_mem_mb": float(column(measured, "acct_req_mem_mb").max()),
    }


def least_efficient(
    groups: Sequence[tuple[str, pd.DataFrame]], n: int = MAX_LEAST_EFFICIENT
) -> list[dict[str, Any]]:
    """The configurations that used least of what they were given (lowest mean CPU efficiency)."""
    rows: list[dict[str, Any]] = []
    for label, group in groups:
        if "cpu_efficiency" not in group or group["cpu_efficiency"].isna().all():
            continue
        rows.append(
            {
                "config": label,
                "n": int(group["usage_source"].notna().sum()),
                "cpu_hours": float(group["cpu_hours"].sum()),
                "gpu_hours": float(group["gpu_hours"].sum()),
                "cpu_efficiency": float(group["cpu_efficiency"].mean()),
                "mem_efficiency": float(group["mem_efficiency"].max())
                if group["mem_efficiency"].notna().any()
                else math.nan,
                "peak_rss_mb": float(group["peak_rss_mb"].max())
                if group["peak_rss_mb"].notna().any()
                else math.nan,
                "req_mem_mb": float(column(group, "acct_req_mem_mb").max()),
            }
        )
    rows.sort(key=lambda r: r["cpu_efficiency"])
    return rows[:n]


def sizing_hints(runs: pd.DataFrame, groups: Sequence[tuple[str, pd.DataFrame]]) -> list[str]:
    """Requests far above what the completed runs used, each with the launcher setting that fits."""
    if "usage_source" not in runs:
        return []
    done = runs[(runs["status"] == states.COMPLETED) & (runs["usage_source"] == SACCT)]
    label_of = {index: label for label, group in groups for index in group.index}
    hints = []
    # Memory: by what was asked, the highest peak among the completed runs (none killed for memory).
    out_of_memory = (
        runs.get("acct_state", pd.Series(dtype=object))
        .astype(str)
        .str.startswith("OUT_OF_MEMORY")
        .any()
    )
    requested = column(done, "acct_req_mem_mb")
    for asked, same in (
        [] if out_of_memory else done[requested > 0].groupby(requested[requested > 0])
    ):
        peaks = same["peak_rss_mb"].dropna()
        if peaks.empty:
            continue
        fits_gb = max(1, math.ceil(peaks.max() / 1024 * MEMORY_HEADROOM))
        if fits_gb * 1024 <= asked * OVERSIZED:
            busiest = label_of.get(peaks.idxmax(), "")
            hints.append(
                f"asked {memory_text(asked)} per task, used at most {memory_text(peaks.max())}"
                f"{f' ({busiest})' if busiest and busiest != 'all runs' else ''}: "
                f"`hydra.launcher.mem_gb={fits_gb}` would fit"
            )
    # CPUs: how many cores the busiest run kept busy on average.
    cpus = column(done, "acct_cpus")
    for asked, same in done[cpus > 1].groupby(cpus[cpus > 1]):
        busy = (column(same, "acct_cpu_s") / column(same, "acct_elapsed_s")).where(
            column(same, "acct_elapsed_s") > 0
        )
        if busy.dropna().empty:
            continue
        fits = max(1, math.ceil(busy.max() * CPU_HEADROOM))
        if fits <= asked * OVERSIZED:
            hints.append(
                f"asked {asked:g} CPUs per task, the busiest run kept {busy.max():.1f} busy on"
                f" average: `hydra.launcher.cpus_per_task={fits}` would do"
            )
    # GPUs: allocated, but the run's process never initialised CUDA.
    gpus = column(done, "acct_gpus")
    with_gpus = done[(gpus > 0) & column(done, "cpu_seconds").notna()]
    idle = with_gpus[column(with_gpus, "max_gpu_mem_mb").fillna(0) <= 0]
    if len(idle):
        hints.append(
            f"{len(idle)} of {len(with_gpus)} completed runs were given GPUs"
            f" ({gpus.max():g} per task) and never used CUDA: drop"
            " `hydra.launcher.gpus_per_node`, or check the device the workload picks"
        )
    return hints


def memory_text(mb: float) -> str:
    """2560 -> '2.5 GB', 32768 -> '32 GB', 450.2 -> '450 MB'."""
    gb = float(mb) / 1024
    return f"{gb:.0f} GB" if gb >= 10 else f"{gb:.1f} GB" if gb >= 1 else f"{float(mb):.0f} MB"
