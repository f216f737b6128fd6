"""Where a sweep's tasks run on a cluster of several nodes: GPU types and several partitions
pass through to Slurm as the user wrote them (the dev cluster: typea GPUs on odd nodes,
typeb on even ones; partitions gpua and gpub)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hpcjobs import cli, states
from hpcjobs.sweepdir import manifest

from .conftest import run
from .test_slurm_sweep import SLURM, launched_sweep, wait_sweep

NOOP = ["workload=noop", "hydra.launcher.cpus_per_task=1", "seed=0,1"]


def nodes_and_partitions(sweep: manifest.SweepManifest) -> list[tuple[str, str]]:
    """(node the run recorded, partition sacct says) of each task of a finished sweep."""
    placed = []
    for task in sweep.tasks:
        metrics = json.loads((sweep.run_dir(task) / "metrics.json").read_text())
        placed.append((metrics["slurm_node"], partition_of(task.job_id or "")))
    return placed


def assert_submitted_with(sweep: manifest.SweepManifest, line: str) -> None:
    """Every submission script of the sweep (submitit's, under .submitit/) has LINE."""
    scripts = sorted(Path(sweep.sweep_dir).glob(".submitit/**/*_submission.sh"))
    assert scripts, "no submission script under .submitit/"
    for script in scripts:
        assert line in script.read_text().splitlines(), script


def partition_of(job_id: str, timeout: float = 60) -> str:
    # sacct may list an array task a few seconds after it ended
    deadline = time.monotonic() + timeout
    while not (answer := run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "Partition").stdout):
        assert time.monotonic() < deadline, f"sacct does not list {job_id}"
        time.sleep(0.5)
    return answer.strip()


def test_a_gpu_type_places_every_task_on_a_node_that_has_it(workdir, two_nodes):
    assert cli.main([*SLURM, *NOOP, "hydra.launcher.gres=gpu:typeb:1"]) == 0
    sweep = launched_sweep()
    assert wait_sweep(sweep.sweep_dir).counts == {states.COMPLETED: 2}
    assert sweep.launcher["gres"] == "gpu:typeb:1"  # recorded as asked
    # and asked of Slurm (tasks may land on an even node without it, when n1 is busy)
    assert_submitted_with(sweep, "#SBATCH --gres=gpu:typeb:1")
    nodes = [node for node, _ in nodes_and_partitions(sweep)]
    assert all(int(node.removeprefix("n")) % 2 == 0 for node in nodes), nodes


def test_several_partitions_are_one_setting_when_quoted(workdir, two_nodes):
    # Unquoted, Hydra's --multirun would read gpua,gpub as a sweep over two partitions.
    assert cli.main([*SLURM, *NOOP, "hydra.launcher.partition='gpua,gpub'"]) == 0
    sweep = launched_sweep()
    assert len(sweep.tasks) == 2  # the seeds, not the partitions
    assert wait_sweep(sweep.sweep_dir).counts == {states.COMPLETED: 2}
    assert sweep.launcher["partition"] == "gpua,gpub"
    # Slurm was given both (a task that ran in gpua alone would pass what follows)
    assert_submitted_with(sweep, "#SBATCH --partition=gpua,gpub")
    for node, partition in nodes_and_partitions(sweep):
        # Slurm runs each task in one of the partitions it was given, on one of its nodes
        assert partition in ("gpua", "gpub"), partition
        assert int(node.removeprefix("n")) % 2 == (1 if partition == "gpua" else 0), node
