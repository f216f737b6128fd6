"""Users bring their own experiments (--config-dir) and their own workloads (workload/)."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from hpcjobs import cli

USER_MODULE = """
from dataclasses import dataclass, field

from hpcjobs import RunConf, check


@dataclass
class NetConf:
    depth: int = field(default=2, metadata=check(min=1, max=8))
    activation: str = field(default="relu", metadata=check(choices=("relu", "gelu")))


@dataclass
class NetRunConf(RunConf):
    net: NetConf = field(default_factory=NetConf)


def typed_train(cfg):
    # The workload gets its config typed by its schema: depth is an int, the default filled in.
    return {
        "score": cfg.net.depth * 10 + cfg.seed,
        "activation_is_default": cfg.net.activation == "relu",
    }


def train(cfg, ctx):
    ctx.log_epoch({"epoch": 1, "loss": 1.0 / (cfg.workload.width + cfg.seed)})
    return {"score": cfg.workload.width * 10 + cfg.seed, "run_dir_seen": str(ctx.run_dir)}


def config_only(cfg):
    return {"score": float(cfg.seed)}
"""


@pytest.fixture
def user_project(tmp_path, monkeypatch):
    """A user's package and config folder, outside this repository."""
    (tmp_path / "mylab.py").write_text(USER_MODULE)
    conf = tmp_path / "my_conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "workload").mkdir()
    (conf / "workload" / "mine.yaml").write_text("_target_: mylab.train\nwidth: 2\n")
    (conf / "workload" / "plain.yaml").write_text("_target_: mylab.config_only\n")
    (conf / "workload" / "typed.yaml").write_text(
        "# @package _global_\n"
        "workload:\n  _target_: mylab.typed_train\n  schema: mylab.NetRunConf\n"
        "net:\n  depth: 2\n"
    )
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


@pytest.mark.slow
def test_own_experiment_and_workload_sweep_locally(user_project):
    status = cli.main(
        [
            "--config-dir",
            str(user_project),
            "experiment=wide",
            "--multirun",
            "hydra/launcher=hpcjobs_local",
            "hydra.launcher.poll_interval_s=0.1",
        ]
    )
    assert status == 0
    runs = pd.read_csv("results/wide/runs.csv")
    assert sorted(runs["score"]) == [20, 21, 30, 31]
    summary = pd.read_csv("results/wide/summary.csv")
    assert list(summary["workload.width"]) == [3, 2] and list(summary["n_runs"]) == [2, 2]
    history = pd.read_csv(runs.loc[0, "run_dir"] + "/history.csv")
    assert list(history.columns) == ["epoch", "loss"]


def test_one_argument_workload_runs_in_the_foreground(user_project, tmp_path):
    assert (
        cli.main(
            [
                "--config-dir",
                str(user_project),
                "workload=plain",
                "seed=4",
                f"hydra.run.dir={tmp_path}/run",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["score"] == 4.0


LOCAL = ["--multirun", "hydra/launcher=hpcjobs_local", "hydra.launcher.poll_interval_s=0.1"]


@pytest.mark.slow
def test_own_typed_workload_config_is_range_checked_before_submission(user_project, capsys):
    status = cli.main(
        ["--config-dir", str(user_project), "workload=typed", *LOCAL, "net.depth=3,9", "seed=0,1"]
    )
    output = capsys.readouterr()
    assert status != 0
    assert "net.depth=9: must be <= 8" in output.err and "2 of 4" in output.err
    assert not list(Path.cwd().rglob("sweep.json"))  # nothing was submitted

    status = cli.main(
        ["--config-dir", str(user_project), "workload=typed", *LOCAL, "net.depth=1,3"]
    )
    assert status == 0
    runs = pd.read_csv(next(Path.cwd().glob("results/*/runs.csv")))
    assert sorted(runs["score"]) == [10, 30] and runs["activation_is_default"].all()


def test_own_typed_workload_rejects_misspelt_and_mistyped_keys(user_project, capsys):
    assert cli.main(["--config-dir", str(user_project), "workload=typed", "net.dept=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'net.dept'" in err and "depth" in err
    assert (
        cli.main(["--config-dir", str(user_project), "workload=typed", "net.activation=tanh"]) == 2
    )
    assert "net.activation=tanh: valid choices: gelu, relu" in capsys.readouterr().err
