"""Stop signals on the real Slurm cluster: the task checkpoints, requeues itself and resumes.

A requeued task waits cred_expire + 1 s (11 s on the dev cluster) before it starts again,
so the time-limit sweep is submitted first and runs while the signal test does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hpcjobs import cli
from hpcjobs.sweepdir import runfiles
from hpcjobs.workloads.cnn.train import TIMING_METRICS

from .conftest import run

SLURM = ["--multirun", "hydra/launcher=hpcjobs_slurm", "hydra.launcher.cpus_per_task=1"]
# Differ between two runs of one configuration: times, where and as what it ran, its attempts.
NOT_COMPARED = {
    *TIMING_METRICS,
    "hostname",
    "slurm_job_id",
    "slurm_array_job_id",
    "slurm_array_task_id",
    "slurm_node",
    "config_digest",
    "restarts",
    "resumed_from_epoch",
    "resumed_from_step",
    "timeout_requeues",
}

# 62 one-second steps: more than a one-minute time limit allows, resumable after any step.
SLOW_WORKLOAD = """
import time
from hpcjobs.run.context import RunInterrupted

STEPS, PER_EPOCH = 62, 10


def slow(cfg, ctx):
    done = (ctx.load_checkpoint() or {"step": 0})["step"]
    while done < STEPS:
        if ctx.should_stop():
            ctx.save_checkpoint({"epoch": done // PER_EPOCH + 1, "step": done})
            raise RunInterrupted(f"stopped after step {done}")
        time.sleep(1.0)
        done += 1
        if done % PER_EPOCH == 0 or done == STEPS:
            ctx.log_epoch({"epoch": (done - 1) // PER_EPOCH + 1, "steps": done})
            ctx.save_checkpoint({"epoch": done // PER_EPOCH + 1, "step": done})
    return {"steps": done}
"""


def wait_for(condition, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout:.0f} s")
        time.sleep(0.2)
    return value


def ended(run_dir: Path) -> bool:
    metrics = runfiles.read_metrics(run_dir) or {}
    return metrics.get("status") in ("completed", "failed", "interrupted")


def requeued(job_id: str) -> int:
    """How many times Slurm requeued the job (sacct lists each attempt with --duplicates)."""
    states = run("sacct", "-n", "-X", "-D", "-P", "-j", job_id, "-o", "State").stdout.split()
    return states.count("REQUEUED")


@pytest.fixture(scope="module")
def time_limited_run(slurm_cluster, tmp_path_factory):
    """A one-minute task that needs more than a minute; submitted once, early, waited on last."""
    root = tmp_path_factory.mktemp("time_limited")
    (root / "slowwork.py").write_text(SLOW_WORKLOAD)
    (root / "conf" / "workload").mkdir(parents=True)
    (root / "conf" / "workload" / "slow.yaml").write_text("_target_: slowwork.slow\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPCJOBS_STATE_DIR", str(root / "state"))
        # the task imports slowwork
        mp.setenv("PYTHONPATH", f"{root}:{os.environ.get('PYTHONPATH', '')}")
        # The warning as late as Slurm gives it (its 30 s checks make it come at 29-59 s): each
        # attempt gets as far as it can, at least 3 attempts, well within the cap of 3 requeues.
        assert (
            cli.main(
                [
                    "--config-dir",
                    str(root / "conf"),
                    "workload=slow",
                    *SLURM,
                    "seed=0",
                    f"experiment_name={root.name}",
                    f"hydra.sweep.dir={root / 'sweep'}",
                    "hydra.launcher.timeout_min=1",
                    "hydra.launcher.signal_grace_s=1",
                ]
            )
            == 0
        )
    yield root / "sweep" / "0"
    run("scancel", "-n", root.name)  # nothing left behind when a test failed first


def test_a_cnn_task_signalled_mid_run_requeues_and_ends_as_if_undisturbed(
    workdir, time_limited_run
):
    # Two tasks of one training configuration (the +copy key changes nothing in it), 10 epochs
    # of about a second each; task 1 gets the warning signal once it is past its first epoch.
    assert (
        cli.main(
            [
                *SLURM,
                "hydra.launcher.timeout_min=5",
                f"hydra.sweep.dir={workdir / 'sweep'}",
                "+copy=undisturbed,signalled",
                "trainer.device=cpu",
                "trainer.epochs=10",
                "data.image_size=24",
                "model.dropout=0.25",
            ]
        )
        == 0
    )
    undisturbed, signalled = workdir / "sweep" / "0", workdir / "sweep" / "1"
    wait_for(lambda: runfiles.read_history(signalled), "task 1's first epoch", timeout=120)
    first = runfiles.read_metrics(signalled)
    task = f"{first['slurm_array_job_id']}_{first['slurm_array_task_id']}"
    assert run("scancel", "--signal=USR2", task).returncode == 0

    wait_for(lambda: ended(undisturbed) and ended(signalled), "both tasks ended", timeout=240)
    assert "+copy=signalled" in runfiles.read_overrides(signalled)
    metrics = runfiles.read_metrics(signalled)
    assert metrics["status"] == "completed" and metrics["restarts"] == 1, metrics
    assert metrics["resumed_from_epoch"] >= 2 and "timeout_requeues" not in metrics  # a preemption
    assert requeued(task) == 1
    assert [int(r["epoch"]) for r in runfiles.read_history(signalled)] == list(range(1, 11))
    assert not (signalled / runfiles.CHECKPOINT_FILE).exists()
    same = runfiles.read_metrics(undisturbed)
    assert same["restarts"] == 0
    assert {k: v for k, v in metrics.items() if k not in NOT_COMPARED} == {
        k: v for k, v in same.items() if k not in NOT_COMPARED
    }


def test_a_task_past_its_time_limit_requeues_until_it_completes(time_limited_run):
    run_dir = time_limited_run
    wait_for(lambda: ended(run_dir), "the time-limited task ended", timeout=420)
    metrics = runfiles.read_metrics(run_dir)
    assert metrics["status"] == "completed" and metrics["steps"] == 62, metrics
    # Each attempt stopped at its time-limit warning and was requeued; within the cap of 3.
    assert (
        1 <= metrics["timeout_requeues"] <= 3 and metrics["restarts"] == metrics["timeout_requeues"]
    )
    assert requeued(metrics["slurm_job_id"]) == metrics["timeout_requeues"]
    assert [int(r["epoch"]) for r in runfiles.read_history(run_dir)] == list(range(1, 8))


def test_tasks_ask_slurm_for_the_warning_signal(workdir, capsys):
    assert (
        cli.main(
            [
                "workload=noop",
                *SLURM,
                "seed=0,1",
                "hydra.launcher.dry_run=true",
                "hydra.launcher.signal_grace_s=45",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert "#SBATCH --signal=USR2@45" in out.out + out.err
