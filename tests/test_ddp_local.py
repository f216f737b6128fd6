"""`hydra.launcher.tasks_per_node=2` on the local executor: two processes, one gloo training, one
record (rank 0's). On Slurm: tests/integration/test_ddp_slurm.py."""

import csv
import json
import subprocess
import sys

import pytest

from hpcjobs.launching import manifest

RUN = [
    "trainer.epochs=4",
    "trainer.batch_size=32",
    "model.channels=[8,16]",
    "model.hidden=32",
    "optimizer.lr=0.01",
    "trainer.device=cpu",
    "seed=0",
]


@pytest.mark.slow
def test_two_local_ranks_train_one_run_recorded_once(workdir):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hpcjobs",
            "--multirun",
            "hydra/launcher=hpcjobs_local",
            "hydra.launcher.tasks_per_node=2",
            *RUN,
        ],
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    sweep = manifest.read(manifest.latest_sweep())
    (task,) = sweep.tasks
    run_dir = sweep.run_dir(task)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["world_size"] == 2
    # it learned: both ranks trained on their shards of one model
    assert metrics["test_accuracy"] > 0.8
    with open(run_dir / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
    # Two ranks ran (two submitit task logs), and neither wrote .hydra/ twice nor failed.
    logs = sorted(p.name for p in (run_dir.parent / ".submitit").rglob("*_log.err"))
    assert len(logs) == 2, logs
