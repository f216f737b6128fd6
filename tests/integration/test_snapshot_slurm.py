"""Code frozen at submit on the real cluster: pending tasks of a snapshot sweep run the code (and
config) as they were at submission, whatever is edited after; without a snapshot they run the
edited code, and `status` says the code changed."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from hpcjobs import cli
from hpcjobs.launching import registry
from hpcjobs.results import status
from hpcjobs.sweepdir import manifest

from .conftest import run
from .test_slurm_sweep import SLURM

WORKLOAD = """
import hpcjobs

VERSION = {version}


def run(cfg, ctx):
    score = VERSION * 100 + cfg.workload.bonus + cfg.seed
    return {{"score": score, "hpcjobs_file": hpcjobs.__file__}}
"""


def git(repo: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def write_code(project: Path, version: int, bonus: int) -> None:
    (project / "mywork" / "work.py").write_text(WORKLOAD.format(version=version))
    (project / "my_conf" / "workload" / "mine.yaml").write_text(
        f"_target_: mywork.work.run\nbonus: {bonus}\n"
    )


def outcomes(sweep_dir: Path, timeout: float = 120) -> list[tuple[float, bool]]:
    """Each run's score, and whether it imported hpcjobs from the sweep's snapshot."""
    deadline = time.monotonic() + timeout
    while not (st := status.sweep_status(sweep_dir)).done:
        if time.monotonic() > deadline:
            pytest.fail(f"sweep {sweep_dir} not done after {timeout} s: {st.counts}")
        time.sleep(1)
    assert st.counts == {"completed": 2}, [t.error for t in st.tasks]
    sweep = manifest.read(sweep_dir)
    metrics = [
        json.loads((sweep_dir / t.run_dir / "metrics.json").read_text()) for t in sweep.tasks
    ]
    return [
        (m["score"], Path(m["hpcjobs_file"]).is_relative_to(sweep_dir / ".submitit"))
        for m in metrics
    ]


def test_pending_tasks_run_the_code_of_their_submission(workdir, slurm_cluster):
    # A user's project, a git checkout: a workload package and its config folder.
    (workdir / "mywork").mkdir()
    (workdir / "mywork" / "__init__.py").write_text("")
    (workdir / "my_conf" / "workload").mkdir(parents=True)
    (workdir / ".gitignore").write_text("multirun/\nstate/\n")
    write_code(workdir, version=1, bonus=10)
    git(workdir, "init", "-q")
    git(workdir, "add", ".")
    git(workdir, "commit", "-q", "-m", "v1")

    # Submitted held (sbatch --hold): pending until released, after the edit.
    held = [
        "--config-dir",
        "my_conf",
        "workload=mine",
        *SLURM,
        "seed=0,1",
        "+hydra.launcher.additional_parameters.hold=true",
    ]
    assert cli.main([*held, "experiment_name=frozen", "hydra.launcher.snapshot=true"]) == 0
    frozen = registry.registered_by_this_process()[-1]
    assert cli.main([*held, "experiment_name=live"]) == 0
    live = registry.registered_by_this_process()[-1]
    arrays = [manifest.read(d).tasks[0].job_id.split("_")[0] for d in (frozen, live)]
    try:
        check_and_release(workdir, frozen, live, arrays)
    except BaseException:
        # held jobs left behind would block the queue for the tests after this one
        run("scancel", *arrays)
        raise

    assert outcomes(frozen) == [(110.0, True), (111.0, True)]  # version 1, bonus 10: as submitted
    assert outcomes(live) == [(220.0, False), (221.0, False)]  # the working tree when they started


def check_and_release(workdir: Path, frozen: Path, live: Path, arrays: list[str]) -> None:
    write_code(workdir, version=2, bonus=20)  # edited while every task is still pending
    live_status, frozen_status = status.sweep_status(live), status.sweep_status(frozen)
    assert live_status.counts == {"pending": 2} and frozen_status.counts == {"pending": 2}
    (warning,) = [w for w in live_status.warnings if str(workdir) in w]
    assert "2 task(s) not started yet will import the changed code" in warning
    assert frozen_status.warnings == []  # its tasks import the snapshot
    (entry,) = manifest.read(frozen).provenance
    project = next(c for c in entry["checkouts"] if c["role"] == "project")
    assert project["path"] == str(workdir) and not project["dirty"]
    for array in arrays:
        assert run("scontrol", "release", array).returncode == 0
