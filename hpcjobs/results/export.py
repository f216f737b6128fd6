"""Sweeps into the experiment trackers people already use: TensorBoard and MLflow.

One tracker run per hpcjobs run that has started: its overrides as params (hparams), each
history.csv row as a step (its epoch) of its curves, metrics.json's numbers as its final
metrics, its state, and its sweep as the group (a TensorBoard folder, an MLflow
experiment). The runs are read as `collect` reads them (``collect.read_runs``: the rows
runs.csv has), so an export and the tables never disagree.

Exporting again is safe: each exported run carries its key, the sweep's name and the run's
directory in it (``cnn_sweep/2026-11-27_03-22-41/4``: the same after the sweep is copied
from the cluster to a laptop), and a fingerprint of everything exported. A run whose
fingerprint is unchanged is left alone, a new run is added, and a run that changed (it
ended since, or a retry completed it) replaces its earlier export: nothing is duplicated.

The trackers are optional extras, each written by a module of its own
(tensorboard_export.py, mlflow_export.py) that is imported only when asked for.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from hpcjobs import states
from hpcjobs.errors import ConfigError, ExportError, MissingExtra, choices_hint
from hpcjobs.results import collect
from hpcjobs.sweepdir import runfiles

log = logging.getLogger(__name__)

# Beside what an export writes (in --out DIR, or beside a sqlite:/// store's file): two exports
# into one place take turns on it, so that each run is written once and neither removes the
# other's half-written folder.
LOCK_FILE = ".hpcjobs-export.lock"

# --to NAME -> (the module that writes it, the pip extra that installs what it needs)
TRACKERS = {
    "tensorboard": ("hpcjobs.results.tensorboard_export", "tensorboard"),
    "mlflow": ("hpcjobs.results.mlflow_export", "mlflow"),
}
STEP_COLUMN = "epoch"  # history.csv's step; a history without it counts its rows from 1
FINAL_PREFIX = "final/"  # a final metric named like a history column: final/<name>

# A run's state, as the trackers tell them apart (MLflow's run statuses).
FINISHED, RUNNING, SCHEDULED, KILLED, FAILED = (
    "FINISHED",
    "RUNNING",
    "SCHEDULED",
    "KILLED",
    "FAILED",
)


def outcome(status: str) -> str:
    """What a tracker shows for a run state: finished (a result: completed or pruned), running,
    scheduled (waiting to run again), killed (stopped from outside), else failed."""
    if status in states.FINISHED:
        return FINISHED
    if status == states.RUNNING:
        return RUNNING
    if status in (states.REQUEUED, states.PENDING):
        return SCHEDULED
    if status in (states.CANCELLED, states.PREEMPTED, states.INTERRUPTED):
        return KILLED
    return FAILED


@dataclass(frozen=True)
class ExportRun:
    """One hpcjobs run as every tracker gets it."""

    key: str  # "<sweep name>/<run dir in the sweep>": what an export is keyed by
    sweep: str  # collect's sweep name: the MLflow experiment, the TensorBoard folder
    experiment: str
    run_dir: str
    task: int | None
    status: str
    params: dict[str, Any]  # its overrides, typed as runs.csv has them
    metrics: dict[str, float]  # metrics.json's numbers (and accounting.json's): final values
    info: dict[str, str]  # its other fields (host, device, error, config digest...) as text
    history: list[tuple[int, dict[str, float]]]  # (epoch, the row's numbers) per history.csv row
    started_at: float | None  # seconds since the epoch
    finished_at: float | None
    fingerprint: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        """The run's directory in its sweep, e.g. "4"."""
        return self.key[len(self.sweep) + 1 :]

    @property
    def last_step(self) -> int:
        return self.history[-1][0] if self.history else 0

    def final_metrics(self) -> dict[str, float]:
        """The final metrics by the name a tracker shows: final/<name> where the history has a
        curve of that name (its last point may differ: the best epoch's, a test set's)."""
        curves = {name for _, values in self.history for name in values}
        return {
            (FINAL_PREFIX + name if name in curves else name): value
            for name, value in self.metrics.items()
        }


@dataclass
class Exportable:
    runs: list[ExportRun]
    experiment: str  # as collect names the sweeps' experiments: "cnn_sweep", "a+b"
    sweeps: dict[str, collect.SweepInfo] = field(default_factory=dict)  # by name
    not_started: int = 0  # listed by a manifest, no run directory yet: nothing to export
    problems: list[str] = field(default_factory=list)


@dataclass
class Counts:
    added: int = 0
    replaced: int = 0  # an earlier export of the run, now out of date, replaced
    unchanged: int = 0


@dataclass
class ExportResult:
    tracker: str
    target: str  # the log directory or the tracking URI written to
    view: str  # the command that shows it
    counts: Counts
    not_started: int
    problems: list[str]


def tracker_module(to: str) -> ModuleType:
    """The module that writes ``to``; MissingExtra, naming the extra, if its packages are not
    installed."""
    if to not in TRACKERS:
        raise ConfigError(f"--to {to}: not a tracker hpcjobs exports to; {choices_hint(TRACKERS)}")
    module, extra = TRACKERS[to]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(
            f"--to {to} needs packages that are not installed ({e}): pip install 'hpcjobs[{extra}]'"
        ) from None


def read(sweep_dirs: Sequence[Path]) -> Exportable:
    """Every started run of the given sweeps, as collect reads them; a key two sweeps share
    (two copies of one sweep) is refused."""
    problems: list[str] = []
    runs: dict[str, ExportRun] = {}
    sweeps: dict[str, collect.SweepInfo] = {}
    not_started = 0
    for sweep_dir in sweep_dirs:
        rows, info = collect.read_runs(Path(sweep_dir), problems)
        sweeps[info.name] = info
        root = os.path.realpath(sweep_dir)
        for row in rows:
            if row["status"] == states.NOT_STARTED:
                not_started += 1
                continue
            run = _run(row, info, root)
            seen = runs.get(run.key)
            if seen is not None and seen.run_dir != run.run_dir:
                raise ExportError(
                    f"{seen.run_dir} and {run.run_dir} would both be exported as {run.key}"
                    " (two copies of one sweep?): export one of them"
                )
            runs[run.key] = run
    experiment = "+".join(dict.fromkeys(s.experiment for s in sweeps.values()))
    return Exportable(list(runs.values()), experiment, sweeps, not_started, problems)


def _run(row: dict[str, Any], info: collect.SweepInfo, root: str) -> ExportRun:
    run_dir = os.path.realpath(row["run_dir"])
    name = os.path.relpath(run_dir, root)
    if name.startswith(".."):  # the manifest's runs live elsewhere (a moved sweep): by their name
        name = os.path.basename(run_dir)
    overrides = collect.row_overrides(row)
    metrics: dict[str, float] = {}
    text: dict[str, str] = {}
    for key in list(row)[list(row).index("status") + 1 :]:
        value = row[key]
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics[key] = float(value)
        elif value is not None:
            text[key] = str(value)
    for key in (collect.TRIAL_KEY, collect.ROLE_KEY):  # an adaptive sweep's
        if row.get(key) is not None:
            text[key] = str(row[key])
    run = ExportRun(
        key=f"{info.name}/{name}",
        sweep=info.name,
        experiment=info.experiment,
        run_dir=run_dir,
        task=row.get("task"),
        status=str(row["status"]),
        params={k: row[k] for k in overrides},
        metrics=metrics,
        info=text,
        history=_history(run_dir),
        started_at=_seconds(row.get("started_at")),
        finished_at=_seconds(row.get("finished_at")),
    )
    digest = hashlib.sha256(json.dumps(asdict(run), sort_keys=True, default=str).encode())
    return replace(run, fingerprint=digest.hexdigest()[:16])


def _history(run_dir: str) -> list[tuple[int, dict[str, float]]]:
    """history.csv's rows as (epoch, numbers); a cell that is no number (empty) is left out."""
    steps = []
    for i, row in enumerate(runfiles.read_history(run_dir), 1):
        step = _number(row.get(STEP_COLUMN))
        values = {}
        for key, text in row.items():
            value = _number(text)
            if key != STEP_COLUMN and value is not None:
                values[key] = value
        steps.append((int(step) if step is not None and step.is_integer() else i, values))
    return steps


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _seconds(timestamp: Any) -> float | None:
    """metrics.json's ISO 8601 time as seconds since the epoch (None if absent or not one)."""
    try:
        return datetime.fromisoformat(str(timestamp)).timestamp() if timestamp else None
    except ValueError:
        return None


def export(
    sweep_dirs: Sequence[Path],
    to: str,
    out: Path | None = None,
    tracking_uri: str | None = None,
) -> ExportResult:
    """Export the sweeps' runs to ``to`` (TRACKERS): into ``out`` (default
    results/<experiment>/<tracker>/), or MLflow's ``tracking_uri``. Everything is checked
    (the tracker installed, the sweeps readable, the target usable) before anything is written."""
    if out is not None and tracking_uri is not None:
        raise ConfigError(
            "--out and --tracking-uri: give one (--out DIR keeps a local store in DIR;"
            " --tracking-uri names any other)"
        )
    if tracking_uri is not None and to != "mlflow":
        raise ConfigError(
            f"--tracking-uri is MLflow's; --to {to} writes into --out DIR (default:"
            f" results/<experiment>/{to}/)"
        )
    writer = tracker_module(to)
    exportable = read(sweep_dirs)
    if out is None and tracking_uri is None:
        out = Path("results") / exportable.experiment / to
    with _taking_turns(_lock_file(writer, out, tracking_uri)):
        result: ExportResult = writer.export(exportable, out, tracking_uri)
    return result


def _lock_file(writer: ModuleType, out: Path | None, tracking_uri: str | None) -> Path | None:
    """Where exports into the same place take turns; None for a tracking server (it orders
    its own writes, but two exports into it at once may both add a new run: run one)."""
    if out is not None:
        return Path(out) / LOCK_FILE
    db = (
        writer.sqlite_path(tracking_uri)
        if tracking_uri and hasattr(writer, "sqlite_path")
        else None
    )
    return db.with_name(f".{db.name}{LOCK_FILE}") if db is not None else None


@contextlib.contextmanager
def _taking_turns(lock: Path | None) -> Iterator[None]:
    """Holds ``lock`` (flock: released when this process ends, however it ends), waiting
    for another export that holds it."""
    if lock is None:
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            log.warning("waiting for the export by %s into %s to end", holder, lock.parent)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
