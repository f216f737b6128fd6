"""Run directories -> comparison tables. Knows the run-file contract, nothing of Slurm.

``runs``: one row per run — its overrides as columns named by their dotted keys, its
status, every metric it recorded. ``summary``: runs grouped by every override key that varies
across runs (the swept ones) but the seed, with ``n_runs``, ``n_failed`` and ``<metric>_mean`` / ``<metric>_std`` (over seeds,
ddof=1) for each numeric metric, best group first.

The run directories are the source of truth. A run that failed, never started, or left
a corrupt metrics file still gets its row (with its status); a corrupt file is reported
by path in ``problems`` and never stops the collection.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hpcjobs import manifest, runfiles
from hpcjobs.errors import SweepDirError

SEED_KEY = "seed"
# metrics.json fields that describe a run rather than measure it: never averaged.
IDENTITY_FIELDS = {
    "schema_version", "status", "seed", "hostname", "device", "started_at", "finished_at",
    "error_type", "error_message", "traceback", "slurm_job_id", "slurm_array_job_id",
    "slurm_array_task_id", "slurm_node",
}
# Left out of runs.csv (multi-line); the failure report reads it from metrics.json.
LONG_FIELDS = {"traceback", "schema_version"}
PREFERRED_METRICS = ("test_accuracy", "test_f1", "best_val_accuracy", "score")


@dataclass
class Collection:
    runs: pd.DataFrame
    summary: pd.DataFrame
    group_keys: list[str]
    metric: str | None  # the summary is sorted by <metric>_mean
    experiment: str
    problems: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.runs["status"].value_counts().items()} if len(self.runs) else {}


def _find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Directories below sweep_dir that hold a run (Hydra's .hydra/ or a metrics file)."""
    found: list[Path] = []

    def walk(directory: Path, depth: int) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if (path / ".hydra").is_dir() or (path / runfiles.METRICS_FILE).is_file():
                found.append(path)
            elif depth < 3:
                walk(path, depth + 1)

    walk(sweep_dir, 0)
    return sorted(found, key=lambda p: (len(p.parts), _natural_key(p.name), str(p)))


def _natural_key(name: str) -> tuple[int, Any]:
    return (0, int(name)) if name.isdigit() else (1, name)


def _run_row(run_dir: Path, task: int | None, overrides: list[str] | None, problems: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"task": task, "run_dir": str(run_dir)}
    if overrides is None:
        try:
            overrides = runfiles.read_overrides(run_dir)
        except runfiles.CorruptRunFile as e:
            problems.append(str(e))
    for item in overrides or []:
        parsed = runfiles.parse_override(item)
        if parsed is not None:
            row[parsed[0]] = parsed[1]
    if not run_dir.is_dir():
        row["status"] = runfiles.NOT_STARTED
        return row
    try:
        metrics = runfiles.read_metrics(run_dir)
    except runfiles.CorruptRunFile as e:
        problems.append(str(e))
        row["status"] = runfiles.CORRUPT
        return row
    if metrics is None:
        row["status"] = runfiles.NO_METRICS
        return row
    row["status"] = metrics.get("status", runfiles.NO_METRICS)
    for key, value in metrics.items():
        if key not in LONG_FIELDS and key not in row:
            row[key] = value
    return row


def read_runs(sweep_dir: Path, problems: list[str]) -> tuple[list[dict[str, Any]], str]:
    """One row per run of a sweep, and the experiment's name."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SweepDirError(f"{sweep_dir}: no such directory")
    if manifest.exists(sweep_dir):
        try:
            sweep = manifest.read(sweep_dir)
        except SweepDirError as e:
            problems.append(str(e))
        else:
            rows = [_run_row(sweep.run_dir(t), t.index, t.overrides, problems) for t in sweep.tasks]
            return rows, sweep.experiment
    run_dirs = _find_run_dirs(sweep_dir)
    if not run_dirs:
        raise SweepDirError(f"{sweep_dir}: no run directories found (expected sub-folders with metrics.json or .hydra/)")
    rows = [_run_row(d, int(d.name) if d.name.isdigit() else None, None, problems) for d in run_dirs]
    return rows, _experiment_from_config(run_dirs) or sweep_dir.name


def _experiment_from_config(run_dirs: Sequence[Path]) -> str | None:
    for run_dir in run_dirs:
        try:
            for line in (run_dir / runfiles.CONFIG_FILE).read_text(encoding="utf-8").splitlines():
                if line.startswith("experiment_name:"):
                    return line.split(":", 1)[1].strip().strip("'\"") or None
        except OSError:
            continue
    return None


def _override_keys(rows: Sequence[dict[str, Any]], runs: pd.DataFrame) -> list[str]:
    """Columns that came from overrides, in first-seen order."""
    fixed = {"task", "run_dir", "status"}
    keys: list[str] = []
    for row in rows:
        for key in row:
            if key == "status":
                break  # overrides come before status in each row
            if key not in fixed and key not in keys:
                keys.append(key)
    return [k for k in keys if k in runs.columns]


def metric_direction_ascending(metric: str) -> bool:
    """Lower is better for losses, errors and times."""
    return any(word in metric for word in ("loss", "error", "seconds", "time"))


def summarize(runs: pd.DataFrame, group_keys: list[str], metric: str | None = None) -> tuple[pd.DataFrame, str | None]:
    completed = runs[runs["status"] == runfiles.COMPLETED]
    metric_cols = [
        c for c in runs.columns
        if c not in IDENTITY_FIELDS and c not in group_keys and c not in {"task", "run_dir", SEED_KEY}
        and pd.api.types.is_numeric_dtype(runs[c]) and not pd.api.types.is_bool_dtype(runs[c])
    ]
    if metric is None:
        metric = next((m for m in PREFERRED_METRICS if m in metric_cols), metric_cols[0] if metric_cols else None)
    keys = group_keys or ["__all__"]
    frame = runs.assign(__all__="all") if not group_keys else runs
    # dropna=False: a group whose key is missing (NaN) in some runs is still a group.
    grouped_all = frame.groupby(keys, dropna=False, sort=False)
    summary = pd.DataFrame({
        "n_runs": grouped_all.size(),
        "n_failed": grouped_all["status"].apply(lambda s: int((s != runfiles.COMPLETED).sum())),
    })
    if metric_cols and len(completed):
        done = completed.assign(__all__="all") if not group_keys else completed
        stats = done.groupby(keys, dropna=False, sort=False)[metric_cols].agg(["mean", "std"])
        stats.columns = [f"{m}_{stat}" for m, stat in stats.columns]
        summary = summary.join(stats)
    summary = summary.reset_index()
    if not group_keys:
        summary = summary.drop(columns="__all__")
    sort_col = f"{metric}_mean"
    if metric and sort_col in summary.columns:
        summary = summary.sort_values(sort_col, ascending=metric_direction_ascending(metric), na_position="last",
                                      kind="stable")
    return summary.reset_index(drop=True), metric


def collect(sweep_dirs: Sequence[Path], metric: str | None = None) -> Collection:
    """Read every run of the given sweeps into runs/summary DataFrames."""
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    experiments: list[str] = []
    for sweep_dir in sweep_dirs:
        sweep_rows, experiment = read_runs(Path(sweep_dir), problems)
        rows += sweep_rows
        experiments.append(experiment)
    runs = pd.DataFrame(rows)
    # Group by the keys that vary (the swept ones): a key every run shares adds nothing.
    group_keys = [k for k in _override_keys(rows, runs) if k != SEED_KEY and runs[k].nunique(dropna=False) > 1]
    summary, metric = summarize(runs, group_keys, metric)
    front = ["task"] + _override_keys(rows, runs) + ["status"]
    runs = runs[front + [c for c in runs.columns if c not in front and c != "run_dir"] + ["run_dir"]]
    experiment = experiments[0] if len(set(experiments)) == 1 else "+".join(dict.fromkeys(experiments))
    return Collection(runs, summary, group_keys, metric, experiment, problems)


def write_tables(collection: Collection, out_dir: Path) -> dict[str, Path]:
    """runs.csv and summary.csv in out_dir, each written atomically."""
    out_dir = Path(out_dir)
    written = {}
    for name, frame in (("runs", collection.runs), ("summary", collection.summary)):
        path = out_dir / f"{name}.csv"
        runfiles.write_text_atomic(path, frame.to_csv(index=False))
        written[name] = path
    return written


def default_out_dir(collection: Collection) -> Path:
    return Path("results") / collection.experiment
