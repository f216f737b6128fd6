"""`hydra.launcher.tasks_per_node=2` on the local executor: two processes, one gloo training, one
record (rank 0's), the steps one process would take. On Slurm: tests/integration/test_ddp_slurm.py.
"""

import json
import subprocess
import sys

import pytest

from hpcjobs.launching import registry
from hpcjobs.sweepdir import manifest, runfiles


@pytest.mark.slow
def test_two_local_ranks_train_one_run_recorded_once(workdir, one_process_reference):
    subprocess.run([sys.executable, "-m", "hpcjobs", "--multirun", "hydra/launcher=hpcjobs_local",
                    "hydra.launcher.tasks_per_node=2", "keep_checkpoint=true",
                    *one_process_reference.overrides],
                   cwd=workdir, check=True, capture_output=True)  # fmt: skip
    sweep = manifest.read(registry.latest_sweep())
    (task,) = sweep.tasks
    run_dir = sweep.run_dir(task)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["world_size"] == 2
    # Both ranks trained on their shares of one model: the weights and losses of one process.
    history = runfiles.read_history(run_dir)
    assert [int(row["epoch"]) for row in history] == [1, 2, 3]
    one_process_reference.assert_reproduced_by(run_dir / runfiles.CHECKPOINT_FILE, history)
    # Two ranks ran (two submitit task logs), and neither wrote .hydra/ twice nor failed.
    logs = sorted(p.name for p in (run_dir.parent / ".submitit").rglob("*_log.err"))
    assert len(logs) == 2, logs
