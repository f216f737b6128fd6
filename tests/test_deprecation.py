"""Old import paths and names keep working, and say what to use instead."""

from __future__ import annotations

import contextlib
import importlib
import re
import subprocess
import sys

import pytest

from hpcjobs.launching import claim, registry
from hpcjobs.sweepdir import manifest, pools, runfiles

MOVED_MODULES = {
    "hpcjobs.run.pool": "hpcjobs.sweepdir.pools",
    "hpcjobs.run.runfiles": "hpcjobs.sweepdir.runfiles",
    "hpcjobs.launching.manifest": "hpcjobs.sweepdir.manifest",
}


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_importing_a_moved_module_warns_with_its_new_path(old):
    # A fresh interpreter: a module warns when it is first imported, once a process.
    new = MOVED_MODULES[old]
    script = f"import warnings; warnings.simplefilter('error'); import {old}"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 1
    assert f"DeprecationWarning: {old} is deprecated; use {new}" in done.stderr


def test_a_moved_module_warns_at_the_line_that_imports_it(monkeypatch):
    monkeypatch.delitem(sys.modules, "hpcjobs.run.pool", raising=False)
    with pytest.warns(DeprecationWarning, match="hpcjobs.sweepdir.pools") as caught:
        import hpcjobs.run.pool as old_pool
    assert caught[0].filename == __file__  # the importer's line, not importlib's
    assert old_pool is pools


def test_the_old_paths_give_the_same_modules_and_names(monkeypatch):
    for old in MOVED_MODULES:
        monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning):
        from hpcjobs.launching import manifest as old_manifest
        from hpcjobs.run import pool as old_pool
        from hpcjobs.run import runfiles as old_runfiles
    assert old_pool is pools and old_runfiles is runfiles
    assert (
        old_manifest.read is manifest.read and old_manifest.SweepManifest is manifest.SweepManifest
    )
    assert old_manifest.claim is claim.claim and old_manifest.latest_sweep is registry.latest_sweep


RENAMED = [
    ("hpcjobs.run.job", "record_run", "run_and_record"),
    ("hpcjobs.run.job", "run_task", "run_workload"),
    ("hpcjobs.run.job", "records_its_run", "writes_own_metrics"),
    ("hpcjobs.run.job", "recorded", "writing_metrics"),
    ("hpcjobs.run.job", "runs_task", "runs_workload"),
    ("hpcjobs.run.job", "is_run_task_app", "is_workload_app"),
    ("hpcjobs.run.task", "run_one", "run_sweep_task"),
    ("hpcjobs.launching.launch", "record_tasks", "manifest_with_tasks"),
    ("hpcjobs.launching.registry", "record", "register"),
    ("hpcjobs.launching.registry", "recorded_by_this_process", "registered_by_this_process"),
    ("hpcjobs.launching.provenance", "record", "capture_code"),
    ("hpcjobs.results.accounting", "record", "write_polled"),
    ("hpcjobs.results.accounting", "record_sweep", "fetch_missing"),
]


@pytest.mark.parametrize(("module", "old", "new"), RENAMED, ids=lambda x: x)
def test_an_old_name_warns_with_its_new_name_and_calls_it(module, old, new):
    namespace = importlib.import_module(module)
    alias, renamed_to = getattr(namespace, old), getattr(namespace, new)
    assert alias.__wrapped__ is renamed_to
    message = f"{module}.{old} is deprecated; use {module}.{new}"
    # called without its arguments: the warning is all there is to see
    with (
        pytest.warns(DeprecationWarning, match=re.escape(message)) as caught,
        contextlib.suppress(TypeError),
    ):
        alias()
    assert caught[0].filename == __file__


def test_a_function_moved_to_another_module_warns_with_its_new_home():
    from hpcjobs.run import requeue, scheduler

    with pytest.warns(DeprecationWarning, match=re.escape("use hpcjobs.run.scheduler.can_requeue")):
        assert requeue.can_requeue() == scheduler.can_requeue()


def test_a_run_recorded_under_the_old_name_is_recorded_as_ever(tmp_path):
    from omegaconf import OmegaConf

    from hpcjobs.run import job

    with pytest.warns(DeprecationWarning, match="use hpcjobs.run.job.run_and_record"):
        value, metrics = job.record_run(
            lambda ctx: {"score": 1.0}, OmegaConf.create({"seed": 0}), tmp_path, reraise=True
        )
    assert value == {"score": 1.0} and metrics["status"] == "completed"
    assert runfiles.read_metrics(tmp_path)["score"] == 1.0


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        ("hpcjobs.run.context", "SAFEPATH_SET_ENV", "hpcjobs.sweepdir.payloads.SAFEPATH_SET_ENV"),
        ("hpcjobs.run.task", "payload_file_name", "hpcjobs.sweepdir.payloads.file_name"),
        ("hpcjobs.run.study", "heartbeat", "hpcjobs.heartbeat.heartbeat"),
        ("hpcjobs.run.study", "is_stale", "hpcjobs.heartbeat.is_stale"),
        ("hpcjobs.run.study", "STALE_BEATS", "hpcjobs.heartbeat.STALE_BEATS"),
    ],
)
def test_a_name_moved_to_another_module_is_found_there_with_a_warning(module, old, new):
    where, _, name = new.rpartition(".")
    with pytest.warns(
        DeprecationWarning, match=re.escape(f"{module}.{old} is deprecated; use {new}")
    ):
        found = getattr(importlib.import_module(module), old)
    assert found is getattr(importlib.import_module(where), name)
    with pytest.raises(AttributeError, match="no attribute 'NO_SUCH_NAME'"):
        _ = importlib.import_module(module).NO_SUCH_NAME
