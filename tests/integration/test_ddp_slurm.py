"""Distributed data parallel over srun on the real cluster: `hydra.launcher.nodes=N` and
`tasks_per_node=M` are one gloo training across N*M ranks on N nodes (the rendezvous address
the first node's name), recorded once, taking the steps one process takes on the global batch.

The same launcher path on the local executor: tests/test_ddp_local.py; the training loop's
sharding and stop agreement: tests/test_cnn_distributed.py.
"""

from __future__ import annotations

import json
import os
import signal
import time

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


def rank_process(raw_job_id: str, rank: int) -> int | None:
    """The pid of rank RANK of job RAW_JOB_ID on this host (both nodes run here), if any."""
    wanted = {f"SLURM_JOB_ID={raw_job_id}".encode(), f"SLURM_PROCID={rank}".encode()}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = set(f.read().split(b"\0"))
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                python = b"submitit.core._submit" in f.read()
        except OSError:  # gone, or not ours to read
            continue
        if python and wanted <= environ:
            return int(entry.name)
    return None


def test_a_rank_that_dies_before_the_group_forms_ends_the_job(workdir, two_nodes):
    """A rank lost while it starts (a broken node, the OOM killer): with srun's default
    (KillOnBadExit=0) rank 0 would wait for it in the rendezvous, gloo's 30 minutes, holding
    both nodes; --kill-on-bad-exit ends the step at once. (A rank that dies while they train
    is seen by the others at once: its sockets close.)"""
    assert cli.main([*SLURM, "hydra.launcher.nodes=2", "trainer.epochs=3"]) == 0
    sweep_dir = registry.latest_sweep()
    (task,) = manifest.read(sweep_dir).tasks
    raw, rank1 = None, None
    deadline = time.monotonic() + 120
    while rank1 is None:  # as soon as it starts: it imports torch before it joins the group
        assert time.monotonic() < deadline, "rank 1 did not start within 120 s"
        if raw is None:
            out = run("sacct", "-n", "-P", "-X", "-j", task.job_id, "-o", "JobIDRaw").stdout
            raw = out.split()[0] if out.split() else None
        rank1 = rank_process(raw, 1) if raw else None
        time.sleep(0.02)
    os.kill(rank1, signal.SIGKILL)

    st = wait_sweep(sweep_dir, timeout=120)  # not gloo's 30 minutes
    assert st.counts == {states.FAILED: 1}, st.counts
    assert rank_process(raw, 0) is None
    assert not (sweep_dir / task.run_dir / runfiles.HISTORY_FILE).exists()  # never trained
