"""Bad input: one clear message naming what is wrong, non-zero exit, nothing run or submitted."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hpcjobs import cli
from hpcjobs.launching.backends import slurm_controller


@pytest.fixture
def run_cli(tmp_path, monkeypatch, capsys):
    """run_cli(*argv) -> (exit status, stdout+stderr), in an empty working directory."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("HPCJOBS_STATE_DIR", str(tmp_path / "state"))
    # a Slurm dry run asks the controller its MaxArraySize: not here (tests/integration does),
    # where a Slurm test beside this one (pytest -n) may have stopped it
    monkeypatch.setattr(slurm_controller, "max_array_size", lambda: 1001)

    def _run(*argv):
        status = cli.main(list(argv))
        out = capsys.readouterr()
        return status, out.out + out.err

    return _run


def started_runs(workdir: Path) -> list[Path]:
    """Run directories or manifests that a run or sweep would have created."""
    return [p for p in workdir.rglob("*") if p.name in ("metrics.json", "sweep.json", ".hydra")]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["experiment=nope"], ["Could not find 'experiment/nope'", "cnn_sweep"]),
        (["optimizer=rmsprop"], ["Could not find 'optimizer/rmsprop'", "adamw", "momentum"]),
        (["trainer.epoch=2"], ["unknown key 'trainer.epoch'", "epochs", "batch_size"]),
        (["seeed=1"], ["unknown key 'seeed'", "seed"]),
        (["trainer.epochs=abc"], ["trainer.epochs", "could not be converted to Integer"]),
        (["trainer.epochs=0"], ["trainer.epochs=0: must be >= 1"]),
        (["optimizer.lr=-0.1"], ["optimizer.lr=-0.1: must be > 0"]),
        (["trainer.precision=fp16"], ["trainer.precision=fp16", "bf16, fp32"]),
        (["data=imagefolder"], ["data.root is not set"]),
        (["data=imagefolder", "data.root=/no/such/dir"], ["/no/such/dir"]),
        (
            ["--multirun", "hydra.launcher.partion=gpu"],
            ["unknown key 'hydra.launcher.partion'", "partition"],
        ),
        (
            ["--multirun", "hydra/launcher=hpcjobs_local", "optimizer.lr=0.1,-1"],
            ["optimizer.lr=-1.0: must be > 0", "nothing was submitted", "1 of 2"],
        ),
        (
            ["--multirun", "hydra/launcher=hpcjobs_local", "trainer.epochs=2,0", "seed=0,1"],
            ["trainer.epochs=0: must be >= 1", "2 of 4"],
        ),
    ],
)
def test_bad_input_is_reported_before_anything_runs(run_cli, argv, expected):
    status, output = run_cli(*argv)
    assert status != 0
    for text in expected:
        assert text in output
    assert "Traceback" not in output
    assert started_runs(Path.cwd()) == []


@pytest.mark.parametrize("launcher", ["hpcjobs_local", "hpcjobs_slurm"])
def test_a_bad_auto_precision_in_the_environment_is_refused_before_submission(
    run_cli, monkeypatch, launcher
):
    # The jobs inherit the submitting shell's environment: what they would refuse is refused here.
    monkeypatch.setenv("HPCJOBS_AUTO_PRECISION", "fp16")
    status, output = run_cli(
        "--multirun", f"hydra/launcher={launcher}", "hydra.launcher.dry_run=true", "seed=0,1"
    )
    assert status != 0 and "Traceback" not in output
    assert "HPCJOBS_AUTO_PRECISION=fp16: valid choices: bf16, fp32 (or unset it" in output
    assert started_runs(Path.cwd()) == []
    # An explicit precision does not ask the environment.
    status, output = run_cli(
        "--multirun",
        f"hydra/launcher={launcher}",
        "hydra.launcher.dry_run=true",
        "trainer.precision=fp32",
    )
    assert status == 0, output


@pytest.mark.parametrize(
    "layout, expected",
    [
        ({"validation/a/0.png"}, "no train/ folder"),
        ({"train/a/0.png", "train/b/0.png"}, "no validation/ folder"),
        ({"train/a/0.png", "validation/a/0.png", "train/b/", "validation/b/0.png"}, "train/b"),
    ],
)
def test_malformed_image_folder_is_reported_before_anything_runs(
    run_cli, tmp_path, layout, expected
):
    from PIL import Image

    root = tmp_path / "images"
    for item in layout:
        path = root / item
        if item.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (8, 8)).save(path)
    status, output = run_cli("data=imagefolder", f"data.root={root}", "data.image_size=8")
    assert status != 0
    assert expected in output, output
    assert "Traceback" not in output
    assert started_runs(Path.cwd()) == []


def test_options_may_follow_overrides(run_cli):
    status, output = run_cli("workload=noop", "--cfg", "job", "seed=7")
    assert status == 0
    assert "seed: 7" in output and "_target_: hpcjobs.workloads.noop.run" in output


def test_collect_of_a_missing_directory_fails_cleanly(run_cli):
    status, output = run_cli("collect", "no/such/sweep")
    assert status == 2
    assert "no/such/sweep: no such directory" in output


@pytest.mark.parametrize("prefix", ["+", "++"])
def test_a_sweep_can_add_a_key(run_cli, prefix):
    # Standard Hydra: +key adds a key the config lacks, ++key adds or replaces it; both sweep.
    status, output = run_cli(
        "--multirun",
        "hydra/launcher=hpcjobs_local",
        "hydra.launcher.poll_interval_s=0.1",
        "workload=noop",
        f"{prefix}tag=a,b",
    )
    assert status == 0, output
    runs = pd.read_csv(next(Path.cwd().glob("results/*/runs.csv")))
    assert sorted(runs["tag"]) == ["a", "b"] and set(runs["status"]) == {"completed"}


def test_a_workload_carries_only_its_own_config_groups(run_cli):
    status, output = run_cli("workload=noop", "optimizer=sgd")  # noop has no optimizer
    assert status != 0 and "optimizer" in output
    assert started_runs(Path.cwd()) == []


def test_output_into_a_closed_pipe_ends_quietly(run_cli, tmp_path):
    """`python -m hpcjobs status DIR | head`: head leaves early; no traceback on stderr."""
    sweep_dir = tmp_path / "sweep"
    status, output = run_cli(
        "workload=noop", "seed=0,1", "--multirun", "hydra/launcher=hpcjobs_local",
        f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert status == 0, output
    for command in (["status", str(sweep_dir)], ["retry", str(sweep_dir), "--dry-run"]):
        _into_a_closed_pipe(command)


def _into_a_closed_pipe(command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcjobs", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE, err
    assert err == ""
