"""The hpcjobs launchers serve any ``@hydra.main`` app, like Hydra's own launchers.

Hydra ships conformance suites for launcher plugins (``hydra.test_utils.launcher_common_tests``,
run by hydra-submitit-launcher and the others the same way); here they run against
``hydra/launcher=hpcjobs_local``. tests/integration/test_hydra_launcher_suites_slurm.py
runs them against ``hpcjobs_slurm`` on the dev cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite
from packaging.version import Version

# Hydra's own test configs include a .yml file, which Hydra itself warns about.
pytestmark = pytest.mark.filterwarnings("ignore:Support for .yml files is deprecated:UserWarning")

FAST = ["hydra.launcher.poll_interval_s=0.05"]


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path_factory, monkeypatch):
    """The launcher's per-user sweep registry goes to a tmp dir (the suites' subprocesses too)."""
    monkeypatch.setenv("HPCJOBS_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(autouse=True)
def unset_hydra_version_base():
    """Hydra's version base as in a fresh process, where Hydra's suites normally run.

    The suites' apps set no ``version_base``, so Hydra's 1.1 defaults apply (a job runs in
    its output directory, where the suites look for its log). Hydra keeps the version base
    in a process-wide singleton: an earlier test of this session composing with
    ``version_base="1.3"`` would otherwise change those defaults under the suites.
    """
    from hydra.version import VersionBase

    saved = VersionBase.instance().version_base
    VersionBase.instance().setbase(Version("1.1"))  # what an unspecified version base means
    yield
    VersionBase.instance().version_base = saved


@pytest.mark.parametrize("launcher_name, overrides", [("hpcjobs_local", FAST)])
class TestHpcjobsLocalLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        (
            {
                "defaults": [{"override hydra/launcher": "hpcjobs_local"}],
                "hydra": {"launcher": {"poll_interval_s": 0.05}},
            },
            ["-m"],
        )
    ],
)
class TestHpcjobsLocalLauncherIntegration(IntegrationTestSuite):
    pass


# A plain Hydra app, nothing of hpcjobs in it: a dict of metrics, a bare number, an exception.
PLAIN_APP = """
import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base=None, config_path=None)
def main(cfg):
    if cfg.x == 1:
        return {"score": 0.5, "loss": 2.0, "hydra_job_id": HydraConfig.get().job.id}
    if cfg.x == 2:
        return 7
    raise ValueError(f"x={cfg.x} is not supported")


if __name__ == "__main__":
    main()
"""


def run_plain_app(app_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    (app_dir / "app.py").write_text(PLAIN_APP)
    return subprocess.run(
        [sys.executable, "app.py", "--multirun", "+x=1,2,3", *overrides],
        cwd=app_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_plain_app_sweep(sweep_dir: Path, out_dir: Path) -> pd.DataFrame:
    """`status` and `collect` on the plain app's sweep; returns runs.csv."""
    hpcjobs = [sys.executable, "-m", "hpcjobs"]
    status = subprocess.run(
        [*hpcjobs, "status", str(sweep_dir)], capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert "ValueError: x=3 is not supported" in status.stdout, status.stdout

    collect = subprocess.run(
        [*hpcjobs, "collect", str(sweep_dir), "--out", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert collect.returncode == 0, collect.stdout + collect.stderr
    runs = pd.read_csv(out_dir / "runs.csv").sort_values("task").reset_index(drop=True)
    assert list(runs["x"]) == [1, 2, 3]
    assert list(runs["status"]) == ["completed", "completed", "failed"]
    assert runs.loc[0, "score"] == 0.5 and runs.loc[0, "loss"] == 2.0
    assert runs.loc[1, "value"] == 7  # a bare number is recorded as `value`
    assert runs.loc[2, "error_type"] == "ValueError"
    assert runs.loc[2, "error_message"] == "x=3 is not supported"
    return runs


@pytest.mark.slow
def test_plain_hydra_app_sweep_is_followed_and_collected(tmp_path):
    proc = run_plain_app(tmp_path, "hydra/launcher=hpcjobs_local", *FAST)
    # Hydra's sweeper re-raises the failed run's exception once every run has ended, as it
    # does with any launcher; the other runs completed and recorded their results.
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ValueError: x=3 is not supported" in proc.stderr
    (manifest,) = tmp_path.glob("multirun/*/*/sweep.json")
    sweep_dir = manifest.parent
    assert json.loads(manifest.read_text())["experiment"] == "app"  # Hydra's job name
    # The latest-sweep registry went to the tmp state dir, not the user's home.
    registry = Path(os.environ["HPCJOBS_STATE_DIR"]) / "sweeps.jsonl"
    assert str(sweep_dir.resolve()) in registry.read_text()

    runs = check_plain_app_sweep(sweep_dir, tmp_path / "results")
    assert runs.loc[0, "hydra_job_id"] == "local_0"


@pytest.mark.slow
def test_second_sweep_into_the_same_dir_runs_its_own_task_function(tmp_path):
    """A fixed ``hydra.sweep.dir`` reused by an edited app runs new code, with a new manifest."""
    app = tmp_path / "app.py"
    for version, values in ((1, "+x=1,2"), (2, "+x=5")):
        app.write_text(PLAIN_APP.replace("if cfg.x == 1:", f"return {version}\n    if cfg.x == 1:"))
        proc = subprocess.run(
            [
                sys.executable,
                "app.py",
                "--multirun",
                "hydra/launcher=hpcjobs_local",
                "hydra.sweep.dir=sweep",
                *FAST,
                values,
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [t["overrides"] for t in manifest["tasks"]] == [["+x=5"]]
    metrics = json.loads((tmp_path / "sweep" / "0" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["value"] == 2
