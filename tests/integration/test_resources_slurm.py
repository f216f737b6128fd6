"""Resources per configuration on a cluster of several nodes: one sweep whose configurations
need no GPU, one and two (experiment=cnn_resources: resources=cpu,gpu1,gpu2) is three arrays,
each task on a node that has what it asked for (the dev cluster: typea GPUs on odd nodes,
partition gpua; typeb on even ones, gpub), and still one sweep: one status, one table."""

from __future__ import annotations

import json
import re
import time

import pandas as pd

from hpcjobs import cli, states
from hpcjobs.results import status
from hpcjobs.sweepdir import manifest

from .conftest import run
from .test_slurm_sweep import SLURM, launched_sweep, wait_sweep

# one seed: a task per resources choice (the experiment sweeps two)
SWEEP = [*SLURM, "experiment=cnn_resources", "workload=noop", "seed=0"]


def accounting(job_id: str, timeout: float = 60) -> tuple[str, str]:
    """(partition, allocated TRES) of a task, as sacct lists it once it has ended."""
    # Asked by array: sacct lists the only task of a one-task array by the array's id alone.
    array = job_id.split("_")[0]
    fields = ["sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,Partition,AllocTRES"]
    deadline = time.monotonic() + timeout
    while True:
        rows = [line.split("|") for line in run(*fields).stdout.split()]
        mine = [r for r in rows if r[0] == job_id] or (rows if len(rows) == 1 else [])
        if mine and mine[0][1] and mine[0][2]:
            return mine[0][1], mine[0][2]
        assert time.monotonic() < deadline, f"sacct does not list {job_id}: {rows}"
        time.sleep(0.5)


def gpus(tres: str) -> int:
    found = re.search(r"gres/gpu=(\d+)", tres)
    return int(found.group(1)) if found else 0


def test_configurations_that_need_different_resources_are_one_sweep_of_three_arrays(
    workdir, two_nodes
):
    assert cli.main(SWEEP) == 0
    sweep = launched_sweep()
    chosen = [next(o for o in t.overrides if o.startswith("resources=")) for t in sweep.tasks]
    assert chosen == ["resources=cpu", "resources=gpu1", "resources=gpu2"]
    assert [t.group for t in sweep.tasks] == [None, "r1", "r2"]
    arrays = [(t.job_id or "").split("_")[0] for t in sweep.tasks]
    assert len(set(arrays)) == 3, arrays  # an array per group

    st = wait_sweep(sweep.sweep_dir)
    assert st.counts == {states.COMPLETED: 3}
    placed = []
    for task in sweep.tasks:
        node = json.loads((sweep.run_dir(task) / "metrics.json").read_text())["slurm_node"]
        partition, tres = accounting(task.job_id or "")
        placed.append((int(node.removeprefix("n")) % 2, partition, gpus(tres)))
    # the CPU-only task anywhere in the default partition, without a GPU; the 1-GPU task on an
    # odd node (typea), given one; the 2-GPU task on an even node (typeb), given two
    assert [p[1:] for p in placed] == [("debug", 0), ("gpua", 1), ("gpub", 2)]
    assert [p[0] for p in placed[1:]] == [1, 0]

    # status: the groups, what each asked, and its array
    st = status.sweep_status(sweep.sweep_dir)
    assert [(g.name, g.partition, g.gres, g.tasks, g.ended, g.arrays) for g in st.groups] == [
        ("default", "", "", 1, 1, [arrays[0]]),
        ("r1", "gpua", "gpu:typea:1", 1, 1, [arrays[1]]),
        ("r2", "gpub", "gpu:typeb:2", 1, 1, [arrays[2]]),
    ]
    shown = cli.format_status(st)
    assert re.search(
        rf"^r2\s+1\s+1\s+gpub\s+gpu:typeb:2\s+{arrays[2]}\s+cpus_per_task=4 ", shown, re.M
    )

    # one table for the whole sweep
    assert cli.main(["collect", sweep.sweep_dir, "--out", str(workdir / "results")]) == 0
    runs = pd.read_csv(workdir / "results" / "runs.csv")
    assert sorted(runs["resources"]) == ["cpu", "gpu1", "gpu2"]
    assert set(runs["status"]) == {states.COMPLETED}


def test_a_retried_task_asks_its_groups_resources_again_and_what_set_adds(workdir, two_nodes):
    assert cli.main([*SWEEP, "resources=cpu,gpu2", "+sleep_s=60"]) == 0
    sweep = launched_sweep()
    assert [t.group for t in sweep.tasks] == [None, "r1"]
    run("scancel", *{(t.job_id or "").split("_")[0] for t in sweep.tasks})
    assert set(wait_sweep(sweep.sweep_dir).retryable().values()) == {states.CANCELLED}

    assert cli.main(["retry", sweep.sweep_dir, "--set", "comment=retried"]) == 0
    again = manifest.read(sweep.sweep_dir).tasks
    try:
        assert [len(t.attempts) for t in again] == [2, 2]
        # as the controller has them (they sleep a minute: still queued or running)
        asked = [
            run("squeue", "-h", "-j", t.job_id or "", "-o", "%P|%b|%k").stdout.strip()
            for t in again
        ]
    finally:
        run("scancel", *{(t.job_id or "").split("_")[0] for t in again})
    cpu, gpu2 = (line.split("|") for line in asked)
    assert cpu[0] == "debug" and "gpu" not in cpu[1] and cpu[2] == "retried", asked
    assert gpu2[0] == "gpub" and "gpu:typeb:2" in gpu2[1] and gpu2[2] == "retried", asked


def test_on_workers_each_group_is_a_pool_whose_workers_ask_its_resources(workdir, two_nodes):
    assert cli.main([*SWEEP, "hydra.launcher.workers=1"]) == 0
    sweep = launched_sweep()
    assert [(p.group, p.workers) for p in sweep.pools] == [(None, 1), ("r1", 1), ("r2", 1)]
    assert [t.pool for t in sweep.tasks] == ["pool0", "pool1", "pool2"]
    assert wait_sweep(sweep.sweep_dir).counts == {states.COMPLETED: 3}
    asked = [accounting(p.job_ids[0] or "") for p in sweep.pools]
    assert [(partition, gpus(tres)) for partition, tres in asked] == [
        ("debug", 0),
        ("gpua", 1),
        ("gpub", 2),
    ]
