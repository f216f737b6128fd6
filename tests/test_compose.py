"""A worker composes each group combination once and assigns the values (hpcjobs/run/compose.py):
every task's config must be the one Hydra's own composition gives, and a run in a worker must
leave the files a run of its own leaves (but the sweep-wide hydra.yaml)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from hpcjobs.config import schema
from hpcjobs.errors import CheckpointError, ConfigError
from hpcjobs.launching import registry
from hpcjobs.run import job
from hpcjobs.run.compose import TaskComposer
from hpcjobs.run.task import SweepRuns, load_payload
from hpcjobs.sweepdir import manifest

CONF_DIR = Path(__file__).resolve().parents[1] / "hpcjobs" / "conf"

# Group choices and values mixed as sweeps mix them, in either order, with lists, quoted
# strings, scientific floats, keys added with + (a fresh copy each time: the same key added
# by every task), a deletion, and a value override of a key a group choice brings.
SWEEP = [
    [f"optimizer={opt}", f"optimizer.lr={lr}", f"seed={seed}"]
    for opt, lr, seed in itertools.product(
        ["adam", "sgd", "momentum"], ["0.1", "1e-3", "3"], ["0", "7"]
    )
] + [
    ["seed=3", "optimizer=adamw"],
    ["+tag=a", "seed=1"],
    ["+tag=b", "seed=1"],
    ["model.channels=[8,16]", "data=synthetic", "data.num_samples=100"],
    ["data=synthetic", "trainer.precision=bf16", "experiment_name='a b'"],
    ["~keep_checkpoint"],
    ["++extra.nested=1"],
    ["+workload.extra=1", "+trainer.num_threads=2"],
    ["+trainer.num_threads=2", "seed=2"],
    ["workload=noop", "seed=4"],
    ["workload=noop", "seed=5", "+sleep_s=0"],
    ["trainer.epochs=2", "trainer.steps_per_epoch=null", "optimizer.lr=1"],
    [],
]
# Typed by assignment in a worker where the merge onto the schema is sure to give the same:
# not a deletion (the merge gives the schema's default back), nothing under workload (it names
# the schema).
NOT_TYPED_BY_ASSIGNMENT = [["~keep_checkpoint"], ["+workload.extra=1", "+trainer.num_threads=2"]]


@pytest.fixture
def loader_and_base():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = compose("config", return_hydra_config=True)
        yield GlobalHydra.instance().config_loader(), base


def hydra_task_config(loader, base, overrides):
    """The config Hydra's launchers give the task function: composed afresh, hydra node removed."""
    full = loader.load_sweep_config(base, list(overrides))
    app = full.copy()
    with read_write(app), open_dict(app):
        del app["hydra"]
    return full, app


def test_every_task_config_is_the_one_hydra_composes(loader_and_base):
    loader, base = loader_and_base
    composer = TaskComposer(loader, base)
    for overrides in SWEEP:
        composed = composer.compose(overrides)
        assert composed is not None, overrides
        full, expected = hydra_task_config(loader, base, overrides)
        assert job.config_digest(composed.config) == job.config_digest(expected), overrides
        assert OmegaConf.to_yaml(composed.config) == OmegaConf.to_yaml(expected), overrides
        assert composed.task_overrides == list(full.hydra.overrides.task)
        assert composed.override_dirname == full.hydra.job.override_dirname
        # What the workload gets: the config typed by its schema, as schema.typed types it.
        if overrides in NOT_TYPED_BY_ASSIGNMENT:
            assert composed.typed is None, overrides
        else:
            assert composed.typed is not None, overrides
            want = schema.typed(expected)
            assert OmegaConf.to_yaml(composed.typed) == OmegaConf.to_yaml(want), overrides
            assert _node_types(composed.typed) == _node_types(want), overrides
            assert OmegaConf.get_type(composed.typed) is OmegaConf.get_type(want)
    # One composition per combination of group choices, not one per task.
    combinations = {
        tuple(o for o in t if o.split("=")[0] in {"optimizer", "data", "workload"}) for t in SWEEP
    }
    assert len(composer._composed) == len(combinations)


def _node_types(config):
    """Each key's node class (IntegerNode, AnyNode, ...) and flags: what typing decides besides
    the values."""
    found = {}

    def walk(node, prefix):
        items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
        for key, _ in items:
            child = node._get_node(key)
            name = f"{prefix}{key}"
            found[name] = (type(child).__name__, child._get_flag("struct"))
            if isinstance(child, (DictConfig, ListConfig)) and not child._is_none():
                walk(child, name + ".")

    walk(config, "")
    return found


def test_a_value_the_schema_refuses_is_typed_by_the_run(loader_and_base):
    """An override the typed assignment refuses leaves the typing to the run's merge, which says
    what is wrong (ConfigError), as it does for a task composed by Hydra."""
    loader, base = loader_and_base
    composer = TaskComposer(loader, base)
    for overrides in (["trainer.epochs=many"], ["+trainer.epoch=3"]):
        composed = composer.compose(overrides)
        assert composed is not None and composed.typed is None, overrides
        with pytest.raises(ConfigError):
            schema.validate(composed.config)


def test_what_only_hydra_can_compose_is_left_to_it(loader_and_base):
    loader, base = loader_and_base
    composer = TaskComposer(loader, base)
    assert composer.compose(["hydra.job.name=other", "seed=1"]) is None
    # resolved from Hydra's per-task state
    assert composer.compose(["+run_name=${hydra:job.num}"]) is None


def test_runs_in_a_worker_leave_the_files_a_run_of_its_own_leaves(workdir):
    subprocess.run([sys.executable, "-m", "hpcjobs", "--multirun", "hydra/launcher=hpcjobs_local",
                    "workload=noop", "hydra.launcher.workers=2", "seed=0,1,2", "+tag=a,b"],
                   cwd=workdir, check=True, capture_output=True)  # fmt: skip
    sweep = manifest.read(registry.latest_sweep())
    payload = load_payload(Path(sweep.sweep_dir) / ".submitit" / sweep.payload)
    loader = payload.hydra_context.config_loader
    assert len(sweep.tasks) == 6
    for task in sweep.tasks:
        run_dir = sweep.run_dir(task)
        _, expected = hydra_task_config(loader, payload.base_config, task.overrides)
        assert (run_dir / ".hydra" / "config.yaml").read_text() == OmegaConf.to_yaml(expected)
        # the sweep's: multirun.yaml, and sweep.json's overrides
        assert sorted(os.listdir(run_dir / ".hydra")) == ["config.yaml"]
        # Each run's log holds its own lines, none of another run's.
        log = (run_dir / "app.log").read_text()
        seed = next(int(o.split("=")[1]) for o in task.overrides if o.startswith("seed="))
        assert f"'score': {float(seed)}" in log and log.count("run completed") == 1
    assert (Path(sweep.sweep_dir) / "multirun.yaml").is_file()


def test_a_run_again_in_a_worker_leaves_its_files_as_they_were(workdir):
    """A completed run is not run again and its files are not rewritten; another configuration
    sent into its directory is refused, and the run's record of its config is kept."""
    subprocess.run(
        [sys.executable, "-m", "hpcjobs", "--multirun", "hydra/launcher=hpcjobs_local",
         "workload=noop", "hydra.launcher.workers=1", "seed=0,1"],
        cwd=workdir, check=True, capture_output=True,
    )  # fmt: skip
    sweep = manifest.read(registry.latest_sweep())
    hydra_state = Singleton.get_state()  # SweepRuns sets Hydra's singletons, as a worker does
    runs = SweepRuns(load_payload(Path(sweep.sweep_dir) / ".submitit" / sweep.payload))
    task = sweep.tasks[0]
    run_dir = sweep.run_dir(task)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    try:
        assert runs.run(task.index, task.overrides, run_dir).return_value["status"] == "completed"
        with pytest.raises(CheckpointError, match="holds a run of another configuration"):
            runs.run(task.index, ["seed=99"], run_dir)
    finally:
        Singleton.set_state(hydra_state)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    assert {p: v for p, v in after.items() if p.name != "app.log"} == {
        p: v for p, v in before.items() if p.name != "app.log"
    }  # app.log: the log says what was asked, and appends


def test_a_worker_sets_each_runs_hydra_fields_as_hydra_does(workdir):
    """HydraConfig.get() in a worker's run says what it says in a run composed by Hydra: the
    task's number, id, overrides, override_dirname and output directory, and what interpolates
    them (hydra.sweep.subdir), run after run (set in place: compat.set_in_place)."""
    subprocess.run(
        [sys.executable, "-m", "hpcjobs", "--multirun", "hydra/launcher=hpcjobs_local",
         "workload=noop", "hydra.launcher.workers=1", "seed=0,1", "+tag=a,bb"],
        cwd=workdir, check=True, capture_output=True,
    )  # fmt: skip
    sweep = manifest.read(registry.latest_sweep())
    hydra_state = Singleton.get_state()
    payload = load_payload(Path(sweep.sweep_dir) / ".submitit" / sweep.payload)
    runs = SweepRuns(payload)
    fields = ["job.num", "job.id", "job.override_dirname", "runtime.output_dir", "sweep.subdir"]
    try:
        # twice over, and a task with more overrides between: every field is the task's own
        tasks = [(t.index, t.overrides) for t in sweep.tasks]
        tasks = [*tasks, (7, ["workload=noop", "seed=7", "+tag=c", "+x=1"]), *tasks]
        for index, overrides in tasks:
            run_dir = Path(sweep.sweep_dir) / f"again{index}"
            runs.run(index, overrides, run_dir)
            got = HydraConfig.get()
            full = payload.hydra_context.config_loader.load_sweep_config(
                payload.base_config, list(overrides)
            )
            with open_dict(full):
                full.hydra.job.num = index
                full.hydra.job.id = job.scheduler_job_id(index)
                full.hydra.runtime.output_dir = str(run_dir.absolute())
            for key in fields:
                assert OmegaConf.select(got, key) == OmegaConf.select(full.hydra, key), key
            assert list(got.overrides.task) == list(full.hydra.overrides.task)
            assert OmegaConf.is_readonly(got)
    finally:
        Singleton.set_state(hydra_state)
