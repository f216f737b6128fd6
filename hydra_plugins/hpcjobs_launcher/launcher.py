"""The hpcjobs Hydra launcher: validate every configuration, write the manifest, submit.

Works for any ``@hydra.main`` application, like Hydra's own launchers. Hydra's sweeper
hands :meth:`HpcjobsLauncher.launch` a batch of override lists; the launcher plans and
validates all of them (nothing is submitted if any is invalid, see
hpcjobs/config/planning.py), pickles what the tasks share once, writes ``sweep.json``,
and hands the tasks to a backend (hpcjobs/launching/backends/: local processes, or
Slurm arrays it detaches from unless ``wait=true``). Each task runs the app's task
function in its run directory and records the outcome there (hpcjobs/run/task.py).
"""

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hpcjobs import atomic, compat, states
from hpcjobs.config import planning, schema, search_space
from hpcjobs.config.planning import PlannedTask
from hpcjobs.errors import ConfigError
from hpcjobs.launching import backends, manifest, provenance, snapshot, submission
from hpcjobs.launching.backends.base import Backend
from hpcjobs.run import runfiles
from hpcjobs.run import study as run_study
from hpcjobs.run.task import SweepPayload, code_dir, payload_file_name

log = logging.getLogger(__name__)

# Workers of an adaptive sweep when hydra.launcher.workers does not say: trials run this many
# at a time, so the sampler learns from finished ones while the others run.
DEFAULT_STUDY_WORKERS = 4


def pin_sweep_dir(config: DictConfig) -> Path:
    """Resolve ``hydra.sweep.dir`` once and pin it in the config, for every task of the sweep.

    A time-stamped directory (``${now:...}``, Hydra's default) belongs to one sweep:
    another one started in the same second gets ``<dir>_2`` instead (manifest.claim).
    A fixed directory is the user's choice; runs into it follow Hydra's rules.
    """
    pattern = str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("dir", ""))  # type: ignore[union-attr]
    sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
    if "${now:" in pattern:
        claimed = manifest.claim(sweep_dir)
        if claimed != sweep_dir:
            log.info(
                "hpcjobs: %s belongs to another sweep started at the same time; this one is %s",
                sweep_dir,
                claimed,
            )
        sweep_dir = claimed
    with read_write(config.hydra.sweep), open_dict(config):
        config.hydra.sweep.dir = str(sweep_dir)
    return sweep_dir


def _relative(path: Path | None, base: Path) -> str | None:
    if path is None:
        return None
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def _private_dir(path: Path) -> Path:
    """Create a folder only its owner can enter: it will hold pickled payloads."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class HpcjobsLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        self.params = params
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        # Per sweep directory this launcher has launched into: its payload. A sweeper calls
        # launch() once per batch; the batches of one sweep share the payload and manifest,
        # while a new run of the app into the same (fixed) sweep dir starts afresh.
        self._payloads: dict[Path, Path] = {}
        # Sweep directories this launcher adds to (hydra.sweep.dir named an existing sweep).
        self._adding_to: set[Path] = set()
        # Per sweep directory: what the tasks' environment needs for its code snapshot ({}: none).
        self._environments: dict[Path, dict[str, str]] = {}

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
        backend, sweep_dir = self._prepare(self.params)
        later_batch = sweep_dir in self._payloads
        if not later_batch and manifest.exists(sweep_dir) and schema.is_hpcjobs_config(self.config):
            self._adding_to.add(sweep_dir)  # hydra.sweep.dir names an existing sweep: add to it
        loader = self.hydra_context.config_loader
        if sweep_dir in self._adding_to:
            existing = manifest.read(sweep_dir)
            if existing.executor != backend.name:
                raise ConfigError(
                    f"{sweep_dir} is a sweep on {existing.executor}: add to"
                    f" it with hydra/launcher=hpcjobs_{existing.executor},"
                    " or give this one its own directory"
                )
            if existing.study:
                raise ConfigError(
                    f"{sweep_dir} holds an adaptive sweep (a"
                    " study): give this sweep its own directory"
                )
            # Planned twice: to know each configuration's hash, then numbered after the tasks there.
            wanted = self._not_completed(
                planning.plan_tasks(loader, self.config, job_overrides, 0), existing
            )
            next_index = max((t.index for t in existing.tasks), default=-1) + 1
            tasks = planning.plan_tasks(
                loader, self.config, [t.overrides for t in wanted], next_index
            )
        else:
            tasks = planning.plan_tasks(loader, self.config, job_overrides, initial_job_idx)
        if not tasks:
            return []
        if self.params.get("dry_run"):
            self._log_dry_run(tasks, backend, sweep_dir)
            return []
        return self._submit(backend, sweep_dir, tasks, later_batch)

    def launch_study(self, spec: run_study.StudySpec, base: Sequence[str]) -> Sequence[JobReturn]:
        """Submit an adaptive sweep (hydra/sweeper=hpcjobs_optuna): a pool of workers that ask
        the study for trials until ``spec.n_trials`` have run, then re-run the best with
        ``spec.rerun_best_seeds`` more seeds. Every value the space can take is validated first.

        ``base``: the overrides every trial shares (the command line's plain ones).
        """
        assert self.config is not None and self.hydra_context is not None
        workers = int(self.params.get("workers") or min(DEFAULT_STUDY_WORKERS, spec.n_trials))
        backend, sweep_dir = self._prepare({**self.params, "workers": workers})
        if manifest.exists(sweep_dir) or (sweep_dir / run_study.STUDY_FILE).exists():
            raise ConfigError(
                f"{sweep_dir} holds a sweep already: an adaptive sweep needs a directory of its own"
                " (leave hydra.sweep.dir to its time-stamped default, or name a new one)"
            )
        loader = self.hydra_context.config_loader
        space = spec.space
        # The corners of the space: every choice and both ends of every range, validated now.
        planning.plan_tasks(
            loader, self.config, [[*base, *c] for c in search_space.corners(space)], 0
        )
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
        if self.params.get("dry_run"):
            self._log_dry_run(tasks, backend, sweep_dir)
            log.info(
                "dry run: a study of %d trials over %s on %d workers",
                spec.n_trials,
                ", ".join(p.key for p in space.params),
                workers,
            )
            return []
        run_study.create(sweep_dir, spec)
        return self._submit(backend, sweep_dir, tasks, False, study=spec.as_dict(), roles=roles)

    def _prepare(self, params: dict) -> tuple[Backend, Path]:
        """The backend (checked) and the sweep directory (pinned, claimed, with multirun.yaml)."""
        assert self.config is not None
        setup_globals()
        for problem in compat.version_problems():
            log.warning("hpcjobs: %s", problem)
        requested = params.get("executor", backends.AUTO)
        backend = backends.create(requested, params)
        if requested == backends.AUTO:
            log.info(
                "hpcjobs launcher: %s",
                "sbatch found: submitting to Slurm"
                if backend.name == "slurm"
                else "no sbatch on PATH: running local processes",
            )
        backend.check()
        sweep_dir = pin_sweep_dir(self.config)
        # a new fixed hydra.sweep.dir: Hydra's sweeper may not have
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # Hydra's sweeper wrote it for the path it had
        if not (sweep_dir / "multirun.yaml").exists():
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        # Hydra resolved the launcher settings before the sweep dir was pinned (and claimed).
        backend.folder = str(self.config.hydra.launcher.submitit_folder)
        return backend, sweep_dir

    def _submit(
        self,
        backend: Backend,
        sweep_dir: Path,
        tasks: Sequence[PlannedTask],
        later_batch: bool,
        study: dict | None = None,
        roles: dict[int, str] | None = None,
    ) -> Sequence[JobReturn]:
        """Pickle the payload (first batch), write the manifest, submit; wait where asked to."""
        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None  # setup() sets all three
        code_record = None
        if not later_batch:
            import cloudpickle  # submitit's own serializer: handles OmegaConf's resolver closures

            # Named uniquely: tasks of an earlier sweep into the same directory, still
            # queued, must keep reading their own payload, not this one.
            sweep_id = uuid.uuid4().hex[:12]
            payload_path = _private_dir(Path(backend.folder).parent) / payload_file_name(sweep_id)
            hydra_context, frozen, cwd = self.hydra_context, None, Path.cwd()
            if self.params.get("snapshot"):  # the tasks import a copy of the code, taken now
                frozen = code_dir(payload_path)
                hydra_context = snapshot.take(frozen, hydra_context, cwd)
                self._environments[sweep_dir] = snapshot.environment(frozen, cwd)
            payload = SweepPayload(
                hydra_context, self.task_function, self.config, Singleton.get_state()
            )
            atomic.write_bytes(payload_path, cloudpickle.dumps(payload))
            self._payloads[sweep_dir] = payload_path
            code_record = provenance.record(sweep_dir, sweep_id, _relative(frozen, sweep_dir), cwd)
        payload_path = self._payloads[sweep_dir]
        if not later_batch:
            # this command's sweep: the CLI collects it, `status` defaults to it
            manifest.record(sweep_dir)
        sweep = self._write_manifest(
            tasks,
            backend,
            sweep_dir,
            later_batch or sweep_dir in self._adding_to,
            payload_path.name,
            code_record,
            study,
            roles or {},
        )
        backend.environment = dict(self._environments.get(sweep_dir, {}))
        job_ids = submission.submit(backend, sweep, tasks, payload_path)
        if not (backend.blocking or self.params.get("wait")):
            return []
        returns = submission.wait(backend, sweep, tasks, job_ids)
        log.info("sweep directory: %s (python -m hpcjobs collect|report %s)", sweep_dir, sweep_dir)
        return returns

    def _not_completed(
        self, tasks: Sequence[PlannedTask], sweep: manifest.SweepManifest
    ) -> list[PlannedTask]:
        """The tasks whose configuration ``sweep`` has not completed (all, with rerun_completed)."""
        completed = set()
        for record in sweep.tasks:
            with contextlib.suppress(runfiles.CorruptRunFile):
                if (runfiles.read_metrics(sweep.run_dir(record)) or {}).get(
                    "status"
                ) == states.COMPLETED:
                    completed.add(record.config_hash)
        done = [t for t in tasks if t.config_hash in completed]
        if not done:
            return list(tasks)
        if self.params.get("rerun_completed"):
            log.info(
                "%d configuration(s) completed already in %s: run again in new run directories "
                "(rerun_completed=true)",
                len(done),
                sweep.sweep_dir,
            )
            return list(tasks)
        log.info(
            "%d of %d configuration(s) completed already in %s: skipped "
            "(hydra.launcher.rerun_completed=true runs them again, in new run directories)",
            len(done),
            len(tasks),
            sweep.sweep_dir,
        )
        return [t for t in tasks if t.config_hash not in completed]

    def _write_manifest(
        self,
        tasks: Sequence[PlannedTask],
        backend: Backend,
        sweep_dir: Path,
        later_batch: bool,
        payload: str,
        code_record: dict | None,
        study: dict | None,
        roles: dict[int, str],
    ) -> manifest.SweepManifest:
        assert self.config is not None
        records = [
            manifest.TaskRecord(
                t.index,
                list(t.overrides),
                t.run_subdir,
                t.config_hash,
                payload=payload,
                role=roles.get(t.index),
            )
            for t in tasks
        ]
        if later_batch and manifest.exists(sweep_dir):
            sweep = manifest.read(sweep_dir)
            known = {t.index for t in records}
            sweep.tasks = [t for t in sweep.tasks if t.index not in known] + records
            sweep.launcher_host = socket.gethostname()  # this process runs the new tasks
            sweep.launcher_pid, sweep.launcher_started = manifest.this_process()
        else:
            sweep = manifest.SweepManifest(
                # hpcjobs' apps name their experiment; any other Hydra app is named by its job name.
                experiment=str(self.config.get("experiment_name") or self.config.hydra.job.name),
                sweep_dir=str(sweep_dir),
                executor=backend.name,
                git_commit=manifest.git_commit(),
                # As the backend runs it: an adaptive sweep's default number of workers included.
                launcher={
                    **OmegaConf.to_container(self.config.hydra.launcher, resolve=True),  # type: ignore[dict-item]
                    "workers": backend.params.get("workers"),
                },
                tasks=records,
                payload=payload,
                study=study,
            )
        for record in records:  # most tasks run the sweep's own payload: said once, not per task
            if record.payload == sweep.payload:
                record.payload = None
        if code_record is not None:  # this command's code (a later batch of it runs the same)
            sweep.provenance.append(code_record)
        # a pool's submission writes it, with the pool (submit_pool)
        if not backend.params.get("workers"):
            manifest.write(sweep)
        return sweep

    def _log_dry_run(self, tasks: Sequence[PlannedTask], backend: Backend, sweep_dir: Path) -> None:
        width = max(len(t.run_subdir) for t in tasks)
        lines = [
            f"dry run: {len(tasks)} tasks would run ({backend.name}); nothing was submitted",
            f"{'run_dir':<{width}}  config_hash   overrides",
        ]
        lines += [
            f"{t.run_subdir:<{width}}  {t.config_hash}  {' '.join(t.overrides)}" for t in tasks
        ]
        described = backend.describe(len(tasks))
        if described:
            lines.append(described)
        lines.append(f"sweep directory would be: {sweep_dir}")
        log.info("\n".join(lines))
