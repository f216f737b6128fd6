"""Hydra's own launcher conformance suites, run against ``hydra/launcher=hpcjobs_slurm``.

Every task is a real Slurm job on the local dev cluster (``scripts/dev-cluster up``);
``wait=true`` makes the launcher block and hand each task's result back to Hydra, which
the suites check. tests/test_hydra_launcher_suites.py runs the same suites locally.
"""

from __future__ import annotations

import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

# tests/ is on sys.path (pytest puts it there to import the package tests/integration).
# The autouse fixtures apply here too: the registry in a tmp dir, Hydra's version base unset.
from test_hydra_launcher_suites import (
    check_plain_app_sweep,
    private_state_dir,  # noqa: F401
    run_plain_app,
    unset_hydra_version_base,  # noqa: F401
)

from hpcjobs.launching.backends import slurm_controller
from hpcjobs.sweepdir import manifest

# Skipped without the cluster, failed instead under CI=true (see conftest.py).
pytestmark = [
    pytest.mark.usefixtures("slurm_cluster"),
    pytest.mark.filterwarnings("ignore:Support for .yml files is deprecated:UserWarning"),
]

SLURM_SETTINGS = {"wait": True, "poll_interval_s": 0.5, "timeout_min": 5}


@pytest.mark.parametrize(
    "launcher_name, overrides",
    [
        (
            "hpcjobs_slurm",
            [f"hydra.launcher.{key}={str(value).lower()}" for key, value in SLURM_SETTINGS.items()],
        )
    ],
)
class TestHpcjobsSlurmLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        (
            {
                "defaults": [{"override hydra/launcher": "hpcjobs_slurm"}],
                "hydra": {"launcher": SLURM_SETTINGS},
            },
            ["-m"],
        )
    ],
)
class TestHpcjobsSlurmLauncherIntegration(IntegrationTestSuite):
    pass


def test_plain_hydra_app_sweep_detaches_then_status_and_collect(slurm_cluster, tmp_path):
    proc = run_plain_app(tmp_path, "hydra/launcher=hpcjobs_slurm", "hydra.launcher.timeout_min=5")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # detached: nothing has failed yet
    (manifest_file,) = tmp_path.glob("multirun/*/*/sweep.json")
    sweep = manifest.read(manifest_file.parent)
    (array,) = slurm_controller.array_ids(t.job_id for t in sweep.tasks)
    # The run that raised still ends its Slurm job cleanly: only its run directory knows.
    assert slurm_cluster.wait_job(array, tasks=3) == ["COMPLETED"] * 3
    assert {row[0] for row in slurm_cluster.sacct(array, "JobName")} == {"app"}  # Hydra's job name

    runs = check_plain_app_sweep(manifest_file.parent, tmp_path / "results")
    job_ids = {t.index: t.job_id for t in sweep.tasks}
    assert runs.loc[0, "hydra_job_id"] == job_ids[0]  # hydra.job.id is the task's Slurm id
    assert list(runs["slurm_array_job_id"].astype(str)) == [array] * 3
