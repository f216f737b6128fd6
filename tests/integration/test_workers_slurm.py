"""Pull-based workers on the real Slurm cluster: one array of N workers runs the whole sweep,
claims only what fits in its allocation, and a cancelled worker's task is retried.

The local backend's workers: tests/test_workers.py.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

from hpcjobs import cli, states
from hpcjobs.launching import registry
from hpcjobs.launching.backends import slurm_controller as slurm
from hpcjobs.results import collect
from hpcjobs.sweepdir import manifest, pools

from .conftest import run
from .test_slurm_sweep import wait_sweep

WORKERS = ["--multirun", "hydra/launcher=hpcjobs_slurm", "workload=noop"]


def claims(sweep_dir: Path, pool_id: str) -> Counter:
    counted: Counter = Counter()
    for journal in (pools.pool_dir(sweep_dir, pool_id) / "workers").glob("*.jsonl"):
        counted.update(e["task"] for e in pools.read_events(journal) if e["event"] == "claim")
    return counted


def test_three_workers_run_a_sweep_of_twenty_as_one_array(workdir):
    assert (
        cli.main(
            [
                *WORKERS,
                "hydra.launcher.workers=3",
                "hydra.launcher.timeout_min=5",
                "seed=range(0,20)",
            ]
        )
        == 0
    )
    sweep_dir = registry.latest_sweep()
    sweep = manifest.read(sweep_dir)
    (workers,) = sweep.pools
    assert workers.workers == 3 and all(workers.job_ids)
    # no job of their own
    assert all(t.job_id is None and t.pool == workers.id for t in sweep.tasks)

    st = wait_sweep(sweep_dir)
    assert st.counts == {states.COMPLETED: 20}
    assert {t.job_id for t in st.tasks} <= set(workers.job_ids)
    assert claims(sweep_dir, workers.id) == Counter(range(20))  # every task once
    # The controller saw three jobs (the array of workers), not twenty.
    (array,) = slurm.array_ids(workers.job_ids)
    deadline = time.monotonic() + 60  # the journals say done a moment before the workers' jobs end
    while True:
        rows = [
            line.split("|")
            for line in run(
                "sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,State"
            ).stdout.splitlines()
            if line
        ]
        # accounting lists each worker
        listed = sorted(job for job, _ in rows) == sorted(workers.job_ids)
        if (listed and {s for _, s in rows} == {"COMPLETED"}) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(job for job, _ in rows) == sorted(workers.job_ids) and {s for _, s in rows} == {
        "COMPLETED"
    }
    assert len(collect.collect([sweep_dir]).runs) == 20


def test_a_worker_claims_only_what_fits_before_its_time_limit(workdir, capsys):
    # A 2-minute allocation warned 40 s before its end, and Slurm may warn up to a minute
    # early: the worker counts on 20 s; 6-second runs: it runs what fits, leaves the rest unclaimed.
    assert (
        cli.main(
            [
                *WORKERS,
                "hydra.launcher.workers=1",
                "hydra.launcher.timeout_min=2",
                "hydra.launcher.signal_grace_s=40",
                "+sleep_s=6",
                "seed=range(0,14)",
            ]
        )
        == 0
    )
    sweep_dir = registry.latest_sweep()
    st = wait_sweep(sweep_dir, timeout=240)
    done = {t.index for t in st.tasks if t.state == states.COMPLETED}
    left = {t.index for t in st.tasks if t.state == states.UNCLAIMED}
    assert done and left and len(done | left) == 14, st.counts  # nothing cut off by the time limit
    assert "left" in (pools.read_pool(pools.pool_dir(sweep_dir, "pool0")).workers[0].stopped or "")
    (worker,) = manifest.read(sweep_dir).pools[0].job_ids
    assert run("sacct", "-n", "-X", "-P", "-j", worker, "-o", "State").stdout.split() == [
        "COMPLETED"
    ]

    capsys.readouterr()
    assert cli.main(["retry", str(sweep_dir), "--set", "workers=4", "timeout_min=5"]) == 0
    assert "to 4 worker(s)" in capsys.readouterr().out
    st = wait_sweep(sweep_dir)
    assert st.counts == {states.COMPLETED: 14}
    assert set(claims(sweep_dir, "pool1")) == left  # the retry ran exactly what was left


def test_a_killed_workers_task_is_retried_and_a_cancelled_worker_finishes_its_run_first(workdir):
    assert (
        cli.main(
            [
                *WORKERS,
                "hydra.launcher.workers=3",
                "hydra.launcher.timeout_min=5",
                "+sleep_s=3",
                "seed=range(0,9)",
            ]
        )
        == 0
    )
    sweep_dir = registry.latest_sweep()
    where = pools.pool_dir(sweep_dir, "pool0")
    deadline = time.monotonic() + 120
    while True:
        running = [w for w in pools.read_pool(where).workers.values() if w.running is not None]
        if len(running) >= 2:
            break
        assert time.monotonic() < deadline, "the workers did not get going"
        time.sleep(0.2)
    killed, cancelled = running[:2]
    os.kill(killed.pid, signal.SIGKILL)  # as the OOM killer or a dying node would: no word from it
    run("scancel", str(cancelled.job_id))  # SIGTERM, then KillWait (30 s) before SIGKILL
    st = wait_sweep(sweep_dir)

    lost = next(t for t in st.tasks if t.index == killed.running)
    assert lost.state in states.UNSUCCESSFUL and "retry" in lost.error, (lost, st.counts)
    # The cancelled worker finished the run it had (3 s < KillWait) and claimed nothing more.
    finished = next(t for t in st.tasks if t.index == cancelled.running)
    assert finished.state == states.COMPLETED
    view = pools.read_pool(where)
    assert list(view.workers[cancelled.worker].ended) == [cancelled.running]
    assert "SIGTERM" in (view.workers[cancelled.worker].stopped or "")
    assert claims(sweep_dir, "pool0") == Counter(range(9))  # the third worker ran the rest
    assert st.counts[states.COMPLETED] == 8

    assert cli.main(["retry", str(sweep_dir)]) == 0
    assert wait_sweep(sweep_dir).counts == {states.COMPLETED: 9}
    assert set(claims(sweep_dir, "pool1")) == {killed.running}


def test_workers_of_a_sweep_with_its_own_submitit_folder_find_what_they_run(workdir):
    # The jobs' files go where submitit_folder says; the sweep's pickled payload stays in
    # <sweep>/.submitit, where the workers (and `retry`) look for it.
    assert (
        cli.main(
            [
                *WORKERS,
                "hydra.launcher.workers=2",
                "hydra.launcher.timeout_min=5",
                "hydra.launcher.submitit_folder=${hydra.sweep.dir}/slurm_logs/%j",
                "seed=range(0,4)",
            ]
        )
        == 0
    )
    sweep_dir = registry.latest_sweep()
    st = wait_sweep(sweep_dir)
    assert st.counts == {states.COMPLETED: 4}, [t.error for t in st.tasks]
    logs = [p.name for p in (sweep_dir / "slurm_logs").rglob("*.out")]
    assert len(logs) == 2, logs  # one per worker, where asked
