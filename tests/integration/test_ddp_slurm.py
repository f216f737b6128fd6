"""Distributed data parallel over srun on the real cluster: `hydra.launcher.tasks_per_node=2` is one
gloo training across two ranks, recorded once, as accurate as the single-process run.

The same launcher path on the local executor: tests/test_ddp_local.py; the training loop's
sharding and stop agreement: tests/test_cnn_distributed.py.
"""

from __future__ import annotations

import csv
import json

from hpcjobs import cli, states
from hpcjobs.launching import manifest

from .conftest import run
from .test_slurm_sweep import wait_sweep

# Small and quick on CPU (about 0.93 test accuracy on digits), one thread per rank.
RUN = [
    "trainer.epochs=6",
    "trainer.batch_size=32",
    "model.channels=[8,16]",
    "model.hidden=32",
    "optimizer.lr=0.01",
    "trainer.device=cpu",
    "seed=0",
]
SLURM = [
    "--multirun",
    "hydra/launcher=hpcjobs_slurm",
    "hydra.launcher.timeout_min=5",
    "hydra.launcher.cpus_per_task=1",
]


def test_two_ranks_over_srun_train_one_run_recorded_once(workdir):
    assert cli.main([*SLURM, *RUN]) == 0
    single = manifest.latest_sweep()
    assert cli.main([*SLURM, "hydra.launcher.tasks_per_node=2", *RUN]) == 0
    ddp = manifest.latest_sweep()

    for sweep_dir in (single, ddp):
        assert wait_sweep(sweep_dir, timeout=240).counts == {states.COMPLETED: 1}
    (task,) = manifest.read(ddp).tasks
    run_dir = ddp / task.run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    alone = json.loads((single / "0" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and alone.get("world_size", 1) == 1
    assert abs(metrics["test_accuracy"] - alone["test_accuracy"]) < 0.05, (metrics, alone)
    # Rank 0 alone wrote the run's files: one row per epoch, no checkpoint left behind.
    with open(run_dir / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, 7))
    assert not (run_dir / "checkpoint.pt").exists()
    # Slurm ran it as one step of two tasks (the two ranks).
    steps = run("sacct", "-n", "-P", "-j", task.job_id, "-o", "JobID,NTasks,State").stdout.split()
    assert any(line.endswith(".0|2|COMPLETED") for line in steps), steps
