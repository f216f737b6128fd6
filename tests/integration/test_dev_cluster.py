"""The local cluster of scripts/dev-cluster does what the project's tests rely on."""

from __future__ import annotations

import re
import subprocess
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .conftest import cluster_nodes

if TYPE_CHECKING:
    from .conftest import SlurmCluster

DEV_CLUSTER = Path(__file__).resolve().parents[2] / "scripts" / "dev-cluster"

# a guard in case a job hangs: minutes
TIME = "--time=2"


def test_array_job_with_throttle_runs_all_tasks(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    job = slurm_cluster.sbatch(
        "--array=0-3%2",
        TIME,
        f"--output={tmp_path}/%A_%a.out",
        "--wrap",
        "echo task=$SLURM_ARRAY_TASK_ID; sleep 2",
    )
    assert slurm_cluster.wait_job(job, tasks=4) == ["COMPLETED"] * 4

    rows = slurm_cluster.sacct(job, "JobID,State,Start,End")
    assert sorted(row[0] for row in rows) == [f"{job}_{i}" for i in range(4)]
    for i in range(4):
        assert (tmp_path / f"{job}_{i}.out").read_text().strip() == f"task={i}"

    # %2: never more than two tasks at once, and two do run together (the node declares more
    # CPUs than the machine has, and DefMemPerCPU keeps a task from taking all the memory).
    spans = [
        (datetime.fromisoformat(start), datetime.fromisoformat(end)) for _, _, start, end in rows
    ]
    most_at_once = max(sum(s <= start < e for s, e in spans) for start, _ in spans)
    assert most_at_once == 2, spans


def test_gpu_job_sees_cuda_visible_devices(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "gpu.out"
    job = slurm_cluster.sbatch(
        "--gpus-per-node=1",
        TIME,
        f"--output={out}",
        "--wrap",
        'echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"',
    )
    assert slurm_cluster.wait_job(job) == ["COMPLETED"]
    assert re.fullmatch(r"CUDA_VISIBLE_DEVICES=\d+", out.read_text().strip())
    assert "gres/gpu=1" in slurm_cluster.sacct(job, "AllocTRES")[0][0]


def test_srun_starts_one_rank_per_task(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "ranks.out"
    job = slurm_cluster.sbatch(
        "--nodes=1",
        "--ntasks-per-node=2",
        TIME,
        f"--output={out}",
        "--wrap",
        "srun sh -c 'echo rank=$SLURM_PROCID'",
    )
    assert slurm_cluster.wait_job(job) == ["COMPLETED"]
    assert sorted(out.read_text().split()) == ["rank=0", "rank=1"]


def test_dev_cluster_status_says_all_up(slurm_cluster: SlurmCluster) -> None:
    # every node the cluster was started with (its slurm.conf), however many
    proc = subprocess.run(
        [DEV_CLUSTER, "status"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    nodes = cluster_nodes()
    daemons = ["munged", "mariadbd", "slurmdbd", "slurmctld", *(f"slurmd-{n}" for n in nodes)]
    assert [line.split()[0] for line in lines] == [*daemons, *["node"] * len(nodes)]
    assert all(line.split()[1] == "running" for line in lines[: len(daemons)]), lines
    assert [line.split()[1] for line in lines[len(daemons) :]] == nodes, lines


def test_a_job_spans_two_nodes_whose_names_resolve(
    slurm_cluster: SlurmCluster, two_nodes: list[str], tmp_path: Path
) -> None:
    # What DDP across nodes relies on: one rank per node, and the first node's name (the
    # rendezvous address) resolves on every node.
    out = tmp_path / "nodes.out"
    job = slurm_cluster.sbatch(
        "--nodes=2",
        "--ntasks-per-node=1",
        TIME,
        f"--output={out}",
        "--wrap",
        "export FIRST=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1);"
        " srun sh -c 'echo rank=$SLURM_PROCID node=$SLURMD_NODENAME"
        ' resolves=$(getent hosts $FIRST | cut -d" " -f1)\'',
    )
    assert slurm_cluster.wait_job(job) == ["COMPLETED"]
    lines = sorted(out.read_text().splitlines())
    # which two nodes is Slurm's choice (n1 and n2 on the default two-node cluster)
    ranks = [dict(field.split("=", 1) for field in line.split()) for line in lines]
    assert [r["rank"] for r in ranks] == ["0", "1"], lines
    assert ranks[0]["node"] != ranks[1]["node"], lines
    assert all(re.fullmatch(r"n\d+", r["node"]) for r in ranks), lines
    assert all(r["resolves"] == "127.0.0.1" for r in ranks), lines


def test_gpu_type_and_partition_choose_the_node(
    slurm_cluster: SlurmCluster, two_nodes: list[str], tmp_path: Path
) -> None:
    # Odd nodes carry typea GPUs, even ones typeb; partition gpub holds the typeb nodes.
    def node_for(*request: str) -> int:
        out = tmp_path / f"{abs(hash(request))}.out"
        job = slurm_cluster.sbatch(
            *request, TIME, f"--output={out}", "--wrap", "echo $SLURMD_NODENAME"
        )
        assert slurm_cluster.wait_job(job) == ["COMPLETED"]
        return int(out.read_text().strip().removeprefix("n"))

    assert node_for("--gres=gpu:typea:1") % 2 == 1
    assert node_for("--gres=gpu:typeb:1") % 2 == 0
    assert node_for("--partition=gpub") % 2 == 0
