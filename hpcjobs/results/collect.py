"""Run directories -> comparison tables. Knows the run-file contract, nothing of Slurm.

``runs``: one row per run; ``summary`` and ``best`` are computed from it by
hpcjobs/results/stats.py, ranked by the selection metric and reported on the test metric
that hpcjobs/results/selection.py chooses (a workload may declare them in its config group:
read here from a run's .hydra/config.yaml). Every column of the three is documented once,
in docs/reference/columns.md.

An adaptive sweep (sweep.json has a ``study``) samples its values where each run starts, so
the manifest holds only the shared base overrides: a run's override columns come from its
run directory (trial.json, else .hydra/overrides.yaml), and its row gains ``trial`` and
``role``. Configurations are then grouped by ``trial`` first: each trial is its own
configuration even if two drew the same values, and the best trial's re-runs fall into its
group, beside the trial's own run.

The run directories are the source of truth. A run that failed, never started, or left
a corrupt metrics file still gets its row (with its status); a corrupt file is reported
by path in ``problems`` and never stops the collection.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import yaml

from hpcjobs import atomic, states
from hpcjobs.errors import SweepDirError
from hpcjobs.results import accounting, cost, selection, stats
from hpcjobs.results.selection import Selection
from hpcjobs.sweepdir import manifest, runfiles

SEED_KEY = "seed"
TRIAL_KEY, ROLE_KEY = "trial", "role"  # an adaptive sweep's columns (see the module's docstring)
# Left out of runs.csv (multi-line); the failure report reads it from metrics.json.
LONG_FIELDS = {"traceback", "schema_version", runfiles.CONFIG_KEY}
_T = TypeVar("_T")


@dataclass
class SweepInfo:
    """What the report says about one collected sweep (from sweep.json when there is one)."""

    name: str  # the `sweep` column's value
    path: str
    experiment: str
    command: list[str] = field(default_factory=list)
    git_commit: str | None = None
    created_at: str | None = None
    executor: str | None = None
    # sweep.json's: code and versions per command
    provenance: list[dict[str, Any]] = field(default_factory=list)
    study: dict[str, Any] | None = (
        None  # an adaptive sweep's hpcjobs.run.study.StudySpec, as sweep.json has it
    )


@dataclass
class Collection:
    runs: pd.DataFrame
    summary: pd.DataFrame
    best: pd.DataFrame
    group_keys: list[str]
    metric: str | None  # the selection metric: the summary is sorted by <metric>_mean
    experiment: str
    sweeps: list[SweepInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # e.g. why scheduler accounting could not be recorded
    notes: list[str] = field(default_factory=list)
    selection: Selection = field(default_factory=lambda: Selection(None, None))

    @property
    def reported(self) -> str | None:
        """The metric shown beside the selection metric (a test metric)."""
        return self.selection.reported

    @property
    def counts(self) -> dict[str, int]:
        return (
            {str(k): int(v) for k, v in self.runs["status"].value_counts().items()}
            if len(self.runs)
            else {}
        )


def _find_run_dirs(sweep_dir: Path) -> list[str]:
    """Directories below sweep_dir that hold a run (Hydra's .hydra/ or a metrics file).

    As the strings str(Path) would give, shallowest first, then in natural name order.
    """
    found: list[tuple[int, tuple[int, Any], str]] = []

    def walk(directory: str, depth: int) -> None:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            path = _child(directory, entry.name)
            if os.path.isdir(_child(path, ".hydra")) or os.path.isfile(
                _child(path, runfiles.METRICS_FILE)
            ):
                found.append((depth, _natural_key(entry.name), path))
            elif depth < 3:
                walk(path, depth + 1)

    walk(str(Path(sweep_dir)), 0)
    found.sort()
    return [path for _, _, path in found]


def _natural_key(name: str) -> tuple[int, Any]:
    return (0, int(name)) if name.isdigit() else (1, name)


def _child(base: str, name: str) -> str:
    """str(Path(base) / name) for a normalized base; faster than pathlib for a one-part name."""
    if not name or "/" in name or name == ".":
        return str(Path(base) / name)
    if base == ".":
        return name
    return base + name if base.endswith("/") else f"{base}/{name}"


def _run_row(
    run_dir: Path | str,
    task: int | None,
    overrides: list[str] | None,
    problems: list[str],
    parsed: dict[str, tuple[str, Any] | None] | None = None,
    lead: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One run's row: task, run_dir, ``lead`` (an adaptive sweep's trial and role), its
    overrides (from the manifest or .hydra/), status, metrics.

    ``parsed`` memoizes parse_override across the runs of a sweep (they share few distinct
    override strings); the values it holds are immutable scalars, so rows may share them.
    """
    run_dir = os.fspath(run_dir)
    row: dict[str, Any] = {"task": task, "run_dir": run_dir}
    if lead:
        row.update(lead)
    if overrides is None:
        overrides = _read(runfiles.read_overrides, run_dir, problems)
    if overrides:
        if parsed is None:
            parsed = {}
        for item in overrides:
            try:
                key_value = parsed[item]
            except KeyError:
                key_value = parsed[item] = runfiles.parse_override(item)
            if key_value is not None:
                row[key_value[0]] = key_value[1]
    # Read first, look at the directory only if there is nothing to read (one syscall less per run).
    try:
        metrics = runfiles.read_metrics(run_dir)
    except runfiles.CorruptRunFile as e:
        problems.append(str(e))
        row["status"] = states.CORRUPT
        return row
    except OSError:
        if os.path.isdir(run_dir):
            raise  # e.g. unreadable: as loud as before
        metrics = None
    if metrics is None:
        row["status"] = states.NO_METRICS if os.path.isdir(run_dir) else states.NOT_STARTED
        return row
    row["status"] = metrics.get("status", states.NO_METRICS)
    for key, value in metrics.items():
        if key not in LONG_FIELDS and key not in row:
            row[key] = value
    recorded = _read(runfiles.read_accounting, run_dir, problems)
    if recorded:  # what the scheduler said the task used (only where status/collect recorded it)
        for key, value in accounting.columns(recorded).items():
            row.setdefault(key, value)
    return row


def _read(read: Callable[[str], _T | None], run_dir: str, problems: list[str]) -> _T | None:
    """``read(run_dir)`` (a runfiles reader); a corrupt file goes to ``problems``, as absent."""
    try:
        return read(run_dir)
    except runfiles.CorruptRunFile as e:
        problems.append(str(e))
        return None


def _trial_run(
    run_dir: str, record: manifest.TaskRecord, problems: list[str]
) -> tuple[list[str], dict[str, Any]]:
    """An adaptive sweep's run: its overrides and its trial number and role, from its run directory.

    trial.json has the overrides the run was started with, sampled values included; a run
    without it (an older worker, a corrupt file) has Hydra's copy in .hydra/overrides.yaml.
    A run not started yet has neither: it gets the manifest's base overrides, which every
    run shares, so that they do not look like a swept key (missing here, present there).
    """
    trial = _read(runfiles.read_trial, run_dir, problems)
    overrides = trial.get("overrides") if trial else None
    if not isinstance(overrides, list):
        overrides = _read(runfiles.read_overrides, run_dir, problems)
    number = trial.get("number") if trial else None
    lead = {
        TRIAL_KEY: number if isinstance(number, int) and not isinstance(number, bool) else None,
        ROLE_KEY: record.role or (trial or {}).get("role"),
    }
    return [str(o) for o in overrides] if overrides is not None else list(record.overrides), lead


def read_runs(
    sweep_dir: Path, problems: list[str], notes: list[str] | None = None
) -> tuple[list[dict[str, Any]], SweepInfo]:
    """One row per run of a sweep, and what is known about the sweep.

    With ``notes``, the scheduler's accounting of ended tasks that have none yet is first
    recorded in their run directories (one controller call: hpcjobs/results/accounting.py);
    why it could not be is added to ``notes``.

    One sequential pass over the run directories (threads only add GIL contention here:
    a warm metrics.json read costs less than its parse), with plain string paths and
    override parsing memoized (~0.15 s for 10,000 runs with a warm page cache, 2 cores).
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SweepDirError(f"{sweep_dir}: no such directory")
    parsed: dict[str, tuple[str, Any] | None] = {}
    if manifest.exists(sweep_dir):
        try:
            sweep = manifest.read(sweep_dir)
        except SweepDirError as e:
            problems.append(str(e))
        else:
            if notes is not None:
                note = accounting.fetch_missing(sweep)[1]
                if note:
                    notes.append(f"{_sweep_name(sweep_dir)}: {note}")
            base = str(Path(sweep.sweep_dir))  # SweepManifest.run_dir(task), as a string
            if sweep.study:  # the values each run drew are in its run directory, not the manifest
                rows = []
                for t in sweep.tasks:
                    run_dir = _child(base, t.run_dir)
                    overrides, lead = _trial_run(run_dir, t, problems)
                    rows.append(_run_row(run_dir, t.index, overrides, problems, parsed, lead))
            else:
                rows = [
                    _run_row(_child(base, t.run_dir), t.index, t.overrides, problems, parsed)
                    for t in sweep.tasks
                ]
            info = SweepInfo(
                _sweep_name(sweep_dir),
                str(sweep_dir),
                sweep.experiment,
                sweep.command,
                sweep.git_commit,
                sweep.created_at,
                sweep.executor,
                sweep.provenance,
                dict(sweep.study) if sweep.study else None,
            )
            return rows, info
    run_dirs = _find_run_dirs(sweep_dir)
    if not run_dirs:
        raise SweepDirError(
            f"{sweep_dir}: no run directories found (expected"
            " sub-folders with metrics.json or .hydra/)"
        )
    rows = []
    for d in run_dirs:
        name = os.path.basename(d)
        rows.append(_run_row(d, int(name) if name.isdigit() else None, None, problems, parsed))
    return rows, SweepInfo(
        _sweep_name(sweep_dir), str(sweep_dir), _experiment_from_config(run_dirs) or sweep_dir.name
    )


def _sweep_name(sweep_dir: Path) -> str:
    """multirun/cnn_sweep/2026-11-27_03-22-41 -> 'cnn_sweep/2026-11-27_03-22-41'."""
    parts = Path(sweep_dir).resolve().parts
    return "/".join(parts[-2:])


def _experiment_from_config(run_dirs: Sequence[Path | str]) -> str | None:
    for run_dir in run_dirs:
        try:
            with open(os.path.join(run_dir, runfiles.CONFIG_FILE), encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:  # a compact run: its config is in metrics.json
            config = _compact_config(run_dir)
            if config is None:
                continue
            return str(config.get("experiment_name") or "") or None
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            if line.startswith("experiment_name:"):
                return line.split(":", 1)[1].strip().strip("'\"") or None
    return None


def declared_metrics(run_dirs: Sequence[str]) -> dict[str, str]:
    """The workload's select_metric/report_metric, from the first run's .hydra/config.yaml
    that can be read (every run of a sweep has the same workload); {} when none declares."""
    for run_dir in run_dirs:
        try:
            with open(os.path.join(run_dir, runfiles.CONFIG_FILE), encoding="utf-8") as f:
                config = yaml.safe_load(f)
        except FileNotFoundError:  # a compact run: its config is in metrics.json
            config = _compact_config(run_dir)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        workload = config.get("workload") if isinstance(config, dict) else None
        if not isinstance(workload, dict):
            continue
        keys = (selection.SELECT_KEY, selection.REPORT_KEY)
        return {k: str(workload[k]) for k in keys if workload.get(k)}
    return {}


_FIXED = frozenset({"task", "run_dir", "status", "sweep", TRIAL_KEY, ROLE_KEY})


def row_overrides(row: dict[str, Any]) -> list[str]:
    """A read_runs row's keys that came from its overrides (they come before its status)."""
    keys: list[str] = []
    for key in row:
        if key == "status":
            break
        if key not in _FIXED:
            keys.append(key)
    return keys


def _compact_config(run_dir: Path | str) -> dict[str, Any] | None:
    """A compact run's config, kept in its metrics.json (hydra.launcher.run_files=compact)."""
    try:
        config = (runfiles.read_metrics(run_dir) or {}).get(runfiles.CONFIG_KEY)
    except (runfiles.CorruptRunFile, OSError):
        return None
    return config if isinstance(config, dict) else None


def _override_keys(rows: Sequence[dict[str, Any]], runs: pd.DataFrame) -> list[str]:
    """Columns that came from overrides, in first-seen order."""
    keys: list[str] = []
    for row in rows:
        keys += [key for key in row_overrides(row) if key not in keys]
    return [k for k in keys if k in runs.columns]


def collect(
    sweep_dirs: Sequence[Path],
    metric: str | None = None,
    group_by: Sequence[str] | None = None,
    seed_key: str = SEED_KEY,
    record_accounting: bool = True,
    report_metric: str | None = None,
) -> Collection:
    """Read every run of the given sweeps into the runs, summary and best tables.

    Configurations are ranked by ``metric`` (default: the workload's declared selection
    metric, else a validation metric: selection.py) and reported on ``report_metric``
    (default: the selection metric's test counterpart).

    Runs are grouped by ``group_by`` or, by default, by every override key that varies
    across runs except ``seed_key`` (an adaptive sweep's: by ``trial`` first, see above);
    several sweeps are told apart by a ``sweep`` column.
    ``record_accounting``: first keep the scheduler's accounting of ended Slurm tasks in
    their run directories (one sacct call per sweep, none when all are recorded).
    """
    problems: list[str] = []
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    sweeps: list[SweepInfo] = []
    declared: dict[str, str] = {}
    for sweep_dir in sweep_dirs:
        sweep_rows, info = read_runs(
            Path(sweep_dir), problems, notes if record_accounting else None
        )
        for row in sweep_rows:
            row["sweep"] = info.name
        rows += sweep_rows
        sweeps.append(info)
        if not declared:  # the first sweep that declares its metrics speaks for all
            done = [r["run_dir"] for r in sweep_rows if r.get("status") == states.COMPLETED]
            declared = declared_metrics(done[:1] or [r["run_dir"] for r in sweep_rows[:1]])
    runs = cost.add_columns(pd.DataFrame(rows))
    override_keys = _override_keys(rows, runs)
    studies = any(s.study for s in sweeps)
    trial_keys = [TRIAL_KEY, ROLE_KEY] if studies and TRIAL_KEY in runs.columns else []
    if group_by is not None:
        unknown = [k for k in group_by if k not in runs.columns]
        if unknown:
            raise SweepDirError(
                f"--group-by {' '.join(unknown)}: no such column; valid choices: "
                + ", ".join(["sweep", *trial_keys[:1], *override_keys])
            )
        group_keys = list(group_by)
    else:
        # The keys that vary (the swept ones): a key every run shares adds nothing.
        group_keys = [
            k for k in override_keys if k != seed_key and runs[k].nunique(dropna=False) > 1
        ]
        if trial_keys:  # each trial its own configuration; a re-run of the best joins its trial
            group_keys = [TRIAL_KEY, *group_keys]
        if len(sweeps) > 1:
            group_keys = ["sweep", *group_keys]
    for option, name in (("--metric", metric), ("--report-metric", report_metric)):
        if name is not None and name not in runs.columns:
            raise SweepDirError(
                f"{option} {name}: no such column; valid choices: "
                + ", ".join(stats.metric_columns(runs, exclude=override_keys))
            )
    measured = stats.measured_metrics(runs, exclude=group_keys)
    chosen = selection.choose(measured, metric, report_metric, declared)
    first = [m for m in (chosen.metric, chosen.reported) if m]
    summary, metric = stats.summarize(
        runs, group_keys, chosen.metric, count_pruned=studies, first=first
    )
    best = stats.best_configs(runs, summary, group_keys, chosen, seed_key)
    front = ["sweep", "task", *trial_keys, *override_keys, "status"]
    runs = runs[
        front + [c for c in runs.columns if c not in front and c != "run_dir"] + ["run_dir"]
    ]
    experiments = list(dict.fromkeys(s.experiment for s in sweeps))
    return Collection(
        runs,
        summary,
        best,
        group_keys,
        metric,
        "+".join(experiments),
        sweeps,
        problems,
        notes,
        chosen,
    )


def write_tables(collection: Collection, out_dir: Path) -> dict[str, Path]:
    """runs.csv, summary.csv and best.csv in out_dir, each written atomically."""
    out_dir = Path(out_dir)
    written = {}
    for name, frame in (
        ("runs", collection.runs),
        ("summary", collection.summary),
        ("best", collection.best),
    ):
        if TRIAL_KEY in frame.columns and frame[TRIAL_KEY].notna().any():
            # Trial numbers are integers: 4, not 4.0 (pandas makes a column float if a run has none)
            frame = frame.astype({TRIAL_KEY: "Int64"})
        path = out_dir / f"{name}.csv"
        atomic.write_text(path, frame.to_csv(index=False))
        written[name] = path
    return written


def default_out_dir(collection: Collection) -> Path:
    return Path("results") / collection.experiment
