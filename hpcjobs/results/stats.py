"""Statistics over runs: per-configuration summaries, and the selected configuration against
the runner-up.

Pure pandas/scipy on the runs table the collector builds; no file access. The column
names are the public interface of summary.csv and best.csv; each column is documented
once, in docs/reference/columns.md. n_pruned appears only where some run was pruned or
the caller asks for it (an adaptive sweep), so a grid sweep's columns stay as they were.
Which metric ranks and which is reported: selection.py; how intervals are computed:
intervals.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from hpcjobs import states
from hpcjobs.results import intervals, selection
from hpcjobs.results.cost import RESOURCE_COLUMNS, SUMMED_COLUMNS
from hpcjobs.results.selection import Selection

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
# best.csv's verdict on the lead of the selected configuration over the runner-up, decided
# here once so that the CLI and the report cannot disagree: the 95% interval of the
# difference on the reported metric lies in the best's favour (CLEAR), holds zero (NOISE),
# lies in the runner-up's favour (REVERSED), or there is no interval (NO_VERDICT).
CLEAR, NOISE, REVERSED, NO_VERDICT = "clear", "noise", "reversed", "na"


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


def measured_metrics(runs: pd.DataFrame, exclude: Sequence[str] = ()) -> list[str]:
    """The metric columns some completed run has a value for: a sweep where every run failed
    ranks nothing (rather than, say, by how long the failures took)."""
    done = runs[_status(runs) == states.COMPLETED]
    return [m for m in metric_columns(runs, exclude) if done[m].notna().any()]


def _status(runs: pd.DataFrame) -> pd.Series:
    return runs["status"] if "status" in runs else pd.Series(states.COMPLETED, index=runs.index)


def summarize(
    runs: pd.DataFrame,
    group_keys: Sequence[str],
    metric: str | None = None,
    count_pruned: bool = False,
    first: Sequence[str] = (),
) -> tuple[pd.DataFrame, str | None]:
    """One row per configuration (group), best first by ``metric`` (default: the selection
    default, selection.default_metric); with an n_pruned column when ``count_pruned`` or
    when some run was pruned. The statistics of the metrics in ``first`` come first."""
    group_keys = list(group_keys)
    metrics = metric_columns(runs, exclude=group_keys)
    status = _status(runs)
    if metric is None:
        metric = selection.default_metric(measured_metrics(runs, exclude=group_keys))
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
        first = [m for m in dict.fromkeys(first) if m in metrics]
        metrics = first + [m for m in metrics if m not in first]
        summary = summary.join(_metric_statistics(done, keys, metrics))
    summary = summary.reset_index()
    if not group_keys:
        summary = summary.drop(columns="__all__")
    sort_col = f"{metric}_mean"
    if metric and sort_col in summary.columns:
        summary = summary.sort_values(
            sort_col, ascending=lower_is_better(metric), na_position="last", kind="stable"
        )
    return summary.reset_index(drop=True), metric


def _metric_statistics(done: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    """Mean, std, min, max and the 95% interval of the mean per group, for each metric."""
    agg = done.groupby(keys, dropna=False, sort=False)[metrics].agg(
        ["mean", "std", "min", "max", "count"]
    )
    unit = [m for m in metrics if intervals.is_unit_metric(m, done[m])]
    if unit:  # the logit scale's mean and std, and whether a value sits on a bound (no logit)
        logits = done[unit].apply(intervals.logit)
        on_bound = done[unit].notna() & logits.isna()
        by = [done[k] for k in keys]  # the same groups, in the same order, as agg's
        logit_agg = logits.groupby(by, dropna=False, sort=False).agg(["mean", "std"])
        bound_any = on_bound.groupby(by, dropna=False, sort=False).any()
    columns = {}
    for m in metrics:
        mean, std, n = agg[(m, "mean")], agg[(m, "std")], agg[(m, "count")]
        if m in unit:
            low, high = intervals.unit_mean_interval(
                mean,
                std,
                n,
                logit_agg[(m, "mean")].to_numpy(),
                logit_agg[(m, "std")].to_numpy(),
                bound_any[m].to_numpy(),
            )
        else:
            low, high = intervals.mean_interval(mean, std, n)
        columns.update(
            {
                f"{m}_mean": mean,
                f"{m}_std": std,
                f"{m}_min": agg[(m, "min")],
                f"{m}_max": agg[(m, "max")],
                f"{m}_ci95_low": pd.Series(low, index=agg.index),
                f"{m}_ci95_high": pd.Series(high, index=agg.index),
            }
        )
    return pd.DataFrame(columns)


def mean_std_ci(values: Sequence[float], metric: str = "") -> tuple[float, float, float, float]:
    """Mean, std (ddof=1) and the 95% interval of the mean, as summarize computes them for
    ``metric``; std and interval are NaN for fewer than two values (no interval, not a
    zero-width one)."""
    v = pd.Series([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return math.nan, math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan, math.nan
    low, high = intervals.interval_of(v, intervals.is_unit_metric(metric, v))
    return mean, float(v.std(ddof=1)), low, high


def config_label(row: pd.Series, group_keys: Sequence[str]) -> str:
    parts = [f"{k}={_plain(row[k])}" for k in group_keys]
    return " ".join(parts) or "all runs"


def _plain(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) >= 1 else f"{value:g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def group_mask(runs: pd.DataFrame, row: pd.Series, group_keys: Sequence[str]) -> pd.Series:
    """The runs of the configuration a summary row describes."""
    mask = pd.Series(True, index=runs.index)
    for key in group_keys:
        value = row[key]
        # NaN never equals NaN: a run missing the key belongs to the group with NaN.
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        mask &= runs[key].isna() if missing else runs[key] == value
    return mask


def lead_verdict(low: float, high: float, higher_is_better: bool) -> str:
    """CLEAR, NOISE, REVERSED or NO_VERDICT for the interval of best minus runner-up."""
    if math.isnan(low) or math.isnan(high):
        return NO_VERDICT
    if not higher_is_better:
        low, high = -high, -low
    return CLEAR if low > 0 else REVERSED if high < 0 else NOISE


BEST_COLUMNS = [
    "selected_on",
    "selection_source",
    "reported_on",
    "higher_is_better",
    "best",
    "best_n",
    "best_selected_mean",
    "best_mean",
    "best_std",
    "best_ci95_low",
    "best_ci95_high",
    "runner_up",
    "runner_up_n",
    "runner_up_selected_mean",
    "runner_up_mean",
    "runner_up_std",
    "runner_up_ci95_low",
    "runner_up_ci95_high",
    "comparison",
    "n_pairs",
    "difference",
    "difference_ci95_low",
    "difference_ci95_high",
    "verdict",
]


def best_configs(
    runs: pd.DataFrame,
    summary: pd.DataFrame,
    group_keys: Sequence[str],
    chosen: Selection,
    seed_key: str = "seed",
) -> pd.DataFrame:
    """The configuration selected on ``chosen.metric`` and the runner-up, compared on each
    reported metric (``chosen.reported`` first, then the other test metrics): their means
    and intervals, and the difference best - runner-up with its interval, paired on the
    seeds they share (intervals.difference) and the verdict it gives (lead_verdict)."""
    metric = chosen.metric
    if metric is None or f"{metric}_mean" not in summary:
        return pd.DataFrame(columns=BEST_COLUMNS)
    ranked = summary.dropna(subset=[f"{metric}_mean"]).sort_values(
        f"{metric}_mean", ascending=lower_is_better(metric), kind="stable"
    )
    if ranked.empty:
        return pd.DataFrame(columns=BEST_COLUMNS)
    best = ranked.iloc[0]
    second = ranked.iloc[1] if len(ranked) > 1 else None
    done = runs[_status(runs) == states.COMPLETED]
    rows = []
    for reported in reported_metrics(summary, chosen):
        higher = not lower_is_better(reported)
        row: dict[str, object] = {
            "selected_on": metric,
            "selection_source": chosen.source,
            "reported_on": reported,
            "higher_is_better": higher,
            **_side("best", best, group_keys, metric, reported),
        }
        if second is not None:
            row.update(_side("runner_up", second, group_keys, metric, reported))
            unit = intervals.is_unit_metric(reported, done[reported])
            diff = intervals.difference(
                _by_seed(done, best, group_keys, reported, seed_key),
                _by_seed(done, second, group_keys, reported, seed_key),
                unit,
            )
            row.update(
                {
                    "comparison": diff.comparison,
                    "n_pairs": diff.n_pairs,
                    "difference": diff.estimate,
                    "difference_ci95_low": diff.low,
                    "difference_ci95_high": diff.high,
                    "verdict": lead_verdict(diff.low, diff.high, higher),
                }
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=BEST_COLUMNS)


def _side(
    prefix: str, row: pd.Series, group_keys: Sequence[str], metric: str, reported: str
) -> dict:
    return {
        prefix: config_label(row, group_keys),
        f"{prefix}_n": int(row["n_completed"]),
        f"{prefix}_selected_mean": row[f"{metric}_mean"],
        f"{prefix}_mean": row[f"{reported}_mean"],
        f"{prefix}_std": row[f"{reported}_std"],
        f"{prefix}_ci95_low": row[f"{reported}_ci95_low"],
        f"{prefix}_ci95_high": row[f"{reported}_ci95_high"],
    }


def _by_seed(
    done: pd.DataFrame, row: pd.Series, group_keys: Sequence[str], metric: str, seed_key: str
) -> pd.Series:
    """A configuration's finite values of ``metric``, indexed by seed (NaN: no seed column)."""
    runs = done[group_mask(done, row, group_keys)]
    values = pd.to_numeric(runs[metric], errors="coerce").to_numpy(dtype=float)
    seeds = runs[seed_key] if seed_key in runs else pd.Series(np.nan, index=runs.index)
    finite = np.isfinite(values)
    return pd.Series(values[finite], index=pd.Index(seeds.to_numpy()[finite]))


def reported_metrics(summary: pd.DataFrame, chosen: Selection) -> list[str]:
    """The metrics best.csv reports the selection on: the reported one, then the other tests."""
    names = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    tests = [m for m in names if m.startswith(selection.TEST_PREFIXES)]
    return [m for m in dict.fromkeys([chosen.reported, *tests]) if m in names]
