"""Distributed data parallel over srun on the real cluster: `hydra.launcher.nodes=N` and
`tasks_per_node=M` are one gloo training across N*M ranks on N nodes (the rendezvous address
the first node's name), recorded once, taking the steps one process takes on the global batch.

The same launcher path on the local executor: tests/test_ddp_local.py; the training loop's
sharding and stop agreement: tests/test_cnn_distributed.py.
"""

from __future__ import annotations

import json

import pytest

from hpcjobs import cli, states
from hpcjobs.launching import registry
from hpcjobs.sweepdir import manifest, runfiles

from .conftest import run
from .test_slurm_sweep import wait_sweep

SLURM = [
    "--multirun",
    "hydra/launcher=hpcjobs_slurm",
    "hydra.launcher.timeout_min=5",
    "hydra.launcher.cpus_per_task=1",
]


@pytest.mark.parametrize(
    ("nodes", "tasks_per_node"),
    [
        (1, 2),
        (2, 1),
        pytest.param(2, 2, marks=pytest.mark.slow),
    ],
    ids=["1x2", "2x1", "2x2"],
)
def test_ranks_over_srun_train_one_run_recorded_once(
    workdir, one_process_reference, nodes, tasks_per_node, request
):
    if nodes > 1:
        request.getfixturevalue("two_nodes")
    # fp32, no dropout, no augmentation (the reference's overrides): the comparison is exact,
    # whichever precision this CPU would pick by itself.
    world = nodes * tasks_per_node
    assert cli.main([*SLURM, f"hydra.launcher.nodes={nodes}",
                     f"hydra.launcher.tasks_per_node={tasks_per_node}", "keep_checkpoint=true",
                     *one_process_reference.overrides]) == 0  # fmt: skip
    ddp = registry.latest_sweep()
    assert wait_sweep(ddp, timeout=300).counts == {states.COMPLETED: 1}
    (task,) = manifest.read(ddp).tasks
    run_dir = ddp / task.run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == world and metrics["precision"] == "fp32"
    # Rank 0 alone wrote the run's files, one history row per epoch, and its last checkpoint
    # holds the weights one process reaches on the whole batch.
    history = runfiles.read_history(run_dir)
    assert [int(row["epoch"]) for row in history] == [1, 2, 3]
    one_process_reference.assert_reproduced_by(run_dir / runfiles.CHECKPOINT_FILE, history)
    # Slurm ran it as one step of `world` tasks (the ranks) on `nodes` nodes.
    steps = run("sacct", "-n", "-P", "-j", task.job_id, "-o", "JobID,NTasks,NNodes,State")
    assert any(line.endswith(f".0|{world}|{nodes}|COMPLETED") for line in steps.stdout.split()), (
        steps.stdout
    )
