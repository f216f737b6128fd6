"""Distributed data parallel over srun on the real cluster: `hydra.launcher.tasks_per_node=2` is
one gloo training across two ranks, recorded once, taking the steps one process takes on the
global batch.

The same launcher path on the local executor: tests/test_ddp_local.py; the training loop's
sharding and stop agreement: tests/test_cnn_distributed.py.
"""

from __future__ import annotations

import json

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


def test_two_ranks_over_srun_train_one_run_recorded_once(workdir, one_process_reference):
    # fp32, no dropout, no augmentation (the reference's overrides): the comparison is exact,
    # whichever precision this CPU would pick by itself.
    assert cli.main([*SLURM, "hydra.launcher.tasks_per_node=2", "keep_checkpoint=true",
                     *one_process_reference.overrides]) == 0  # fmt: skip
    ddp = registry.latest_sweep()
    assert wait_sweep(ddp, timeout=240).counts == {states.COMPLETED: 1}
    (task,) = manifest.read(ddp).tasks
    run_dir = ddp / task.run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["precision"] == "fp32"
    # Rank 0 alone wrote the run's files, one history row per epoch, and its last checkpoint
    # holds the weights one process reaches on the whole batch.
    history = runfiles.read_history(run_dir)
    assert [int(row["epoch"]) for row in history] == [1, 2, 3]
    one_process_reference.assert_reproduced_by(run_dir / runfiles.CHECKPOINT_FILE, history)
    # Slurm ran it as one step of two tasks (the two ranks).
    steps = run("sacct", "-n", "-P", "-j", task.job_id, "-o", "JobID,NTasks,State").stdout.split()
    assert any(line.endswith(".0|2|COMPLETED") for line in steps), steps
