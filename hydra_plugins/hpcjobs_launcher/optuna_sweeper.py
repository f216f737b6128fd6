"""``hydra/sweeper=hpcjobs_optuna``: an adaptive sweep (Optuna) that leaves no process behind.

Hydra's own Optuna sweeper asks for trials on the login node, in batches, for as long as
the study runs. This one submits the study and returns: the launcher's workers
(``hydra.launcher.workers``) each ask the study for a trial, run it, tell the result and
ask again, the study kept in the sweep directory in Optuna's journal file storage
(hpcjobs/run/study.py). The search space is written as Hydra's Optuna sweeper users know
it, in the experiment's yaml or on the command line::

    hydra:
      sweeper:
        n_trials: 30
        params:
          optimizer: choice(sgd, momentum, adam)
          optimizer.lr: tag(log, interval(1e-4, 1e-1))
          trainer.batch_size: range(16, 129, step=16)

Works with the hpcjobs launchers (hpcjobs_local / hpcjobs_slurm / hpcjobs_auto) only:
they run the workers. optuna is an optional dependency (``pip install 'hpcjobs[optuna]'``).
"""

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hpcjobs.errors import ConfigError, choices_hint

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random")
PRUNERS = (None, "median", "hyperband", "successive_halving")
DIRECTIONS = ("maximize", "minimize")


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe (learns from finished trials) | random
    # Each worker samples with seed + its number (+ 1000 per retry pool): the same seed on
    # every worker would draw the same random trials. null: not seeded.
    seed: Optional[int] = 0
    # tpe: trials drawn at random before the model takes over (Optuna's default is 10).
    n_startup_trials: int = 10


@dataclass
class PrunerConf:
    # null: every trial runs all its epochs | median: stop a trial whose intermediate value is
    # worse than the median of earlier trials at the same epoch | hyperband | successive_halving
    name: Optional[str] = None
    # median: trials that run to the end before any is pruned, and epochs before a trial may be.
    n_startup_trials: int = 5
    n_warmup_steps: int = 3


@dataclass
class HpcjobsOptunaSweeperConf:
    _target_: str = "hydra_plugins.hpcjobs_launcher.optuna_sweeper.HpcjobsOptunaSweeper"
    # Trials to run (completed, pruned or failed); a trial whose worker died is run again.
    n_trials: int = 30
    direction: str = "maximize"  # maximize | minimize the metric
    # The objective: a key of each run's metrics.json. A validation metric: a study that
    # selects on the test set reports a flattered pick (the CNN's test_accuracy is reported
    # beside it by collect and report; hpcjobs/results/selection.py).
    metric: str = "best_val_accuracy"
    # Reported to the trial after each epoch (a history.csv column) for the pruner; null: none.
    intermediate: Optional[str] = "val_accuracy"
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    # After the study: run the best trial's configuration again with this many other seeds
    # (seed + 1, + 2, ...), for its mean and confidence interval in the report.
    rerun_best_seeds: int = 0
    study_name: Optional[str] = None  # null: the experiment's name
    # Workers touch a file this often; a worker silent for 4 beats is taken for dead and its
    # trial handed to another worker (from the run's checkpoint).
    heartbeat_s: float = 30.0
    # The search space: key -> choice(...), range(...), interval(...), tag(log, interval(...)),
    # or a plain value that every trial gets.
    params: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper", name="hpcjobs_optuna", node=HpcjobsOptunaSweeperConf, provider="hpcjobs"
)


class HpcjobsOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: List[str]) -> Any:
        from hydra_plugins.hpcjobs_launcher.launcher import HpcjobsLauncher, pin_sweep_dir

        if not isinstance(self.launcher, HpcjobsLauncher):
            raise ConfigError(
                "hydra/sweeper=hpcjobs_optuna runs its trials on hpcjobs' workers: use "
                "hydra/launcher=hpcjobs_auto, hpcjobs_local or hpcjobs_slurm"
            )
        assert self.config is not None
        spec, base = study_spec(self.settings, arguments, self.config)
        # before Hydra's multirun.yaml: a sweep started with it keeps its own dir
        pin_sweep_dir(self.config)
        return self.launcher.launch_study(spec, base)


def study_spec(
    settings: dict[str, Any], arguments: List[str], config: DictConfig
) -> tuple[Any, list[str]]:
    """The checked StudySpec and the overrides all trials share; ConfigError: what to change."""
    from hpcjobs.config import search_space
    from hpcjobs.run.study import StudySpec

    def plain(value: Any) -> Any:
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    if importlib.util.find_spec("optuna") is None:
        raise ConfigError(
            "hydra/sweeper=hpcjobs_optuna needs optuna, which is not installed here: "
            "pip install 'hpcjobs[optuna]' (where the sweep is submitted and where it runs)"
        )
    settings = {k: plain(v) for k, v in settings.items()}
    n_trials, seeds = settings.get("n_trials"), settings.get("rerun_best_seeds") or 0
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"hydra.sweeper.n_trials={n_trials}: must be a whole number >= 1")
    if not isinstance(seeds, int) or seeds < 0:
        raise ConfigError(f"hydra.sweeper.rerun_best_seeds={seeds}: must be a whole number >= 0")
    if settings.get("direction") not in DIRECTIONS:
        raise ConfigError(
            f"hydra.sweeper.direction={settings.get('direction')}: {choices_hint(DIRECTIONS)}"
        )
    sampler, pruner = dict(settings.get("sampler") or {}), dict(settings.get("pruner") or {})
    if sampler.get("name") not in SAMPLERS:
        raise ConfigError(
            f"hydra.sweeper.sampler.name={sampler.get('name')}: {choices_hint(SAMPLERS)}"
        )
    if pruner.get("name") not in PRUNERS:
        raise ConfigError(
            f"hydra.sweeper.pruner.name={pruner.get('name')}: "
            f"{choices_hint(['null' if p is None else p for p in PRUNERS])}"
        )
    if pruner.get("name") and not settings.get("intermediate"):
        raise ConfigError(
            "hydra.sweeper.pruner needs hydra.sweeper.intermediate (a history.csv column, e.g. "
            "val_accuracy) to judge trials by; or set hydra.sweeper.pruner.name=null"
        )
    if not float(settings.get("heartbeat_s") or 0) > 0:
        raise ConfigError(
            f"hydra.sweeper.heartbeat_s={settings.get('heartbeat_s')}: must be > 0 seconds"
        )
    if sampler.get("name") == "random":
        sampler.pop("n_startup_trials", None)
    # the other pruners take their own settings (Optuna's defaults)
    if pruner.get("name") != "median":
        pruner = {"name": pruner.get("name")}
    # Command-line sweeps join the space (as with Hydra's Optuna sweeper); plain ones are shared.
    params = dict(settings.get("params") or {})
    base: list[str] = []
    for override in OverridesParser.create().parse_overrides(arguments):
        if override.is_sweep_override():
            params[override.get_key_element()] = str(override.input_line).split("=", 1)[1]
        else:
            base.append(str(override.input_line))
    params = search_space.as_spec(params)
    space = search_space.parse(params)  # ConfigError naming a malformed entry
    if seeds and any(p.key.lstrip("+~") == "seed" for p in space.params):
        raise ConfigError(
            "hydra.sweeper.rerun_best_seeds re-runs the best configuration with other seeds, but"
            " the study searches `seed` itself: set hydra.sweeper.rerun_best_seeds=0"
        )
    name = settings.get("study_name") or str(config.get("experiment_name") or config.hydra.job.name)
    spec = StudySpec(
        name=name,
        params=params,
        n_trials=n_trials,
        direction=settings["direction"],
        metric=str(settings.get("metric")),
        intermediate=settings.get("intermediate"),
        sampler=sampler,
        pruner=pruner,
        rerun_best_seeds=seeds,
        heartbeat_s=float(settings["heartbeat_s"]),
    )
    return spec, base
