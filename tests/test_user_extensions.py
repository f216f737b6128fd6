"""Users bring their own experiments (--config-dir) and their own workloads (workload/)."""

import json
import sys

import pandas as pd
import pytest

from hpcjobs import cli

USER_MODULE = '''
def train(cfg, ctx):
    ctx.log_epoch({"epoch": 1, "loss": 1.0 / (cfg.workload.width + cfg.seed)})
    return {"score": cfg.workload.width * 10 + cfg.seed, "run_dir_seen": str(ctx.run_dir)}


def config_only(cfg):
    return {"score": float(cfg.seed)}
'''


@pytest.fixture
def user_project(tmp_path, monkeypatch):
    """A user's package and config folder, outside this repository."""
    (tmp_path / "mylab.py").write_text(USER_MODULE)
    conf = tmp_path / "my_conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "workload").mkdir()
    (conf / "workload" / "mine.yaml").write_text("_target_: mylab.train\nwidth: 2\n")
    (conf / "workload" / "plain.yaml").write_text("_target_: mylab.config_only\n")
    (conf / "experiment" / "wide.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /workload: mine\n"
        "experiment_name: wide\n"
        "hydra:\n  sweeper:\n    params:\n      workload.width: 2,3\n      seed: 0,1\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HPCJOBS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{__import__('os').environ.get('PYTHONPATH', '')}")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield conf
    sys.modules.pop("mylab", None)


def test_own_experiment_and_workload_sweep_locally(user_project):
    status = cli.main(["--config-dir", str(user_project), "experiment=wide", "--multirun",
                       "hydra/launcher=hpcjobs_local", "hydra.launcher.poll_interval_s=0.1"])
    assert status == 0
    runs = pd.read_csv("results/wide/runs.csv")
    assert sorted(runs["score"]) == [20, 21, 30, 31]
    summary = pd.read_csv("results/wide/summary.csv")
    assert list(summary["workload.width"]) == [3, 2] and list(summary["n_runs"]) == [2, 2]
    history = pd.read_csv(runs.loc[0, "run_dir"] + "/history.csv")
    assert list(history.columns) == ["epoch", "loss"]


def test_one_argument_workload_runs_in_the_foreground(user_project, tmp_path):
    assert cli.main(["--config-dir", str(user_project), "workload=plain", "seed=4",
                     f"hydra.run.dir={tmp_path}/run"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["score"] == 4.0
