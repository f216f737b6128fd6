"""Old import paths and names keep working, and say what to use instead."""

from __future__ import annotations

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
