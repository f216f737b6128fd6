"""Slurm sweeps survive cancelled tasks and refused submissions: retry runs each lost task once."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from hpcjobs import cli
from hpcjobs.launching import backends, registry
from hpcjobs.launching.backends import slurm_controller as slurm
from hpcjobs.results import collect, status
from hpcjobs.sweepdir import manifest

from .conftest import run
from .test_slurm_sweep import SLURM


def wait_sweep(sweep_dir: Path, timeout: float = 180) -> status.SweepStatus:
    deadline = time.monotonic() + timeout
    while True:
        st = status.sweep_status(sweep_dir)
        if all(t.state not in ("pending", "running") for t in st.tasks):
            return st
        if time.monotonic() > deadline:
            pytest.fail(f"sweep {sweep_dir} not done after {timeout} s: {st.counts}")
        time.sleep(1)


def sacct_rows(job_ids: list[str], timeout: float = 60) -> list[tuple[str, str]]:
    """(JobID, State) of every task of the arrays of ``job_ids``, once accounting lists each of them
    (sacct records a task a few seconds after it ended if it started as the array's last pending
    one)."""
    deadline = time.monotonic() + timeout
    while True:
        out = run(
            "sacct", "-n", "-X", "-P", "-j", ",".join(slurm.array_ids(job_ids)), "-o", "JobID,State"
        ).stdout
        rows = [tuple(line.split("|")[:2]) for line in out.splitlines() if line]
        listed = {job for job, _ in rows}
        if set(job_ids) <= listed or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def test_retry_resubmits_exactly_the_cancelled_task(workdir, capsys):
    # Four CNN runs of a few seconds each; cancel one while it runs.
    assert cli.main(["trainer.epochs=4", "trainer.batch_size=32", *SLURM, "seed=0,1,2,3"]) == 0
    sweep_dir = registry.latest_sweep()
    victim = manifest.read(sweep_dir).tasks[1]
    metrics = sweep_dir / victim.run_dir / "metrics.json"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and json.loads(metrics.read_text())["status"] == "running"):
        assert time.monotonic() < deadline, "task 1 never started"
        time.sleep(0.2)
    # the backend's scancel
    backends.create("slurm", manifest.read(sweep_dir).launcher).cancel([victim.job_id])
    st = wait_sweep(sweep_dir)
    assert st.counts == {"completed": 3, "cancelled": 1}
    capsys.readouterr()

    assert cli.main(["retry", str(sweep_dir)]) == 0
    assert "1 of 4 tasks to run again" in capsys.readouterr().out
    tasks = manifest.read(sweep_dir).tasks
    assert [len(t.attempts) for t in tasks] == [1, 2, 1, 1]
    assert tasks[1].attempts[1].why == "retry: cancelled" and tasks[1].job_id != victim.job_id
    assert wait_sweep(sweep_dir).counts == {"completed": 4}
    # sacct: the retry was one task of its own array; nothing else ran twice.
    retry_array = slurm.array_ids([tasks[1].job_id])[0]
    assert [state for job, state in sacct_rows([tasks[1].job_id])] == ["COMPLETED"]
    first_attempts = [t.attempts[0].job_id for t in tasks]
    assert {state.split()[0] for _, state in sacct_rows(first_attempts)} == {
        "COMPLETED",
        "CANCELLED",
    }
    first = [job for job, _ in sacct_rows(first_attempts)]
    assert len(first) == 4 and retry_array not in {j.split("_")[0] for j in first}
    runs = collect.collect([sweep_dir]).runs
    assert len(runs) == 4 and set(runs["status"]) == {"completed"}


def _association_limit(value: int) -> None:
    """Set root's MaxSubmitJobs (-1: none) and wait until the controller enforces it."""
    assert (
        run("sacctmgr", "-i", "modify", "user", "root", "set", f"MaxSubmitJobs={value}").returncode
        == 0
    )
    want = "" if value < 0 else str(value)
    deadline = time.monotonic() + 30
    while True:
        out = run("scontrol", "show", "assoc_mgr", "users=root", "flags=assoc").stdout
        limits = re.findall(r"MaxSubmitJobs=(\d*)", out)  # the account's and root's own
        if (want in limits) if want else not any(limits):
            return
        assert time.monotonic() < deadline, f"MaxSubmitJobs={value} not in effect: {out[-300:]}"
        time.sleep(0.5)


@pytest.fixture
def submit_limit_6(slurm_cluster):
    """A per-user submit limit (MaxSubmitJobs=6), as sites set them; lifted afterwards.

    Jobs an earlier test left in the queue would count against it: wait for none."""
    deadline = time.monotonic() + 120
    while run("squeue", "-h", "-u", "root", "-o", "%i").stdout.strip():
        assert time.monotonic() < deadline, "the queue did not empty before the submit-limit test"
        time.sleep(0.5)
    _association_limit(6)
    yield 6
    _association_limit(-1)


def test_a_submission_refused_part_way_is_recorded_and_retry_submits_the_rest(
    workdir, capsys, submit_limit_6
):
    # Ten tasks in arrays of four: the first array fits the limit, the second does not.
    code = cli.main(
        ["workload=noop", *SLURM, "hydra.launcher.max_array_size=4", "seed=range(0,10)"]
    )
    out = capsys.readouterr()
    assert code != 0
    assert "4 of 10 tasks were queued" in out.err and "retry" in out.err
    assert "Queued 4 of 10 tasks" in out.err and "Submitted 10" not in out.out + out.err
    assert "Traceback" not in out.err
    sweep_dir = registry.latest_sweep()
    tasks = manifest.read(sweep_dir).tasks
    assert [bool(t.job_id) for t in tasks] == [True] * 4 + [False] * 6
    assert status.sweep_status(sweep_dir).counts.get("not_submitted") == 6

    # Once the first array is done, the queue has room: retry submits exactly the rest.
    st = wait_sweep(sweep_dir)
    assert st.counts == {"completed": 4, "not_submitted": 6}
    assert cli.main(["retry", str(sweep_dir)]) == 0
    final = wait_sweep(sweep_dir)
    assert final.counts == {"completed": 10}
    job_ids = [t.job_id for t in manifest.read(sweep_dir).tasks]
    rows = sacct_rows(job_ids)
    assert sorted(job for job, _ in rows) == sorted(job_ids)  # every task ran exactly once
    assert {state for _, state in rows} == {"COMPLETED"}
    runs = collect.collect([sweep_dir]).runs
    assert list(runs["score"]) == [float(i) for i in range(10)]
