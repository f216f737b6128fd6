"""Checkpoint and resume in one run directory: a stopped run ends where an unstopped one does."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hpcjobs import cli
from hpcjobs.errors import CheckpointError, RunStopped
from hpcjobs.run import checkpoint, job, requeue
from hpcjobs.run.context import RunContext
from hpcjobs.sweepdir import runfiles
from hpcjobs.workloads.cnn.train import TIMING_METRICS, train_and_evaluate

# Besides the timings (TIMING_METRICS), two runs of one configuration differ in how the run got
# there.
ATTEMPTS = {
    "restarts",
    "resumed_from_epoch",
    "resumed_from_step",
    "stop_reason",
    "timeout_requeues",
}
SMALL = ("trainer.device=cpu", "model.channels=[8,16]", "model.hidden=32", "trainer.num_threads=1")


def outcome(run_dir: Path) -> tuple[dict, list[dict]]:
    """metrics.json and history.csv without what may differ between two runs of a configuration."""
    metrics = runfiles.read_metrics(run_dir)
    rows = [
        {k: v for k, v in row.items() if k != "seconds"} for row in runfiles.read_history(run_dir)
    ]
    return {k: v for k, v in metrics.items() if k not in TIMING_METRICS | ATTEMPTS}, rows


def stop_at(check: int):
    """A stop request that rises at the workload's check number `check` (0: before any step)."""
    calls = iter(range(10**6))
    return lambda: next(calls) >= check


@pytest.fixture(autouse=True)
def not_under_a_scheduler(monkeypatch):
    # a stopped run here is recorded, not requeued
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)


# --------------------------------------------------------------------------- the checkpoint file


def test_checkpoint_round_trip_keeps_tensors_and_rng_states(tmp_path):
    ctx = RunContext(run_dir=tmp_path)
    assert ctx.load_checkpoint() is None
    generator = torch.Generator().manual_seed(3)
    state = {
        "epoch": 4,
        "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state()},
        "weights": torch.arange(6.0).view(2, 3),
        "history": [1.5, 2.5],
        "name": "adam",
        "best": None,
    }
    ctx.save_checkpoint(state)
    loaded = ctx.load_checkpoint()
    assert loaded.keys() == state.keys() and loaded["epoch"] == 4 and loaded["name"] == "adam"
    assert torch.equal(loaded["weights"], state["weights"]) and loaded["history"] == [1.5, 2.5]
    resumed = torch.Generator()
    resumed.set_state(loaded["rng"]["generator"])
    assert torch.equal(torch.rand(5, generator=resumed), torch.rand(5, generator=generator))
    assert sorted(p.name for p in tmp_path.iterdir()) == [runfiles.CHECKPOINT_FILE]


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"epoch": 1, "payload": _RunsCode(marker)}, tmp_path / runfiles.CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        RunContext(run_dir=tmp_path).load_checkpoint()
    assert not marker.exists()


WRITER = """
import sys, torch
from hpcjobs.run import checkpoint
path = sys.argv[1]
checkpoint.save(path, {"epoch": 1, "weights": torch.full((4,), 1.0)})
print("saved", flush=True)
epoch = 2
while True:  # large states, one after another, until killed
    checkpoint.save(path, {"epoch": epoch, "weights": torch.full((16 * 2**20,), float(epoch))})
    epoch += 1
"""


def test_kill_9_while_a_checkpoint_is_written_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / runfiles.CHECKPOINT_FILE
    for _ in range(5):  # until the kill lands mid-write (almost always the first time)
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout.readline().strip() == "saved"
            deadline = time.monotonic() + 60
            while not any(
                p.stat().st_size > 0 for p in tmp_path.glob(f".{path.name}.*.tmp") if p.exists()
            ):
                assert time.monotonic() < deadline, "the writer never started a second checkpoint"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        if list(tmp_path.glob(f".{path.name}.*.tmp")):
            break
    assert list(tmp_path.glob(f".{path.name}.*.tmp")), "the kill never landed mid-write"
    state = checkpoint.load(path)  # the last complete checkpoint, whole
    assert state["epoch"] >= 1 and torch.all(state["weights"] == float(state["epoch"]))
    checkpoint.save(path, {"epoch": 9})  # the next save clears the killed write's leftovers
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


# --------------------------------------------------------------------- the CNN, stopped and resumed


def _run(cfg, run_dir: Path, stop=None, crash_after_epoch: int | None = None) -> dict:
    """One attempt of the CNN run in run_dir through the job, as a task runs it."""

    def call(ctx: RunContext):
        if stop is not None:
            ctx = dataclasses.replace(ctx, stop_requested=stop)
        if crash_after_epoch is not None:  # dies after logging an epoch, before its checkpoint

            def log_then_crash(row, log=ctx.log_epoch):
                log(row)
                if row["epoch"] > crash_after_epoch:
                    raise RuntimeError("simulated crash")

            ctx = dataclasses.replace(ctx, log_epoch=log_then_crash)
        return train_and_evaluate(cfg, ctx)

    return job.run_and_record(call, cfg, run_dir, reraise=False, resumable=True)[1]


def test_cnn_stopped_at_any_step_resumes_to_bitwise_the_same_metrics(compose_run, tmp_path):
    # 3 epochs of 2 steps: the workload checks 6 times; stopping at check 0, 2 or 4 stops at an
    # epoch boundary (after epoch 0, 1, 2), at 1, 3 or 5 in the middle of an epoch.
    cfg = compose_run(
        *SMALL,
        "trainer.epochs=3",
        "trainer.steps_per_epoch=2",
        "optimizer=momentum",
        "model.dropout=0.25",
    )  # dropout and augmentation: every RNG must be restored
    assert _run(cfg, tmp_path / "undisturbed")["status"] == "completed"
    expected = outcome(tmp_path / "undisturbed")
    assert [r["epoch"] for r in expected[1]] == ["1", "2", "3"]

    for check in range(6):
        run_dir = tmp_path / f"stopped_at_{check}"
        with pytest.raises(RunStopped, match="not requeued: no scheduler"):
            _run(cfg, run_dir, stop=stop_at(check))
        stopped = runfiles.read_metrics(run_dir)
        assert stopped["status"] == "interrupted" and stopped["stop_reason"] == "preemption"
        assert (run_dir / runfiles.CHECKPOINT_FILE).exists()
        # the epochs finished before the stop
        assert len(runfiles.read_history(run_dir)) == check // 2

        metrics = _run(cfg, run_dir)  # the same run started again: it resumes
        assert metrics["status"] == "completed" and metrics["restarts"] == 1
        assert (metrics["resumed_from_epoch"], metrics["resumed_from_step"]) == (
            check // 2 + 1,
            check % 2,
        )
        assert outcome(run_dir) == expected, f"stopped at check {check}"
        assert not (run_dir / runfiles.CHECKPOINT_FILE).exists()  # deleted once completed


def test_cnn_stopped_twice_and_crashed_once_still_ends_the_same(compose_run, tmp_path):
    cfg = compose_run(*SMALL, "trainer.epochs=3", "trainer.steps_per_epoch=3", "optimizer=adam")
    _run(cfg, tmp_path / "undisturbed")
    run_dir = tmp_path / "run"
    with pytest.raises(RunStopped):
        _run(cfg, run_dir, stop=stop_at(1))  # epoch 1, after its first step
    with pytest.raises(RunStopped):
        _run(cfg, run_dir, stop=stop_at(3))  # resumed: epoch 2, after its second step
    # A crash after epoch 2 is logged but before its checkpoint: the run is recorded as failed;
    # started again it redoes epoch 2, replacing that epoch's row rather than repeating it.
    assert _run(cfg, run_dir, crash_after_epoch=1)["status"] == "failed"
    assert [r["epoch"] for r in runfiles.read_history(run_dir)] == ["1", "2"]
    metrics = _run(cfg, run_dir)
    assert (
        metrics["status"] == "completed"
        and metrics["restarts"] == 3
        and metrics["resumed_from_epoch"] == 2
    )
    assert outcome(run_dir) == outcome(tmp_path / "undisturbed")


def test_a_completed_run_is_never_run_again(compose_run, tmp_path):
    cfg = compose_run(
        *SMALL, "trainer.epochs=1", "trainer.steps_per_epoch=2", "keep_checkpoint=true"
    )
    first = _run(cfg, tmp_path)
    assert (tmp_path / runfiles.CHECKPOINT_FILE).exists()  # kept, as the config asks
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert _run(cfg, tmp_path) == first  # its record, untouched; nothing trained
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_a_run_directory_of_another_configuration_is_refused(compose_run, tmp_path):
    _run(compose_run(*SMALL, "trainer.epochs=1", "trainer.steps_per_epoch=1"), tmp_path)
    before = (tmp_path / "metrics.json").read_bytes()
    with pytest.raises(CheckpointError, match="another configuration"):
        _run(
            compose_run(*SMALL, "trainer.epochs=1", "trainer.steps_per_epoch=1", "seed=1"), tmp_path
        )
    assert (tmp_path / "metrics.json").read_bytes() == before


@pytest.mark.slow
def test_a_cnn_killed_mid_run_and_started_again_ends_the_same(tmp_path, monkeypatch):
    """kill -9 at whatever point after the first epoch, then the same command again."""
    monkeypatch.chdir(tmp_path)
    args = [
        "trainer.epochs=5",
        "trainer.device=cpu",
        "trainer.num_threads=1",
        "model.channels=[16,32]",
    ]
    assert cli.main([*args, "hydra.run.dir=undisturbed"]) == 0
    command = [sys.executable, "-m", "hpcjobs", *args, "hydra.run.dir=killed"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not runfiles.read_history(tmp_path / "killed"):
            assert proc.poll() is None and time.monotonic() < deadline, (
                "the run ended before its first epoch was seen"
            )
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    # killed: no chance to record it
    assert runfiles.read_metrics(tmp_path / "killed")["status"] == "running"
    assert cli.main([*args, "hydra.run.dir=killed"]) == 0  # the same command again
    metrics = runfiles.read_metrics(tmp_path / "killed")
    assert metrics["status"] == "completed" and metrics["restarts"] == 1
    assert outcome(tmp_path / "killed") == outcome(tmp_path / "undisturbed")
    assert [r["epoch"] for r in runfiles.read_history(tmp_path / "killed")] == [
        "1",
        "2",
        "3",
        "4",
        "5",
    ]


# --------------------------------------------------------------------------- the stop signal


STOPS_ONCE = '''
import os, signal, time
from hpcjobs.run.context import RunInterrupted


def stops_once(cfg, ctx):
    """Epoch 1, then Slurm's warning signal (sent to itself), then epoch 2 once started again."""
    state = ctx.load_checkpoint()
    if state is None:
        ctx.log_epoch({"epoch": 1, "loss": 1.0})
        os.kill(os.getpid(), signal.SIGUSR2)
        for _ in range(1000):  # a real workload checks between steps
            if ctx.should_stop():
                ctx.save_checkpoint({"epoch": 2, "loss": 0.5})
                raise RunInterrupted("stopped after epoch 1")
            time.sleep(0.01)
        raise AssertionError("the stop signal was not seen")
    ctx.log_epoch({"epoch": state["epoch"], "loss": state["loss"]})
    return {"score": state["loss"]}
'''


@pytest.fixture
def stops_once(tmp_path, monkeypatch):
    """A workload `stops_once` in a user package (importable by local worker processes too)."""
    (tmp_path / "stopper.py").write_text(STOPS_ONCE)
    conf = tmp_path / "conf" / "workload"
    conf.mkdir(parents=True)
    (conf / "stops_once.yaml").write_text("_target_: stopper.stops_once\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HPCJOBS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield ["--config-dir", str(tmp_path / "conf"), "workload=stops_once"]
    sys.modules.pop("stopper", None)


def test_the_stop_signal_only_raises_a_flag_and_the_run_resumes(stops_once, capsys):
    handler = signal.getsignal(signal.SIGUSR2)
    # Alone (no scheduler to requeue it) the run is recorded as interrupted; its handler is gone.
    assert cli.main([*stops_once, "hydra.run.dir=run"]) != 0
    assert signal.getsignal(signal.SIGUSR2) == handler
    stopped = runfiles.read_metrics("run")
    assert stopped["status"] == "interrupted" and stopped["stop_reason"] == "preemption"
    assert "no scheduler" in stopped["error_message"] and "retry" in stopped["error_message"]
    assert "stopped at a safe point" in capsys.readouterr().err
    # The same command again resumes it.
    assert cli.main([*stops_once, "hydra.run.dir=run"]) == 0
    metrics = runfiles.read_metrics("run")
    assert (
        metrics["status"],
        metrics["score"],
        metrics["restarts"],
        metrics["resumed_from_epoch"],
    ) == ("completed", 0.5, 1, 2)
    assert [r["epoch"] for r in runfiles.read_history("run")] == ["1", "2"]


def test_near_the_time_limit_the_stop_is_a_timeout_and_the_cap_holds(stops_once):
    # A one-minute limit: the signal comes well within grace + Slurm's lead, so it is the limit;
    # with no timeout requeue allowed, the run is not requeued.
    assert (
        cli.main(
            [
                *stops_once,
                "hydra.run.dir=run",
                "hydra.launcher.timeout_min=1",
                "hydra.launcher.max_timeout_requeues=0",
            ]
        )
        != 0
    )
    stopped = runfiles.read_metrics("run")
    assert stopped["status"] == "interrupted" and stopped["stop_reason"] == "time limit"
    assert stopped["timeout_requeues"] == 1 and "max_timeout_requeues=0" in stopped["error_message"]


@pytest.mark.slow
def test_a_local_task_stopped_by_the_signal_is_requeued_and_resumes(stops_once, capsys):
    # submitit's local controller restarts a task that exits with its requeue code.
    assert (
        cli.main(
            [
                *stops_once,
                "--multirun",
                "hydra/launcher=hpcjobs_local",
                "seed=0",
                "hydra.launcher.poll_interval_s=0.1",
            ]
        )
        == 0
    )
    (run_dir,) = {p.parent for p in Path().rglob("metrics.json")}
    metrics = runfiles.read_metrics(run_dir)
    assert (metrics["status"], metrics["restarts"], metrics["resumed_from_epoch"]) == (
        "completed",
        1,
        2,
    )
    assert "timeout_requeues" not in metrics  # a preemption, not the time limit
    assert [r["epoch"] for r in runfiles.read_history(run_dir)] == ["1", "2"]
    assert not (run_dir / runfiles.CHECKPOINT_FILE).exists()


@pytest.mark.parametrize(
    ("elapsed_s", "timeout_min", "grace_s", "expected"),
    [
        (28, 1, 10, True),  # a one-minute limit: every warning is the time limit
        (15, 5, 120, False),  # 4:45 left of 5 minutes: a preemption (or scancel --signal)
        (3500, 60, 120, True),  # 100 s left with 120 s of grace: the time limit
        (3000, 60, 120, False),
    ],
)
def test_time_limit_or_preemption(elapsed_s, timeout_min, grace_s, expected):
    assert requeue.is_time_limit(1000.0 + elapsed_s, 1000.0, timeout_min, grace_s) is expected
