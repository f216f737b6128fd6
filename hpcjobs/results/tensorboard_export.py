"""Runs as TensorBoard event files: one folder per run, <logdir>/<sweep name>/<run>/.

Each folder holds one event file: the run's HParams session (its overrides, and its state
as ``hpcjobs.status``) so the HParams dashboard compares the runs, its history as scalars
at each epoch, its final metrics at its last epoch, and how its session ended. Scalars are
float32 tensors, as TensorFlow 2's ``tf.summary.scalar`` writes them: TensorBoard's data
server reads no other kind (a float64 scalar is not shown at all), so TensorBoard shows
each value rounded to float32 (7 significant digits; MLflow keeps them exact). The HParams
dashboard infers the hyperparameters and metrics from the runs, so a later export may add
runs with other keys.

Written with TensorBoard's own writer and protos (no TensorFlow, no torch). A run's folder
is written beside its place (``.<run>.export-new``) and renamed into it, with
``.hpcjobs-export.json`` (its key and fingerprint) inside: a rerun leaves an unchanged run
alone and replaces a changed one whole. TensorBoard reads dot-folders too: one that is
watching the log directory while an export writes also lists the folder being written
(and, after an export killed midway, what it left, until the next export removes it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2, summary_v2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

from hpcjobs import atomic
from hpcjobs.errors import ExportError
from hpcjobs.results import export as export_
from hpcjobs.results.export import Counts, Exportable, ExportResult, ExportRun

MARKER = ".hpcjobs-export.json"
STATUS_HPARAM = "hpcjobs.status"  # the exact state: the session's status says only success/failure
_SESSION_STATUS = {
    export_.FINISHED: api_pb2.STATUS_SUCCESS,
    export_.KILLED: api_pb2.STATUS_FAILURE,
    export_.FAILED: api_pb2.STATUS_FAILURE,
}  # running or scheduled: no session end yet


def export(exportable: Exportable, out: Path, tracking_uri: str | None = None) -> ExportResult:
    """Into the log directory ``out`` (``tracking_uri`` is MLflow's: export.py refuses it here)."""
    logdir = Path(out)
    previous = {run.key: _marker(logdir / run.key) for run in exportable.runs}
    # checked before anything is written: never delete what another tool wrote (the run's
    # folder, or one named like the folders an export writes beside it)
    foreign = [
        path
        for run in exportable.runs
        for path in (logdir / run.key, *_beside(logdir / run.key))
        if _marker(path) == "" and not _empty_folder(path)
    ]
    if foreign:
        raise ExportError(
            f"{foreign[0]}: exists and holds no hpcjobs export"
            f" ({len(foreign)} such folder(s)); export into another --out DIR"
        )
    counts = Counts()
    for run in exportable.runs:
        folder = logdir / run.key
        if previous[run.key] == run.fingerprint:
            counts.unchanged += 1
            continue
        _replace(folder, run)
        if not previous[run.key]:  # none there (or an empty folder)
            counts.added += 1
        else:
            counts.replaced += 1
    return ExportResult(
        "tensorboard",
        str(logdir),
        f"tensorboard --logdir {logdir}",
        counts,
        exportable.not_started,
        exportable.problems,
    )


def _marker(folder: Path) -> str | None:
    """The fingerprint of the run exported into ``folder``; "" for a folder of something else."""
    try:
        return str(json.loads((folder / MARKER).read_text(encoding="utf-8"))["fingerprint"])
    except FileNotFoundError:
        return "" if folder.exists() else None
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _empty_folder(path: Path) -> bool:
    try:
        return next(os.scandir(path), None) is None
    except OSError:
        return False


def _beside(folder: Path) -> tuple[Path, Path]:
    """The folders an export writes beside a run's: the new run (staged), the old (retired)."""
    return (
        folder.with_name(f".{folder.name}.export-new"),
        folder.with_name(f".{folder.name}.export-old"),
    )


def _replace(folder: Path, run: ExportRun) -> None:
    """Write the run into a folder beside ``folder``, then swap it in: the run's folder is
    never half written. The staged folder gets its marker first, so that what an export killed
    midway leaves (each holding a marker, or empty) is known for its own and removed by the
    next one; export() refused anything else there."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged, retired = _beside(folder)
    for leftover in (staged, retired):  # of an export that was killed midway
        shutil.rmtree(leftover, ignore_errors=True)
    staged.mkdir()
    atomic.write_json(staged / MARKER, {"key": run.key, "fingerprint": run.fingerprint})
    _write(staged, run)
    with contextlib.suppress(FileNotFoundError):
        os.rename(folder, retired)
    os.rename(staged, folder)
    shutil.rmtree(retired, ignore_errors=True)


def _write(folder: Path, run: ExportRun) -> None:
    start = run.started_at or run.finished_at or 0.0
    end = run.finished_at or start
    writer = EventFileWriter(str(folder), max_queue_size=1000, flush_secs=3600)
    try:
        hparams: dict[str, Any] = {k: _hparam(v) for k, v in run.params.items()}
        hparams[STATUS_HPARAM] = run.status
        session = summary_v2.hparams_pb(hparams, trial_id=run.key, start_time_secs=start)
        writer.add_event(event_pb2.Event(wall_time=start, step=0, summary=session))
        for step, values in run.history:
            writer.add_event(_scalars(start, step, values))
        writer.add_event(_scalars(end, run.last_step, run.final_metrics()))
        status = _SESSION_STATUS.get(export_.outcome(run.status))
        if status is not None:
            writer.add_event(
                event_pb2.Event(
                    wall_time=end, step=run.last_step, summary=_session_end(status, end)
                )
            )
    finally:
        writer.close()


def _hparam(value: Any) -> bool | float | str:
    """An HParams value: a bool, a number or a string (a list override stays its text)."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return float(value)
    return "null" if value is None else str(value)


def _scalars(wall_time: float, step: int, values: dict[str, float]) -> event_pb2.Event:
    summary = summary_pb2.Summary()
    for tag, value in values.items():
        summary.value.add(
            tag=tag,
            tensor=tensor_util.make_tensor_proto(np.float32(value)),
            metadata=scalar_metadata.create_summary_metadata(display_name=tag, description=""),
        )
    return event_pb2.Event(wall_time=wall_time, step=step, summary=summary)


def _session_end(status: int, end: float) -> summary_pb2.Summary:
    data = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=end)
    )
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=hparams_metadata.SESSION_END_INFO_TAG,
        metadata=hparams_metadata.create_summary_metadata(data),
        tensor=hparams_metadata.NULL_TENSOR,
    )
    return summary
