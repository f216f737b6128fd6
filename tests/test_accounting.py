"""Cost and efficiency: what each run used, from the process and from Slurm's accounting (faked
here: tests/integration/test_accounting_slurm.py asks the real sacct)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from slurm_fakes import fake_commands

from hpcjobs.launching.backends import slurm_controller as slurm
from hpcjobs.launching.backends.base import Poll, TaskState, Usage
from hpcjobs.results import accounting, collect, cost, status
from hpcjobs.run import job, usage
from hpcjobs.sweepdir import manifest, runfiles

# What sacct -P -o USAGE_FIELDS printed on the dev cluster (allocation, batch step, srun step),
# plus a pending range, typed GPUs and an older Slurm's per-CPU ReqMem.
SACCT = (
    "12_0|COMPLETED|00:00:47|node1|0:0|00:21.261||4G|2|billing=2,cpu=2,gres/gpu=1,mem=4G,node=1|1\n"
    "12_0.batch|COMPLETED|00:00:47|node1|0:0|00:00.011|12096K||2|cpu=2,mem=4G,node=1|1\n"
    "12_0.0|COMPLETED|00:00:47|node1|0:0|00:21.250|450748K||2|cpu=2,mem=4G,node=1|1\n"
    "12_1|FAILED|1-00:00:02|node2|1:0|2-01:00:00||1000Mc|4|cpu=4,gres/gpu:a100=2,node=1|1\n"
    "12_[2-3]|PENDING|00:00:00|None assigned|0:0|00:00:00||4G|2||1\n"
)


def test_sacct_usage_parses_allocations_and_their_steps():
    states, used = slurm.parse_usage(SACCT.splitlines())
    assert set(states) == {"12_0", "12_1", "12_2", "12_3"} and states["12_3"].state == "pending"
    assert set(used) == {"12_0", "12_1"}  # nothing used while pending
    first = used["12_0"]
    assert (first.elapsed_s, first.cpu_s, first.cpus, first.gpus, first.node) == (
        47,
        21.261,
        2,
        1,
        "node1",
    )
    # the largest step
    assert first.req_mem_mb == 4096 and first.max_rss_mb == pytest.approx(450748 / 1024)
    second = used["12_1"]
    assert second.elapsed_s == 86402 and second.cpu_s == 2 * 86400 + 3600
    # not sampled
    assert second.req_mem_mb == 4000 and second.gpus == 2 and second.max_rss_mb is None


def test_the_process_measures_cpu_time_and_peak_memory(tmp_path):
    def call(ctx):
        block = bytearray(96 * 2**20)  # touched: resident
        sum(range(2_000_000))
        return {"score": float(len(block) > 0)}

    _, metrics = job.run_and_record(call, OmegaConf.create({"seed": 0}), tmp_path, reraise=True)
    assert metrics["cpu_seconds"] > 0 and metrics["max_rss_mb"] >= 96 and metrics["cpus"] >= 1
    assert set(usage.FIELDS) - {"max_gpu_mem_mb", "gpus_used"} <= set(
        runfiles.read_metrics(tmp_path)
    )
    torch = __import__("sys").modules.get("torch")
    # by an earlier test, on a GPU machine
    cuda_initialised = torch is not None and torch.cuda.is_initialized()
    assert ("max_gpu_mem_mb" in metrics) == cuda_initialised


def test_peak_gpu_memory_is_read_from_torch_only_once_it_has_initialised_cuda(monkeypatch):
    class FakeCuda:
        def __init__(self) -> None:
            self.initialised, self.resets, self.peaks = False, [], [0, 3 * 2**30]

        def is_initialized(self) -> bool:
            return self.initialised

        def device_count(self) -> int:
            return 2

        def reset_peak_memory_stats(self, device: int) -> None:
            self.resets.append(device)

        def max_memory_allocated(self, device: int) -> int:
            return self.peaks[device]

    fake = type("FakeTorch", (), {"cuda": FakeCuda()})()
    monkeypatch.setitem(__import__("sys").modules, "torch", fake)
    assert "max_gpu_mem_mb" not in usage.Meter().measure()  # CUDA not initialised: not asked
    fake.cuda.initialised = True
    meter = usage.Meter()  # a worker's next run: its own peak only
    assert fake.cuda.resets == [0, 1]
    measured = meter.measure()
    assert (measured["max_gpu_mem_mb"], measured["gpus_used"]) == (3072.0, 1)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device here")
def test_a_gpu_run_records_its_peak_gpu_memory(tmp_path):
    import torch

    def call(ctx):
        block = torch.ones(64, 2**20, device="cuda")  # 256 MiB
        return {"score": float(block[0, 0])}

    _, metrics = job.run_and_record(call, OmegaConf.create({"seed": 0}), tmp_path, reraise=True)
    assert metrics["max_gpu_mem_mb"] >= 256 and metrics["gpus_used"] >= 1


def ended(job_id: str, **fields) -> Usage:
    values = {
        "elapsed_s": 100.0,
        "cpu_s": 50.0,
        "max_rss_mb": 3174.4,
        "req_mem_mb": 32768.0,
        "cpus": 2,
        "gpus": 1,
        "node": "node1",
        **fields,
    }
    return Usage(job_id, "COMPLETED", **values)


def sweep_of(tmp_path: Path, n: int) -> manifest.SweepManifest:
    tasks = [manifest.TaskRecord(i, [f"seed={i}"], str(i), "h", job_id=f"12_{i}") for i in range(n)]
    sweep = manifest.SweepManifest("demo", str(tmp_path), "slurm", tasks=tasks)
    for task in tasks:
        runfiles.write_metrics(tmp_path / task.run_dir, {"status": "completed", "seed": task.index})
    return sweep


def test_accounting_is_recorded_once_per_ended_attempt(tmp_path):
    sweep = sweep_of(tmp_path, 3)
    (tmp_path / "2" / "metrics.json").unlink()
    (tmp_path / "2").rmdir()  # never started (cancelled while pending)
    backend = slurm_backend()
    due = accounting.due_tasks(sweep, backend)
    assert [t.index for t in due] == [0, 1]
    poll = Poll(
        {
            "12_0": TaskState("12_0", "completed"),
            "12_1": TaskState("12_1", "running"),
            "12_2": TaskState("12_2", "cancelled"),
        },
        ["sacct"],
        accounting={"12_0": ended("12_0"), "12_1": ended("12_1"), "12_2": ended("12_2")},
    )
    assert accounting.write_polled(sweep, poll, due) == 1  # task 1 still runs; task 2 never started
    metrics_before = (tmp_path / "0" / "metrics.json").read_bytes()
    recorded = runfiles.read_accounting(tmp_path / "0")
    assert recorded["source"] == "sacct" and [a["job_id"] for a in recorded["attempts"]] == ["12_0"]
    # 0 is not asked for again
    assert [t.index for t in accounting.due_tasks(sweep, backend)] == [1]

    # A retry runs task 0 again under another job id: its attempt is added, the first one kept.
    runfiles.write_metrics(tmp_path / "0", {"status": "completed", "seed": 0, "restarts": 1})
    # A retry's metrics.json is minutes younger than the accounting; here it is a few
    # microseconds, inside one tick of the file system's clock (coarse mtimes): say it is later.
    recorded_ns = (tmp_path / "0" / "accounting.json").stat().st_mtime_ns
    os.utime(tmp_path / "0" / "metrics.json", ns=(recorded_ns, recorded_ns + 10**9))
    sweep.tasks[0].submitted("15_0", "retry: failed")
    poll = Poll(
        {"15_0": TaskState("15_0", "completed")},
        ["sacct"],
        accounting={"15_0": ended("15_0", elapsed_s=300.0, cpus=4, gpus=0, max_rss_mb=None)},
    )
    assert accounting.write_polled(sweep, poll, accounting.due_tasks(sweep, backend)) == 1
    columns = accounting.columns(runfiles.read_accounting(tmp_path / "0"))
    assert (
        columns["acct_attempts"] == 2
        and columns["acct_elapsed_s"] == 400
        and columns["acct_cpus"] == 4
    )
    assert columns["cpu_hours"] == pytest.approx((100 * 2 + 300 * 4) / 3600)
    assert (
        columns["gpu_hours"] == pytest.approx(100 / 3600) and columns["acct_max_rss_mb"] == 3174.4
    )
    # (the retry's own run wrote it)
    assert (tmp_path / "0" / "metrics.json").read_bytes() != metrics_before


def slurm_backend():
    from hpcjobs.launching.backends import SlurmBackend

    return SlurmBackend({})


def test_status_records_accounting_in_its_one_sacct_call(tmp_path, monkeypatch):
    sweep = sweep_of(tmp_path, 2)
    manifest.write(sweep)
    lines = SACCT.replace("12_1|FAILED", "12_1|COMPLETED").splitlines()[:4]
    calls = fake_commands(
        monkeypatch, {"sacct": (0, "\n".join(lines) + "\n", ""), "squeue": (0, "", "")}
    )
    completed = (tmp_path / "1" / "metrics.json").read_bytes()
    st = status.sweep_status(tmp_path)
    assert [c[0] for c in calls] == ["sacct"] and "-X" not in calls[0]  # one call, with the steps
    assert st.accounted == 2 and st.counts == {"completed": 2}
    # a completed run's files untouched
    assert (tmp_path / "1" / "metrics.json").read_bytes() == completed
    calls = fake_commands(
        monkeypatch,
        {
            "sacct": (
                0,
                "12_0|COMPLETED|00:00:47|node1|0:0\n12_1|COMPLETED|1-00:00:02|node2|0:0\n",
                "",
            )
        },
    )
    assert status.sweep_status(tmp_path).accounted == 0
    assert len(calls) == 1 and "-X" in calls[0]  # all recorded: the cheap poll again


def test_status_without_accounting_says_why_and_records_nothing(tmp_path, monkeypatch):
    manifest.write(sweep_of(tmp_path, 2))
    fake_commands(
        monkeypatch,
        {
            "sacct": (1, "", "sacct: error: Problem talking to the database: Connection refused"),
            "squeue": (0, "", ""),
        },
    )
    st = status.sweep_status(tmp_path)
    assert (
        "accounting (slurmdbd) is unavailable" in st.note
        and "accounting of ended tasks not recorded" in st.note
    )
    assert st.accounted == 0 and not list(tmp_path.glob("*/accounting.json"))
    assert st.counts == {"completed": 2}  # judged by their run directories


def runs_frame() -> pd.DataFrame:
    """Two configurations on Slurm (accounting recorded), one local run (its process measured)."""

    def sacct_run(opt, seed, peak, cpu_s):
        return {
            "optimizer": opt,
            "seed": seed,
            "status": "completed",
            "wall_seconds": 90.0,
            "cpu_seconds": 40.0,
            "max_rss_mb": 2000.0,
            "cpus": 8,
            **accounting.columns(
                {
                    "attempts": [
                        {
                            "job_id": f"1_{seed}",
                            "scheduler_state": "COMPLETED",
                            "elapsed_s": 100.0,
                            "cpu_s": cpu_s,
                            "max_rss_mb": peak,
                            "req_mem_mb": 32768.0,
                            "cpus": 8,
                            "gpus": 1,
                            "node": "n",
                        }
                    ]
                }
            ),
        }

    rows = [
        sacct_run("adam", 0, 3174.4, 100.0),
        sacct_run("adam", 1, 3000.0, 120.0),
        sacct_run("sgd", 0, 2500.0, 700.0),
        {
            "optimizer": "sgd",
            "seed": 1,
            "status": "completed",
            "wall_seconds": 36.0,
            "cpu_seconds": 18.0,
            "max_rss_mb": 512.0,
            "cpus": 2,
        },
    ]
    return cost.add_columns(pd.DataFrame(rows))


def test_efficiency_and_hours_from_accounting_or_the_process():
    runs = runs_frame()
    assert list(runs["usage_source"]) == ["sacct", "sacct", "sacct", "process"]
    assert runs["cpu_hours"].tolist() == pytest.approx([800 / 3600] * 3 + [72 / 3600])
    assert runs["gpu_hours"].tolist() == pytest.approx([100 / 3600] * 3 + [0.0])
    assert runs["cpu_efficiency"].tolist() == pytest.approx([100 / 800, 120 / 800, 700 / 800, 0.25])
    assert runs["peak_rss_mb"].tolist() == [3174.4, 3000.0, 2500.0, 512.0]
    assert runs.loc[0, "mem_efficiency"] == pytest.approx(3174.4 / 32768) and math.isnan(
        runs.loc[3, "mem_efficiency"]
    )


def test_right_sizing_hints_name_the_setting_that_would_fit():
    runs = runs_frame()
    groups = [(f"optimizer={o}", runs[runs["optimizer"] == o]) for o in ("adam", "sgd")]
    hints = cost.sizing_hints(runs, groups)
    assert (
        hints[0] == "asked 32 GB per task, used at most 3.1 GB (optimizer=adam):"
        " `hydra.launcher.mem_gb=4` would fit"
    )
    # 7 of 8: sized right
    assert "asked 8 CPUs per task, the busiest run kept 7.0 busy" not in " ".join(hints)
    assert any("never used CUDA" in h and "3 of 3 completed runs" in h for h in hints)
    least = cost.least_efficient(groups)
    assert [r["config"] for r in least] == ["optimizer=adam", "optimizer=sgd"]
    assert least[0]["cpu_efficiency"] == pytest.approx((100 / 800 + 120 / 800) / 2)


def test_collect_adds_the_accounting_columns_and_sums_hours_per_configuration(tmp_path):
    sweep = sweep_of(tmp_path, 2)
    manifest.write(sweep)
    for task in sweep.tasks:
        runfiles.write_metrics(
            tmp_path / task.run_dir,
            {
                "status": "completed",
                "seed": task.index,
                "score": 1.0,
                "wall_seconds": 90.0,
                "cpu_seconds": 40.0,
                "max_rss_mb": 900.0,
                "cpus": 2,
            },
        )
        runfiles.write_accounting(
            tmp_path / task.run_dir,
            {
                "source": "sacct",
                "attempts": [
                    {
                        "job_id": task.job_id,
                        "scheduler_state": "COMPLETED",
                        "elapsed_s": 3600.0,
                        "cpu_s": 1800.0,
                        "max_rss_mb": None,
                        "req_mem_mb": 4096.0,
                        "cpus": 2,
                        "gpus": 1,
                        "node": "n",
                    }
                ],
            },
        )
    c = collect.collect([tmp_path], record_accounting=False)
    run = c.runs.iloc[0]
    assert (run["acct_elapsed_s"], run["cpu_hours"], run["gpu_hours"], run["cpu_efficiency"]) == (
        3600,
        2,
        1,
        0.25,
    )
    # MaxRSS not sampled
    assert run["peak_rss_mb"] == 900.0 and run["mem_efficiency"] == pytest.approx(900 / 4096)
    assert list(c.summary.columns[:5]) == [
        "n_runs",
        "n_completed",
        "n_failed",
        "cpu_hours",
        "gpu_hours",
    ]
    assert (c.summary.loc[0, "cpu_hours"], c.summary.loc[0, "gpu_hours"]) == (4, 2)
    assert not any(
        col.startswith(("cpu_efficiency", "acct_", "max_rss")) for col in c.summary.columns
    )
    assert json.loads((tmp_path / "0" / "accounting.json").read_text())["schema_version"] == 1


def test_status_with_neither_slurmdbd_nor_slurmctld_judges_by_the_run_files(tmp_path, monkeypatch):
    """Both down (a controller restart during a slurmdbd outage): status answers, says both, and
    shows each task as its run directory says, never cancelled (retry would run it twice).
    tests/integration/test_restarts_slurm.py stops the real daemons."""
    sweep = sweep_of(tmp_path, 3)
    runfiles.write_metrics(tmp_path / "1", {"status": "running", "seed": 1})  # under way
    (tmp_path / "2" / "metrics.json").unlink()
    (tmp_path / "2").rmdir()  # still queued
    manifest.write(sweep)
    fake_commands(
        monkeypatch,
        {
            "sacct": (1, "", "sacct: error: Problem talking to the database: Connection refused"),
            "squeue": (
                1,
                "",
                "slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
            ),
        },
    )
    st = status.sweep_status(tmp_path)
    assert "accounting (slurmdbd) is unavailable" in st.note
    assert "the controller (slurmctld) is unreachable" in st.note
    assert [t.state for t in st.tasks] == ["completed", "running", "pending"]
    assert not st.retryable() and not st.done


def test_status_of_workers_across_an_unreachable_controller(tmp_path, monkeypatch):
    """A pool's worker the poll could not say is taken as alive: its claimed run shows running
    (not pending, nor interrupted), the runs no worker claimed yet pending, none retryable."""
    from hpcjobs.sweepdir import pools

    tasks = [manifest.TaskRecord(i, [f"seed={i}"], str(i), "h", pool="pool0") for i in range(3)]
    sweep = manifest.SweepManifest("demo", str(tmp_path), "slurm", tasks=tasks)
    sweep.new_pool(1).job_ids[0] = "30_0"
    manifest.write(sweep)
    journal = pools.Journal(pools.pool_dir(tmp_path, "pool0"), 0)
    journal.write("start", job_id="30_0", host="n1", pid=1, pid_started=None)
    journal.write("claim", task=0, takeover=0)
    journal.write("end", task=0, state="completed", seconds=1.0)
    journal.write("claim", task=1, takeover=0)
    journal.close()
    fake_commands(
        monkeypatch,
        {
            "sacct": (1, "", "sacct: error: Problem talking to the database: Connection refused"),
            "squeue": (1, "", "slurm_load_jobs error: Unable to contact slurm controller"),
        },
    )
    st = status.sweep_status(tmp_path)
    assert "unreachable" in st.note
    assert [t.state for t in st.tasks] == ["completed", "running", "pending"]
    assert not st.retryable()


@pytest.mark.parametrize("ping", [0, 1])
def test_a_run_completed_while_sacct_still_says_pending_asks_if_the_controller_is_there(
    tmp_path, monkeypatch, ping
):
    """sacct answers without slurmctld, with what it last reported: a run whose files say it
    completed is shown completed once `scontrol ping` says the controller is gone (else
    Slurm's word stands: its job may still be exiting)."""
    manifest.write(sweep_of(tmp_path, 1))
    calls = fake_commands(
        monkeypatch,
        {
            "sacct": (0, "12_0|PENDING|00:00:00|None assigned|0:0|00:00:00||4G|1||1\n", ""),
            "scontrol": (ping, "", "Slurmctld(primary) at vm is DOWN" if ping else ""),
        },
    )
    st = status.sweep_status(tmp_path)
    assert [c[0] for c in calls] == ["sacct", "scontrol"] and st.commands[-1] == "scontrol ping"
    if ping:
        assert st.counts == {"completed": 1} and "slurmctld) is unreachable" in st.note
    else:
        assert st.counts == {"pending": 1} and "unreachable" not in st.note
