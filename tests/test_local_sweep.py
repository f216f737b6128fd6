"""End to end on the local executor: real configs, shrunk, through `python -m hpcjobs`."""

import json
from pathlib import Path

import pandas as pd
import pytest

from hpcjobs import cli
from hpcjobs.workloads.cnn.train import TIMING_METRICS

# Shrinks any CNN run to seconds: one epoch of two batches on the bundled digits.
TINY = ["trainer.epochs=1", "trainer.steps_per_epoch=2", "trainer.batch_size=32"]
LOCAL = ["--multirun", "hydra/launcher=hpcjobs_local", "hydra.launcher.poll_interval_s=0.1"]


def only_run_dir(root: Path) -> Path:
    (metrics,) = root.rglob("metrics.json")
    return metrics.parent


@pytest.mark.slow
def test_cnn_sweep_runs_locally_and_is_collected(workdir, capsys):
    status = cli.main(
        [
            "experiment=cnn_sweep",
            *LOCAL,
            *TINY,
            "optimizer=sgd,adam",
            "optimizer.lr=0.01",
            "seed=0,1",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    runs = pd.read_csv(workdir / "results/cnn_sweep/runs.csv")
    summary = pd.read_csv(workdir / "results/cnn_sweep/summary.csv")
    assert len(runs) == 4 and set(runs["status"]) == {"completed"}
    assert sorted(zip(runs["optimizer"], runs["seed"])) == [
        ("adam", 0),
        ("adam", 1),
        ("sgd", 0),
        ("sgd", 1),
    ]
    for metric in (
        "test_accuracy",
        "test_precision",
        "test_recall",
        "test_f1",
        "best_val_accuracy",
    ):
        assert runs[metric].between(0, 1).all(), metric
    assert (runs["epochs_completed"] == 1).all() and (runs["test_loss"] > 0).all()
    assert len(summary) == 2 and (summary["n_runs"] == 2).all()
    assert {"test_accuracy_mean", "test_accuracy_std"} <= set(summary.columns)
    assert "results/cnn_sweep/summary.csv" in out and "test_accuracy" in out
    # A finished local sweep also writes the report and the best-configuration table.
    assert "results/cnn_sweep/report.html" in out
    assert (workdir / "results/cnn_sweep/report.md").exists()
    # Ranked by the validation metric the CNN's workload config declares, test reported beside it.
    best = pd.read_csv(workdir / "results/cnn_sweep/best.csv").iloc[0]
    assert (best["selected_on"], best["selection_source"], best["reported_on"]) == (
        "best_val_accuracy",
        "workload.select_metric",
        "test_accuracy",
    )
    # Every run directory has its history and Hydra's record of its config (its overrides are
    # sweep.json's: runs in workers write no per-run overrides.yaml).
    sweep = json.loads(next(workdir.rglob("sweep.json")).read_text())
    assert sweep["experiment"] == "cnn_sweep" and len(sweep["tasks"]) == 4
    for task in sweep["tasks"]:
        run_dir = Path(sweep["sweep_dir"]) / task["run_dir"]
        assert (run_dir / "history.csv").read_text().startswith("epoch,")
        assert (run_dir / ".hydra/config.yaml").exists() and task["overrides"]


@pytest.mark.slow
def test_a_failed_run_is_recorded_while_the_others_finish(workdir, capsys, monkeypatch):
    # No GPU visible to the runs, also on a machine that has one: the cuda run must fail.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    status = cli.main([*LOCAL, *TINY, "trainer.device=cpu,cuda,cpu", "seed=0"])
    out = capsys.readouterr().out
    assert status == 1  # the sweep finished, but not every run did
    runs = pd.read_csv(next(workdir.glob("results/*/runs.csv")))
    assert list(runs["status"]) == ["completed", "failed", "completed"]
    assert runs.loc[1, "error_type"] == "RuntimeError"
    assert "no CUDA device" in runs.loc[1, "error_message"]
    failed_metrics = json.loads((Path(runs.loc[1, "run_dir"]) / "metrics.json").read_text())
    assert "Traceback" in failed_metrics["traceback"]
    assert "1 failed" in out


def test_single_run_is_deterministic(workdir):
    def metrics_of_one_run(name):
        assert cli.main([*TINY, "trainer.epochs=2", f"hydra.run.dir=runs/{name}"]) == 0
        metrics = json.loads((workdir / "runs" / name / "metrics.json").read_text())
        return {k: v for k, v in metrics.items() if k not in TIMING_METRICS}

    first, second = metrics_of_one_run("a"), metrics_of_one_run("b")
    assert first["status"] == "completed"
    assert first == second


@pytest.mark.parametrize("source", ["synthetic", "imagefolder"])
def test_each_data_source_runs_end_to_end(workdir, make_image_folder, source):
    extra = ["data.num_samples=64", "data.image_size=16"]
    if source == "imagefolder":
        extra = [
            f"data.root={make_image_folder(num_classes=3)}",
            "data.image_size=16",
            "data.channels=1",
        ]
    assert cli.main([*TINY, f"data={source}", *extra]) == 0
    metrics = json.loads((only_run_dir(workdir / "outputs") / "metrics.json").read_text())
    assert metrics["status"] == "completed" and 0 <= metrics["test_accuracy"] <= 1
    assert metrics["num_classes"] == (10 if source == "synthetic" else 3)


def test_noop_workload_and_collect_command(workdir, capsys):
    assert cli.main([*LOCAL, "workload=noop", "seed=0,1,2"]) == 0
    (sweep_dir,) = {p.parent for p in workdir.rglob("sweep.json")}
    capsys.readouterr()
    assert cli.main(["collect", str(sweep_dir), "--out", "elsewhere"]) == 0
    runs = pd.read_csv(workdir / "elsewhere/runs.csv")
    assert list(runs["score"]) == [0.0, 1.0, 2.0]
    assert "elsewhere/summary.csv" in capsys.readouterr().out


@pytest.mark.slow
def test_a_rule_broken_by_a_combination_of_swept_values_fails_that_run_only(workdir):
    # Each value is valid alone; 0.45 + 0.45 leaves too few training images.
    status = cli.main([*LOCAL, *TINY, "data.val_fraction=0.1,0.45", "data.test_fraction=0.45"])
    assert status == 1
    runs = pd.read_csv(next(workdir.glob("results/*/runs.csv")))
    assert list(runs["status"]) == ["completed", "failed"]
    assert (
        runs.loc[1, "error_type"] == "ConfigError"
        and "at least 10%" in runs.loc[1, "error_message"]
    )
