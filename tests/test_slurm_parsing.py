"""Parsing what sacct/squeue print (faked here; tests/integration/ runs the real ones)."""

import pytest
from slurm_fakes import fake_commands

from hpcjobs.launching.backends import slurm_controller as slurm


def test_pending_ranges_and_requeues_are_expanded(monkeypatch):
    calls = fake_commands(
        monkeypatch,
        {
            "sacct": (
                0,
                (
                    "7_0|COMPLETED|00:00:03|node1|0:0\n"
                    "7_1|RUNNING|00:01:02|node2|0:0\n"
                    # an earlier attempt listed after: the last one wins
                    "7_1|PREEMPTED|00:00:30|node2|0:0\n"
                    "7_[2-3,5%2]|PENDING|00:00:00|None assigned|0:0\n"
                    "7_4|CANCELLED by 0|00:00:00|node1|0:0\n"
                    "8_0|OUT_OF_MEMORY|1-02:03:04|node3|0:125\n"
                ),
                "",
            )
        },
    )
    poll = slurm.task_states(["7_0", "7_1", "7_2", "7_3", "7_4", "7_5", "8_0"])
    states = {k: v.state for k, v in poll.states.items()}
    assert states == {
        "7_0": "completed",
        "7_1": "preempted",
        "7_2": "pending",
        "7_3": "pending",
        "7_4": "cancelled",
        "7_5": "pending",
        "8_0": "failed",
    }
    assert (
        poll.states["8_0"].elapsed == "1-02:03:04"
        and poll.states["8_0"].scheduler_state == "OUT_OF_MEMORY"
    )
    assert [c[0] for c in calls] == ["sacct"]  # every task answered: no squeue


def test_squeue_only_for_tasks_accounting_does_not_list(monkeypatch):
    calls = fake_commands(
        monkeypatch,
        {
            "sacct": (0, "9_0|COMPLETED|00:00:01|n|0:0\n", ""),
            "squeue": (0, "9_1|RUNNING|0:05|n\n", ""),
        },
    )
    poll = slurm.task_states(["9_0", "9_1", "9_2"])
    assert [c[0] for c in calls] == ["sacct", "squeue"]
    assert poll.states["9_1"].state == "running" and poll.states["9_1"].elapsed == "00:00:05"
    # Known to neither: Slurm forgot it (cancelled while pending); never waited on.
    assert poll.states["9_2"].state == "cancelled"
    assert poll.states["9_2"].scheduler_state.startswith("UNKNOWN")


def test_accounting_unavailable_falls_back_to_squeue_with_a_note(monkeypatch):
    fake_commands(
        monkeypatch,
        {
            "sacct": (1, "", "sacct: error: Slurm accounting storage is disabled\n"),
            "squeue": (0, "5_0|PENDING|0:00|\n", ""),
        },
    )
    poll = slurm.task_states(["5_0", "5_1"])
    assert "accounting" in poll.note and "run directories" in poll.note
    assert poll.states["5_0"].state == "pending"
    assert poll.commands == ["sacct", "squeue"]


def test_controller_unreachable_leaves_unlisted_tasks_unknown_not_cancelled(monkeypatch):
    """slurmctld restarting: squeue says so (tests/integration/test_restarts_slurm.py restarts
    the real one). A task sacct does not list is unknown, never "cancelled" (retry would run it
    again)."""
    squeue_err = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
    fake_commands(
        monkeypatch,
        {
            "sacct": (0, "9_0|COMPLETED|00:00:01|n|0:0\n", ""),
            "squeue": (1, "", squeue_err),
        },
    )
    poll = slurm.task_states(["9_0", "9_1"])
    assert poll.partial and set(poll.states) == {"9_0"} and poll.states["9_0"].state == "completed"
    assert "controller (slurmctld) is unreachable" in poll.note
    assert "run directories" in poll.note and poll.commands == ["sacct", "squeue"]
    # A NODE_FAIL that Slurm may have queued again (JobRequeue): only squeue could say, so it is
    # unknown too, not an ended task that retry would run a second time.
    fake_commands(
        monkeypatch,
        {"sacct": (0, "9_0|NODE_FAIL|00:00:04|n1|0:0\n", ""), "squeue": (1, "", squeue_err)},
    )
    poll = slurm.task_states(["9_0"])
    assert poll.partial and poll.states == {}
    # with accounting down too: nothing known, both said
    fake_commands(
        monkeypatch,
        {
            "sacct": (1, "", "sacct: error: Problem talking to the database: Connection refused\n"),
            "squeue": (1, "", squeue_err),
        },
    )
    poll = slurm.task_states(["9_0", "9_1"])
    assert poll.partial and poll.states == {}
    assert "accounting (slurmdbd) is unavailable" in poll.note and "unreachable" in poll.note
    # any other squeue failure is still an error
    fake_commands(
        monkeypatch,
        {"sacct": (0, "", ""), "squeue": (1, "", "squeue: error: Invalid user for SlurmUser\n")},
    )
    with pytest.raises(slurm.LauncherError, match="squeue failed") as raised:
        slurm.task_states(["9_0"])
    assert not isinstance(raised.value, slurm.ControllerUnreachable)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("00:00:05", 5),
        ("0:05", 5),
        ("1:02:03", 3723),
        ("2-00:00:01", 172801),
        ("", 0),
        ("00:21.261", 21.261),
    ],
)
def test_durations_in_slurms_format(text, seconds):
    assert slurm.duration_seconds(text) == pytest.approx(seconds)


def test_max_array_size_is_read_from_the_config(monkeypatch):
    fake_commands(
        monkeypatch, {"scontrol": (0, "MaxArraySize            = 4\nMaxJobCount = 10000\n", "")}
    )
    assert slurm.max_array_size() == 4


def test_wait_keeps_a_tasks_last_state_while_the_controller_is_unreachable(monkeypatch):
    """hydra.launcher.wait=true across a controller restart: a poll that cannot say a task
    neither ends the wait nor fails it."""
    from types import SimpleNamespace

    from hpcjobs.launching.backends import SlurmBackend
    from hpcjobs.launching.backends import slurm as slurm_backend
    from hpcjobs.launching.backends.base import Poll, TaskState

    backend = SlurmBackend({})
    polls = iter(
        [
            Poll({"5_0": TaskState("5_0", "running", "RUNNING")}, ["sacct"]),
            Poll(
                {}, ["sacct", "squeue"], "the controller (slurmctld) is unreachable", partial=True
            ),
            Poll({"5_0": TaskState("5_0", "completed", "COMPLETED")}, ["sacct"]),
        ]
    )
    monkeypatch.setattr(backend, "poll", lambda ids, accounting=False: next(polls))
    monkeypatch.setattr(slurm_backend.time, "sleep", lambda s: None)
    monkeypatch.setattr(backend, "_job_return", lambda task, job_id, state: (job_id, state))
    task = SimpleNamespace(index=0, overrides=(), label="seed=0")
    assert backend.wait([task], {0: "5_0"}) == [("5_0", "COMPLETED")]
    assert next(polls, None) is None  # it polled until the task had ended
