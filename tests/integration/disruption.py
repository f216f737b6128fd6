"""Tests that take the shared dev cluster's nodes down, one at a time.

The dev cluster is shared by everyone running the suite on this machine. A test that downs or
drains a node holds ``fcntl.flock`` on :data:`LOCK_PATH` for its whole duration (the fixture
:func:`exclusive_cluster`), so two disruptive tests never overlap (tests that restart the
daemons take the same lock), and on teardown, passed or failed, resumes every node it touched
and waits until Slurm schedules on it again. Import the fixture into a test module:
``exclusive_cluster = disruption.exclusive_cluster`` (a plain import would be
flagged as redefined by the test's argument).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator

import pytest

from .conftest import run

LOCK_PATH = "/tmp/hpcjobs-disrupt.lock"
# sinfo's short states (%t) of a node Slurm schedules on; anything else (down, drain, ...) waits
USABLE = frozenset({"idle", "mix", "alloc", "comp"})
RESUME_TIMEOUT_S = 90.0


def node_state(node: str) -> str:
    """sinfo's short state of NODE (``idle``, ``down*``, ``drain``, ``mix``, ...)."""
    out = run("sinfo", "-h", "-N", "-n", node, "-o", "%t", timeout=30).stdout
    return out.split("\n")[0].strip()


def job_processes(job_id: str) -> list[int]:
    """The processes of job JOB_ID (the raw id) on this host: its slurmstepd ('slurmstepd:
    [ID.batch]') and everything that has SLURM_JOB_ID=ID in its environment."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if cmdline.startswith(f"slurmstepd: [{job_id}.".encode()) or (
            f"SLURM_JOB_ID={job_id}".encode() in environ
        ):
            found.append(int(entry.name))
    return found


class Disruption:
    """Faults injected into the cluster's nodes, each undone by :meth:`restore`."""

    def __init__(self) -> None:
        self.touched: list[str] = []

    def _update(self, node: str, state: str, reason: str = "") -> None:
        if node not in self.touched:
            self.touched.append(node)
        argv = ["scontrol", "update", f"nodename={node}", f"state={state}"]
        proc = run(*argv, *([f"reason={reason}"] if reason else []), timeout=30)
        assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr.strip()}"

    def down(self, node: str, reason: str = "hpcjobs test: node failure") -> None:
        """Take NODE down now: Slurm ends its jobs as NODE_FAIL (and requeues batch jobs)."""
        self._update(node, "down", reason)

    def fail(self, node: str, *job_ids: str) -> None:
        """NODE dies under the jobs JOB_IDS (SLURM_JOB_ID: an array task's own id, as
        metrics.json's slurm_job_id): down now, their processes there killed.

        Only the down is Slurm's to see: it ends the jobs NODE_FAIL (and requeues them). A
        downed node's slurmd, unlike a dead node, may let their processes run on (here one did:
        its run finished on the downed node), so they are killed as a power cut would.
        """
        self.down(node)
        for pid in [p for job_id in job_ids for p in job_processes(job_id)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def drain(self, node: str, reason: str = "hpcjobs test: kept out") -> None:
        """Schedule nothing new on NODE; with ReturnToService=2 a downed node whose slurmd
        lives comes back by itself, a drained one does not."""
        self._update(node, "drain", reason)

    def restore(self) -> None:
        """Resume every node touched and wait until Slurm schedules on each again."""
        for node in self.touched:
            # An error here is a node already back (ReturnToService): the wait says.
            run("scontrol", "update", f"nodename={node}", "state=resume", timeout=30)
        deadline = time.monotonic() + RESUME_TIMEOUT_S
        waiting = list(self.touched)
        while waiting:
            waiting = [n for n in waiting if node_state(n) not in USABLE]
            if waiting and time.monotonic() > deadline:
                states = {n: node_state(n) for n in waiting}
                raise AssertionError(
                    f"nodes not usable {RESUME_TIMEOUT_S:.0f} s after resume: {states}"
                )
            if waiting:
                time.sleep(0.5)
        self.touched = []


@pytest.fixture
def exclusive_cluster(request: pytest.FixtureRequest) -> Iterator[Disruption]:
    """The cluster, ours alone to disrupt (the flock), left as found: nodes resumed, usable.

    The lock is taken before the cluster is asked whether it answers: whoever held it may
    have been restarting its daemons."""
    with open(LOCK_PATH, "a") as lock:  # close-on-exec: no daemon started here inherits it
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even on a crash
        request.getfixturevalue("two_nodes")  # the cluster, with two nodes (else skip or fail)
        disruption = Disruption()
        try:
            yield disruption
        finally:
            disruption.restore()
