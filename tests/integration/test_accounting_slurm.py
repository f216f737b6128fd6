"""What each Slurm run cost, kept in its run directory: one sacct call for the sweep, shown in
the report; and, when accounting cannot answer, what the runs' processes measured, with a note."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from hpcjobs import cli
from hpcjobs.launching.backends import slurm_controller as slurm
from hpcjobs.results import status
from hpcjobs.sweepdir import manifest

from .test_slurm_sweep import SLURM, launched_sweep

# Three 2-second runs, each asking for 4 GB and a (fake) GPU; accounting samples every second
# (the default 30 s would leave such short tasks without MaxRSS).
SIZED = [
    "workload=noop",
    *SLURM,
    "+sleep_s=2",
    "hydra.launcher.mem_gb=4",
    "hydra.launcher.gpus_per_node=1",
    "+hydra.launcher.additional_parameters.acctg_freq=1",
]


def counting_calls(monkeypatch) -> list[list[str]]:
    """Every controller command hpcjobs runs from here on (argv), still run for real."""
    calls: list[list[str]] = []
    real = slurm._run

    def run(argv):
        calls.append(list(argv))
        return real(argv)

    monkeypatch.setattr(slurm, "_run", run)
    return calls


def wait_for(slurm_cluster, sweep: manifest.SweepManifest) -> None:
    (array,) = slurm.array_ids(t.job_id for t in sweep.tasks)
    slurm_cluster.wait_job(array, timeout=120, tasks=len(sweep.tasks))


def test_accounting_is_recorded_in_one_sacct_call_and_shown(
    workdir, slurm_cluster, monkeypatch, capsys
):
    assert cli.main([*SIZED, "seed=0,1,2"]) == 0
    sweep = launched_sweep()
    wait_for(slurm_cluster, sweep)
    runs = [Path(sweep.sweep_dir) / t.run_dir for t in sweep.tasks]
    assert not any((r / "accounting.json").exists() for r in runs)  # nobody has asked yet
    metrics_before = [(r / "metrics.json").read_bytes() for r in runs]

    calls = counting_calls(monkeypatch)
    st = status.sweep_status(Path(sweep.sweep_dir))
    assert st.counts == {"completed": 3} and st.accounted == 3
    # one call for the 3 runs, steps included
    assert [c[0] for c in calls] == ["sacct"] and "-X" not in calls[0]
    for task, run in zip(sweep.tasks, runs):
        (attempt,) = json.loads((run / "accounting.json").read_text())["attempts"]
        assert attempt["job_id"] == task.job_id and attempt["scheduler_state"] == "COMPLETED"
        assert (attempt["req_mem_mb"], attempt["cpus"], attempt["gpus"]) == (4096, 1, 1)
        assert attempt["elapsed_s"] >= 2 and attempt["cpu_s"] > 0 and attempt["max_rss_mb"] > 0
        metrics = json.loads((run / "metrics.json").read_text())
        assert attempt["node"] == metrics["slurm_node"]  # the node the run itself saw (n1, n2)
        # the process measured itself too
        assert metrics["cpu_seconds"] >= 0 and metrics["max_rss_mb"] > 0
    # completed runs untouched
    assert [(r / "metrics.json").read_bytes() for r in runs] == metrics_before
    recorded = [(r / "accounting.json").stat().st_mtime_ns for r in runs]

    calls.clear()
    assert status.sweep_status(Path(sweep.sweep_dir)).accounted == 0
    assert len(calls) == 1 and "-X" in calls[0]  # everything recorded: the plain poll again
    assert [(r / "accounting.json").stat().st_mtime_ns for r in runs] == recorded

    capsys.readouterr()
    assert cli.main(["report", sweep.sweep_dir, "--out", str(workdir / "out")]) == 0
    assert "measured by sacct for 3 run(s), by their process for 0" in capsys.readouterr().out
    table = pd.read_csv(workdir / "out" / "runs.csv")
    assert set(table["usage_source"]) == {"sacct"} and (table["acct_req_mem_mb"] == 4096).all()
    assert (table["gpu_hours"] > 0).all() and table["cpu_efficiency"].between(0, 1.5).all()
    assert (table["mem_efficiency"] < 0.25).all()
    summary = pd.read_csv(workdir / "out" / "summary.csv")
    assert summary.loc[0, "gpu_hours"] == pytest.approx(table["gpu_hours"].sum())
    page = (workdir / "out" / "report.html").read_text()
    section = page[page.index('<h2 id="cost">') :]
    assert (
        "asked 4.0 GB per task, used at most" in section
        and "<code>hydra.launcher.mem_gb=1</code>" in section
    )
    assert "3 of 3 completed runs were given GPUs (1 per task) and never used CUDA" in section


def test_without_accounting_runs_show_what_their_process_measured(
    workdir, slurm_cluster, monkeypatch, capsys
):
    """slurmdbd down, as sacct says it: faked by a `sacct` shim first on PATH for this test only
    (other sessions share the dev cluster; stopping its slurmdbd would break their runs)."""
    assert cli.main(["workload=noop", *SLURM, "seed=0,1"]) == 0
    sweep = launched_sweep()
    wait_for(slurm_cluster, sweep)
    shims = workdir / "shims"
    shims.mkdir()
    (shims / "sacct").write_text(
        "#!/bin/sh\necho 'sacct: error: Problem talking to the database: "
        "Connection refused' >&2\nexit 1\n"
    )
    (shims / "sacct").chmod(0o755)
    with monkeypatch.context() as m:
        m.setenv("PATH", f"{shims}:{__import__('os').environ['PATH']}")
        st = status.sweep_status(Path(sweep.sweep_dir))
        assert "accounting (slurmdbd) is unavailable" in st.note and st.commands == [
            "sacct",
            "squeue",
        ]
        # squeue and the run files still say
        assert st.counts == {"completed": 2} and st.accounted == 0
        capsys.readouterr()
        assert cli.main(["report", sweep.sweep_dir, "--out", str(workdir / "down")]) == 0
        out = capsys.readouterr()
        assert "scheduler accounting not recorded" in out.err
        assert "measured by sacct for 0 run(s), by their process for 2" in out.out
    assert not list(Path(sweep.sweep_dir).glob("*/accounting.json"))
    table = pd.read_csv(workdir / "down" / "runs.csv")
    assert set(table["usage_source"]) == {"process"} and (table["max_rss_mb"] > 0).all()
    assert table["cpu_hours"].notna().all() and "acct_elapsed_s" not in table
    page = (workdir / "down" / "report.html").read_text()
    assert "scheduler accounting not recorded" in page and "their own process for 2" in page

    # sacct answers again: the next collect records what was missing.
    assert cli.main(["collect", sweep.sweep_dir, "--out", str(workdir / "up")]) == 0
    assert len(list(Path(sweep.sweep_dir).glob("*/accounting.json"))) == 2
    assert set(pd.read_csv(workdir / "up" / "runs.csv")["usage_source"]) == {"sacct"}
