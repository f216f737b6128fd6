"""The launcher's settings (``hydra.launcher.*``): declared once, read as one typed object.

The launcher configs Hydra composes are declared here, each field one knob with Slurm's /
submitit's name where one exists; the Hydra plugin registers them in Hydra's ConfigStore
(hydra_plugins/hpcjobs_launcher/config.py: ``hydra/launcher=hpcjobs_local|slurm|auto``),
closed, so that an unknown key (``hydra.launcher.partion=gpu``) is rejected at composition.

The launching stage and its backends read :class:`LauncherSettings`: every key any backend
reads, typed, built from a composed config or from sweep.json's ``launcher`` record
(:meth:`LauncherSettings.from_mapping`), and handed to a backend when it is made.
"""

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

LAUNCHER_TARGET = "hydra_plugins.hpcjobs_launcher.launcher.HpcjobsLauncher"


@dataclass
class CommonLauncherConf:
    _target_: str = LAUNCHER_TARGET
    executor: str = "auto"
    # Where submitit keeps each task's pickles and stdout/stderr; %j is the job id.
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    # Wall-clock limit of one run (of a worker, with workers), in minutes (Slurm: --time).
    timeout_min: float = 60
    # Cores one run may use; null: local = cores / max_parallel, Slurm = the cluster's default.
    cpus_per_task: Optional[int] = None
    # Print the task table (and, on Slurm, the sbatch script) and submit nothing.
    dry_run: bool = False
    # Seconds between checks while waiting for tasks (Slurm: one sacct call per check, for
    # the whole sweep). The wait grows 1.5x after each check that saw no change, up to
    # poll_max_interval_s, and is back to poll_interval_s once something changes.
    poll_interval_s: float = 5.0
    poll_max_interval_s: float = 60.0
    # Copy the code the tasks import (the hpcjobs package, its launcher plugin, and the
    # Python packages and modules of the directory you submit from) into the sweep
    # directory, and have the tasks import it from there: editing the working tree cannot
    # change a pending task. false: the tasks import the working tree as it is when each
    # starts (sweep.json records the git commit and the uncommitted changes either way).
    snapshot: bool = False
    # hydra.sweep.dir naming an existing sweep adds this command's configurations to it,
    # skipping those that completed there; true runs those again too (in new run
    # directories: a completed run's files are never rewritten).
    rerun_completed: bool = False
    # A task warned of its time limit stops at a safe point (its checkpoint saved) and is
    # requeued to resume, at most this many times; then `retry` it with more time.
    # Requeues after a preemption are not counted.
    max_timeout_requeues: int = 3
    # Pack many runs per job: N workers (Slurm: one array of N tasks; local: N processes)
    # pull the sweep's tasks one after another, each in its own run directory; torch is
    # imported and the data loaded once per worker. A worker stops claiming when the next
    # run might not fit in its time left (timeout_min). 0: one job per task. null: one job
    # per task on Slurm; workers locally (see LocalLauncherConf).
    workers: Optional[int] = None
    # What each run of a worker leaves in its directory. full: .hydra/config.yaml, metrics.json,
    # the run's log (and what the workload writes). compact (for sweeps of 100,000 runs): only
    # metrics.json, which then holds the config too; the log goes to the worker's log.
    run_files: str = "full"
    # Processes per run: torch.distributed ranks of one DDP training (srun on Slurm; local
    # processes here), one GPU each where there are GPUs.
    tasks_per_node: int = 1


@dataclass
class LocalLauncherConf(CommonLauncherConf):
    executor: str = "local"
    # Runs at once; null: one per core, so a laptop stays responsive and runs don't fight
    # over cores (each run gets cores / max_parallel torch threads).
    max_parallel: Optional[int] = None
    # Local processes are cheap to check: show progress promptly.
    poll_interval_s: float = 0.5
    # null: workers, one per run that may run at once (max_parallel, else cores //
    # cpus_per_task, else one per core): a process per run would spend seconds importing
    # torch and composing its config for runs that often take less. A worker's time limit is
    # then timeout_min x the sweep's runs (timeout_min budgets each run; no run is left
    # unclaimed for want of time). A worker that dies in a run (segfault, OOM kill) costs
    # that run only: it is recorded failed and the worker replaced. 0: one process per run,
    # for runs that must be isolated: what a distributed run (tasks_per_node > 1) always
    # gets, and an unset `workers` gives a Hydra app not built on hpcjobs' config (as
    # Hydra's launchers run it).
    workers: Optional[int] = None


@dataclass
class SlurmLauncherConf(CommonLauncherConf):
    executor: str = "slurm"
    timeout_min: int = 60  # sbatch --time takes whole minutes
    # Shown by squeue/sacct; defaults to the experiment's name (hpcjobs' apps), else
    # to Hydra's job name (any other app, which may have no `experiment_name`).
    job_name: str = "${oc.select:experiment_name,${hydra.job.name}}"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    nodes: int = 1
    gpus_per_node: Optional[int] = None
    gres: Optional[str] = None  # e.g. "gpu:a100:2"; alternative to gpus_per_node
    mem_gb: Optional[float] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    comment: Optional[str] = None
    # Slurm warns a task this many seconds before its time limit (sbatch --signal=USR2@N), so it
    # can finish its step, save a checkpoint and requeue itself: more than a step and a save
    # take. Slurm checks every 30 s and may warn up to a minute earlier.
    signal_grace_s: int = 120
    # Array throttle (sbatch --array=...%N): at most N tasks of the sweep run at once.
    array_parallelism: int = 256
    # Tasks per array; null: the cluster's MaxArraySize. Less where a site limits how many
    # jobs one user may queue (MaxSubmitJobs): the arrays that fit are queued, `retry` the rest.
    max_array_size: Optional[int] = None
    # Shell lines run before the task, e.g. ["module load cuda", "source .venv/bin/activate"].
    setup: List[str] = field(default_factory=list)
    # Any other sbatch option, without the leading dashes: {"mail-type": "END"}.
    additional_parameters: Dict[str, Any] = field(default_factory=dict)
    # Slurm: submit and return (detach); `python -m hpcjobs status` follows the sweep.
    # true: block until every task ends and return results to Hydra (e.g. for Optuna).
    wait: bool = False


@dataclass
class AutoLauncherConf(SlurmLauncherConf):
    executor: str = "auto"
    # Used when no `sbatch` is found and the sweep runs locally (workers: as LocalLauncherConf's).
    max_parallel: Optional[int] = None


@dataclass
class LauncherSettings(AutoLauncherConf):
    """Every launcher key a backend reads, typed: the union of the configs above (AutoLauncherConf
    has them all). Keys a config leaves out (a local sweep's Slurm keys) take these defaults;
    those that Hydra would resolve from the sweep's config are unset here instead."""

    # Wider than SlurmLauncherConf's (hence the ignores): whole minutes on Slurm, any number
    # locally; no job name where no Slurm config named one.
    timeout_min: float = 60  # type: ignore[assignment]
    job_name: Optional[str] = None  # type: ignore[assignment]
    # Where submitit keeps each job's files (%j: the job id), resolved; "": none (no logs known).
    submitit_folder: str = ""

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> "LauncherSettings":
        """From ``hydra.launcher``'s keys, as Hydra instantiates the launcher with them or as
        sweep.json records them; keys of another version left out, lists and dicts made plain."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: _plain(value) for key, value in params.items() if key in known})

    @classmethod
    def of(cls, settings: "LauncherSettings | Mapping[str, Any]") -> "LauncherSettings":
        return settings if isinstance(settings, LauncherSettings) else cls.from_mapping(settings)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _plain(value: Any) -> Any:
    """Hydra hands lists and dicts over as ListConfig/DictConfig: plain ones (as submitit wants)."""
    if "omegaconf" not in sys.modules:  # then none is a config (`status` does not load OmegaConf)
        return value
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
