"""What the scheduler says about the job this process runs: every variable read in one place.

As submitit's ``SlurmJobEnvironment`` names each ``SLURM_*`` variable it reads, this module
is the only one in hpcjobs that reads the scheduler's environment: Slurm's (``SLURM_*``,
``SLURMD_NODENAME``) and submitit's (``SUBMITIT_EXECUTOR``: which of its executors started
this process, if any). The job, the worker and the requeue logic ask it.
"""

from __future__ import annotations

import os

EXECUTOR_ENV = "SUBMITIT_EXECUTOR"  # "slurm" or "local": set by submitit in the processes it starts
JOB_ID_ENV = "SLURM_JOB_ID"
ARRAY_JOB_ID_ENV = "SLURM_ARRAY_JOB_ID"
ARRAY_TASK_ID_ENV = "SLURM_ARRAY_TASK_ID"
NODE_ENV = "SLURMD_NODENAME"
CPUS_PER_TASK_ENV = "SLURM_CPUS_PER_TASK"
MEM_PER_NODE_ENV = "SLURM_MEM_PER_NODE"  # MB, sbatch --mem
MEM_PER_CPU_ENV = "SLURM_MEM_PER_CPU"  # MB, sbatch --mem-per-cpu
MEM_PER_GPU_ENV = "SLURM_MEM_PER_GPU"  # MB, sbatch --mem-per-gpu
GPUS_PER_TASK_ENV = "SLURM_GPUS_PER_TASK"
GPUS_ON_NODE_ENV = "SLURM_GPUS_ON_NODE"
NTASKS_PER_NODE_ENV = "SLURM_NTASKS_PER_NODE"
TMPDIR_ENV = "SLURM_TMPDIR"  # node-local scratch, where a site's prolog sets it

# Slurm's ids, recorded so a run can be matched with sacct/squeue and its log files.
SLURM_IDS = {
    "slurm_job_id": JOB_ID_ENV,
    "slurm_array_job_id": ARRAY_JOB_ID_ENV,
    "slurm_array_task_id": ARRAY_TASK_ID_ENV,
    "slurm_node": NODE_ENV,
}


def executor() -> str | None:
    """Which submitit executor runs this process: "slurm", "local", or None (a test, a shell)."""
    return os.environ.get(EXECUTOR_ENV)


def on_slurm() -> bool:
    """Whether submitit runs this process as a Slurm job."""
    return executor() == "slurm"


def can_requeue() -> bool:
    """Whether a scheduler that can requeue this task runs it (submitit on Slurm, or locally)."""
    return executor() in ("slurm", "local")


def job_id(local_id: str) -> str:
    """This job's id as its scheduler knows it (what sweep.json, sacct and the pools' journals say).

    Slurm: ``ARRAYID_TASKID`` for an array task, the job id for a plain job (a sweep of one
    task). Elsewhere, and under submitit's local executor even inside a Slurm allocation:
    ``local_id``.
    """
    if executor() == "local":
        return local_id
    array, task = os.environ.get(ARRAY_JOB_ID_ENV), os.environ.get(ARRAY_TASK_ID_ENV)
    if array and task:
        return f"{array}_{task}"
    return os.environ.get(JOB_ID_ENV) or local_id


def slurm_ids() -> dict[str, str]:
    """Slurm's ids of this job and of its node, as metrics.json records them ({} outside Slurm)."""
    return {key: os.environ[var] for key, var in SLURM_IDS.items() if var in os.environ}


def _positive(var: str) -> int | None:
    """A positive whole number the variable holds; None when unset, 0 or not a number."""
    value = os.environ.get(var, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def cpus_per_task() -> int | None:
    """The CPUs Slurm allocated to each task of this job (sbatch --cpus-per-task), if it says."""
    return _positive(CPUS_PER_TASK_ENV)


def memory_per_task() -> int | None:
    """Bytes of memory Slurm gave each task of this job, if it says: --mem-per-cpu times the
    task's CPUs, --mem-per-gpu times the task's GPUs, or --mem (per node) shared by the node's
    tasks. --mem=0 (the whole node) and no Slurm say nothing."""
    per_cpu = _positive(MEM_PER_CPU_ENV)
    if per_cpu:
        return per_cpu * (cpus_per_task() or 1) << 20
    per_gpu = _positive(MEM_PER_GPU_ENV)
    if per_gpu:
        return per_gpu * _gpus_per_task() << 20
    per_node = _positive(MEM_PER_NODE_ENV)
    if per_node:
        return (per_node << 20) // (_positive(NTASKS_PER_NODE_ENV) or 1)
    return None


def _gpus_per_task() -> int:
    """The GPUs each task holds: --gpus-per-task, else the node's GPUs shared by its tasks."""
    per_task = _positive(GPUS_PER_TASK_ENV)
    if per_task:
        return per_task
    on_node = _positive(GPUS_ON_NODE_ENV) or 1
    return max(1, on_node // (_positive(NTASKS_PER_NODE_ENV) or 1))


def node_tmpdir() -> str | None:
    """The job's node-local scratch folder ($SLURM_TMPDIR), where the site provides one."""
    return os.environ.get(TMPDIR_ENV) or None
