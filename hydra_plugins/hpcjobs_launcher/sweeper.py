"""Hydra's basic grid sweeper, minus its per-configuration composition on the login node.

Hydra's BasicSweeper composes every configuration of a batch before launching it
(`validate_batch_is_legal`, ~34 ms each: 34 s for 1,000 tasks). The hpcjobs launcher
validates every configuration itself, composing once per combination of config-group
choices, so with it that pass is skipped. With any other launcher, it runs as usual.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

from hpcjobs.compat import basic_sweeper

BasicSweeper, BasicSweeperConf = basic_sweeper()


# The bases are looked up at runtime (see compat.basic_sweeper), which mypy cannot follow.
@dataclass
class HpcjobsSweeperConf(BasicSweeperConf):  # type: ignore[misc,valid-type]
    _target_: str = "hydra_plugins.hpcjobs_launcher.sweeper.HpcjobsSweeper"


class HpcjobsSweeper(BasicSweeper):  # type: ignore[misc,valid-type]
    def sweep(self, arguments: list[str]) -> Any:
        from hydra_plugins.hpcjobs_launcher.launcher import pin_sweep_dir

        # Claim the sweep directory before Hydra writes multirun.yaml into it: a sweep
        # started in the same second must not overwrite this one's.
        pin_sweep_dir(self.config)
        return super().sweep(arguments)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        from hydra_plugins.hpcjobs_launcher.launcher import HpcjobsLauncher

        if isinstance(self.launcher, HpcjobsLauncher):
            return  # the launcher validates the whole batch before submitting any of it
        super().validate_batch_is_legal(batch)


ConfigStore.instance().store(
    group="hydra/sweeper", name="hpcjobs", node=HpcjobsSweeperConf, provider="hpcjobs"
)
