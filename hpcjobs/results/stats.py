"""Statistics over runs: per-configuration summaries and the best configuration per metric.

Pure pandas/scipy on the runs table the collector builds; no file access. The column
names are the public interface of summary.csv and best.csv; each column is documented
once, in docs/reference/columns.md. n_pruned appears only where some run was pruned or
the caller asks for it (an adaptive sweep), so a grid sweep's columns stay as they were.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from hpcjobs import states
from hpcjobs.results.cost import RESOURCE_COLUMNS, SUMMED_COLUMNS

# metrics.json fields that describe a run rather than measure it: never averaged.
IDENTITY_FIELDS = frozenset(
    {
        "schema_version",
        "status",
        "seed",
        "hostname",
        "device",
        "started_at",
        "finished_at",
        "error_type",
        "error_message",
        "traceback",
        "slurm_job_id",
        "slurm_array_job_id",
        "slurm_array_task_id",
        "slurm_node",
        "task",
        "run_dir",
        "sweep",
    }
)
PREFERRED_METRICS = ("test_accuracy", "test_f1", "best_val_accuracy", "score")
# A lead under this many pooled standard deviations is what reseeding alone can produce;
# the CLI and the report both decide through within_seed_noise, so they cannot disagree.
SEED_NOISE_GAP = 2.0


def lower_is_better(metric: str) -> bool:
    """Losses, errors and durations sort ascending; everything else descending."""
    return any(word in metric for word in ("loss", "error", "seconds", "_time"))


def metric_columns(runs: pd.DataFrame, exclude: Sequence[str] = ()) -> list[str]:
    """Numeric columns that measure something (not identity fields, resource use or group keys)."""
    return [
        c
        for c in runs.columns
        if c not in IDENTITY_FIELDS
        and c not in RESOURCE_COLUMNS
        and c not in exclude
        and pd.api.types.is_numeric_dtype(runs[c])
        and not pd.api.types.is_bool_dtype(runs[c])
    ]


def choose_metric(metrics: Sequence[str], requested: str | None = None) -> str | None:
    if requested is not None:
        return requested
    return next((m for m in PREFERRED_METRICS if m in metrics), metrics[0] if metrics else None)


def t_quantile_975(dof: np.ndarray) -> np.ndarray:
    from scipy.stats import t

    return t.ppf(0.975, dof)


def summarize(
    runs: pd.DataFrame,
    group_keys: Sequence[str],
    metric: str | None = None,
    count_pruned: bool = False,
) -> tuple[pd.DataFrame, str | None]:
    """One row per configuration (group), best first by ``metric``; with an n_pruned column
    when ``count_pruned`` or when some run was pruned."""
    group_keys = list(group_keys)
    metrics = metric_columns(runs, exclude=group_keys)
    status = runs["status"] if "status" in runs else pd.Series(states.COMPLETED, index=runs.index)
    # Rank by what completed runs measured: when every run failed, nothing is ranked
    # (rather than, say, by how long the failures took).
    measured = [m for m in metrics if runs.loc[status == states.COMPLETED, m].notna().any()]
    metric = choose_metric(measured, metric)
    if metric is not None and metric not in runs.columns:
        raise KeyError(metric)
    keys = group_keys or ["__all__"]
    frame = runs.assign(__all__="all") if not group_keys else runs
    counts = pd.DataFrame(
        {
            "n_runs": 1,
            "n_completed": (status == states.COMPLETED).astype(int),
            "n_failed": status.isin(states.FAILED_RUNS).astype(int),
        }
    )
    pruned = status == states.PRUNED
    if count_pruned or pruned.any():
        counts["n_pruned"] = pruned.astype(int)
    counts = counts.join(frame[keys])
    # dropna=False: a run whose key is missing (NaN) still belongs to a group.
    summary = counts.groupby(keys, dropna=False, sort=False).sum()
    summed = [c for c in SUMMED_COLUMNS if c in frame.columns]
    if summed:  # what each configuration cost, failures included; empty where nothing was measured
        summary = summary.join(
            frame.groupby(keys, dropna=False, sort=False)[summed].sum(min_count=1)
        )
    done = frame[status == states.COMPLETED]
    if metrics and len(done):
        grouped = done.groupby(keys, dropna=False, sort=False)[metrics]
        agg = grouped.agg(["mean", "std", "min", "max", "count"])
        columns = {}
        for m in metrics:
            mean, std, n = agg[(m, "mean")], agg[(m, "std")], agg[(m, "count")]
            half = t_quantile_975(np.maximum(n - 1, 1)) * std / np.sqrt(n)
            half = half.where(n >= 2)  # one run: no interval (not zero)
            columns.update(
                {
                    f"{m}_mean": mean,
                    f"{m}_std": std,
                    f"{m}_min": agg[(m, "min")],
                    f"{m}_max": agg[(m, "max")],
                    f"{m}_ci95_low": mean - half,
                    f"{m}_ci95_high": mean + half,
                }
            )
        summary = summary.join(pd.DataFrame(columns))
    summary = summary.reset_index()
    if not group_keys:
        summary = summary.drop(columns="__all__")
    sort_col = f"{metric}_mean"
    if metric and sort_col in summary.columns:
        summary = summary.sort_values(
            sort_col, ascending=lower_is_better(metric), na_position="last", kind="stable"
        )
    return summary.reset_index(drop=True), metric


def mean_std_ci(values: Sequence[float]) -> tuple[float, float, float, float]:
    """Mean, std (ddof=1) and the 95% interval of the mean (Student's t), as summarize computes
    them; std and interval are NaN for fewer than two values (no interval, not a zero-width one)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return math.nan, math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(v.std(ddof=1))
    half = float(t_quantile_975(np.array(len(v) - 1))) * std / math.sqrt(len(v))
    return mean, std, mean - half, mean + half


def config_label(row: pd.Series, group_keys: Sequence[str]) -> str:
    parts = [f"{k}={_plain(row[k])}" for k in group_keys]
    return " ".join(parts) or "all runs"


def _plain(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) >= 1 else f"{value:g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def pooled_std(s1: float, n1: int, s2: float, n2: int) -> float:
    """sqrt(((n1-1)s1² + (n2-1)s2²) / (n1+n2-2)); NaN when neither group has a spread."""
    dof = (n1 - 1) + (n2 - 1)
    if dof <= 0:
        return math.nan
    parts = [(n - 1) * s * s for s, n in ((s1, n1), (s2, n2)) if n > 1 and not math.isnan(s)]
    return math.sqrt(sum(parts) / dof) if parts else math.nan


def within_seed_noise(gap_in_pooled_std: float | None) -> bool | None:
    """Whether a lead (in pooled std) is under SEED_NOISE_GAP; None without a spread (NaN)."""
    if gap_in_pooled_std is None or math.isnan(gap_in_pooled_std):
        return None
    return bool(gap_in_pooled_std < SEED_NOISE_GAP)


def best_configs(
    summary: pd.DataFrame, group_keys: Sequence[str], metrics: Sequence[str]
) -> pd.DataFrame:
    """For each metric, the best configuration, the runner-up, and the gap between them
    in units of their pooled std (see within_seed_noise for what counts as a clear lead)."""
    rows = []
    for m in metrics:
        if f"{m}_mean" not in summary:
            continue
        ranked = summary.dropna(subset=[f"{m}_mean"]).sort_values(
            f"{m}_mean", ascending=lower_is_better(m), kind="stable"
        )
        if ranked.empty:
            continue
        best = ranked.iloc[0]
        row: dict[str, object] = {
            "metric": m,
            "higher_is_better": not lower_is_better(m),
            "best": config_label(best, group_keys),
            "best_mean": best[f"{m}_mean"],
            "best_std": best[f"{m}_std"],
            "best_n": int(best["n_completed"]),
        }
        if len(ranked) > 1:
            second = ranked.iloc[1]
            gap = abs(best[f"{m}_mean"] - second[f"{m}_mean"])
            pooled = pooled_std(
                best[f"{m}_std"],
                int(best["n_completed"]),
                second[f"{m}_std"],
                int(second["n_completed"]),
            )
            row.update(
                {
                    "runner_up": config_label(second, group_keys),
                    "runner_up_mean": second[f"{m}_mean"],
                    "runner_up_std": second[f"{m}_std"],
                    "runner_up_n": int(second["n_completed"]),
                    "gap": gap,
                    "pooled_std": pooled,
                    "gap_in_pooled_std": gap / pooled
                    if pooled and not math.isnan(pooled)
                    else math.nan,
                }
            )
        rows.append(row)
    columns = [
        "metric",
        "higher_is_better",
        "best",
        "best_mean",
        "best_std",
        "best_n",
        "runner_up",
        "runner_up_mean",
        "runner_up_std",
        "runner_up_n",
        "gap",
        "pooled_std",
        "gap_in_pooled_std",
    ]
    return pd.DataFrame(rows, columns=columns)


def ranking_metrics(summary: pd.DataFrame, metric: str | None) -> list[str]:
    """The metrics best.csv ranks: the chosen one, then test/validation scores."""
    names = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    scores = [m for m in names if m.startswith(("test_", "best_val", "val_")) or m == "score"]
    return list(dict.fromkeys(([metric] if metric in names else []) + scores))
