"""A sweep across a controller restart and a slurmdbd outage, on the real cluster.

slurmctld is restarted for every Slurm upgrade and config change, and slurmdbd goes away for
hours on a busy site: a sweep must lose nothing and run nothing twice, `status` must keep
answering (from sacct and the run files) and say what it could not ask, and the accounting
missing while slurmdbd was down is recorded once it is back. Each test holds the disruption
lock and leaves every daemon running (disruption.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from hpcjobs import cli, states
from hpcjobs.results import status
from hpcjobs.sweepdir import manifest

from .conftest import run
from .disruption import daemons_fixture  # noqa: F401  (the ``daemons`` fixture)
from .test_slurm_sweep import SLURM, array_ids, launched_sweep, wait_sweep

pytestmark = pytest.mark.slow


def completed_runs(sweep: manifest.SweepManifest) -> int:
    """Runs whose metrics.json says completed (what the run files alone say)."""
    done = 0
    for task in sweep.tasks:
        try:
            metrics = json.loads(
                (Path(sweep.sweep_dir) / task.run_dir / "metrics.json").read_text()
            )
        except (FileNotFoundError, ValueError):
            continue
        done += metrics.get("status") == states.COMPLETED
    return done


def sacct_attempts(array: str) -> dict[str, list[str]]:
    """Every attempt of every task of ARRAY, requeued ones included (-D): task id -> states."""
    proc = run("sacct", "-n", "-X", "-P", "-D", "-j", array, "-o", "JobID,State", timeout=30)
    assert proc.returncode == 0, proc.stderr
    attempts: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        job_id, _, state = line.partition("|")
        attempts.setdefault(job_id, []).append(state.split()[0])
    return attempts


def assert_each_ran_once(slurm_cluster, sweep: manifest.SweepManifest, seeds: range) -> None:
    """Run files, sweep.json and sacct agree: every task completed, in one attempt."""
    assert [len(t.attempts) for t in sweep.tasks] == [1] * len(seeds)
    scores = []
    for task in sweep.tasks:
        metrics = json.loads((Path(sweep.sweep_dir) / task.run_dir / "metrics.json").read_text())
        assert metrics["status"] == states.COMPLETED
        scores.append(metrics["score"])
    assert scores == [float(s) for s in seeds]
    (array,) = array_ids(sweep)
    # their runs have completed; their jobs may still be exiting
    slurm_cluster.wait_job(array, timeout=60, tasks=len(seeds))
    assert sacct_attempts(array) == {t.job_id: ["COMPLETED"] for t in sweep.tasks}


def test_controller_restart_mid_sweep_loses_nothing_and_runs_nothing_twice(
    workdir, slurm_cluster, daemons, capsys
):
    seeds = range(24)  # 500 tasks across restarts: benchmarks/chaos.py
    assert cli.main(["workload=noop", *SLURM, f"seed=range(0,{len(seeds)})"]) == 0
    sweep = launched_sweep()
    sweep_dir = Path(sweep.sweep_dir)
    deadline = time.monotonic() + 120
    while completed_runs(sweep) == 0:  # some ran, most still queued
        assert time.monotonic() < deadline, "no run completed within 120 s"
        time.sleep(0.2)

    daemons.stop("slurmctld")
    before = completed_runs(sweep)
    capsys.readouterr()
    assert cli.main(["status", str(sweep_dir)]) == 0  # sacct answers: slurmdbd is up
    st = status.sweep_status(sweep_dir)
    assert len(st.tasks) == len(seeds) and not st.retryable() and before < len(seeds)
    # sacct's word is the controller's last (a run that completed may still be pending there):
    # the run files win, and status says why
    assert set(st.counts) <= {states.PENDING, states.RUNNING, states.COMPLETED}, st.counts
    assert st.counts.get(states.COMPLETED, 0) >= before
    if "scontrol ping" in st.commands:
        assert "the controller (slurmctld) is unreachable" in st.note

    # slurmdbd too: squeue is asked, cannot reach the controller, and the run files answer
    daemons.stop("slurmdbd")
    capsys.readouterr()
    assert cli.main(["status", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "the controller (slurmctld) is unreachable" in out
    assert "accounting (slurmdbd) is unavailable" in out
    st = status.sweep_status(sweep_dir)
    # never "cancelled" (retry would run them twice): queued, running or completed, by their files
    assert set(st.counts) <= {states.PENDING, states.RUNNING, states.COMPLETED}, st.counts
    assert st.counts.get(states.COMPLETED, 0) >= before and not st.retryable()
    assert st.commands == ["sacct", "squeue"]

    daemons.start("slurmdbd")
    daemons.start("slurmctld")
    assert wait_sweep(sweep_dir, timeout=240).counts == {states.COMPLETED: len(seeds)}
    assert_each_ran_once(slurm_cluster, manifest.read(sweep_dir), seeds)


def test_slurmdbd_down_for_the_rest_of_a_sweep_then_its_accounting_is_filled_in(
    workdir, slurm_cluster, daemons, capsys
):
    seeds = range(6)
    assert cli.main(["workload=noop", *SLURM, f"seed=range(0,{len(seeds)})"]) == 0
    sweep = launched_sweep()
    sweep_dir = Path(sweep.sweep_dir)
    daemons.stop("slurmdbd")

    st = wait_sweep(sweep_dir, timeout=180)  # followed with squeue: the controller still knows
    assert st.counts == {states.COMPLETED: len(seeds)}
    capsys.readouterr()
    assert cli.main(["status", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "accounting (slurmdbd) is unavailable" in out
    assert "accounting of ended tasks not recorded" in out
    assert not list(sweep_dir.glob("*/accounting.json"))
    assert cli.main(["collect", str(sweep_dir), "--out", str(workdir / "down")]) == 0
    assert "scheduler accounting not recorded" in capsys.readouterr().err
    assert set(pd.read_csv(workdir / "down" / "runs.csv")["usage_source"]) == {"process"}
    metrics_before = sorted(p.read_bytes() for p in sweep_dir.glob("*/metrics.json"))

    # Back: slurmctld sends slurmdbd what it kept meanwhile, and the next status records it.
    daemons.start("slurmdbd")
    deadline = time.monotonic() + 90
    while len(list(sweep_dir.glob("*/accounting.json"))) < len(seeds):
        assert time.monotonic() < deadline, "accounting not recorded 90 s after slurmdbd came back"
        status.sweep_status(sweep_dir)
        time.sleep(1)
    for task in sweep.tasks:
        recorded = json.loads((sweep_dir / task.run_dir / "accounting.json").read_text())
        (attempt,) = recorded["attempts"]
        assert attempt["job_id"] == task.job_id and attempt["scheduler_state"] == "COMPLETED"
    assert "unavailable" not in status.sweep_status(sweep_dir).note
    assert cli.main(["collect", str(sweep_dir), "--out", str(workdir / "up")]) == 0
    assert set(pd.read_csv(workdir / "up" / "runs.csv")["usage_source"]) == {"sacct"}
    # a completed run's files untouched
    assert sorted(p.read_bytes() for p in sweep_dir.glob("*/metrics.json")) == metrics_before
    (array,) = array_ids(sweep)
    slurm_cluster.wait_job(array, timeout=60, tasks=len(seeds))
    assert sacct_attempts(array) == {t.job_id: ["COMPLETED"] for t in sweep.tasks}
