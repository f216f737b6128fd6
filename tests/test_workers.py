"""Pull-based workers (hydra.launcher.workers) on the local backend: every task once, in its own
run directory; walltime-aware claiming; a dead worker's task shown and retried; bad settings
refused.

The same on the real Slurm cluster: tests/integration/test_workers_slurm.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from hpcjobs import cli, states
from hpcjobs.launching import manifest
from hpcjobs.results import status
from hpcjobs.run import pool
from hpcjobs.run.worker import FIT_MARGIN, fits


def sweep(*overrides: str) -> list[str]:
    return [
        "-m",
        "hpcjobs",
        "--multirun",
        "hydra/launcher=hpcjobs_local",
        "workload=noop",
        "hydra.launcher.poll_interval_s=0.1",
        *overrides,
    ]


def run_sweep(workdir: Path, *overrides: str, complete: bool = True) -> Path:
    """Run a local sweep; it exits 0 when every run completed, else 1 (and says what to retry)."""
    out = subprocess.run(
        [sys.executable, *sweep(*overrides)],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == (0 if complete else 1), out.stderr[-3000:]
    return manifest.latest_sweep()


def claims_in_journals(sweep_dir: Path, pool_id: str = "pool0") -> Counter:
    claimed: Counter = Counter()
    for journal in (pool.pool_dir(sweep_dir, pool_id) / "workers").glob("*.jsonl"):
        claimed.update(e["task"] for e in pool.read_events(journal) if e["event"] == "claim")
    return claimed


@pytest.mark.slow
def test_workers_run_every_task_once_each_in_its_own_run_directory(workdir, capsys):
    sweep_dir = run_sweep(workdir, "hydra.launcher.workers=3", "seed=range(0,8)")

    record = manifest.read(sweep_dir)
    assert [p.workers for p in record.pools] == [3]
    assert all(t.pool == "pool0" and t.job_id is None for t in record.tasks)
    # each task claimed once, by one worker
    assert claims_in_journals(sweep_dir) == Counter(range(8))
    for task in record.tasks:
        metrics = json.loads((sweep_dir / task.run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["score"] == float(
            task.overrides[-1].split("=")[1]
        )
        # Hydra's record of the config; its overrides are sweep.json's (no file per run)
        assert (sweep_dir / task.run_dir / ".hydra" / "config.yaml").is_file()
        assert not (sweep_dir / task.run_dir / ".hydra" / "overrides.yaml").exists()
    # Three workers ran, in one process each (pids from their journals), and each task was
    # claimed by one of them. How the 8 tasks spread over them depends on the machine's speed
    # (a noop run takes milliseconds: the first worker may claim them all), so it is not asserted.
    view = pool.read_pool(pool.pool_dir(sweep_dir, "pool0"))
    assert set(view.workers) == {0, 1, 2} and len({w.pid for w in view.workers.values()}) == 3
    assert all(w.stopped for w in view.workers.values())
    assert set(view.claimed_by) == set(range(8)) and set(view.claimed_by.values()) <= {0, 1, 2}

    now = status.sweep_status(sweep_dir)
    assert now.counts == {states.COMPLETED: 8}
    assert {t.job_id for t in now.tasks} <= {"worker 0", "worker 1", "worker 2"}
    assert cli.main(["collect", str(sweep_dir)]) == 0
    runs = pd.read_csv(workdir / "results" / "default" / "runs.csv")
    assert len(runs) == 8 and set(runs["status"]) == {"completed"}


@pytest.mark.slow
def test_a_worker_claims_only_what_fits_in_its_time_and_retry_runs_the_rest(workdir, capsys):
    # A 9-second allocation and 2-second runs: the worker claims while the time left is more
    # than 1.25x the longest run so far, then stops; nothing is cut off by the time limit.
    sweep_dir = run_sweep(
        workdir,
        "hydra.launcher.workers=1",
        "hydra.launcher.timeout_min=0.15",
        "+sleep_s=2",
        "seed=range(0,6)",
        complete=False,
    )
    now = status.sweep_status(sweep_dir)
    done = [t.index for t in now.tasks if t.state == states.COMPLETED]
    left = [t.index for t in now.tasks if t.state == states.UNCLAIMED]
    assert done and left and len(done) + len(left) == 6, now.counts  # none interrupted or failed
    assert set(claims_in_journals(sweep_dir)) == set(done)
    assert all("retry" in t.error for t in now.tasks if t.index in left)
    stopped = pool.read_pool(pool.pool_dir(sweep_dir, "pool0")).workers[0].stopped
    assert stopped and "left" in stopped

    started = {
        i: json.loads((sweep_dir / str(i) / "metrics.json").read_text())["started_at"] for i in done
    }
    assert cli.main(["retry", str(sweep_dir), "--set", "timeout_min=1"]) == 0
    after = status.sweep_status(sweep_dir)
    assert after.counts == {states.COMPLETED: 6}
    record = manifest.read(sweep_dir)
    assert [p.workers for p in record.pools] == [1, 1]
    assert {t.index for t in record.tasks if t.pool == "pool1"} == set(left)  # only what was left
    assert all(
        json.loads((sweep_dir / str(i) / "metrics.json").read_text())["started_at"] == started[i]
        for i in done
    )


@pytest.mark.slow
def test_a_killed_worker_leaves_its_task_interrupted_and_retry_finishes_it(workdir, capsys):
    proc = subprocess.Popen(
        [sys.executable, *sweep("hydra.launcher.workers=2", "+sleep_s=1.5", "seed=range(0,6)")],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    victim = None
    while victim is None and time.monotonic() < deadline:
        sweep_dir = next(workdir.glob("multirun/*/*/.pools/pool0"), None)
        if sweep_dir is not None:
            view = pool.read_pool(sweep_dir)
            victim = next((w for w in view.workers.values() if w.running is not None), None)
        time.sleep(0.05)
    assert victim is not None, "no worker got going"
    os.kill(victim.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == 1  # not every run completed
    sweep_dir = manifest.latest_sweep()

    now = status.sweep_status(sweep_dir)
    lost = next(t for t in now.tasks if t.index == victim.running)
    assert lost.state == states.INTERRUPTED and "retry" in lost.error, (lost, now.counts)
    # The other worker went on with the rest; the killed one claimed nothing more.
    assert now.counts[states.COMPLETED] == 6 - now.counts[states.INTERRUPTED]

    assert cli.main(["retry", str(sweep_dir)]) == 0
    assert status.sweep_status(sweep_dir).counts == {states.COMPLETED: 6}


def test_fits_judges_by_the_longest_run_so_far():
    assert fits(1.0, [])  # nothing to judge by: try
    assert fits(10 * FIT_MARGIN, [10.0, 2.0])
    assert not fits(10 * FIT_MARGIN - 0.1, [10.0, 2.0])


@pytest.mark.parametrize(
    "setting, message",
    [
        (["hydra.launcher.workers=0"], "workers=0: must be >= 1"),
        (["hydra.launcher.workers=2", "hydra.launcher.tasks_per_node=2"], "needs a job of its own"),
        (["hydra.launcher.workers=2", "hydra.launcher.run_files=tiny"], "choose full or compact"),
        (["hydra.launcher.run_files=compact"], "set hydra.launcher.workers=N too"),
    ],
)
def test_bad_worker_settings_are_refused_before_anything_runs(workdir, setting, message):
    out = subprocess.run(
        [sys.executable, *sweep(*setting, "seed=0,1")],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0 and message in out.stderr + out.stdout
    assert not list(workdir.glob("multirun/**/metrics.json"))


def test_compact_runs_leave_one_file_each_and_status_collect_retry_read_them(workdir, capsys):
    # 8 runs; those given sleep_s=oops fail (float("oops")), and are recorded as failed
    sweep_dir = run_sweep(
        workdir,
        "hydra.launcher.workers=2",
        "hydra.launcher.run_files=compact",
        "seed=range(0,4)",
        "+sleep_s=0,oops",
        complete=False,
    )
    record = manifest.read(sweep_dir)
    for task in record.tasks:
        run_dir = sweep_dir / task.run_dir
        assert os.listdir(run_dir) == ["metrics.json"]  # no .hydra/, no log file
        metrics = json.loads((run_dir / "metrics.json").read_text())
        seed, sleep_s = (o.split("=")[1] for o in task.overrides[-2:])
        assert metrics["config"]["seed"] == int(seed)
        assert str(metrics["config"]["sleep_s"]) == sleep_s
        assert metrics["status"] == ("failed" if sleep_s == "oops" else "completed")
    # each run's log lines are in its worker's log
    logs = "".join(p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.*"))
    assert logs.count("run completed") == 4 and logs.count("run failed: ValueError") == 4

    now = status.sweep_status(sweep_dir)
    assert now.counts == {states.COMPLETED: 4, states.FAILED: 4}
    assert cli.main(["collect", str(sweep_dir)]) == 0
    runs = pd.read_csv(workdir / "results" / "default" / "runs.csv")
    assert (
        len(runs) == 8
        and "config" not in runs
        and sorted(runs["status"]) == ["completed"] * 4 + ["failed"] * 4
    )
    capsys.readouterr()
    assert cli.main(["retry", str(sweep_dir), "--dry-run"]) == 0
    assert "4 of 8 tasks to run again" in capsys.readouterr().out
