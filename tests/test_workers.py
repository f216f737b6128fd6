"""Pull-based workers (hydra.launcher.workers) on the local backend: every task once, in its own
run directory; walltime-aware claiming; a dead worker costs its run only and is replaced; the
local default; bad settings refused.

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
from hpcjobs.launching import registry
from hpcjobs.launching.backends.local import LocalBackend, default_workers
from hpcjobs.launching.settings import LauncherSettings
from hpcjobs.results import status
from hpcjobs.run.worker import FIT_MARGIN, fits
from hpcjobs.sweepdir import manifest, pools


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


def sweep_process(
    workdir: Path, *overrides: str, complete: bool = True
) -> subprocess.CompletedProcess:
    """Run a local sweep; it exits 0 when every run completed, else 1 (and says what to retry)."""
    out = subprocess.run(
        [sys.executable, *sweep(*overrides)],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == (0 if complete else 1), out.stderr[-3000:]
    return out


def run_sweep(workdir: Path, *overrides: str, complete: bool = True) -> Path:
    """Run a local sweep (:func:`sweep_process`); its directory."""
    sweep_process(workdir, *overrides, complete=complete)
    return registry.latest_sweep()


def claims_in_journals(sweep_dir: Path, pool_id: str = "pool0") -> Counter:
    claimed: Counter = Counter()
    for journal in (pools.pool_dir(sweep_dir, pool_id) / "workers").glob("*.jsonl"):
        claimed.update(e["task"] for e in pools.read_events(journal) if e["event"] == "claim")
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
    view = pools.read_pool(pools.pool_dir(sweep_dir, "pool0"))
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
    stopped = pools.read_pool(pools.pool_dir(sweep_dir, "pool0")).workers[0].stopped
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
def test_a_killed_worker_costs_its_run_only_and_retry_finishes_it(workdir, capsys):
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
            view = pools.read_pool(sweep_dir)
            victim = next((w for w in view.workers.values() if w.running is not None), None)
        time.sleep(0.05)
    assert victim is not None, "no worker got going"
    os.kill(victim.pid, signal.SIGKILL)  # as the OOM killer would
    assert proc.wait(timeout=60) == 1  # not every run completed
    sweep_dir = registry.latest_sweep()

    now = status.sweep_status(sweep_dir)
    lost = next(t for t in now.tasks if t.index == victim.running)
    assert lost.state == states.FAILED and "WorkerDied" in lost.error, (lost, now.counts)
    assert "died while it ran it" in lost.error
    # Every other run completed: the dead worker was replaced (it started again), so its share
    # of the sweep was not lost with it.
    assert now.counts == {states.COMPLETED: 5, states.FAILED: 1}
    assert pools.read_pool(pools.pool_dir(sweep_dir, "pool0")).workers[victim.worker].starts == 2

    assert cli.main(["retry", str(sweep_dir)]) == 0
    assert status.sweep_status(sweep_dir).counts == {states.COMPLETED: 6}


# A workload of the user's that kills its own process (as a segfault or the OOM killer would)
# for the seeds it is told; `once`: only while the file `crash_once` exists (it removes it).
CRASHING = """
import os, signal

def run(cfg, ctx):
    once = bool(cfg.get("once"))
    if int(cfg.seed) in set(cfg.get("crash_seeds") or []):
        if not once or os.path.exists("crash_once"):
            if once:
                os.remove("crash_once")
            os.kill(os.getpid(), signal.SIGKILL)
    return {"score": float(cfg.seed)}
"""


@pytest.fixture
def crashing(workdir: Path) -> list[str]:
    (workdir / "crashing.py").write_text(CRASHING)
    (workdir / "conf" / "workload").mkdir(parents=True)
    (workdir / "conf" / "workload" / "crashing.yaml").write_text("_target_: crashing.run\n")
    return ["--config-dir", str(workdir / "conf"), "workload=crashing"]


def worker_starts(sweep_dir: Path) -> dict[int, int]:
    view = pools.read_pool(pools.pool_dir(sweep_dir, "pool0"))
    return {k: w.starts for k, w in view.workers.items()}


@pytest.mark.slow
def test_a_run_that_kills_its_worker_fails_alone_and_the_worker_is_replaced(workdir, crashing):
    out = sweep_process(
        workdir,
        *crashing,
        "hydra.launcher.workers=1",
        "seed=range(0,6)",
        "+crash_seeds=[1,3]",
        complete=False,
    )
    sweep_dir = registry.latest_sweep()
    # Hydra got every run's return, those the dead workers had completed too: none left out.
    assert "left unclaimed" not in out.stdout + out.stderr
    now = status.sweep_status(sweep_dir)
    assert {t.index: t.state for t in now.tasks} == {
        0: states.COMPLETED,
        1: states.FAILED,
        2: states.COMPLETED,
        3: states.FAILED,
        4: states.COMPLETED,
        5: states.COMPLETED,
    }
    for index in (1, 3):
        metrics = json.loads((sweep_dir / str(index) / "metrics.json").read_text())
        assert metrics["status"] == "failed" and metrics["error_type"] == "WorkerDied"
        assert "died while it ran it" in metrics["error_message"]
    # One worker, started again after each run that killed it.
    assert worker_starts(sweep_dir) == {0: 3}
    # collect shows the reason with the run
    assert cli.main(["collect", str(sweep_dir)]) == 0
    runs = pd.read_csv(workdir / "results" / "default" / "runs.csv")
    assert list(runs["error_type"].fillna("")) == ["", "WorkerDied", "", "WorkerDied", "", ""]


@pytest.mark.slow
def test_a_run_that_kills_every_worker_it_lands_on_lands_on_one(workdir, crashing):
    # Every run kills its worker: each is recorded failed once and never handed out again, so
    # the sweep ends; a replacement starts only while runs are left to claim.
    sweep_dir = run_sweep(
        workdir,
        *crashing,
        "hydra.launcher.workers=2",
        "seed=range(0,4)",
        "+crash_seeds=[0,1,2,3]",
        complete=False,
    )
    assert status.sweep_status(sweep_dir).counts == {states.FAILED: 4}
    assert claims_in_journals(sweep_dir) == Counter(range(4))
    assert sum(worker_starts(sweep_dir).values()) <= 2 + 4 - 1


@pytest.mark.slow
def test_a_local_sweep_runs_on_workers_by_default_and_workers_0_runs_a_process_each(workdir):
    # No workers given: one worker per run that may run at once (max_parallel here, so that the
    # count does not depend on this machine's cores).
    sweep_dir = run_sweep(workdir, "hydra.launcher.max_parallel=2", "seed=range(0,6)")
    record = manifest.read(sweep_dir)
    assert [p.workers for p in record.pools] == [2]
    assert all(t.pool == "pool0" for t in record.tasks)
    assert record.launcher["workers"] is None  # the default, applied again by `retry`
    assert claims_in_journals(sweep_dir) == Counter(range(6))
    on_workers = status.sweep_status(sweep_dir)
    assert on_workers.counts == {states.COMPLETED: 6}
    assert on_workers.workers_hint is None  # a worker's runs have no start-up of their own

    sweep_dir = run_sweep(workdir, "hydra.launcher.workers=0", "seed=range(0,3)")
    record = manifest.read(sweep_dir)
    assert record.pools == [] and all(t.pool is None and t.attempts for t in record.tasks)
    each = status.sweep_status(sweep_dir)
    assert each.counts == {states.COMPLETED: 3}
    for task in record.tasks:  # each in a process of its own, whose start-up it measured
        metrics = json.loads((sweep_dir / task.run_dir / "metrics.json").read_text())
        assert metrics["startup_seconds"] > 0
    # noop runs take no time beside their process's start-up: status says one worker would
    # have run the three (what collect says too)
    hint = each.workers_hint
    assert hint is not None and (hint.runs, hint.workers) == (3, 1)
    assert f"hint: {hint.text()}" in cli.format_status(each)
    assert "hydra.launcher.workers=1 would start 1 process(es) instead of 3" in hint.text()


@pytest.mark.slow
def test_a_sweep_with_its_own_submitit_folder_runs_on_workers_and_retries(workdir, crashing):
    # The pickled payload stays in <sweep>/.submitit, where workers and `retry` look for it,
    # wherever submitit_folder puts the jobs' logs.
    (workdir / "crash_once").touch()
    sweep_dir = run_sweep(
        workdir,
        *crashing,
        "hydra.launcher.submitit_folder=${hydra.sweep.dir}/logs/%j",
        "hydra.launcher.workers=1",
        "seed=range(0,3)",
        "+crash_seeds=[1]",
        "+once=true",
        complete=False,
    )
    assert status.sweep_status(sweep_dir).counts == {states.COMPLETED: 2, states.FAILED: 1}
    assert list((sweep_dir / "logs").iterdir())  # the jobs' logs went where asked
    # One process per task this time: the other way a payload is found.
    assert cli.main(["retry", str(sweep_dir), "--set", "workers=0"]) == 0
    assert status.sweep_status(sweep_dir).counts == {states.COMPLETED: 3}


def test_the_local_default_is_a_worker_per_run_at_once_and_none_for_a_distributed_run():
    def default(cores: int, **settings) -> int:
        return default_workers(LauncherSettings(**settings), cores)

    assert default(8) == 8  # one run per core
    assert default(8, cpus_per_task=3) == 2  # as many as the cores allow
    assert default(2, cpus_per_task=4) == 1  # at least one
    assert default(8, max_parallel=3) == 3  # runs at once, as asked
    assert default(8, tasks_per_node=2) == 0  # a distributed run: its own processes
    assert default(8, nodes=2) == 0
    # and only where workers were left unset
    assert LocalBackend({"workers": 0}).settings.workers == 0
    assert LocalBackend({"workers": 3}).settings.workers == 3
    assert LocalBackend({"workers": None, "max_parallel": 2}).settings.workers == 2


def test_fits_judges_by_the_longest_run_so_far():
    assert fits(1.0, [])  # nothing to judge by: try
    assert fits(10 * FIT_MARGIN, [10.0, 2.0])
    assert not fits(10 * FIT_MARGIN - 0.1, [10.0, 2.0])


@pytest.mark.parametrize(
    "setting, message",
    [
        (["hydra.launcher.workers=-1"], "workers=-1: must be >= 0"),
        (["hydra.launcher.workers=2", "hydra.launcher.tasks_per_node=2"], "needs a job of its own"),
        (["hydra.launcher.workers=2", "hydra.launcher.run_files=tiny"], "choose full or compact"),
        (
            ["hydra.launcher.workers=0", "hydra.launcher.run_files=compact"],
            "set hydra.launcher.workers=N too",
        ),
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


# Any Hydra app (not hpcjobs' workloads, which return a completed run's record by themselves).
PLAIN_APP = """
import hydra


@hydra.main(version_base=None, config_path=None)
def main(cfg):
    return {"score": float(cfg.seed)}


if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
def test_a_worker_started_again_does_not_run_again_a_run_that_completed_unjournalled(workdir):
    # Its worker died (or was requeued) after the run's metrics.json said completed and before
    # the journal's end event: started again, it resumes that run, which must not run afresh.
    (workdir / "plain.py").write_text(PLAIN_APP)
    out = subprocess.run(
        [
            sys.executable,
            "plain.py",
            "-m",
            "hydra/launcher=hpcjobs_local",
            "hydra.launcher.workers=1",
            "hydra.launcher.poll_interval_s=0.1",
            "+seed=0,1",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sweep_dir = registry.latest_sweep()
    journal = pools.pool_dir(sweep_dir, "pool0") / "workers" / "0.jsonl"
    lines = journal.read_text().splitlines()
    last_claim = max(i for i, line in enumerate(lines) if json.loads(line)["event"] == "claim")
    task = json.loads(lines[last_claim])["task"]
    journal.write_text("".join(line + "\n" for line in lines[: last_claim + 1]))
    metrics_file = sweep_dir / manifest.read(sweep_dir).tasks[task].run_dir / "metrics.json"
    before = metrics_file.read_text()
    assert json.loads(before)["status"] == "completed"

    code = (
        "import sys; from hpcjobs.run.worker import WorkerRunner as W;"
        " W(sys.argv[1], 'pool0', 0, 1.0)()"
    )
    again = subprocess.run(
        [sys.executable, "-c", code, str(sweep_dir)], cwd=workdir, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert metrics_file.read_text() == before  # not run again
    view = pools.read_pool(pools.pool_dir(sweep_dir, "pool0"))
    assert view.ended[task]["state"] == "completed" and view.workers[0].running is None


@pytest.mark.slow
def test_default_local_workers_have_timeout_min_for_each_run(workdir):
    # Workers left unset locally: timeout_min (3 s here) budgets each run, a worker's limit is
    # timeout_min x its pool's runs, so one worker runs all four 1-second runs, none unclaimed.
    sweep_dir = run_sweep(
        workdir,
        "hydra.launcher.max_parallel=1",
        "hydra.launcher.timeout_min=0.05",
        "+sleep_s=1",
        "seed=range(0,4)",
    )
    assert manifest.read(sweep_dir).launcher["workers"] is None
    assert status.sweep_status(sweep_dir).counts == {states.COMPLETED: 4}
