"""A node that fails under a running task, on the real cluster: Slurm requeues the task, it
resumes from its checkpoint on another node and ends as if undisturbed; `status` names the node.

Takes a node down: runs under the ``exclusive_cluster`` lock, which resumes it afterwards.
"""

from __future__ import annotations

import pytest

from hpcjobs import cli, states
from hpcjobs.sweepdir import manifest, runfiles

from . import disruption
from .conftest import run
from .test_slurm_requeue import NOT_COMPARED, wait_for
from .test_slurm_sweep import wait_sweep

# Fault tests, tens of seconds each (and a node of the shared cluster down meanwhile)
pytestmark = pytest.mark.slow

SLURM = [
    "--multirun",
    "hydra/launcher=hpcjobs_slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=5",
]
exclusive_cluster = disruption.exclusive_cluster  # the fixture, for the tests below
# 10 epochs of about a second each, a checkpoint after each
TRAIN = ["trainer.device=cpu", "trainer.epochs=10", "data.image_size=24", "model.dropout=0.25"]


def attempts(task: str) -> list[tuple[str, str]]:
    """(state, node) of each attempt of TASK, oldest first (sacct --duplicates)."""
    out = run("sacct", "-n", "-X", "-D", "-P", "-j", task, "-o", "State,NodeList").stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line]  # type: ignore[misc]


def test_a_node_down_under_a_cnn_task_requeues_it_to_resume_on_another_node(
    workdir, exclusive_cluster, capsys
):
    sweep = workdir / "failed"
    assert cli.main([*SLURM, *TRAIN, f"hydra.sweep.dir={sweep}"]) == 0
    run_dir = sweep / "0"
    # its checkpoint, not its history: an epoch's row is logged before its checkpoint is saved
    checkpoint = run_dir / runfiles.CHECKPOINT_FILE
    wait_for(checkpoint.exists, "the task's first checkpoint", timeout=120)
    first = runfiles.read_metrics(run_dir)
    failed, task = first["slurm_node"], first["slurm_job_id"]
    exclusive_cluster.fail(failed, task)
    # kept out once its slurmd registers again, so that the requeued task starts elsewhere
    exclusive_cluster.drain(failed)
    # The same configuration, undisturbed, beside it on the node left
    same = workdir / "undisturbed"
    assert cli.main([*SLURM, *TRAIN, f"hydra.sweep.dir={same}"]) == 0

    # (its run, stopped by the node's end, recorded itself interrupted: Slurm's word decides)
    assert wait_sweep(sweep, timeout=240).counts == {states.COMPLETED: 1}
    assert wait_sweep(same, timeout=60).counts == {states.COMPLETED: 1}
    metrics, undisturbed = runfiles.read_metrics(run_dir), runfiles.read_metrics(same / "0")
    other = metrics["slurm_node"]
    assert other != failed and metrics["status"] == "completed", metrics
    assert metrics["restarts"] == 1 and metrics["resumed_from_epoch"] >= 2, metrics
    assert [int(r["epoch"]) for r in runfiles.read_history(run_dir)] == list(range(1, 11))
    assert undisturbed["restarts"] == 0
    assert {k: v for k, v in metrics.items() if k not in NOT_COMPARED} == {
        k: v for k, v in undisturbed.items() if k not in NOT_COMPARED
    }
    assert attempts(task) == [("NODE_FAIL", failed), ("COMPLETED", other)]

    capsys.readouterr()
    assert cli.main(["status", str(sweep)]) == 0
    out = capsys.readouterr().out
    print(out)
    assert f"{failed}: NODE_FAIL at " in out and f"requeued, then on {other} (completed)" in out, (
        out
    )


def test_a_node_that_failed_two_tasks_is_excluded_from_the_sweeps_retry(
    workdir, exclusive_cluster, capsys
):
    # Two tasks held on one node (partition gpua: n1), which Slurm may not requeue; it fails
    # under both: two NODE_FAIL of this sweep on it.
    sweep = workdir / "sweep"
    held = [
        "workload=noop",
        "+sleep_s=15",
        "seed=0,1",
        "hydra.launcher.partition=gpua",
        "+hydra.launcher.additional_parameters.no_requeue=true",
    ]
    assert cli.main([*SLURM, *held, f"hydra.sweep.dir={sweep}"]) == 0
    started = wait_for(
        lambda: (
            all((sweep / i / "metrics.json").exists() for i in "01")
            and [runfiles.read_metrics(sweep / i) for i in "01"]
        ),
        "both tasks started",
        timeout=60,
    )
    (node,) = {m["slurm_node"] for m in started}
    exclusive_cluster.fail(node, *(m["slurm_job_id"] for m in started))
    assert wait_sweep(sweep, timeout=60).counts == {states.NODE_FAIL: 2}
    exclusive_cluster.restore()  # back and idle: only the exclude keeps the retry off it

    capsys.readouterr()
    assert cli.main(["retry", str(sweep), "--set", "partition=debug"]) == 0
    out = capsys.readouterr().out
    assert f"excluding {node} (sbatch --exclude)" in out, out
    assert wait_sweep(sweep, timeout=90).counts == {states.COMPLETED: 2}
    ran = [runfiles.read_metrics(sweep / i) for i in "01"]
    # the retry's runs (none left over from the lost node), elsewhere
    assert {m["slurm_job_id"] for m in ran}.isdisjoint(m["slurm_job_id"] for m in started)
    assert node not in {m["slurm_node"] for m in ran}
    # asked of Slurm, and recorded with the retry's attempts (the sweep's own exclude unset)
    scripts = [p.read_text() for p in sweep.glob(".submitit/**/*_submission.sh")]
    assert sum(f"#SBATCH --exclude={node}" in s.splitlines() for s in scripts) == 1, scripts
    recorded = manifest.read(sweep)
    assert recorded.launcher["exclude"] is None and recorded.launcher["partition"] == "debug"
    for task in recorded.tasks:
        first, retried = task.attempts
        assert first.excluded is None and list(retried.excluded or {}) == [node]
