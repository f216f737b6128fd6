"""Local sweeps outlive their launcher: status is true, retry finishes, completed runs stay."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hpcjobs import cli
from hpcjobs.launching import registry
from hpcjobs.sweepdir import manifest

# Six one-epoch CNN runs, one at a time (one local worker): long enough to kill the launcher
# half-way.
SWEEP = [
    "-m",
    "hpcjobs",
    "--multirun",
    "hydra/launcher=hpcjobs_local",
    "hydra.launcher.max_parallel=1",
    "hydra.launcher.poll_interval_s=0.1",
    "trainer.epochs=1",
    "trainer.batch_size=32",
    "seed=0,1,2,3,4,5",
]


def start_sweep(workdir: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen(
        [sys.executable, *SWEEP],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until two runs have completed and a third is under way
        recorded = [json.loads(p.read_text())["status"] for p in workdir.rglob("metrics.json")]
        if recorded.count("completed") >= 2 and "running" in recorded:
            return proc, registry.latest_sweep()
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the sweep did not get going")


def completed_files(sweep_dir: Path) -> dict[str, bytes]:
    """Every file of every completed run, as bytes."""
    files = {}
    for metrics in sweep_dir.glob("*/metrics.json"):
        if json.loads(metrics.read_text())["status"] == "completed":
            files.update({str(p): p.read_bytes() for p in metrics.parent.rglob("*") if p.is_file()})
    return files


def live_children(session: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [
        int(pid) for pid, sid in (line.split() for line in out.splitlines()) if int(sid) == session
    ]


@pytest.mark.slow
def test_killed_launcher_leaves_interrupted_tasks_that_retry_finishes(workdir, capsys):
    proc, sweep_dir = start_sweep(workdir)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and everything it started
    proc.wait()
    # Until its workers are reaped too: a zombie's /proc entry still says the process lives,
    # and `status` would show its run as running.
    deadline = time.monotonic() + 15
    while live_children(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    before = completed_files(sweep_dir)

    assert cli.main(["status", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "interrupted" in out and "pending" not in out and "retry" in out

    assert cli.main(["retry", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    runs = pd.read_csv(workdir / "results/default/runs.csv")
    assert len(runs) == 6 and set(runs["status"]) == {"completed"}, out
    # Completed runs were not run again: same files, same bytes.
    assert {p: b for p, b in completed_files(sweep_dir).items() if p in before} == before
    attempts = {t.index: [a.why for a in t.attempts] for t in manifest.read(sweep_dir).tasks}
    retried = [i for i, whys in attempts.items() if len(whys) == 2]
    # The run under way was interrupted; the runs not started yet were left unclaimed by the
    # sweep's (local, default) workers.
    assert retried and all(
        attempts[i] in (["submitted", "retry: interrupted"], ["submitted", "retry: unclaimed"])
        for i in retried
    )
    assert any(attempts[i] == ["submitted", "retry: interrupted"] for i in retried)
    assert len(retried) == 6 - len({Path(p).parent for p in before if p.endswith("metrics.json")})

    # Nothing is left to retry; a retry now submits nothing.
    assert cli.main(["retry", str(sweep_dir)]) == 0
    assert "0 of 6 tasks to run again" in capsys.readouterr().out


@pytest.mark.slow
def test_sigterm_stops_every_run_of_a_local_sweep(workdir, capsys):
    proc, sweep_dir = start_sweep(workdir)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    deadline = time.monotonic() + 15
    while live_children(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live_children(proc.pid) == []  # no run outlives its launcher
    assert cli.main(["status", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "interrupted" in out and "running" not in out
    # The run that was under way says so itself (the collector reads run files only).
    recorded = [json.loads(p.read_text())["status"] for p in sweep_dir.glob("*/metrics.json")]
    assert "running" not in recorded and "interrupted" in recorded


def test_an_interrupt_that_a_library_fails_to_unwind_is_still_an_interrupt(tmp_path):
    # SIGTERM (as KeyboardInterrupt) landing in OmegaConf's flag_override: its cleanup raised
    # AttributeError instead, and the run was recorded as failed, a bug of its own.
    from omegaconf import OmegaConf

    from hpcjobs.run import job
    from hpcjobs.sweepdir import runfiles

    def workload(ctx):
        try:
            raise KeyboardInterrupt
        finally:
            raise AttributeError("'NoneType' object has no attribute '_invalidate_flags_cache'")

    with pytest.raises(KeyboardInterrupt):
        job.run_and_record(
            workload, OmegaConf.create({}), tmp_path / "run", reraise=False, resumable=True
        )
    assert runfiles.read_metrics(tmp_path / "run")["status"] == "interrupted"
    _, metrics = job.run_and_record(
        lambda ctx: 1 / 0, OmegaConf.create({}), tmp_path / "other", reraise=False
    )
    assert metrics["status"] == "failed"  # a plain error stays a failure


@pytest.mark.slow
def test_retry_only_some_states_and_dry_run(workdir, capsys):
    # Two runs fail (no CUDA device visible), one completes.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        assert (
            cli.main(
                [
                    "--multirun",
                    "hydra/launcher=hpcjobs_local",
                    "hydra.launcher.poll_interval_s=0.1",
                    "trainer.epochs=1",
                    "trainer.steps_per_epoch=2",
                    "trainer.device=cpu,cuda",
                    "seed=0",
                ]
            )
            == 1
        )
    finally:
        del os.environ["CUDA_VISIBLE_DEVICES"]
    sweep_dir = registry.latest_sweep()
    capsys.readouterr()
    assert cli.main(["retry", str(sweep_dir), "--only", "interrupted"]) == 0
    assert "0 of 2 tasks" in capsys.readouterr().out
    assert cli.main(["retry", str(sweep_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 tasks" in out and "task 1 (failed, attempt 2)" in out
    # a dry run submits nothing
    assert [len(t.attempts) for t in manifest.read(sweep_dir).tasks] == [
        1,
        1,
    ]
    assert cli.main(["retry", str(sweep_dir), "--only", "done"]) == 2
    assert "--only done" in capsys.readouterr().err
    assert cli.main(["retry", str(sweep_dir), "--set", "partion=gpu"]) == 2
    assert "unknown launcher setting(s) partion" in capsys.readouterr().err


@pytest.mark.slow
def test_sweeps_started_at_once_never_share_a_directory(workdir):
    # Minute-resolution sweep dirs: four sweeps started together resolve to the same path.
    sweep_dir = "hydra.sweep.dir=multirun/same/${now:%Y-%m-%d_%H-%M}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpcjobs",
                "--multirun",
                "hydra/launcher=hpcjobs_local",
                "workload=noop",
                sweep_dir,
                f"seed={i},1{i}",
            ],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    dirs = sorted({p.parent for p in workdir.glob("multirun/same/*/sweep.json")})
    assert len(dirs) == 4  # one each, whichever minute each sweep resolved
    seeds = []
    for d in dirs:
        sweep = manifest.read(d)
        own = [
            int(o.split("=")[1]) for t in sweep.tasks for o in t.overrides if o.startswith("seed=")
        ]
        assert len(own) == 2 and own[1] == 10 + own[0]  # this sweep's tasks only
        for task in sweep.tasks:  # and its runs are its own
            metrics = json.loads((d / task.run_dir / "metrics.json").read_text())
            assert f"seed={int(metrics['score'])}" in task.overrides
        assert f"seed={own[0]},{own[1]}" in (d / "multirun.yaml").read_text()
        seeds += own
    assert sorted(seeds) == [0, 1, 2, 3, 10, 11, 12, 13]


def test_two_sweeps_of_one_process_in_the_same_minute_get_their_own_directories(workdir):
    # A notebook or a script calling main() twice: the second sweep is a new one, not an addition.
    local = [
        "--multirun",
        "hydra/launcher=hpcjobs_local",
        "workload=noop",
        "hydra.sweep.dir=multirun/same/${now:%Y-%m-%d_%H-%M}",
    ]
    assert cli.main([*local, "seed=1"]) == 0
    first = registry.latest_sweep()
    assert cli.main([*local, "seed=2"]) == 0
    second = registry.latest_sweep()
    if first.name[:16] == second.name[:16]:  # same minute: the second has a suffix
        assert second != first and second.name.startswith(first.name)
    for sweep_dir, seed in ((first, "seed=1"), (second, "seed=2")):
        assert [t.overrides[-1] for t in manifest.read(sweep_dir).tasks] == [seed]


@pytest.mark.slow
def test_a_sweep_into_an_existing_sweep_adds_only_what_has_not_completed(workdir, capsys):
    local = [
        "--multirun",
        "hydra/launcher=hpcjobs_local",
        "hydra.launcher.poll_interval_s=0.1",
        "workload=noop",
        "hydra.sweep.dir=sweeps/mine",
    ]
    assert cli.main([*local, "seed=0,1"]) == 0
    sweep_dir = workdir / "sweeps/mine"
    before = completed_files(sweep_dir)
    capsys.readouterr()

    assert cli.main([*local, "seed=0,1,2,3"]) == 0
    assert "2 of 4 configuration(s) completed already" in capsys.readouterr().out
    sweep = manifest.read(sweep_dir)
    assert [(t.index, t.overrides[-1]) for t in sweep.tasks] == [
        (0, "seed=0"),
        (1, "seed=1"),
        (2, "seed=2"),
        (3, "seed=3"),
    ]
    # untouched
    assert {p: b for p, b in completed_files(sweep_dir).items() if p in before} == before

    # Forced: the completed configuration runs again, in a new run directory.
    assert cli.main([*local, "seed=0", "hydra.launcher.rerun_completed=true"]) == 0
    sweep = manifest.read(sweep_dir)
    assert [t.index for t in sweep.tasks] == [0, 1, 2, 3, 4] and sweep.tasks[4].run_dir == "4"
    assert {p: b for p, b in completed_files(sweep_dir).items() if p in before} == before
    runs = pd.read_csv(workdir / "results/default/runs.csv")
    assert sorted(runs["seed"]) == [0, 0, 1, 2, 3] and set(runs["status"]) == {"completed"}
