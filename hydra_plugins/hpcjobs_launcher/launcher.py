"""The hpcjobs Hydra launcher: validate every configuration, write the manifest, submit.

Works for any ``@hydra.main`` application, like Hydra's own launchers. Hydra's sweeper
hands :meth:`HpcjobsLauncher.launch` a batch of override lists; the launcher plans and
validates all of them (nothing is submitted if any is invalid, see
hpcjobs/config/planning.py) and hands them to the launching stage
(hpcjobs/launching/launch.py), which pickles what the tasks share once, writes
``sweep.json``, and hands the tasks to a backend (hpcjobs/launching/backends/: local
processes, or Slurm arrays it detaches from unless ``wait=true``). Each task runs the
app's task function in its run directory and records the outcome there
(hpcjobs/run/task.py). This module adapts Hydra's Launcher interface and says what the
jobs run (:data:`RUNNERS`); it decides nothing else.
"""

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hpcjobs.config import planning, schema, search_space
from hpcjobs.config.planning import PlannedTask
from hpcjobs.errors import ConfigError
from hpcjobs.launching import groups, launch, registry, submission
from hpcjobs.launching.backends.base import Backend
from hpcjobs.launching.launch import pin_sweep_dir  # noqa: F401  (the sweepers pin the directory with it)
from hpcjobs.launching.settings import LauncherSettings
from hpcjobs.run import study as run_study
from hpcjobs.run.task import TaskRunner
from hpcjobs.run.worker import WorkerRunner
from hpcjobs.sweepdir import manifest

log = logging.getLogger(__name__)

# What the jobs run: the launching stage submits them without importing the run stage.
RUNNERS = submission.Runners(task=TaskRunner, worker=WorkerRunner)
# Workers of an adaptive sweep when hydra.launcher.workers does not say: trials run this many
# at a time, so the sampler learns from finished ones while the others run.
DEFAULT_STUDY_WORKERS = 4


class HpcjobsLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        self.params = params  # hydra.launcher's keys, as Hydra instantiated the launcher with them
        self.settings = LauncherSettings.from_mapping(params)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        # Per sweep directory this launcher has launched into: its payload. A sweeper calls
        # launch() once per batch; the batches of one sweep share the payload and manifest,
        # while a new run of the app into the same (fixed) sweep dir starts afresh.
        self._payloads: dict[Path, launch.Payload] = {}
        # Sweep directories this launcher adds to (hydra.sweep.dir named an existing sweep).
        self._adding_to: set[Path] = set()

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        backend, sweep_dir = self._prepare(self.settings)
        later_batch = sweep_dir in self._payloads
        if not later_batch and manifest.exists(sweep_dir) and schema.is_hpcjobs_config(self.config):
            self._adding_to.add(sweep_dir)  # hydra.sweep.dir names an existing sweep: add to it
        loader = self.hydra_context.config_loader
        known: dict[str, dict] = {}  # the resources groups of the sweep this one adds to
        if sweep_dir in self._adding_to:
            existing = launch.sweep_to_add_to(sweep_dir, backend)
            known = existing.groups
            # Planned twice: to know each configuration's hash, then numbered after the tasks there.
            wanted = launch.not_completed(
                planning.plan_tasks(loader, self.config, job_overrides, 0),
                existing,
                self.settings.rerun_completed,
            )
            next_index = max((t.index for t in existing.tasks), default=-1) + 1
            tasks = planning.plan_tasks(
                loader, self.config, [t.overrides for t in wanted], next_index, groups.RESOLVED_KEYS
            )
        else:
            tasks = planning.plan_tasks(
                loader, self.config, job_overrides, initial_job_idx, groups.RESOLVED_KEYS
            )
            if later_batch and manifest.exists(sweep_dir):  # this sweep's earlier batches
                known = manifest.read(sweep_dir).groups
        if not tasks:
            return []
        # resources per configuration: one submission per group of tasks that ask the same
        resources = groups.group_tasks(tasks, backend, known)
        changes = [g.changes for g in resources] + list((known or {}).values())
        backend = groups.with_shared_workers(backend, changes)
        if self.settings.dry_run:
            log.info("%s", launch.describe_dry_run(tasks, backend, sweep_dir, resources))
            return []
        return self._submit(backend, sweep_dir, tasks, later_batch, resources=resources)

    def launch_study(self, spec: run_study.StudySpec, base: Sequence[str]) -> Sequence[JobReturn]:
        """Submit an adaptive sweep (hydra/sweeper=hpcjobs_optuna): a pool of workers that ask
        the study for trials until ``spec.n_trials`` have run, then re-run the best with
        ``spec.rerun_best_seeds`` more seeds. Every value the space can take is validated first.

        ``base``: the overrides every trial shares (the command line's plain ones).
        """
        assert self.config is not None and self.hydra_context is not None
        workers = int(self.settings.workers or min(DEFAULT_STUDY_WORKERS, spec.n_trials))
        backend, sweep_dir = self._prepare(dataclasses.replace(self.settings, workers=workers))
        if manifest.exists(sweep_dir) or (sweep_dir / run_study.STUDY_FILE).exists():
            raise ConfigError(
                f"{sweep_dir} holds a sweep already: an adaptive sweep needs a directory of its own"
                " (leave hydra.sweep.dir to its time-stamped default, or name a new one)"
            )
        loader = self.hydra_context.config_loader
        space = spec.space
        # The corners of the space: every choice and both ends of every range, validated now.
        corners = planning.plan_tasks(
            loader,
            self.config,
            [[*base, *c] for c in search_space.corners(space)],
            0,
            groups.RESOLVED_KEYS,
        )
        _refuse_resources_per_trial(corners)
        seedless = [o for o in base if o.split("=", 1)[0].lstrip("+~") != spec.seed_key]
        first_seed = int(self.config.get(spec.seed_key) or 0) if spec.seed_key in self.config else 0
        job_overrides = [list(base) for _ in range(spec.n_trials)]
        job_overrides += [
            [*seedless, f"{spec.seed_key}={first_seed + k}"]
            for k in range(1, spec.rerun_best_seeds + 1)
        ]
        tasks = planning.plan_tasks(loader, self.config, job_overrides, 0)
        roles = {
            t.index: run_study.TRIAL_ROLE if t.index < spec.n_trials else run_study.BEST_ROLE
            for t in tasks
        }
        if self.settings.dry_run:
            log.info("%s", launch.describe_dry_run(tasks, backend, sweep_dir))
            log.info(
                "dry run: a study of %d trials over %s on %d workers",
                spec.n_trials,
                ", ".join(p.key for p in space.params),
                workers,
            )
            return []
        run_study.create(sweep_dir, spec)
        return self._submit(backend, sweep_dir, tasks, False, study=spec.as_dict(), roles=roles)

    def _prepare(self, settings: LauncherSettings) -> tuple[Backend, Path]:
        """The backend (checked) and the sweep directory (pinned, claimed, with multirun.yaml)."""
        assert self.config is not None
        setup_globals()
        if settings.workers is None and not schema.is_hpcjobs_config(self.config):
            # Any other @hydra.main app gets a process per run, as Hydra's own launchers give
            # it (its task function may count on one: module state, the working directory);
            # hpcjobs' workloads are written to share a worker (local sweeps' default).
            settings = dataclasses.replace(settings, workers=0)
        return launch.prepare(settings, self.config)

    def _submit(
        self,
        backend: Backend,
        sweep_dir: Path,
        tasks: Sequence[PlannedTask],
        later_batch: bool,
        study: dict | None = None,
        roles: dict[int, str] | None = None,
        resources: Sequence[groups.Group] = (),
    ) -> Sequence[JobReturn]:
        """Pickle the payload (first batch), write the manifest, submit; wait where asked to."""
        assert (
            self.config is not None
            and self.hydra_context is not None
            and self.task_function is not None
        )
        code_record = None
        if not later_batch:
            payload = launch.write_payload(
                sweep_dir,
                backend,
                self.hydra_context,
                self.task_function,
                self.config,
                self.settings.snapshot,
            )
            self._payloads[sweep_dir], code_record = payload, payload.code_record
            # this command's sweep: the CLI collects it, `status` defaults to it
            registry.register(sweep_dir)
        payload = self._payloads[sweep_dir]
        sweep = launch.manifest_with_tasks(
            tasks,
            backend,
            sweep_dir,
            self.config,
            later_batch or sweep_dir in self._adding_to,
            payload.path.name,
            code_record,
            study,
            roles,
            resources,
        )
        return launch.submit(backend, sweep, tasks, payload, RUNNERS, resources)


def _refuse_resources_per_trial(corners: Sequence[PlannedTask]) -> None:
    """An adaptive sweep's trials take their values when a worker runs them, in a pool whose
    jobs were submitted before: their resources cannot depend on those values."""
    varying = sorted({key for t in corners for key in t.launcher})
    if varying:
        example = next(t for t in corners if t.launcher)
        raise ConfigError(
            "an adaptive sweep's trials draw their values when a worker runs them, so their"
            f" launcher settings cannot depend on them: hydra.launcher.{', '.join(varying)}"
            f" differ(s) across the search space (e.g. {example.label}). Set the study's resources"
            " once (hydra.launcher.*), or run one study per resources choice"
        )
