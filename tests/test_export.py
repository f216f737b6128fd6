"""`export`: real sweeps into TensorBoard and MLflow, read back with the trackers' own readers
(TensorBoard's event accumulator, the MLflow client) and compared with `collect`'s runs.csv
and each run's history.csv, value for value."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from hpcjobs import cli
from hpcjobs.errors import ExportError
from hpcjobs.launching import registry
from hpcjobs.results import mlflow_export
from hpcjobs.sweepdir import manifest, runfiles

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ["--multirun", "hydra/launcher=hpcjobs_local", "hydra.launcher.poll_interval_s=0.1"]
# Two real CNN runs of two epochs each (two batches an epoch) on the bundled digits.
CNN = ["trainer.epochs=2", "trainer.steps_per_epoch=2", "trainer.batch_size=32"]

# A workload that fails for the seed named by $EXPORT_TEST_FAIL: a run that fails, then
# completes when retried. Its values are thirds (no float32 number); its final `loss` is
# named like a history column.
LAB = """
import os


def train(cfg, ctx):
    for epoch in (1, 2):
        ctx.log_epoch({"epoch": epoch, "loss": 1 / (3 * epoch + cfg.seed), "acc": epoch / 3})
    if os.environ.get("EXPORT_TEST_FAIL") == str(cfg.seed):
        raise RuntimeError("failed on purpose")
    return {"score": cfg.seed / 3, "loss": 1 / 7}
"""


@pytest.fixture(scope="module")
def cnn_sweep(tmp_path_factory):
    """A finished local CNN sweep and the runs.csv `collect` made of it."""
    work = tmp_path_factory.mktemp("cnn")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("HPCJOBS_STATE_DIR", str(work / "state"))
        assert cli.main([*LOCAL, *CNN, "optimizer=sgd,adam", "seed=0"]) == 0
        sweep_dir = registry.latest_sweep()
    assert cli.main(["collect", str(sweep_dir), "--out", str(work / "tables")]) == 0
    return sweep_dir, read_csv(work / "tables/runs.csv")


@pytest.fixture
def lab(workdir, monkeypatch):
    """A workload of one's own (exportlab.train), importable by the runs."""
    (workdir / "exportlab.py").write_text(LAB)
    (workdir / "conf/workload").mkdir(parents=True)
    (workdir / "conf/workload/lab.yaml").write_text("_target_: exportlab.train\n")
    monkeypatch.setenv("PYTHONPATH", f"{workdir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.syspath_prepend(str(workdir))
    yield ["--config-dir", str(workdir / "conf"), "workload=lab", "hydra.sweep.dir=sweeps/lab"]
    sys.modules.pop("exportlab", None)


# The float a cell was written from: pandas 3 parses it exactly by default (and deprecates
# float_precision); pandas 2's default parser may be an ulp off, its "round_trip" is exact.
EXACT = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


def read_csv(path):
    return pd.read_csv(path, **EXACT)


def override_columns(runs):
    """runs.csv's override columns: between task and status."""
    columns = list(runs.columns)
    return columns[columns.index("task") + 1 : columns.index("status")]


def exported_names(run_dir, runs):
    """metrics.json's numbers but its overrides' (seed): what an export calls final metrics."""
    metrics = runfiles.read_metrics(run_dir)
    numbers = {
        k for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return numbers - {"schema_version", *override_columns(runs)}


def sweep_name(sweep_dir):
    return "/".join(Path(sweep_dir).resolve().parts[-2:])


def export(*args):
    return cli.main(["export", *map(str, args)])


# ------------------------------------------------------------------------------ TensorBoard


def read_tensorboard(folder):
    """(hparams, session end status or None, {tag: [(step, value)]}) of one exported run."""
    acc = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG]
    )
    hparams = {}
    for key, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        hparams[key] = getattr(value, kind)
    end = content.get(hparams_metadata.SESSION_END_INFO_TAG)
    status = hparams_metadata.parse_session_end_info_plugin_data(end).status if end else None
    scalars = {}
    for tag in acc.Tags()[event_accumulator.TENSORS]:
        if tag.startswith("_hparams_/"):
            continue
        assert acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars", tag
        scalars[tag] = [
            (e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in acc.Tensors(tag)
        ]
    return hparams, status, scalars


def f32(value):
    """TensorBoard keeps scalars as float32: the value it shows for a float64."""
    return float(np.float32(value))


def same(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.slow
def test_tensorboard_has_each_run_value_for_value(cnn_sweep, tmp_path, capsys):
    sweep_dir, runs = cnn_sweep
    assert export(sweep_dir, "--to", "tensorboard", "--out", tmp_path / "tb") == 0
    assert "2 run(s) added" in capsys.readouterr().out
    assert len(list((tmp_path / "tb").rglob("events.out.tfevents.*"))) == 2
    for _, row in runs.iterrows():
        folder = tmp_path / "tb" / sweep_name(sweep_dir) / Path(row["run_dir"]).name
        hparams, status, scalars = read_tensorboard(folder)
        # Its overrides as hyperparameters (numbers as floats: HParams has no integers), its state.
        expected = {
            k: row[k] if isinstance(row[k], str) else float(row[k]) for k in override_columns(runs)
        }
        assert hparams == {**expected, "hpcjobs.status": "completed"}
        assert status == api_pb2.STATUS_SUCCESS
        # Each history.csv column at each epoch.
        history = read_csv(Path(row["run_dir"]) / "history.csv")
        curves = [c for c in history.columns if c != "epoch"]
        for column in curves:
            assert scalars[column] == [
                (int(e), f32(v)) for e, v in zip(history["epoch"], history[column])
            ], column
        # metrics.json's numbers, as runs.csv has them, at the last epoch.
        finals = {tag: points for tag, points in scalars.items() if tag not in curves}
        assert set(finals) == exported_names(row["run_dir"], runs)
        last = int(history["epoch"].iloc[-1])
        for tag, points in finals.items():
            assert len(points) == 1 and points[0][0] == last, tag
            assert same(points[0][1], f32(row[tag])), tag


@pytest.mark.slow
def test_the_hparams_dashboard_compares_the_sweeps_runs(cnn_sweep, tmp_path):
    """What TensorBoard's HParams plugin serves its dashboard, asked in process."""
    from tensorboard import context as tb_context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context, get_experiment, list_session_groups

    sweep_dir, runs = cnn_sweep
    logdir = tmp_path / "tb"
    assert export(sweep_dir, "--to", "tensorboard", "--out", logdir) == 0
    events = plugin_event_multiplexer.EventMultiplexer()
    events.AddRunsFromDirectory(str(logdir))
    events.Reload()
    provider = data_provider.MultiplexerDataProvider(events, str(logdir))
    backend = backend_context.Context(
        base_plugin.TBContext(data_provider=provider, logdir=str(logdir), multiplexer=events)
    )
    ctx = tb_context.RequestContext()
    experiment = get_experiment.Handler(
        ctx, backend, "", api_pb2.GetExperimentRequest(include_metrics=True)
    ).run()
    hparams = {h.name: h for h in experiment.hparam_infos}
    assert set(hparams) == {*override_columns(runs), "hpcjobs.status"}
    assert hparams["optimizer"].differs and not hparams["seed"].differs
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"test_accuracy", "best_val_accuracy", "val_loss", "train_loss"} <= metrics
    request = api_pb2.ListSessionGroupsRequest(
        allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING],
        start_index=0,
        slice_size=100,
        include_metrics=True,
    )
    groups = list_session_groups.Handler(ctx, backend, "", request).run().session_groups
    assert len(groups) == len(runs)  # one row per run
    by_name = {g.name: g for g in groups}
    for _, row in runs.iterrows():
        group = by_name[f"{sweep_name(sweep_dir)}/{Path(row['run_dir']).name}"]
        assert group.hparams["optimizer"].string_value == row["optimizer"]
        values = {m.name.tag: m.value for m in group.metric_values}
        assert values["test_accuracy"] == f32(row["test_accuracy"])
        assert [s.status for s in group.sessions] == [api_pb2.STATUS_SUCCESS]


# ------------------------------------------------------------------------------ MLflow


def mlflow_runs(store, sweep_dir, view=ViewType.ACTIVE_ONLY):
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(sweep_name(sweep_dir))
    return client, client.search_runs([experiment.experiment_id], run_view_type=view)


def history_of(client, run, key):
    return [
        (m.step, m.value)
        for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    ]


@pytest.mark.slow
def test_mlflow_has_each_run_value_for_value(cnn_sweep, tmp_path, capsys):
    sweep_dir, runs = cnn_sweep
    assert export(sweep_dir, "--to", "mlflow", "--out", tmp_path / "ml") == 0
    out = capsys.readouterr().out
    assert "2 run(s) added" in out and f"mlflow ui --backend-store-uri sqlite:///{tmp_path}" in out
    client, exported = mlflow_runs(tmp_path / "ml", sweep_dir)
    # The sweep's experiment says how the sweep was made.
    tags = client.get_experiment_by_name(sweep_name(sweep_dir)).tags
    made = manifest.read(sweep_dir)
    assert (
        tags["hpcjobs.command"] == " ".join(made.command)
        and "optimizer=sgd,adam" in tags["hpcjobs.command"]
    )
    assert (tags["hpcjobs.created_at"], tags["hpcjobs.executor"]) == (made.created_at, "local")
    by_dir = {r.data.tags["hpcjobs.run_dir"]: r for r in exported}
    assert set(by_dir) == set(runs["run_dir"])
    for _, row in runs.iterrows():
        run = by_dir[row["run_dir"]]
        assert run.info.status == "FINISHED" and run.data.tags["hpcjobs.status"] == "completed"
        assert (
            run.data.tags["hpcjobs.key"] == f"{sweep_name(sweep_dir)}/{Path(row['run_dir']).name}"
        )
        assert run.data.tags["config_digest"] == row["config_digest"]
        # Params: the overrides, as runs.csv types them.
        params = {k: runfiles.parse_scalar(v) for k, v in run.data.params.items()}
        assert params == {k: row[k] for k in override_columns(runs)}
        # Steps: every history.csv value, exactly.
        history = read_csv(Path(row["run_dir"]) / "history.csv")
        curves = [c for c in history.columns if c != "epoch"]
        for column in curves:
            assert history_of(client, run, column) == list(
                zip(history["epoch"].astype(int), history[column])
            ), column
        # Final metrics: metrics.json's numbers, exactly as runs.csv has them.
        finals = {k: v for k, v in run.data.metrics.items() if k not in curves}
        assert set(finals) == exported_names(row["run_dir"], runs)
        for name, value in finals.items():
            assert same(value, float(row[name])), name
            assert [s for s, _ in history_of(client, run, name)] == [int(history["epoch"].iloc[-1])]


# ------------------------------------------------------------------------------ idempotence


def tensorboard_state(logdir):
    """Every exported run folder and its event files."""
    return sorted(str(p.relative_to(logdir)) for p in logdir.rglob("events.out.tfevents.*"))


@pytest.mark.slow
@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_exporting_again_duplicates_nothing(cnn_sweep, tmp_path, capsys, tracker):
    sweep_dir, _ = cnn_sweep
    out = tmp_path / tracker
    assert export(sweep_dir, "--to", tracker, "--out", out) == 0
    before = tensorboard_state(out) if tracker == "tensorboard" else None
    capsys.readouterr()
    assert export(sweep_dir, sweep_dir, "--to", tracker, "--out", out) == 0  # twice, even at once
    assert "0 run(s) added, 0 replaced (they changed since), 2 unchanged" in capsys.readouterr().out
    if tracker == "tensorboard":
        assert tensorboard_state(out) == before  # not even rewritten
    else:
        assert len(mlflow_runs(out, sweep_dir, ViewType.ALL)[1]) == 2


@pytest.mark.slow
def test_a_retried_run_replaces_its_export_and_a_new_run_is_added(
    lab, workdir, capsys, monkeypatch
):
    with monkeypatch.context() as failing:
        failing.setenv("EXPORT_TEST_FAIL", "1")
        assert cli.main([*LOCAL, *lab, "seed=0,1"]) == 1
    sweep_dir = workdir / "sweeps/lab"
    tb, ml = workdir / "tb", workdir / "ml"
    for tracker, out in (("tensorboard", tb), ("mlflow", ml)):
        assert export(sweep_dir, "--to", tracker, "--out", out) == 0
    assert "2 run(s) added" in capsys.readouterr().out
    client, exported = mlflow_runs(ml, sweep_dir)
    assert sorted(r.info.status for r in exported) == ["FAILED", "FINISHED"]
    failed = next(r for r in exported if r.info.status == "FAILED")
    assert failed.data.tags["error_message"] == "failed on purpose"
    _, status, _ = read_tensorboard(tb / sweep_name(sweep_dir) / "1")
    assert status == api_pb2.STATUS_FAILURE

    # The failed run completes on retry (in its run directory), and the sweep gains a seed.
    assert cli.main(["retry", str(sweep_dir)]) == 0
    assert cli.main([*LOCAL, *lab, "seed=0,1,2"]) == 0
    capsys.readouterr()
    for tracker, out in (("tensorboard", tb), ("mlflow", ml)):
        assert export(sweep_dir, "--to", tracker, "--out", out) == 0
        assert (
            "1 run(s) added, 1 replaced (they changed since), 1 unchanged"
            in capsys.readouterr().out
        )

    assert cli.main(["collect", str(sweep_dir), "--out", "tables"]) == 0
    runs = read_csv(workdir / "tables/runs.csv")
    assert list(runs["status"]) == ["completed"] * 3
    client, exported = mlflow_runs(ml, sweep_dir)
    assert sorted(r.data.tags["hpcjobs.key"][-1] for r in exported) == ["0", "1", "2"]
    assert len(mlflow_runs(ml, sweep_dir, ViewType.DELETED_ONLY)[1]) == 1  # the failed export
    assert len(tensorboard_state(tb)) == 3
    for _, row in runs.iterrows():
        name = Path(row["run_dir"]).name
        run = next(r for r in exported if r.data.tags["hpcjobs.key"].endswith(f"/{name}"))
        hparams, status, scalars = read_tensorboard(tb / sweep_name(sweep_dir) / name)
        assert run.info.status == "FINISHED" and status == api_pb2.STATUS_SUCCESS
        assert hparams["seed"] == row["seed"] and hparams["hpcjobs.status"] == "completed"
        history = read_csv(Path(row["run_dir"]) / "history.csv")
        assert list(history["epoch"]) == [1, 2]  # the failed attempt's epochs were run again
        for column in ("loss", "acc"):
            expected = list(zip(history["epoch"], history[column]))
            assert history_of(client, run, column) == expected
            assert scalars[column] == [(e, f32(v)) for e, v in expected]
        # The final loss, beside the history's curve of that name.
        assert history_of(client, run, "final/loss") == [(2, row["loss"])] == [(2, 1 / 7)]
        assert scalars["final/loss"] == [(2, f32(1 / 7))]
        assert run.data.metrics["score"] == row["score"] == row["seed"] / 3


# ------------------------------------------------------------------------------ refusals


def test_a_missing_tracker_names_its_extra(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0/metrics.json").write_text('{"status": "completed", "score": 1.0}')
    for blocked, to in (
        ("tensorboard", "tensorboard"),
        ("mlflow", "mlflow"),
        ("sqlalchemy", "mlflow"),
    ):
        out = tmp_path / f"out-{blocked}"
        argv = ["export", str(sweep), "--to", to, "--out", str(out)]
        code = (
            f"import sys; sys.modules[{blocked!r}] = None; from hpcjobs import cli;"
            f" sys.exit(cli.main({argv!r}))"
        )
        path = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": path},
        )
        assert done.returncode == 2, done.stderr
        assert f"pip install 'hpcjobs[{to}]'" in done.stderr, done.stderr
        assert blocked in done.stderr
        assert not (out / "mlflow.db").exists() and not list(out.rglob("events.*"))


def test_bad_options_are_refused_before_anything_is_written(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0/metrics.json").write_text('{"status": "completed", "score": 1.0}')
    out = tmp_path / "out"
    cases = [
        (["--to", "tensorboard", "--tracking-uri", "http://x"], "--tracking-uri is MLflow's"),
        (["--to", "mlflow", "--out", str(out), "--tracking-uri", "http://x"], "give one"),
        (["--to", "mlflow", "--tracking-uri", str(out)], "MLflow's file store"),
        (["--to", "mlflow", "--tracking-uri", f"file://{out}"], "MLflow's file store"),
    ]
    for options, message in cases:
        assert export(sweep, *options) == 2
        assert message in capsys.readouterr().err
    assert export(tmp_path / "nope", "--to", "mlflow", "--out", out) == 2
    assert "no such directory" in capsys.readouterr().err
    assert not out.exists()
    # A TensorBoard folder that some other tool wrote is never replaced.
    foreign = out / "tb" / sweep_name(sweep) / "0"
    foreign.mkdir(parents=True)
    (foreign / "events.out.tfevents.mine").write_bytes(b"x")
    assert export(sweep, "--to", "tensorboard", "--out", out / "tb") == 2
    assert "holds no hpcjobs export" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["events.out.tfevents.mine"]


def test_sqlite_on_a_network_file_system_is_refused(tmp_path):
    store = tmp_path / "store" / "mlflow.db"
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw,relatime 0 0\n"
        f"server:/export {tmp_path} nfs4 rw,vers=4.2 0 0\n"
        f"/dev/sdb1 {tmp_path}/local\\040disk xfs rw 0 0\n"
    )
    assert mlflow_export.filesystem_type(store.parent, str(mounts)) == "nfs4"
    with pytest.raises(ExportError, match=r"nfs4, a network file system.*--out /tmp"):
        mlflow_export.refuse_network_filesystem(store, str(mounts))
    # A local disk mounted below it (an escaped space in its path) is fine.
    local = tmp_path / "local disk" / "mlflow.db"
    assert mlflow_export.filesystem_type(local.parent, str(mounts)) == "xfs"
    mlflow_export.refuse_network_filesystem(local, str(mounts))
    # An automounted NFS share: the autofs point first, the NFS file system mounted over it.
    automounted = tmp_path / "auto" / "mlflow.db"
    with mounts.open("a") as f:
        f.write(f"/etc/auto.direct {automounted.parent} autofs rw,fd=6,direct 0 0\n")
        f.write(f"server:/auto {automounted.parent} nfs rw,vers=3 0 0\n")
    with pytest.raises(ExportError, match="on nfs, a network file system"):
        mlflow_export.refuse_network_filesystem(automounted, str(mounts))
    # A given sqlite URI is checked the same way: its file, relative or absolute.
    assert mlflow_export.sqlite_path(f"sqlite:///{store}") == store
    assert mlflow_export.sqlite_path("sqlite:///rel.db") == Path("rel.db").absolute()
    assert mlflow_export.sqlite_path("http://host:5000") is None


def test_a_running_run_is_exported_as_running_then_replaced_once_ended(tmp_path, capsys):
    """During a sweep: a run still running, one not started; 600 epochs (several MLflow batches)."""
    sweep = tmp_path / "sweep"
    run = sweep / "0"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra/overrides.yaml").write_text("- optimizer.lr=0.1\n- seed=0\n")
    epochs = range(1, 601)
    rows = [{"epoch": e, "loss": 1 / (e + 2), "acc": e / 601} for e in epochs]
    runfiles.write_history(run, rows)
    started = {"started_at": "2026-11-27T03:22:41+00:00"}
    runfiles.write_metrics(run, {"status": "running", **started})
    tasks = [manifest.TaskRecord(i, ["optimizer.lr=0.1", f"seed={i}"], str(i), "h") for i in (0, 1)]
    manifest.write(
        manifest.SweepManifest(
            experiment="demo", sweep_dir=str(sweep), executor="local", tasks=tasks
        )
    )
    tb, ml = tmp_path / "tb", tmp_path / "ml"
    for tracker, out in (("tensorboard", tb), ("mlflow", ml)):
        assert export(sweep, "--to", tracker, "--out", out) == 0
        out_text = capsys.readouterr().out
        assert "1 run(s) added" in out_text and "1 not started yet" in out_text
    client, (exported,) = mlflow_runs(ml, sweep)
    assert exported.info.status == "RUNNING" and exported.data.tags["hpcjobs.status"] == "running"
    hparams, status, _ = read_tensorboard(tb / sweep_name(sweep) / "0")
    assert status is None and hparams["hpcjobs.status"] == "running"  # no session end yet

    runfiles.write_metrics(run, {"status": "completed", **started, "score": 0.5})
    for tracker, out in (("tensorboard", tb), ("mlflow", ml)):
        assert export(sweep, "--to", tracker, "--out", out) == 0
        out_text = capsys.readouterr().out
        assert "0 run(s) added, 1 replaced (they changed since), 0 unchanged" in out_text
        assert "1 not started yet" in out_text
    client, (exported,) = mlflow_runs(ml, sweep)
    assert exported.info.status == "FINISHED" and exported.data.metrics["score"] == 0.5
    assert history_of(client, exported, "loss") == [(e, 1 / (e + 2)) for e in epochs]
    assert len(mlflow_runs(ml, sweep, ViewType.ALL)[1]) == 2  # the running one, deleted
    _, status, scalars = read_tensorboard(tb / sweep_name(sweep) / "0")
    assert status == api_pb2.STATUS_SUCCESS
    assert scalars["acc"] == [(e, f32(e / 601)) for e in epochs]
    assert scalars["score"] == [(600, 0.5)]


def test_what_a_killed_tensorboard_export_left_is_cleaned_up_and_nothing_else_deleted(
    tmp_path, capsys
):
    """kill -9 between the two renames of a run's swap: its folder gone, the old one retired
    beside it, the new one half written. The next export puts the run back and removes only
    what an export wrote."""
    sweep = tmp_path / "sweep"
    run = sweep / "0"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra/overrides.yaml").write_text("- seed=0\n")
    runfiles.write_history(run, [{"epoch": 1, "loss": 0.5}])
    runfiles.write_metrics(run, {"status": "completed", "score": 0.5})
    tb = tmp_path / "tb"
    assert export(sweep, "--to", "tensorboard", "--out", tb) == 0
    folder = tb / sweep_name(sweep) / "0"
    staged, retired = folder.with_name(".0.export-new"), folder.with_name(".0.export-old")
    folder.rename(retired)  # the old export, retired
    staged.mkdir()  # the new one, its marker written, its event file half written
    (staged / ".hpcjobs-export.json").write_text('{"key": "k", "fingerprint": "f"}')
    (staged / "events.out.tfevents.half").write_bytes(b"\x00" * 7)
    capsys.readouterr()
    assert export(sweep, "--to", "tensorboard", "--out", tb) == 0
    assert "1 run(s) added" in capsys.readouterr().out
    assert sorted(p.name for p in folder.parent.iterdir()) == ["0"]
    _, status, scalars = read_tensorboard(folder)
    assert status == api_pb2.STATUS_SUCCESS and scalars["loss"] == [(1, 0.5)]

    # A folder of that name that an export did not write is refused, and left as it is.
    staged.mkdir()
    (staged / "notes.txt").write_text("mine")
    runfiles.write_metrics(run, {"status": "completed", "score": 0.25})  # changed: to replace
    assert export(sweep, "--to", "tensorboard", "--out", tb) == 2
    assert f"{staged}: exists and holds no hpcjobs export" in capsys.readouterr().err
    assert (staged / "notes.txt").read_text() == "mine"
    assert read_tensorboard(folder)[2]["score"] == [(1, 0.5)]  # the earlier export, kept


def test_the_cli_offers_every_tracker_export_knows():
    from hpcjobs.results import export as export_module

    sub = next(a for a in cli._parser()._actions if a.dest == "command")
    to = next(a for a in sub.choices["export"]._actions if a.dest == "to")
    assert list(to.choices) == list(export_module.TRACKERS)
    assert list(sub.choices) == ["collect", "report", "retry", "status", "export"]  # help order


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_two_exports_into_one_place_take_turns(cnn_sweep, tmp_path, tracker):
    """The second waits for the first (its lock, held here), then finds every run there."""
    import fcntl

    from hpcjobs.results import export as export_

    sweep_dir, runs = cnn_sweep
    out = tmp_path / tracker
    out.mkdir()
    with open(out / export_.LOCK_FILE, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # an export under way
        later = subprocess.Popen(
            [sys.executable, "-m", "hpcjobs", "export", str(sweep_dir), "--to", tracker,
             "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert later.stderr is not None
        waiting = later.stderr.readline()
        assert "waiting for the export by" in waiting and str(out) in waiting, waiting
        assert sorted(p.name for p in out.iterdir()) == [export_.LOCK_FILE]  # nothing yet
    out_text, err = later.communicate(timeout=300)
    assert later.returncode == 0, err
    assert f"{len(runs)} run(s) added" in out_text
