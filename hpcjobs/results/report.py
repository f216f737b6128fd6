"""A collected sweep -> report.md and report.html, for a human deciding what worked.

Sections, in order: the sweeps and their runs (with the code each ran: commit, uncommitted
changes, snapshot, versions); for an adaptive sweep, its study (trials by state, the best
trial and its re-runs over seeds, every trial, Optuna's optimization history and parameter
importances: hpcjobs/results/trials.py); the best configuration for the main metric and whether its
lead over the runner-up exceeds the seed-to-seed spread (selected on a validation metric,
reported on a test metric: hpcjobs/results/selection.py); the summary table; learning
curves; the main metric against each swept hyperparameter; the runs that did not
complete, with their tracebacks; the slowest runs and the throughput; cost and sizing
(CPU/GPU hours, efficiency, the least efficient configurations, requests far above use).

report.html is self-contained (plots embedded as data: URIs, inline CSS, no scripts), so
it can be mailed or copied off a cluster as one file. report.md references the same plots
as PNG files in ``plots/`` beside it. Both come from the Jinja2 templates in
hpcjobs/templates/; this module only shapes the data into display strings.

Run files that cannot be read (a missing or corrupt history.csv) are skipped and listed
under "Problems"; they never stop the report.
"""

from __future__ import annotations

import base64
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import numpy as np
import pandas as pd

from hpcjobs import atomic, states
from hpcjobs.results import cost, plots, stats, trials
from hpcjobs.results.collect import SEED_KEY, TRIAL_KEY, Collection

# The CLI formats with these too, so both say the same about the same numbers.
from hpcjobs.results.formatting import (
    ci_text,
    comparison_text,
    fmt,
    fmt_seconds,
    hours,
    is_missing,
    mean_pm_std,
    percent,
    selection_caveat,
    selection_text,
    signed,
    verdict_reading,
)
from hpcjobs.sweepdir import runfiles

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).parents[1] / "templates"
PLOTS_DIR = "plots"
MAX_CURVES = 6  # more lines than this on one axis cannot be told apart
MAX_SLOWEST = 10
MAX_THROUGHPUT_BARS = 20
TRACEBACK_LINES = 15
# Shown next to the main metric in the summary table when the runs recorded them.
EXTRA_METRICS = ("test_f1", "test_loss")
CURVE_COLUMNS = ("val_accuracy", "train_accuracy", "val_loss", "train_loss")
PLOT_NAMES = ("learning_curves", "metric_vs_params", "throughput")
# An adaptive sweep's figures; a second study sweep's get a suffix (optimization_history_2).
STUDY_PLOT_NAMES = ("optimization_history", "param_importances")
MAX_TRIAL_ROWS = 200  # the rest are in runs.csv


def write_report(collection: Collection, out_dir: Path) -> dict[str, Path]:
    """Write report.md, report.html and plots/*.png into out_dir (each file atomically).

    Returns the paths written: "markdown", "html", and one entry per plot by name
    ("learning_curves", "metric_vs_params", "throughput"; for an adaptive sweep
    "optimization_history" and "param_importances"); a plot with nothing to show is not drawn.
    """
    out_dir = Path(out_dir)
    problems = list(collection.problems)
    context, figures = build_report(collection, problems)
    md_images = {name: f"{PLOTS_DIR}/{name}.png" for name in figures}
    html_images = {
        name: "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        for name, png in figures.items()
    }
    env = _environment()
    # Render both before writing anything: a template error leaves the old report whole.
    texts = {
        "markdown": (
            "report.md",
            env.get_template("report.md.j2").render(**context, images=md_images),
        ),
        "html": (
            "report.html",
            env.get_template("report.html.j2").render(**context, images=html_images),
        ),
    }
    written: dict[str, Path] = {}
    stale = [out_dir / PLOTS_DIR / f"{name}.png" for name in PLOT_NAMES]
    stale += [
        p for name in STUDY_PLOT_NAMES for p in sorted((out_dir / PLOTS_DIR).glob(f"{name}*.png"))
    ]
    for name, png in figures.items():  # PLOT_NAMES' order, then the studies'
        path = out_dir / PLOTS_DIR / f"{name}.png"
        atomic.write_bytes(path, png)
        written[name] = path
    for path in stale:
        if path.stem not in figures and path.is_file():
            path.unlink()  # a plot from an earlier report of other data would mislead
    for key, (filename, text) in texts.items():
        atomic.write_text(out_dir / filename, text)
        written[key] = out_dir / filename
    log.info(
        "report written to %s (%d runs, %d problems)", out_dir, len(collection.runs), len(problems)
    )
    return written


def build_report(
    collection: Collection, problems: list[str]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The templates' context (display strings only) and the figures as PNG bytes.

    Appends to ``problems`` what could not be read while building it.
    """
    runs = collection.runs
    metric = main_metric(collection)
    completed = runs[runs["status"] == states.COMPLETED] if len(runs) else runs
    groups = group_rows(collection)
    curves, curves_png = learning_curves_section(collection, groups, problems)
    params, params_png = params_section(collection, completed)
    speed, speed_png = speed_section(collection, groups)
    studies, study_pngs = studies_section(collection)
    pngs = {
        "learning_curves": curves_png,
        "metric_vs_params": params_png,
        "throughput": speed_png,
        **study_pngs,
    }
    figures = {name: png for name, png in pngs.items() if png is not None}

    context = {
        "title": f"Sweep report: {collection.experiment}",
        "header": header_section(collection),
        "studies": studies,
        "best": best_section(collection),
        "summary": summary_section(collection),
        "curves": curves,
        "params": params,
        "failures": failures_section(collection, problems),
        "speed": speed,
        "cost": cost_section(collection, groups),
        "metric": metric,
        "problems": problems,
    }
    return context, figures


# ---------------------------------------------------------------- report-only text


def value_text(value: object) -> str:
    """A hyperparameter value as the user wrote it on the command line (0.001, adam)."""
    if is_missing(value):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)


def duration_text(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def main_metric(collection: Collection) -> str | None:
    """collection.metric if some configuration has a value for it: in a sweep where every
    run failed, the collector may still pick a field only failed runs wrote (wall_seconds)."""
    metric, summary = collection.metric, collection.summary
    column = f"{metric}_mean"
    return metric if metric and column in summary and summary[column].notna().any() else None


# ---------------------------------------------------------------- groups


def group_rows(collection: Collection) -> list[tuple[str, pd.Series, pd.DataFrame]]:
    """(label, summary row, its runs) per configuration, in summary order (best first)."""
    runs, keys = collection.runs, collection.group_keys
    return [
        (
            stats.config_label(row, label_keys(row, keys)),
            row,
            runs[stats.group_mask(runs, row, keys)],
        )
        for _, row in collection.summary.iterrows()
    ]


def label_keys(row: pd.Series, keys: Sequence[str]) -> list[str]:
    """The keys that name a configuration in a plot or a table: an adaptive sweep's trial is
    named by its number ('trial=4'; its sampled values are in the trials table), not by six
    long numbers that no legend could hold."""
    if TRIAL_KEY in keys and TRIAL_KEY in row.index and not is_missing(row[TRIAL_KEY]):
        return [k for k in keys if k in ("sweep", TRIAL_KEY)]
    return list(keys)


def run_label(run: pd.Series, keys: Sequence[str]) -> str:
    """A run's configuration and seed: 'optimizer=adam optimizer.lr=0.01 seed=1'."""
    keys = label_keys(run, keys)
    shown = [k for k in keys if k in run.index]
    if SEED_KEY in run.index and SEED_KEY not in shown and not is_missing(run[SEED_KEY]):
        shown.append(SEED_KEY)
    return stats.config_label(run, shown) if shown else "—"


def task_text(run: pd.Series) -> str:
    task: Any = run.get("task")
    if is_missing(task):  # a run directory not named by its task index
        return Path(str(run.get("run_dir", ""))).name or "—"
    return str(int(task))


# ---------------------------------------------------------------- 1. header


def header_section(collection: Collection) -> dict[str, Any]:
    runs = collection.runs
    sweeps = [
        {
            "name": s.name,
            "path": s.path,
            "command": " ".join(s.command) or "unknown",
            "git_commit": s.git_commit or "unknown",
            "created_at": timestamp_text(s.created_at),
            "executor": s.executor or "unknown",
            "code": [code_text(entry) for entry in s.provenance],
        }
        for s in collection.sweeps
    ]
    counts = sorted(
        collection.counts.items(), key=lambda kv: (kv[0] != states.COMPLETED, -kv[1], kv[0])
    )
    return {
        "experiment": collection.experiment,
        "sweeps": sweeps,
        "n_runs": len(runs),
        "counts": [{"status": k, "n": v} for k, v in counts],
        "date_range": date_range(runs),
        "group_keys": ", ".join(collection.group_keys) or "none (all runs form one group)",
        "metric": main_metric(collection) or "none (no completed run recorded a metric)",
        "selection": selection_text(collection.selection) if main_metric(collection) else None,
    }


def code_text(entry: dict[str, Any]) -> dict[str, Any]:
    """One submitting command's code (sweep.json's provenance) as display strings."""
    checkouts = []
    for c in entry.get("checkouts", []):
        state = (
            f"uncommitted changes in {c['patch']}"
            if c.get("dirty") and c.get("patch")
            else "uncommitted changes"
            if c.get("dirty")
            else "clean"
        )
        checkouts.append(
            f"{c.get('role', 'code')}: {str(c.get('commit', ''))[:12]},"
            f" {state} ({c.get('path', '')})"
        )
    packages = dict(entry.get("packages") or {})
    parts = [f"Python {entry['python']}"] if entry.get("python") else []
    for name, version in packages.items():
        parts.append(
            f"{name} {version}"
            + (
                f" (CUDA {entry['cuda'] or 'none: CPU build'})"
                if name == "torch" and "cuda" in entry
                else ""
            )
        )
    return {
        "checkouts": checkouts or ["not a git checkout: no commit recorded"],
        "snapshot": f"taken: the tasks imported {entry['snapshot']}"
        if entry.get("snapshot")
        else "none: the tasks imported the working tree as it was when each started",
        "versions": ", ".join(parts) or "unknown",
    }


def date_range(runs: pd.DataFrame) -> str:
    """'2026-11-27 03:22:25 → 2026-11-27 03:24:10 UTC (2 min)' from started_at/finished_at."""
    start = _timestamps(runs, "started_at").min()
    end = _timestamps(runs, "finished_at").max()
    if pd.isna(start) and pd.isna(end):
        return "unknown (no run recorded its start or finish)"
    if pd.isna(start) or pd.isna(end):
        known = start if pd.isna(end) else end
        return (
            f"{known:%Y-%m-%d %H:%M:%S} UTC"
            f" (only {'starts' if pd.isna(end) else 'finishes'} recorded)"
        )
    return (
        f"{start:%Y-%m-%d %H:%M:%S} → {end:%Y-%m-%d %H:%M:%S} UTC"
        f" ({duration_text((end - start).total_seconds())})"
    )


def timestamp_text(value: str | None) -> str:
    """An ISO timestamp as the header shows times: '2026-11-27 03:22:24 UTC'."""
    if not value:
        return "unknown"
    stamp = pd.to_datetime(value, utc=True, errors="coerce")
    return str(value) if pd.isna(stamp) else f"{stamp:%Y-%m-%d %H:%M:%S} UTC"


def _timestamps(runs: pd.DataFrame, column: str) -> pd.Series:
    if column not in runs:
        return pd.Series([], dtype="datetime64[ns, UTC]")
    return pd.to_datetime(runs[column], utc=True, errors="coerce", format="ISO8601")


# ---------------------------------------------------------------- 1b. adaptive sweep


def studies_section(collection: Collection) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """One entry per adaptive sweep (its study, best trial, re-runs, trials table, figure
    names), and the figures by name; empty for grid sweeps."""
    sections, figures = [], {}
    overviews = trials.overviews(collection, epochs=True)
    for i, study in enumerate(overviews):
        section = study_section(study, TRIAL_KEY in collection.group_keys)
        section["show_sweep"] = len(collection.sweeps) > 1
        drawn, notes = trials.figures(study)
        suffix = f"_{i + 1}" if i else ""
        for name, png in drawn.items():
            figures[name + suffix] = png
        section["images"] = {name: name + suffix for name in drawn}
        section["notes"] += notes
        sections.append(section)
    return sections, figures


def study_section(study: trials.StudyOverview, grouped_by_trial: bool = True) -> dict[str, Any]:
    """An adaptive sweep's facts, best trial, re-runs over seeds and trials, as display strings.

    ``grouped_by_trial``: the summary has a row per trial (the default grouping), which the
    re-runs' text then points to."""
    spec, best = study.spec, study.best
    facts = [
        ("Study", f"{spec.name} (Optuna, in {study.sweep.path}/optuna.journal)"),
        (
            "Objective",
            f"{spec.metric}, {spec.direction}"
            + (
                f"; pruning on {spec.intermediate} per epoch"
                if spec.intermediate and spec.pruner.get("name") not in (None, "none")
                else "; no pruning"
            ),
        ),
        ("Sampler", _settings_text(spec.sampler, "tpe")),
        ("Pruner", _settings_text(spec.pruner, None)),
        ("Trials", f"{spec.n_trials} planned: {study.counts_text}"),
    ]
    section: dict[str, Any] = {
        "sweep": study.sweep.name,
        "facts": facts,
        "best": None,
        "reruns": None,
        "notes": list(study.notes),
        "metric": spec.metric,
    }
    if best is not None:
        section["best"] = {
            "number": best.number,
            "task": "—" if best.task is None else str(best.task),
            "value": fmt(best.value),
            "run_dir": best.run_dir,
            "params": [(k, value_text(v)) for k, v in best.params.items()],
        }
    if best is not None and spec.rerun_best_seeds > 0:
        mean, std, low, high = study.rerun_stats
        n = len(study.reruns)
        section["reruns"] = {
            "planned": spec.rerun_best_seeds,
            "n": n,
            "metric": study.reported,
            "value": mean_pm_std(mean, std, n) if n else None,
            "ci": ci_text(mean, low, high, n) if n else None,
            # Which runs these numbers come from, in words: the report says, not the reader's guess.
            "which": (
                f"over its {n} re-run seed{'s' if n != 1 else ''} only: the"
                " trial's own run is left out, as it was picked for being the"
                f" best of {len(study.trials)} and so flatters the configuration."
                + (
                    f" The Summary's row for trial={best.number} counts the trial's own run too"
                    f" (n={1 + n} there)."
                    if grouped_by_trial
                    else ""
                )
            ),
        }
    keys = list(spec.params)
    rows = []
    for t in study.trials[:MAX_TRIAL_ROWS]:
        rows.append(
            {
                "number": "—" if t.number is None else str(t.number),
                "task": "—" if t.task is None else str(t.task),
                "state": t.state,
                "value": fmt(t.value) if t.value is not None else "—",
                "epochs": "—" if t.epochs is None else str(t.epochs),
                "params": [value_text(t.params.get(k)) if k in t.params else "—" for k in keys],
                "best": best is not None and t.number == best.number,
            }
        )
    section.update(
        {"key_names": keys, "rows": rows, "more": max(0, len(study.trials) - MAX_TRIAL_ROWS)}
    )
    return section


def _settings_text(settings: dict[str, Any], default: str | None) -> str:
    """{'name': 'median', 'n_startup_trials': 5} -> 'median (n_startup_trials=5)'."""
    rest = dict(settings)
    name = rest.pop("name", default) or "none"
    return name + (f" ({', '.join(f'{k}={v}' for k, v in rest.items())})" if rest else "")


# ---------------------------------------------------------------- 2. best configuration


def best_section(collection: Collection) -> dict[str, Any] | None:
    """The configuration selected on the selection metric, the runner-up, and how clear the
    lead is on the reported metric (best.csv's first row)."""
    best = collection.best
    if collection.metric is None or best.empty or best.iloc[0]["selected_on"] != collection.metric:
        return None
    row = best.iloc[0]

    def side(prefix: str) -> dict[str, str]:
        n = int(row[f"{prefix}_n"])
        value = mean_pm_std(row[f"{prefix}_mean"], row[f"{prefix}_std"], n)
        mean, low, high = (row[f"{prefix}_{s}"] for s in ("mean", "ci95_low", "ci95_high"))
        ci = ci_text(mean, low, high, n)
        selected = f"; {row['selected_on']} {fmt(row[f'{prefix}_selected_mean'])}"
        same = row["selected_on"] == row["reported_on"]  # no need to say it twice
        return {
            "value": value + (f", 95% CI {ci}" if ci.startswith("[") else ""),
            "selected": "" if same else selected,
        }

    heading = selection_text(collection.selection)
    out: dict[str, Any] = {
        "heading": heading[:1].upper() + heading[1:],
        "selected_on": row["selected_on"],
        "reported_on": row["reported_on"],
        "direction": "higher is better" if row["higher_is_better"] else "lower is better",
        "caveat": selection_caveat(collection.selection),
        "best": row["best"],
        "best_side": side("best"),
        "runner_up": None,
    }
    if isinstance(row["runner_up"], str):
        low, high = row["difference_ci95_low"], row["difference_ci95_high"]
        out.update(
            {
                "runner_up": row["runner_up"],
                "runner_up_side": side("runner_up"),
                "difference": signed(row["difference"]),
                "comparison": comparison_text(row),
                "difference_ci": f"[{fmt(low)}, {fmt(high)}]" if not is_missing(low) else "—",
                "reading": verdict_reading(row),
                # how the HTML colours the reading: clear lead, seed noise, reversed, or no verdict
                "verdict": row["verdict"],
            }
        )
    return out


# ---------------------------------------------------------------- 3. summary table


def summary_metrics(collection: Collection) -> list[str]:
    """The selection metric, the reported one beside it, then EXTRA_METRICS."""
    wanted = [collection.metric, collection.reported, *EXTRA_METRICS]
    return [m for m in dict.fromkeys(wanted) if m and f"{m}_mean" in collection.summary]


def summary_section(collection: Collection) -> dict[str, Any]:
    summary, keys = collection.summary, collection.group_keys
    metrics = summary_metrics(collection)
    rows = []
    for _, row in summary.iterrows():
        cells: dict[str, Any] = {
            "keys": [value_text(row[k]) for k in keys] or ["all runs"],
            "n_runs": int(row["n_runs"]),
            "n_failed": int(row["n_failed"]),
            "n_pruned": int(row["n_pruned"]) if "n_pruned" in row.index else None,
            "metrics": [],
        }
        for m in metrics:
            n = int(row["n_completed"])
            cells["metrics"].append(
                {
                    "mean": mean_pm_std(row[f"{m}_mean"], row[f"{m}_std"]),
                    "ci": ci_text(row[f"{m}_mean"], row[f"{m}_ci95_low"], row[f"{m}_ci95_high"], n),
                }
            )
        rows.append(cells)
    return {
        "key_names": keys or ["configuration"],
        "metrics": metrics,
        "rows": rows,
        "pruned": "n_pruned" in summary.columns,
    }


# ---------------------------------------------------------------- 4. learning curves


def read_history(run_dir: Path, problems: list[str], missing: list[str]) -> pd.DataFrame | None:
    """history.csv with its epoch and curve columns; None if unusable, with the path added
    to ``missing`` (no file) or the reason to ``problems`` (unreadable)."""
    path = Path(run_dir) / runfiles.HISTORY_FILE
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        missing.append(str(path))
        return None
    except (OSError, ValueError, pd.errors.ParserError) as e:  # EmptyDataError is a ValueError
        problems.append(
            f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        )
        return None
    columns = [c for c in CURVE_COLUMNS if c in frame]
    if "epoch" not in frame or not columns:
        problems.append(
            f"{path}: no epoch or accuracy/loss columns (found:"
            f" {', '.join(map(str, frame.columns))})"
        )
        return None
    frame = (
        frame[["epoch", *columns]].apply(pd.to_numeric, errors="coerce").dropna(subset=["epoch"])
    )
    if frame.empty:
        problems.append(f"{path}: no epoch rows")
        return None
    return frame


def mean_curve(label: str, histories: Sequence[pd.DataFrame]) -> plots.Curve:
    """Mean and std over seeds per epoch (a run that stopped early counts where it has data)."""
    stacked = pd.concat(histories, ignore_index=True)
    by_epoch = stacked.groupby("epoch", sort=True)
    mean, std = by_epoch.mean(), by_epoch.std(ddof=1).fillna(0.0)
    columns = [c for c in CURVE_COLUMNS if c in mean and mean[c].notna().any()]
    return plots.Curve(
        label=label,
        epoch=mean.index.to_numpy(dtype=float),
        n_runs=len(histories),
        mean={c: mean[c].to_numpy(dtype=float) for c in columns},
        std={c: std[c].to_numpy(dtype=float) for c in columns},
    )


def learning_curves_section(
    collection: Collection,
    groups: Sequence[tuple[str, pd.Series, pd.DataFrame]],
    problems: list[str],
) -> tuple[dict[str, Any], bytes | None]:
    """The top configurations' mean curves over seeds (completed runs only), and their plot."""
    metric = collection.metric
    with_metric = [g for g in groups if metric and not is_missing(g[1].get(f"{metric}_mean"))]
    curves: list[plots.Curve] = []
    skipped = 0
    missing: list[str] = []
    for label, _, group_runs in with_metric:
        if len(curves) == MAX_CURVES:
            break
        done = group_runs[group_runs["status"] == states.COMPLETED]
        histories = [
            h
            for h in (read_history(Path(d), problems, missing) for d in done["run_dir"])
            if h is not None
        ]
        skipped += len(done) - len(histories)
        if histories:
            curves.append(mean_curve(label, histories))
    section: dict[str, Any] = {
        "shown": len(curves),
        "total": len(with_metric),
        "skipped": skipped,
        "note": None,
    }
    if not curves:
        # A workload without epochs writes no history at all: one note, not a problem per run.
        section["note"] = (
            "No learning curves: no completed run has a readable history.csv."
            if with_metric
            else "No learning curves: no run completed."
        )
        return section, None
    problems.extend(f"{path}: missing (run left out of the learning curves)" for path in missing)
    if len(curves) < len(with_metric):
        which = f"Top {len(curves)} of {len(with_metric)} configurations by mean {metric}"
        title = f"Learning curves: top {len(curves)} of {len(with_metric)} configurations"
    else:
        which = f"All {len(curves)} configuration{'s' if len(curves) > 1 else ''}"
        title = "Learning curves"
    section["caption"] = (
        which
        + ": mean over seeds per epoch, band ± 1 std over seeds; validation solid, train dashed."
    )
    return section, plots.learning_curves(curves, title)


# ---------------------------------------------------------------- 5. metric vs hyperparameters


def params_section(
    collection: Collection, completed: pd.DataFrame
) -> tuple[dict[str, Any], bytes | None]:
    """The main metric against each swept hyperparameter, and its plot."""
    metric = collection.metric
    # A trial's number is no hyperparameter (the optimization history plots the metric by trial).
    keys = [k for k in collection.group_keys if k not in ("sweep", TRIAL_KEY)]
    section: dict[str, Any] = {"keys": keys, "note": None}
    if not keys:
        section["note"] = (
            "No swept hyperparameter (no group key besides the sweep): nothing to plot."
        )
        return section, None
    if metric is None or metric not in completed or completed[metric].notna().sum() == 0:
        section["note"] = "No completed run recorded the main metric: nothing to plot."
        return section, None
    color_key = colour_key(collection, keys)
    section["caption"] = (
        f"{metric} of every completed run (dots{', coloured by ' + color_key if color_key else ''})"
        " and the mean per value (black), one panel per swept hyperparameter."
    )
    title = f"{metric} against each swept hyperparameter"
    return section, plots.metric_vs_params(completed, keys, metric, color_key, title)


def colour_key(collection: Collection, keys: Sequence[str]) -> str | None:
    """The key that colours the dots: with two swept keys, each panel shows the other one."""
    candidates = [
        k
        for k in collection.group_keys
        if k != TRIAL_KEY and collection.runs[k].nunique(dropna=False) <= 8
    ]
    if len(keys) == 1:
        others = [k for k in candidates if k not in keys]  # several sweeps: colour by sweep
        return others[0] if others else None

    # Prefer a categorical key (optimizer) over a numeric one (lr) for colours.
    def is_numeric(key: str) -> bool:
        return plots.is_numeric(collection.runs[key])

    candidates.sort(key=is_numeric)
    return candidates[0] if candidates else None


# ---------------------------------------------------------------- 6. failures


def failures_section(collection: Collection, problems: list[str]) -> dict[str, Any]:
    runs, keys = collection.runs, collection.group_keys
    # A pruned run is a result (the study stopped a poor trial early), not a failure.
    failed = runs[~runs["status"].isin(states.FINISHED)] if len(runs) else runs
    n_pruned = int((runs["status"] == states.PRUNED).sum()) if len(runs) else 0
    rows = []
    for _, run in failed.iterrows():
        error_type, message = run.get("error_type"), run.get("error_message")
        error = ": ".join(
            str(x) for x in (error_type, message) if not is_missing(x)
        ) or _status_hint(run["status"])
        rows.append(
            {
                "task": task_text(run),
                "config": run_label(run, keys),
                "status": str(run["status"]),
                "error": error,
                "traceback": traceback_tail(Path(str(run["run_dir"])), problems)
                if run["status"] == states.FAILED
                else None,
                "run_dir": str(run["run_dir"]),
            }
        )
    return {"rows": rows, "n": len(rows), "n_pruned": n_pruned}


def _status_hint(status: str) -> str:
    return {
        states.NOT_STARTED: "no run directory (never started)",
        states.NO_METRICS: "no metrics.json (killed before its first write?)",
        states.CORRUPT: "metrics.json unreadable (see Problems)",
        states.RUNNING: "still running, or killed without a chance to record it",
    }.get(status, "no error recorded")


def traceback_tail(run_dir: Path, problems: list[str]) -> str | None:
    """The last lines of the traceback the job saved in metrics.json."""
    try:
        metrics = runfiles.read_metrics(run_dir)
    except (runfiles.CorruptRunFile, OSError) as e:
        problems.append(str(e))
        return None
    text = (metrics or {}).get("traceback")
    if not isinstance(text, str) or not text.strip():
        return None
    lines = text.rstrip().splitlines()
    tail = lines[-TRACEBACK_LINES:]
    return ("…\n" if len(lines) > len(tail) else "") + "\n".join(tail)


# ---------------------------------------------------------------- 7. speed


def speed_section(
    collection: Collection,
    groups: Sequence[tuple[str, pd.Series, pd.DataFrame]],
) -> tuple[dict[str, Any], bytes | None]:
    """The slowest runs, the throughput per configuration, and its bar chart."""
    runs, keys = collection.runs, collection.group_keys
    png = None
    section: dict[str, Any] = {
        "slowest": [],
        "duration_column": None,
        "throughput": [],
        "note": None,
    }
    duration = next(
        (c for c in ("wall_seconds", "train_seconds") if c in runs and runs[c].notna().any()), None
    )
    if duration:
        section["duration_column"] = duration
        slowest = runs.dropna(subset=[duration]).sort_values(
            duration, ascending=False, kind="stable"
        )
        for _, run in slowest.head(MAX_SLOWEST).iterrows():
            section["slowest"].append(
                {
                    "task": task_text(run),
                    "config": run_label(run, keys),
                    "status": str(run["status"]),
                    "wall": fmt_seconds(run.get("wall_seconds")),
                    "train": fmt_seconds(run.get("train_seconds")),
                    "speed": fmt(run.get("train_images_per_second")),
                }
            )
    column = "train_images_per_second"
    if column in runs and runs[column].notna().any():
        rows = []
        for label, _, group_runs in groups:
            values = group_runs.loc[group_runs["status"] == states.COMPLETED, column].dropna()
            if len(values):
                rows.append(
                    (
                        label,
                        float(values.mean()),
                        float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                        len(values),
                    )
                )
        rows.sort(key=lambda r: -r[1])
        section["throughput"] = [
            {"config": label, "speed": mean_pm_std(m, s), "n": n} for label, m, s, n in rows
        ]
        shown = rows[:MAX_THROUGHPUT_BARS]
        if shown:
            title = (
                "Training throughput per configuration"
                if len(shown) == len(rows)
                else f"Training throughput: the {len(shown)} fastest of {len(rows)} configurations"
            )
            png = plots.throughput_bars(
                [r[0] for r in shown], [r[1] for r in shown], [r[2] for r in shown], title
            )
    if not duration and not section["throughput"]:
        section["note"] = "No run recorded wall_seconds, train_seconds or train_images_per_second."
    return section, png


# ---------------------------------------------------------------- 8. cost and sizing


def cost_section(
    collection: Collection, groups: Sequence[tuple[str, pd.Series, pd.DataFrame]]
) -> dict[str, Any]:
    """What the runs cost, the configurations that used least of what they were given, and
    requests far above use, each with the launcher setting that would fit."""
    runs = collection.runs
    section: dict[str, Any] = {
        "totals": [],
        "rows": [],
        "hints": [],
        "notes": list(collection.notes),
        "note": None,
    }
    total = cost.totals(runs)
    if total is None:
        section["note"] = (
            "No run recorded what it used (runs from before hpcjobs measured it, or none has"
            " ended): no cost to show."
        )
        return section
    per_group = [(label, group_runs) for label, _, group_runs in groups]
    cpu = (
        f"{hours(total['cpu_hours'])} h, of which {percent(total['cpu_efficiency'])} used"
        f" ({hours(total['cpu_used_hours'])} h of CPU time)"
    )
    memory = cost.memory_text(total["peak_rss_mb"]) if not is_missing(total["peak_rss_mb"]) else "—"
    if not is_missing(total["req_mem_mb"]):
        memory += f" (requested up to {cost.memory_text(total['req_mem_mb'])})"
    measured_by = (
        f"Slurm accounting (sacct) for {total['n_sacct']} run(s),"
        f" their own process for {total['n_process']}"
    )
    if total["n_runs"] > total["n_measured"]:
        measured_by += f"; {total['n_runs'] - total['n_measured']} without a measure"
    section["totals"] = [
        ("CPU-hours (allocated)", cpu),
        ("GPU-hours", f"{hours(total['gpu_hours'])} h"),
        ("Peak memory", memory),
        ("Measured by", measured_by),
    ]
    section["rows"] = [
        {
            "config": r["config"],
            "n": r["n"],
            "cpu_hours": hours(r["cpu_hours"]),
            "gpu_hours": hours(r["gpu_hours"]),
            "cpu_efficiency": percent(r["cpu_efficiency"]),
            "mem_efficiency": percent(r["mem_efficiency"]),
            "memory": (
                cost.memory_text(r["peak_rss_mb"]) if not is_missing(r["peak_rss_mb"]) else "—"
            )
            + (
                f" of {cost.memory_text(r['req_mem_mb'])}"
                if not is_missing(r["req_mem_mb"])
                else ""
            ),
        }
        for r in cost.least_efficient(per_group)
    ]
    section["hints"] = cost.sizing_hints(runs, per_group)
    if total["n_process"]:
        section["notes"].append(
            f"{total['n_process']} run(s) measured by their own process (local runs, runs of"
            " workers, or no scheduler accounting recorded): no requested memory to compare with."
        )
    return section


# ---------------------------------------------------------------- rendering


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html.j2",), default_for_string=False
        ),
        undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly, not as an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = md_cell
    env.filters["indent_code"] = indent_code
    env.filters["code_spans"] = code_spans
    return env


def code_spans(text: str) -> markupsafe.Markup:
    """HTML-escaped text whose `backticked` parts become <code> (a hint's launcher setting)."""
    escaped = str(markupsafe.escape(text))
    return markupsafe.Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped))


def md_cell(value: object) -> str:
    """Text safe inside a Markdown table cell: no pipes, no line breaks, no raw HTML."""
    text = str(value).replace("\r", "").replace("\n", " ").replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def indent_code(text: str) -> str:
    """A Markdown indented code block (4 spaces), which never needs escaping."""
    return "\n".join("    " + line for line in str(text).splitlines())
