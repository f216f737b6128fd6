"""An adaptive sweep's study, as the workers that run its trials see it.

``hydra/sweeper=hpcjobs_optuna`` submits a study as a pool of workers
(hpcjobs/run/worker.py) and returns; nothing stays on the login node. The study lives in
the sweep directory in Optuna's journal file storage (``optuna.journal``: an append-only
log with a lock file, made for shared file systems; no database server). Each worker
asks it for a trial when it claims one of the sweep's trial tasks, runs that trial in the
task's run directory (the sampled values become the run's overrides, and ``trial.json``
says which trial it is), reports each epoch's validation metric so a pruner can stop a
poor run early, and tells the study how the run ended.

A trial is tied to its run directory, not to the worker that asked for it: the worker
that resumes the run (after a requeue, a `retry`, or taking over from a worker that died)
continues the same trial, from the run's checkpoint. Workers prove they are alive by a
heartbeat file (``.pools/<pool>/workers/<k>.beat``, touched every ``heartbeat_s``); a
claimed trial whose worker's heartbeat has stopped is handed out again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from hpcjobs import states
from hpcjobs.deprecation import moved_names
from hpcjobs.run.context import RunPruned
from hpcjobs.sweepdir import runfiles

if TYPE_CHECKING:  # imported where used: `status` reads a study's progress without Hydra
    from hpcjobs.config import search_space

log = logging.getLogger(__name__)

T = TypeVar("T")
Direction = Literal["minimize", "maximize"]  # as Optuna names them

STUDY_FILE = "optuna.journal"
# a task sampled by the study; a re-run of the best with another seed
TRIAL_ROLE, BEST_ROLE = (
    "trial",
    "best",
)


class NoTrialCompleted(RuntimeError):
    """A re-run of the best trial was due, and no trial had completed."""


@dataclass
class StudySpec:
    """What sweep.json records of an adaptive sweep (hydra.sweeper's settings, checked)."""

    name: str
    params: dict[str, str]  # key -> Hydra override grammar, parsed again where trials are asked
    n_trials: int
    direction: Direction = "maximize"
    metric: str = "test_accuracy"  # the objective: a key of the run's metrics.json
    intermediate: str | None = "val_accuracy"  # a history.csv column reported per epoch (pruning)
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": None})
    rerun_best_seeds: int = 0
    seed_key: str = "seed"
    heartbeat_s: float = 30.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudySpec:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def space(self) -> search_space.SearchSpace:
        from hpcjobs.config import search_space  # Hydra's override parser: not for `status`

        return search_space.parse(self.params)


def storage(sweep_dir: Path | str) -> Any:
    """The study's journal file storage in the sweep directory (imports optuna)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(Path(sweep_dir) / STUDY_FILE)))


def create(sweep_dir: Path | str, spec: StudySpec) -> None:
    """Create the study (at submission). A sweep directory holds one study."""
    import optuna

    optuna.create_study(storage=storage(sweep_dir), study_name=spec.name, direction=spec.direction)


def load(
    sweep_dir: Path | str, spec: StudySpec, sampler_seed: int | None = None, journal: Any = None
) -> Any:
    """The study, with the sampler and pruner the spec names (seeded ``sampler_seed``)."""
    import optuna

    return optuna.load_study(
        study_name=spec.name,
        storage=journal or storage(sweep_dir),
        sampler=_sampler(spec, sampler_seed),
        pruner=_pruner(spec),
    )


def _sampler(spec: StudySpec, seed: int | None) -> Any:
    import optuna

    settings = dict(spec.sampler)
    name = settings.pop("name", "tpe")
    settings.pop("seed", None)
    if name == "tpe":
        # constant_liar: a trial still running counts as a poor one, so workers asking at the
        # same time are steered apart instead of all sampling the same promising point.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, **settings)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler {name!r}: tpe or random")


def _pruner(spec: StudySpec) -> Any:
    import optuna

    settings = dict(spec.pruner)
    name = settings.pop("name", None)
    if name is None:
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(**settings)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(**settings)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**settings)
    raise ValueError(f"pruner {name!r}: median, hyperband, successive_halving or null")


def best_of(
    candidates: Iterable[T],
    direction: str,
    number: Callable[[T], int | None],
    value: Callable[[T], float | None],
) -> T | None:
    """The candidate with the best value, the lowest trial number among equals (as Optuna's
    best_trial); those without a value are left out. What status and the report call best."""
    sign = -1.0 if direction == "minimize" else 1.0
    scored = [
        (sign * v, -(n if (n := number(c)) is not None else math.inf), c)
        for c in candidates
        if (v := value(c)) is not None
    ]
    return max(scored, key=lambda s: s[:2])[2] if scored else None


def worker_seed(spec: StudySpec, pool_number: int, worker: int) -> int | None:
    """Each worker samples with its own seed (the same seed would draw the same random trials),
    mixed from (seed, pool, worker): studies with seeds 0 and 1 share no worker's stream."""
    import numpy as np

    seed = spec.sampler.get("seed")
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed), pool_number, worker]).generate_state(1)[0])


class Trials:
    """One worker's access to the study: start a task's trial, follow its epochs, tell its end."""

    def __init__(self, sweep_dir: Path | str, spec: StudySpec, sampler_seed: int | None) -> None:
        from optuna.trial import TrialState

        self.spec, self.space = spec, spec.space
        self.storage = storage(sweep_dir)
        self.study = load(sweep_dir, spec, sampler_seed, self.storage)
        self._study_id = self.storage.get_study_id_from_name(spec.name)
        from hpcjobs.config import search_space

        self._distributions = search_space.distributions(self.space)
        self._state = TrialState

    def start(self, run_dir: Path, role: str, base: list[str]) -> tuple[Any, list[str]]:
        """The trial task ``run_dir`` runs (None for a re-run of the best), and its overrides.

        A run directory that has a trial already (a resumed run) continues it: the same
        trial while the study still has it running, a new trial with the same values if it
        was told failed (a `retry`). Otherwise the sampler picks the values; a re-run of the
        best takes the best trial's values with its own seed (in ``base``).
        """
        import optuna

        recorded = runfiles.read_trial(run_dir)
        trial = None
        if recorded is not None:
            number, params = int(recorded["number"]), dict(recorded["params"])
            if role == TRIAL_ROLE:
                trial_id = self._trial_id(number)
                if (
                    trial_id is not None
                    and self.storage.get_trial(trial_id).state == self._state.RUNNING
                ):
                    trial = optuna.trial.Trial(self.study, trial_id)
                else:
                    trial = self._copy(params)
                number = trial.number
        elif role == TRIAL_ROLE:
            trial = self.study.ask(self._distributions)
            number, params = trial.number, dict(trial.params)
        else:  # the workers start these only once every trial has ended
            try:
                best = self.study.best_trial
            except ValueError:
                raise NoTrialCompleted(
                    "no trial of the study completed: there is no best configuration to run again"
                ) from None
            number, params = best.number, dict(best.params)
        overrides = [*base, *self.space.overrides(params)]
        runfiles.write_trial(
            run_dir, {"number": number, "params": params, "overrides": overrides, "role": role}
        )
        return trial, overrides

    def _trial_id(self, number: int) -> int | None:
        try:
            return int(self.storage.get_trial_id_from_study_id_trial_number(self._study_id, number))
        except KeyError:
            return None

    def _copy(self, params: Mapping[str, Any]) -> Any:
        """A new running trial with ``params`` (a failed trial run again by `retry`)."""
        import optuna

        template = optuna.trial.create_trial(
            state=self._state.RUNNING, params=dict(params), distributions=self._distributions
        )
        trial_id = self.storage.create_new_trial(self._study_id, template_trial=template)
        return optuna.trial.Trial(self.study, trial_id)

    def observer(self, trial: Any) -> Callable[[Mapping[str, Any], Any], None]:
        """What the job calls with each epoch's row (and the run's config): report it; raise
        RunPruned if the pruner says so."""
        key = self.spec.intermediate

        def observe(row: Mapping[str, Any], cfg: Any) -> None:
            value, epoch = row.get(key) if key else None, row.get("epoch")
            if (
                not isinstance(value, (int, float))
                or not isinstance(epoch, int)
                or not math.isfinite(value)
            ):
                return
            trial.report(float(value), step=epoch)
            from omegaconf import OmegaConf

            if epoch == OmegaConf.select(cfg, "trainer.epochs", default=None):
                return  # its last epoch: pruning now would save nothing and lose its test result
            if trial.should_prune():
                raise RunPruned(f"{key}={value:.4g} after epoch {epoch} (trial {trial.number})")

        return observe

    def tell(self, trial: Any, run_dir: Path) -> float | None:
        """Tell the study how the run ended (its metrics.json); its objective value, if it has one.

        A run that stopped without ending (requeued, interrupted) is not told: its trial keeps
        running in the study and continues when the run resumes.
        """
        try:
            metrics = runfiles.read_metrics(run_dir) or {}
        except runfiles.CorruptRunFile:
            metrics = {}
        status = metrics.get("status")
        if status == states.PRUNED:
            self.study.tell(trial, state=self._state.PRUNED, skip_if_finished=True)
            return None
        if status == states.COMPLETED:
            value = metrics.get(self.spec.metric)
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                self.study.tell(trial, float(value), skip_if_finished=True)
                return float(value)
            numbers = sorted(
                k
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            )
            log.error(
                "trial %d: the run recorded no %s (hydra.sweeper.metric); its numbers: %s",
                trial.number,
                self.spec.metric,
                ", ".join(numbers),
            )
            self.study.tell(trial, state=self._state.FAIL, skip_if_finished=True)
            return None
        if status == states.FAILED:
            self.study.tell(trial, state=self._state.FAIL, skip_if_finished=True)
        return None


# --------------------------------------------------------------------------- heartbeats


def beat_path(pool: Path, worker: int) -> Path:
    return pool / "workers" / f"{worker}.beat"


# Old homes (hpcjobs/deprecation.py): the heartbeat is hpcjobs/heartbeat.py's, shared by stages.
if not TYPE_CHECKING:
    __getattr__ = moved_names(
        __name__,
        {name: f"hpcjobs.heartbeat.{name}" for name in ("STALE_BEATS", "heartbeat", "is_stale")},
    )
