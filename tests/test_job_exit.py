"""The scheduler's environment, read in one place, and how a job's process ends.

A run inside a job raises a typed JobEnds (requeued; another rank stopped); only the job's
entry point, the runner submitit calls, turns it into the exit submitit and Slurm saw
before: status 1 with the message for a requeued task, 0 for another rank.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hpcjobs.errors import JobEnds, OtherRankStopped, TaskRequeued
from hpcjobs.run import job, scheduler, worker
from hpcjobs.run.task import exit_as_submitit_expects

SLURM_VARS = (
    "SUBMITIT_EXECUTOR",
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURMD_NODENAME",
    "SLURM_CPUS_PER_TASK",
)


@pytest.fixture
def env(monkeypatch):
    for var in SLURM_VARS:
        monkeypatch.delenv(var, raising=False)

    def set_env(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, value)

    return set_env


@pytest.mark.parametrize(
    ("values", "task", "worker_id"),
    [
        ({}, "local_3", "local_worker_1"),
        (
            {
                "SUBMITIT_EXECUTOR": "local",
                "SLURM_JOB_ID": "9",
                "SLURM_ARRAY_JOB_ID": "8",
                "SLURM_ARRAY_TASK_ID": "2",
            },
            "local_3",
            "local_worker_1",
        ),  # submitit's local executor inside a Slurm allocation
        (
            {
                "SUBMITIT_EXECUTOR": "slurm",
                "SLURM_JOB_ID": "9",
                "SLURM_ARRAY_JOB_ID": "8",
                "SLURM_ARRAY_TASK_ID": "2",
            },
            "8_2",
            "8_2",
        ),
        (
            {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "9"},
            "9",
            "9",
        ),  # a plain job: a sweep of one task
    ],
)
def test_a_task_and_a_worker_name_their_job_by_one_rule(env, values, task, worker_id):
    env(**values)
    assert scheduler.job_id("local_3") == task
    assert worker.worker_job_id(1) == worker_id


def test_slurm_ids_cpus_and_executor(env):
    assert (scheduler.slurm_ids(), scheduler.cpus_per_task(), scheduler.executor()) == (
        {},
        None,
        None,
    )
    assert not scheduler.can_requeue()
    env(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="9", SLURMD_NODENAME="n1", SLURM_CPUS_PER_TASK="4")
    assert scheduler.slurm_ids() == {"slurm_job_id": "9", "slurm_node": "n1"}
    assert scheduler.cpus_per_task() == 4 and scheduler.on_slurm() and scheduler.can_requeue()


def test_the_entry_point_exits_as_submitit_expects():
    with pytest.raises(SystemExit) as exited, exit_as_submitit_expects():
        raise TaskRequeued()
    assert exited.value.code == "requeued: the task starts again and resumes from its checkpoint"
    with pytest.raises(SystemExit) as exited, exit_as_submitit_expects():
        raise OtherRankStopped()
    assert exited.value.code == 0
    # A JobEnds is no Exception: Hydra's run_job and a workload's `except Exception` let it through.
    assert not issubclass(JobEnds, Exception) and issubclass(TaskRequeued, JobEnds)


def test_a_requeued_process_exits_with_status_1_and_the_message():
    code = (
        "from hpcjobs.errors import TaskRequeued\n"
        "from hpcjobs.run.task import exit_as_submitit_expects\n"
        "with exit_as_submitit_expects():\n    raise TaskRequeued()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == TaskRequeued.exit_status


def test_a_distributed_run_meets_on_a_port_below_the_ephemeral_range():
    # Every rank derives it from the job id alone; Linux hands out 32768-60999 to connections.
    ports = {job.rendezvous_port(f"{job_id}_{task}") for job_id in range(100) for task in (0, 1)}
    assert all(20000 <= port < 32768 for port in ports)
    assert job.rendezvous_port("2063_0") == job.rendezvous_port("2063_0")
    assert len(ports) > 190  # concurrent jobs rarely share one


def test_a_distributed_run_exports_that_port_unless_one_is_set(monkeypatch, env):
    # Rank 1 of 2 in submitit's local executor: the rendezvous is the job id's port.
    env(
        SUBMITIT_EXECUTOR="local",
        SUBMITIT_LOCAL_JOB_ID="4242",
        SUBMITIT_LOCAL_NTASKS="2",
        SUBMITIT_LOCAL_JOB_NUM_NODES="1",
        SUBMITIT_LOCAL_NODEID="0",
        SUBMITIT_LOCAL_GLOBALID="1",
        SUBMITIT_LOCAL_LOCALID="1",
    )
    for var in (
        "MASTER_ADDR",
        "MASTER_PORT",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
    ):
        monkeypatch.setenv(var, "")  # restored (unset) after the test, whatever the run sets
        monkeypatch.delenv(var)
    job.join_distributed_run()
    assert os.environ["MASTER_PORT"] == str(job.rendezvous_port("4242"))
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"]) == ("1", "2")
    monkeypatch.setenv("MASTER_PORT", "29555")  # the user's own: kept
    job.join_distributed_run()
    assert os.environ["MASTER_PORT"] == "29555"
