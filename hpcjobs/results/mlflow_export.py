"""Runs into an MLflow tracking store: one MLflow experiment per sweep, one MLflow run per run.

By default the store is a SQLite file, <out>/mlflow.db (MLflow is retiring its file store),
written through MLflow's own client; any other tracking URI (a server, Databricks, another
SQLite file) may be given instead. SQLite locks are unreliable on network file systems
(NFS, Lustre, GPFS...), where a cluster's home and project directories usually are: a
SQLite store there is refused, with the way out.

An MLflow run gets the run's overrides as params, its history as metric steps (the epoch),
its final metrics at its last epoch, its state as the run's status (and the exact one as
the ``hpcjobs.status`` tag), its other fields as tags, and the tag ``hpcjobs.key`` that a
later export finds it by. ``hpcjobs.fingerprint`` is set last, once everything else is
logged: a run without it (an export that was killed midway) is replaced. A changed run is
logged anew, then its earlier MLflow run is deleted (MLflow keeps deleted runs until
``mlflow gc``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hpcjobs.errors import ExportError, MissingExtra
from hpcjobs.results import export as export_
from hpcjobs.results.collect import SweepInfo
from hpcjobs.results.export import Counts, Exportable, ExportResult, ExportRun

DB_FILE = "mlflow.db"
KEY_TAG, FINGERPRINT_TAG = "hpcjobs.key", "hpcjobs.fingerprint"
STATUS_TAG = "hpcjobs.status"
# File systems where SQLite's locking cannot be trusted (sqlite.org/lockingv3.html#how_to_corrupt).
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "9p",
        "afs",
        "panfs",
        "wekafs",
    }
)
# MLflow's limits (mlflow.utils.validation): entities (params, metrics, tags) and params per
# log_batch call; a param value's length (a tag's is longer).
MAX_ENTITIES, MAX_PARAMS, MAX_VALUE = 1000, 100, 6000


def export(
    exportable: Exportable, out: Path | None, tracking_uri: str | None = None
) -> ExportResult:
    """Into the SQLite store in ``out``, or the store at ``tracking_uri``."""
    if tracking_uri is None:
        folder = Path(out or ".").absolute()
        db: Path | None = folder / DB_FILE
        uri, artifacts = f"sqlite:///{db}", (folder / "artifacts").as_uri()
    else:
        uri, artifacts = tracking_uri, None
        db = sqlite_path(uri)
    if db is not None:
        _sqlite_store_installed()
        refuse_network_filesystem(db)
        db.parent.mkdir(parents=True, exist_ok=True)
    try:
        client = MlflowClient(tracking_uri=uri)
        counts = _export(client, exportable.runs, exportable.sweeps, artifacts)
    except MlflowException as e:
        raise ExportError(f"MLflow ({uri}): {e.message}") from None
    return ExportResult(
        "mlflow",
        uri,
        f"mlflow ui --backend-store-uri {uri}" if db is not None else uri,
        counts,
        exportable.not_started,
        exportable.problems,
    )


def _sqlite_store_installed() -> None:
    """MLflow's SQLite store needs SQLAlchemy and Alembic, which mlflow-skinny does not
    require; without them MLflow calls a sqlite URI unsupported."""
    try:
        import alembic  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as e:
        raise MissingExtra(
            f"MLflow's SQLite store needs packages that are not installed ({e}):"
            " pip install 'hpcjobs[mlflow]'"
        ) from None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (three slashes: relative, four: absolute); None
    for another kind of store; a folder (MLflow's file store) is refused."""
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        return Path(uri[len("sqlite:///") :]).absolute()
    if scheme in ("", "file") and not uri.startswith("databricks"):
        raise ExportError(
            f"--tracking-uri {uri}: a folder is MLflow's file store, which MLflow is retiring;"
            " use --out DIR (a SQLite store in DIR) or a sqlite:///FILE, http(s):// or"
            " databricks URI"
        )
    return None


def refuse_network_filesystem(db: Path, mounts: str = "/proc/mounts") -> None:
    """ExportError if ``db``'s folder is on a network file system (SQLite corrupts there)."""
    fstype = filesystem_type(db.parent, mounts)
    if fstype in NETWORK_FILESYSTEMS:
        raise ExportError(
            f"{db}: on {fstype}, a network file system, where SQLite's locks are unreliable and"
            " the store can be corrupted; export to a local disk (--out /tmp/$USER/mlflow,"
            " then copy mlflow.db), or to a tracking server (--tracking-uri http://HOST:5000)"
        )


def filesystem_type(path: Path, mounts: str = "/proc/mounts") -> str | None:
    """The type of the file system ``path`` is on (its longest mount point in ``mounts``; of
    two on one point, the later: mounted over the other, as NFS over an autofs point);
    None where that cannot be told (no /proc)."""
    target = os.path.realpath(path)
    try:
        with open(mounts, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best, fstype = -1, None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, fstype = len(point), fields[2]
    return fstype


def _unescape(field: str) -> str:
    """/proc/mounts writes a space, tab, newline or backslash in a path as an octal escape."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _export(
    client: MlflowClient,
    runs: Sequence[ExportRun],
    sweeps: Mapping[str, SweepInfo],
    artifacts: str | None,
) -> Counts:
    counts = Counts()
    by_sweep: dict[str, list[ExportRun]] = {}
    for run in runs:
        by_sweep.setdefault(run.sweep, []).append(run)
    for sweep, sweep_runs in by_sweep.items():
        experiment_id = _experiment(client, sweep, sweeps.get(sweep), artifacts)
        exported: dict[str, list[Any]] = {}
        for found in _runs(client, experiment_id):
            exported.setdefault(found.data.tags.get(KEY_TAG, ""), []).append(found)
        for run in sweep_runs:
            earlier = exported.get(run.key, [])
            current = [r for r in earlier if r.data.tags.get(FINGERPRINT_TAG) == run.fingerprint]
            if current:
                counts.unchanged += 1
            else:
                _log(client, experiment_id, run)
                if any(FINGERPRINT_TAG in r.data.tags for r in earlier):
                    counts.replaced += 1
                else:
                    counts.added += 1
            for stale in earlier:
                if not current or stale is not current[0]:
                    client.delete_run(stale.info.run_id)
    return counts


def _experiment(
    client: MlflowClient, sweep: str, info: SweepInfo | None, artifacts: str | None
) -> str:
    """The sweep's MLflow experiment; created with what sweep.json says of the sweep (its
    command, commit, creation time) as tags."""
    found = client.get_experiment_by_name(sweep)
    if found is None:
        tags = {
            "hpcjobs.experiment": info.experiment if info else None,
            "hpcjobs.sweep_dir": info.path if info else None,
            "hpcjobs.command": " ".join(info.command) if info and info.command else None,
            "hpcjobs.git_commit": info.git_commit if info else None,
            "hpcjobs.created_at": info.created_at if info else None,
            "hpcjobs.executor": info.executor if info else None,
        }
        return str(
            client.create_experiment(
                sweep,
                artifact_location=f"{artifacts}/{sweep}" if artifacts else None,
                tags={k: v[:MAX_VALUE] for k, v in tags.items() if v},
            )
        )
    if found.lifecycle_stage != "active":
        raise ExportError(
            f"MLflow experiment {sweep!r} (id {found.experiment_id}) is deleted: restore it"
            f" (mlflow experiments restore --experiment-id {found.experiment_id}) or remove it"
            " for good (mlflow gc), then export again"
        )
    return str(found.experiment_id)


def _runs(client: MlflowClient, experiment_id: str) -> Iterator[Any]:
    """Every active run of the experiment, page by page."""
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=10000,
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


def _log(client: MlflowClient, experiment_id: str, run: ExportRun) -> None:
    start, end = _ms(run.started_at), _ms(run.finished_at or run.started_at)
    when, ended = start or 0, end or 0  # metric timestamps: the run's, not the export's
    tags = {
        KEY_TAG: run.key,
        "hpcjobs.sweep": run.sweep,
        "hpcjobs.experiment": run.experiment,
        "hpcjobs.run_dir": run.run_dir,
        STATUS_TAG: run.status,
        **({"hpcjobs.task": str(run.task)} if run.task is not None else {}),
        **{_name(k): v[:MAX_VALUE] for k, v in run.info.items()},
    }
    created = client.create_run(experiment_id, start_time=start, tags=tags, run_name=run.name)
    run_id = created.info.run_id
    params = [Param(_name(k), str(v)[:MAX_VALUE]) for k, v in run.params.items()]
    metrics = [
        Metric(_name(k), v, when, step) for step, values in run.history for k, v in values.items()
    ]
    metrics += [Metric(_name(k), v, ended, run.last_step) for k, v in run.final_metrics().items()]
    for batch_params, batch_metrics in _batches(params, metrics):
        client.log_batch(run_id, metrics=batch_metrics, params=batch_params)
    status = export_.outcome(run.status)
    if status in (export_.RUNNING, export_.SCHEDULED):
        client.update_run(run_id, status=status)
    else:
        client.set_terminated(run_id, status=status, end_time=end)
    client.log_batch(run_id, tags=[RunTag(FINGERPRINT_TAG, run.fingerprint)])  # last: it is whole


def _batches(params: list[Param], metrics: list[Metric]) -> Iterator[tuple[list[Any], list[Any]]]:
    """Params and metrics in as few log_batch calls as MLflow's limits allow (each call is a
    database transaction: most of an export's time)."""
    while params or metrics:
        batch_params, params = params[:MAX_PARAMS], params[MAX_PARAMS:]
        room = MAX_ENTITIES - len(batch_params)
        batch_metrics, metrics = metrics[:room], metrics[room:]
        yield batch_params, batch_metrics


def _name(key: str) -> str:
    """A param, metric or tag name as MLflow accepts it (letters, digits, _ - . space : /)."""
    return re.sub(r"[^\w\-. :/]", "_", key)


def _ms(seconds: float | None) -> int | None:
    return round(seconds * 1000) if seconds is not None else None
