"""Launcher configs, registered in Hydra's ConfigStore under ``hydra/launcher``.

    hydra/launcher=hpcjobs_local   local processes (submitit's LocalExecutor)
    hydra/launcher=hpcjobs_slurm   Slurm array jobs (submitit's SlurmExecutor)
    hydra/launcher=hpcjobs_auto    Slurm if `sbatch` is on PATH, else local (the default)

Each field is one knob, with Slurm's / submitit's name where one exists. An unknown key
(``hydra.launcher.partion=gpu``) is rejected at composition: these are closed dataclasses.
"""

from hydra.core.config_store import ConfigStore

# Declared in the launching stage, which reads them (hpcjobs/launching/settings.py).
from hpcjobs.launching.settings import (
    LAUNCHER_TARGET,
    AutoLauncherConf,
    CommonLauncherConf,
    LocalLauncherConf,
    SlurmLauncherConf,
)

__all__ = [
    "LAUNCHER_CONFIGS",
    "LAUNCHER_TARGET",
    "AutoLauncherConf",
    "CommonLauncherConf",
    "LocalLauncherConf",
    "SlurmLauncherConf",
]

# hydra/launcher=NAME -> its schema (the CLI also reads this to name the valid keys).
LAUNCHER_CONFIGS = {
    "hpcjobs_local": LocalLauncherConf,
    "hpcjobs_slurm": SlurmLauncherConf,
    "hpcjobs_auto": AutoLauncherConf,
}
for _name, _node in LAUNCHER_CONFIGS.items():
    ConfigStore.instance().store(group="hydra/launcher", name=_name, node=_node, provider="hpcjobs")
