"""The collector on hand-made run directories: one per state a run can be left in."""

import json
import math

import pandas as pd
import pytest

from hpcjobs.errors import SweepDirError
from hpcjobs.results import collect
from hpcjobs.sweepdir import manifest


def make_run(sweep, name, overrides, metrics=None, raw_metrics=None):
    run = sweep / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra/overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    if raw_metrics is not None:
        (run / "metrics.json").write_text(raw_metrics)
    return run


def ok(acc, seconds=1.0):
    return {
        "status": "completed",
        "test_accuracy": acc,
        "test_loss": 1 - acc,
        "train_seconds": seconds,
    }


@pytest.fixture
def sweep(tmp_path):
    sweep = tmp_path / "sweep"
    make_run(sweep, "0", ["optimizer=sgd", "seed=0"], ok(0.80))
    make_run(sweep, "1", ["optimizer=sgd", "seed=1"], ok(0.90))
    make_run(sweep, "2", ["optimizer=adam", "seed=0"], ok(0.95))
    make_run(
        sweep,
        "3",
        ["optimizer=adam", "seed=1"],
        {
            "status": "failed",
            "error_type": "ValueError",
            "error_message": "boom",
            "traceback": "...",
        },
    )
    make_run(sweep, "4", ["optimizer=adam", "seed=2"])  # never wrote metrics
    make_run(sweep, "5", ["optimizer=momentum", "seed=0"], raw_metrics='{"status": "compl')
    return sweep


def test_every_run_gets_a_row_with_its_status(sweep):
    c = collect.collect([sweep])
    assert list(c.runs["task"]) == [0, 1, 2, 3, 4, 5]
    assert list(c.runs["status"]) == [
        "completed",
        "completed",
        "completed",
        "failed",
        "no_metrics",
        "corrupt",
    ]
    assert list(c.runs["optimizer"]) == ["sgd", "sgd", "adam", "adam", "adam", "momentum"]
    assert c.runs.loc[3, "error_message"] == "boom"
    assert "traceback" not in c.runs.columns  # multi-line; stays in metrics.json
    assert len(c.problems) == 1 and str(sweep / "5" / "metrics.json") in c.problems[0]


def test_summary_groups_over_seeds_with_mean_and_sample_std(sweep):
    c = collect.collect([sweep])
    assert c.group_keys == ["optimizer"] and c.metric == "test_accuracy"
    s = c.summary.set_index("optimizer")
    # best first, no metrics last
    assert list(c.summary["optimizer"]) == [
        "adam",
        "sgd",
        "momentum",
    ]
    assert s.loc["sgd", "n_runs"] == 2 and s.loc["sgd", "n_failed"] == 0
    assert s.loc["sgd", "test_accuracy_mean"] == pytest.approx(0.85)
    # ddof=1
    assert s.loc["sgd", "test_accuracy_std"] == pytest.approx(math.sqrt(((0.05**2) * 2) / 1))
    assert s.loc["adam", "n_runs"] == 3 and s.loc["adam", "n_failed"] == 2
    assert s.loc["adam", "test_accuracy_mean"] == pytest.approx(0.95)
    assert math.isnan(s.loc["adam", "test_accuracy_std"])  # one completed run: no spread
    assert math.isnan(s.loc["momentum", "test_accuracy_mean"])


def test_sorting_by_a_loss_puts_the_lowest_first(sweep):
    c = collect.collect([sweep], metric="test_loss")
    assert list(c.summary["optimizer"][:2]) == ["adam", "sgd"]
    assert c.summary["test_loss_mean"].iloc[0] < c.summary["test_loss_mean"].iloc[1]


def test_manifest_lists_tasks_that_never_started(sweep):
    tasks = [
        manifest.TaskRecord(i, o, str(i), "h")
        for i, o in enumerate([["optimizer=sgd", "seed=0"], ["optimizer=sgd", "seed=1"]])
    ]
    tasks.append(manifest.TaskRecord(9, ["optimizer=sgd", "seed=9"], "9", "h"))
    manifest.write(
        manifest.SweepManifest(
            experiment="demo", sweep_dir=str(sweep), executor="local", tasks=tasks
        )
    )
    c = collect.collect([sweep])
    assert c.experiment == "demo"
    assert list(c.runs["status"]) == ["completed", "completed", "not_started"]
    assert c.runs.loc[2, "seed"] == 9


def test_without_overrides_a_single_group_is_summarized(tmp_path):
    sweep = tmp_path / "s"
    for i, acc in enumerate([0.5, 0.7]):
        (sweep / str(i)).mkdir(parents=True)
        (sweep / str(i) / "metrics.json").write_text(json.dumps(ok(acc)))
    c = collect.collect([sweep])
    assert len(c.summary) == 1 and c.summary.loc[0, "test_accuracy_mean"] == pytest.approx(0.6)


def test_tables_are_written_and_read_back(sweep, tmp_path):
    c = collect.collect([sweep])
    paths = collect.write_tables(c, tmp_path / "out")
    runs = pd.read_csv(paths["runs"])
    summary = pd.read_csv(paths["summary"])
    assert len(runs) == 6 and {"optimizer", "seed", "status", "test_accuracy", "run_dir"} <= set(
        runs.columns
    )
    assert {"n_runs", "n_failed", "test_accuracy_mean", "test_accuracy_std"} <= set(summary.columns)


def test_missing_or_empty_sweep_dir_is_a_clear_error(tmp_path):
    with pytest.raises(SweepDirError, match="no such directory"):
        collect.collect([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SweepDirError, match="no run directories"):
        collect.collect([tmp_path / "empty"])


def test_several_sweeps_side_by_side(tmp_path):
    base, new = tmp_path / "exp" / "baseline", tmp_path / "exp" / "new"
    for sweep, accs in ((base, (0.80, 0.82)), (new, (0.90, 0.94))):
        for seed, acc in enumerate(accs):
            make_run(sweep, str(seed), ["optimizer=adam", f"seed={seed}"], ok(acc))
    c = collect.collect([base, new])
    assert c.group_keys == ["sweep"]
    assert list(c.runs["sweep"]) == ["exp/baseline"] * 2 + ["exp/new"] * 2
    assert list(c.summary["sweep"]) == ["exp/new", "exp/baseline"]  # best first
    assert c.summary.loc[0, "test_accuracy_mean"] == pytest.approx(0.92)
    assert (
        c.best.loc[0, "best"] == "sweep=exp/new"
        and c.best.loc[0, "runner_up"] == "sweep=exp/baseline"
    )


def test_group_by_and_unknown_columns(sweep):
    c = collect.collect([sweep], group_by=["optimizer", "seed"])
    assert len(c.summary) == 6
    with pytest.raises(
        SweepDirError, match=r"--group-by nope: no such column; valid choices: .*optimizer"
    ):
        collect.collect([sweep], group_by=["nope"])
    with pytest.raises(SweepDirError, match="--metric nope: no such column"):
        collect.collect([sweep], metric="nope")


def test_a_moved_sweep_still_finds_its_runs(sweep, tmp_path):
    tasks = [manifest.TaskRecord(0, ["optimizer=sgd", "seed=0"], "0", "h")]
    manifest.write(
        manifest.SweepManifest(
            experiment="demo", sweep_dir=str(sweep), executor="slurm", tasks=tasks
        )
    )
    moved = tmp_path / "copied_off_the_cluster"
    sweep.rename(moved)
    c = collect.collect([moved])
    assert list(c.runs["status"]) == ["completed"]
    assert c.runs.loc[0, "run_dir"] == str(moved / "0")


def run_with_val(sweep, name, overrides, val, test, workload=None):
    metrics = {
        "status": "completed",
        "best_val_accuracy": val,
        "val_loss": 1 - val,
        "test_accuracy": test,
        "test_loss": 1 - test,
    }
    run = make_run(sweep, name, overrides, metrics)
    config = "experiment_name: demo\nworkload:\n  _target_: mypkg.train\n"
    config += "".join(f"  {k}: {v}\n" for k, v in (workload or {}).items())
    (run / ".hydra/config.yaml").write_text(config)
    return run


@pytest.fixture
def val_sweep(tmp_path):
    """lr=0.1 leads on validation, lr=0.01 on test."""
    sweep = tmp_path / "val_sweep"
    for task, (lr, seed, val, test) in enumerate(
        [(0.1, 0, 0.95, 0.90), (0.1, 1, 0.97, 0.92), (0.01, 0, 0.91, 0.96), (0.01, 1, 0.93, 0.94)]
    ):
        run_with_val(sweep, str(task), [f"lr={lr}", f"seed={seed}"], val, test)
    return sweep


def test_configurations_are_selected_on_validation_and_reported_on_test(val_sweep, tmp_path):
    c = collect.collect([val_sweep])
    assert (c.metric, c.reported) == ("best_val_accuracy", "test_accuracy")
    assert c.selection.source == "default"
    assert list(c.summary["lr"]) == [0.1, 0.01]  # by validation, not by test
    best = pd.read_csv(collect.write_tables(c, tmp_path / "out")["best"])
    first = best.iloc[0]
    assert (first["selected_on"], first["reported_on"]) == ("best_val_accuracy", "test_accuracy")
    assert first["best"] == "lr=0.1"
    assert first["best_mean"] == pytest.approx(0.91)
    assert first["best_selected_mean"] == pytest.approx(0.96)
    # Every test metric, of the same selected configuration.
    assert list(best["reported_on"]) == ["test_accuracy", "test_loss"]
    assert set(best["best"]) == {"lr=0.1"}


def test_the_metric_option_still_ranks_and_says_so(val_sweep):
    c = collect.collect([val_sweep], metric="test_accuracy")
    assert (c.metric, c.reported) == ("test_accuracy", "test_accuracy")
    assert c.selection.source == "--metric"
    assert list(c.summary["lr"]) == [0.01, 0.1]
    assert c.best.loc[0, "selected_on"] == "test_accuracy" and c.best.loc[0, "best"] == "lr=0.01"
    c = collect.collect([val_sweep], metric="val_loss")
    assert (c.metric, c.reported) == ("val_loss", "test_loss")  # its test counterpart
    assert list(c.summary["lr"]) == [0.1, 0.01]  # lowest loss first
    c = collect.collect([val_sweep], report_metric="test_loss")
    assert (c.metric, c.reported) == ("best_val_accuracy", "test_loss")
    with pytest.raises(SweepDirError, match="--report-metric nope: no such column"):
        collect.collect([val_sweep], report_metric="nope")


def test_a_workload_declares_its_selection_metric(tmp_path):
    sweep = tmp_path / "declared"
    declared = {"select_metric": "val_loss", "report_metric": "test_accuracy"}
    for task, (lr, val, test) in enumerate([(0.1, 0.95, 0.90), (0.01, 0.91, 0.96)]):
        run_with_val(sweep, str(task), [f"lr={lr}", "seed=0"], val, test, declared)
    c = collect.collect([sweep])
    assert (c.metric, c.reported) == ("val_loss", "test_accuracy")
    assert c.selection.source == "workload.select_metric"
    assert list(c.summary["lr"]) == [0.1, 0.01]  # val_loss 0.05 < 0.09


def test_a_compact_runs_config_is_read_from_its_metrics_json(tmp_path):
    # hydra.launcher.run_files=compact: no .hydra/, the config kept in metrics.json
    config = {"experiment_name": "tiny", "workload": {"select_metric": "best_val_accuracy"}}
    for i, acc in enumerate((0.5, 0.7)):
        (tmp_path / str(i)).mkdir()
        record = {**ok(acc), "best_val_accuracy": acc, "seed": i, "config": config}
        (tmp_path / str(i) / "metrics.json").write_text(json.dumps(record))
    c = collect.collect([tmp_path])
    assert c.experiment == "tiny" and c.metric == "best_val_accuracy"
    assert len(c.runs) == 2 and "config" not in c.runs
