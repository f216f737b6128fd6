"""A node that fails under a sweep's tasks: every attempt kept from sacct --duplicates, `status`
naming the node, a node that failed twice left out of `retry` (sacct and squeue faked here;
tests/integration/test_node_failure_slurm.py takes a real node down)."""

from __future__ import annotations

from pathlib import Path

import pytest
from slurm_fakes import fake_commands

from hpcjobs import cli, states
from hpcjobs.launching import failing_nodes
from hpcjobs.launching.backends import slurm_controller as slurm
from hpcjobs.results import accounting, status
from hpcjobs.sweepdir import manifest, runfiles

# What sacct -n -P -D -o USAGE_FIELDS printed on the dev cluster for a task whose node (n1) was
# taken down: its NODE_FAIL attempt and its steps, then the attempt Slurm requeued on n2 (MaxRSS
# made different per attempt, to tell whose steps count for whom).
REQUEUED = (
    "2540|NODE_FAIL|00:00:04|n1|0:0|00:03.500||1000M|1|billing=1,cpu=1,mem=1000M,node=1|1"
    "|2026-12-05T17:40:06\n"
    "2540.batch|CANCELLED|00:00:04|n1|0:15|00:00.010|9000K||1|cpu=1,mem=1000M,node=1|1"
    "|2026-12-05T17:40:06\n"
    "2540.0|CANCELLED|00:00:04|n1|0:9|00:03.490|400000K||1|cpu=1,mem=1000M,node=1|1"
    "|2026-12-05T17:40:06\n"
    "2540|COMPLETED|00:00:20|n2|0:0|00:19.000||1000M|1|billing=1,cpu=1,mem=1000M,node=1|1"
    "|2026-12-05T17:41:02\n"
    "2540.batch|COMPLETED|00:00:20|n2|0:0|00:00.010|9000K||1|cpu=1,mem=1000M,node=1|1"
    "|2026-12-05T17:41:02\n"
    "2540.0|COMPLETED|00:00:20|n2|0:0|00:18.990|200000K||1|cpu=1,mem=1000M,node=1|1"
    "|2026-12-05T17:41:02\n"
)


def test_every_attempt_of_a_task_slurm_requeued_is_kept_with_its_own_use():
    by_task, used, requeued = slurm.parse_attempts(REQUEUED.splitlines())
    task = by_task["2540"]
    assert (task.state, task.node, task.ended_at) == ("completed", "n2", "2026-12-05T17:41:02")
    (lost,) = task.earlier
    assert (lost.state, lost.node, lost.ended_at) == ("node_fail", "n1", "2026-12-05T17:40:06")
    assert task.node_failures() == [lost]
    # what each attempt used, its own steps' peak memory included
    (first,) = requeued["2540"]
    assert (first.node, first.elapsed_s, first.cpu_s) == ("n1", 4, 3.5)
    assert first.max_rss_mb == pytest.approx(400000 / 1024)
    assert (used["2540"].node, used["2540"].elapsed_s) == ("n2", 20)
    assert used["2540"].max_rss_mb == pytest.approx(200000 / 1024)
    # the old two-value form answers with the latest attempt
    assert slurm.parse_usage(REQUEUED.splitlines())[1] == used


def test_a_node_failure_slurm_is_requeueing_is_pending_not_ended(monkeypatch):
    # Accounting lists the NODE_FAIL a moment before the requeued attempt: the controller
    # already has it queued again. Without JobRequeue (--no-requeue) it stays node_fail.
    calls = fake_commands(
        monkeypatch,
        {
            "sacct": (
                0,
                "7_0|NODE_FAIL|00:00:04|n1|0:0|2026-12-05T17:40:06\n"
                "7_1|NODE_FAIL|00:00:05|n1|0:0|2026-12-05T17:40:06\n",
                "",
            ),
            "squeue": (0, "7_0|PENDING|0:00|\n7_1|NODE_FAIL|0:05|n1\n", ""),
        },
    )
    poll = slurm.task_states(["7_0", "7_1"])
    assert [c[0] for c in calls] == ["sacct", "squeue"] and "-D" in calls[0]
    requeueing, ended = poll.states["7_0"], poll.states["7_1"]
    assert requeueing.state == states.PENDING
    assert [(f.node, f.ended_at) for f in requeueing.node_failures()] == [
        ("n1", "2026-12-05T17:40:06")
    ]
    assert ended.state == states.NODE_FAIL and ended.node_failures() == [ended]


def slurm_sweep(tmp_path: Path, job_ids: list[list[str]]) -> manifest.SweepManifest:
    """A Slurm sweep whose task i was submitted as each of job_ids[i] in turn; written."""
    tasks = []
    for i, ids in enumerate(job_ids):
        task = manifest.TaskRecord(i, [f"seed={i}"], str(i), "h")
        for n, job_id in enumerate(ids):
            task.submitted(job_id, "submitted" if n == 0 else "retry: node_fail")
        tasks.append(task)
        runfiles.write_metrics(tmp_path / str(i), {"status": "interrupted", "seed": i})
    sweep = manifest.SweepManifest("demo", str(tmp_path), "slurm", tasks=tasks)
    manifest.write(sweep)
    return sweep


def test_accounting_keeps_the_attempt_a_node_failure_cost(tmp_path, monkeypatch):
    sweep = slurm_sweep(tmp_path, [["2540"]])
    runfiles.write_metrics(tmp_path / "0", {"status": "completed", "seed": 0, "restarts": 1})
    fake_commands(monkeypatch, {"sacct": (0, REQUEUED, ""), "squeue": (0, "", "")})
    assert status.sweep_status(tmp_path).accounted == 1
    recorded = runfiles.read_accounting(tmp_path / "0")
    assert [(a["job_id"], a["node"], a["scheduler_state"]) for a in recorded["attempts"]] == [
        ("2540", "n1", "NODE_FAIL"),
        ("2540", "n2", "COMPLETED"),
    ]
    columns = accounting.columns(recorded)
    assert (columns["acct_attempts"], columns["acct_elapsed_s"]) == (2, 24)
    assert (columns["acct_node"], columns["acct_state"]) == ("n2", "COMPLETED")  # the latest
    assert columns["cpu_hours"] == pytest.approx(24 / 3600)  # the lost attempt costs too
    del sweep


def test_status_names_the_node_that_failed_and_where_the_task_went(tmp_path, monkeypatch, capsys):
    slurm_sweep(tmp_path, [["2540"], ["2541"]])
    runfiles.write_metrics(tmp_path / "0", {"status": "completed", "seed": 0})
    (tmp_path / "0" / runfiles.ACCOUNTING_FILE).write_text('{"attempts": []}')  # recorded
    (tmp_path / "1" / runfiles.ACCOUNTING_FILE).write_text('{"attempts": []}')
    fake_commands(
        monkeypatch,
        {
            "sacct": (
                0,
                "2540|NODE_FAIL|00:00:04|n1|0:0|2026-12-05T17:40:06\n"
                "2540|COMPLETED|00:00:20|n2|0:0|2026-12-05T17:41:02\n"
                "2541|NODE_FAIL|00:00:09|n2|0:0|2026-12-05T17:45:30\n",
                "",
            ),
            "squeue": (0, "", ""),  # 2541 was not requeued (--no-requeue) and left the queue
        },
    )
    assert cli.main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 task(s) lost a node under them:" in out
    assert "task 0 (2540) n1: NODE_FAIL at 17:40:06, requeued, then on n2 (completed)" in out
    assert (
        "task 1 (2541) n2: NODE_FAIL at 17:45:30, not requeued: `retry` resumes it from its"
        " checkpoint" in out
    )


# Task 0 failed on n1 under its first submission (12_0) and again under its retry (15_0); task 1
# on n1 once, then it completed; task 2 lost n3 once and a two-node allocation once.
HISTORY = (
    "12_0|NODE_FAIL|00:00:04|n1|0:0|2026-12-05T17:40:06\n"
    "12_1|NODE_FAIL|00:00:04|n1|0:0|2026-12-05T17:40:07\n"
    "12_1|COMPLETED|00:00:20|n2|0:0|2026-12-05T17:41:02\n"
    "12_2|NODE_FAIL|00:00:04|n3|0:0|2026-12-05T17:40:08\n"
    "12_2|NODE_FAIL|00:00:04|n[2-3]|0:0|2026-12-05T17:42:00\n"
    "15_0|NODE_FAIL|00:00:02|n1|0:0|2026-12-05T17:50:01\n"
)


def test_a_node_that_failed_two_attempts_of_the_sweep_is_excluded(tmp_path, monkeypatch):
    sweep = slurm_sweep(tmp_path, [["12_0", "15_0"], ["12_1"], ["12_2"]])
    calls = fake_commands(monkeypatch, {"sacct": (0, HISTORY, ""), "squeue": (0, "", "")})
    failures, note = failing_nodes.node_failures(sweep)
    sacct = [c for c in calls if c[0] == "sacct"]
    assert len(sacct) == 1 and sacct[0][sacct[0].index("-j") + 1] == "12,15"  # one call
    assert not note
    # n1: three attempts of two tasks; n3: once (the two-node allocation blames neither node)
    assert sorted((f.node, f.task, f.job_id) for f in failures) == [
        ("n1", 0, "12_0"),
        ("n1", 0, "15_0"),
        ("n1", 1, "12_1"),
        ("n3", 2, "12_2"),
    ]
    excluded, kept = failing_nodes.exclusion(failures)
    assert list(excluded) == ["n1"] and not kept
    assert "task 0 (12_0, 2026-12-05T17:40:06)" in excluded["n1"]
    assert failing_nodes.exclusion(failures, include=["n1"]) == ({}, excluded)


def test_a_node_that_failed_two_workers_of_a_pool_is_excluded(tmp_path, monkeypatch):
    """A pool's tasks have no job of their own: their workers' jobs are what a node fails."""
    sweep = slurm_sweep(tmp_path, [[], []])
    pool = sweep.new_pool(2)
    pool.job_ids = ["20_0", "20_1"]
    for task in sweep.tasks:
        task.submitted(None, pool=pool.id)
    manifest.write(sweep)
    history = (
        "20_0|NODE_FAIL|00:00:04|n2|0:0|2026-12-05T18:00:01\n"
        "20_1|NODE_FAIL|00:00:05|n2|0:0|2026-12-05T18:00:02\n"
    )
    calls = fake_commands(monkeypatch, {"sacct": (0, history, ""), "squeue": (0, "", "")})
    failures, _ = failing_nodes.node_failures(manifest.read(tmp_path))
    assert [c[c.index("-j") + 1] for c in calls if c[0] == "sacct"] == ["20"]
    assert [(f.node, f.task, f.what) for f in failures] == [
        ("n2", None, "worker 0 of pool0"),
        ("n2", None, "worker 1 of pool0"),
    ]
    excluded, _ = failing_nodes.exclusion(failures)
    assert excluded == {
        "n2": "NODE_FAIL under worker 0 of pool0 (20_0, 2026-12-05T18:00:01) and worker 1 of"
        " pool0 (20_1, 2026-12-05T18:00:02)"
    }


@pytest.mark.parametrize(
    "exclude, nodes, merged",
    [
        (None, {"n1": "why"}, "n1"),
        ("n[3-4],gpu7", {"n1": "why"}, "n[3-4],gpu7,n1"),
        ("n1,n5", {"n1": "why"}, "n1,n5"),  # listed already: not twice
        ("n[1,3]", {"n2": "a", "n4": "b"}, "n[1,3],n2,n4"),  # a comma inside brackets is kept
    ],
)
def test_the_retry_adds_excluded_nodes_to_the_sweeps_own(exclude, nodes, merged):
    assert failing_nodes.apply({"exclude": exclude, "partition": "p"}, nodes) == {
        "exclude": merged,
        "partition": "p",
    }
    assert failing_nodes.apply({"exclude": exclude}, {}) == {"exclude": exclude}


def test_retry_says_which_node_it_excludes_and_how_to_keep_it(tmp_path, monkeypatch, capsys):
    slurm_sweep(tmp_path, [["12_0", "15_0"], ["12_1"], ["12_2"]])
    fake_commands(monkeypatch, {"sacct": (0, HISTORY, ""), "squeue": (0, "", "")})
    monkeypatch.setattr(slurm, "available", lambda: True)
    assert cli.main(["retry", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "excluding n1 (sbatch --exclude)" in out.out
    assert "keep it in: --include-node n1" in out.out and "n3" not in out.out
    # the sweep directory after the flag is the sweep's, not a node
    assert cli.main(["retry", "--include-node", "n1,n3", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "excluding" not in out.out and "keeping n1 in (--include-node)" in out.out
    assert "--include-node n3: not a node this retry would exclude" in out.err


def test_an_excluded_node_is_recorded_with_the_retrys_attempts(tmp_path):
    sweep = slurm_sweep(tmp_path, [["12_0"]])
    sweep.tasks[0].submitted("15_0", "retry: node_fail", excluded={"n1": "NODE_FAIL under ..."})
    manifest.write(sweep)
    first, retried = manifest.read(tmp_path).tasks[0].attempts
    assert first.excluded is None and retried.excluded == {"n1": "NODE_FAIL under ..."}


def test_a_retry_keeps_every_resources_group_off_the_excluded_nodes(tmp_path, monkeypatch):
    # Resources per configuration (hpcjobs/launching/groups.py): a group's own settings replace
    # the sweep's, so the exclusion must reach each group's submission, not only the sweep's.
    from hpcjobs.launching import submission

    sweep = slurm_sweep(tmp_path, [["12_0"], ["13_0"]])
    sweep.launcher = {"exclude": "n9", "partition": "debug"}
    sweep.groups = {"r1": {"partition": "gpub", "exclude": "n8"}}
    sweep.tasks[1].group = "r1"
    manifest.write(sweep)
    monkeypatch.setattr(slurm, "available", lambda: True)
    asked: list[tuple[str | None, str | None, list[int]]] = []

    def submit(backend, sweep, tasks, payload, runners, why="submitted", excluded=None):
        asked.append(
            (backend.settings.partition, backend.settings.exclude, [t.index for t in tasks])
        )
        assert excluded == {"n1": "twice"}
        return {}

    monkeypatch.setattr(submission, "submit", submit)
    monkeypatch.setattr(submission.payloads, "find", lambda sweep, record: tmp_path / "p.pkl")
    submission.resubmit(tmp_path, {0: "node_fail", 1: "node_fail"}, {}, None, {"n1": "twice"})
    assert sorted(asked) == [("debug", "n9,n1", [0]), ("gpub", "n8,n1", [1])]
    assert manifest.read(tmp_path).launcher["exclude"] == "n9"  # the user's own, unchanged
