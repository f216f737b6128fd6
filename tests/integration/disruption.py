"""Faults injected into the shared dev cluster, one disruptive test at a time: nodes taken down
or drained, daemons stopped and restarted.

The dev cluster is shared by everyone running the suite on this machine. A test that downs or
drains a node, or stops slurmctld or slurmdbd, holds ``fcntl.flock`` on :data:`LOCK` for its
whole duration (:func:`holding_lock`: this module is the one place that takes it), so two
disruptions never overlap, and on the way out, passed or failed, leaves the cluster as it found
it. Two fixtures, imported into a test module:

- ``exclusive_cluster`` (:class:`Disruption`): nodes down, drained, failed under a job; on
  teardown resumes every node it touched and waits until Slurm schedules on it again. Import it
  as ``exclusive_cluster = disruption.exclusive_cluster`` (a plain import would be flagged as
  redefined by the test's argument).
- ``daemons`` (:class:`Daemons`): daemons stopped and started by ``scripts/dev-cluster
  stop|start|restart DAEMON``, which owns their lifecycles; on the way out brings every daemon
  back and waits until the controller, accounting and every node answer.
  ``benchmarks/chaos.py`` uses :func:`disrupting` the same way::

    from .disruption import daemons_fixture  # noqa: F401  (the ``daemons`` fixture)

    def test_x(daemons):
        daemons.restart("slurmctld")
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import DEV_CLUSTER, run

LOCK = Path(os.environ.get("HPCJOBS_DISRUPT_LOCK", "/tmp/hpcjobs-disrupt.lock"))
# sinfo's short states (%t) of a node Slurm schedules on; anything else (down, drain, ...) waits
USABLE = frozenset({"idle", "mix", "alloc", "comp"})
RESUME_TIMEOUT_S = 90.0
# the daemons: how long a restart may take, and sinfo's long states (%T) of a schedulable node
READY_TIMEOUT_S = 120.0
SCHEDULABLE = ("idle", "mixed", "allocated", "completing")


@contextlib.contextmanager
def holding_lock() -> Iterator[None]:
    """Hold the disruption lock, waiting for whoever holds it (another disruptive test) to end."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "a") as lock:  # close-on-exec: no daemon started here inherits it
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even on a crash
        yield


# --- nodes ---------------------------------------------------------------------------------


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
    """The cluster, ours alone to disrupt (the lock), left as found: nodes resumed, usable.

    The lock is taken before the cluster is asked whether it answers: whoever held it may
    have been restarting its daemons."""
    with holding_lock():
        request.getfixturevalue("two_nodes")  # the cluster, with two nodes (else skip or fail)
        disruption = Disruption()
        try:
            yield disruption
        finally:
            disruption.restore()


# --- daemons -------------------------------------------------------------------------------


def _dev_cluster(action: str, daemon: str) -> None:
    proc = run(str(DEV_CLUSTER), action, daemon, timeout=READY_TIMEOUT_S + 30)
    if proc.returncode != 0:
        raise RuntimeError(
            f"scripts/dev-cluster {action} {daemon} failed:"
            f" {(proc.stderr or proc.stdout).strip()[-500:]}"
        )


def node_names() -> list[str]:
    """The nodes the cluster was started with (slurm.conf), whatever the controller says now."""
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    return [
        line.split()[0].removeprefix("NodeName=")
        for line in conf.read_text().splitlines()
        if line.startswith("NodeName=")
    ]


class Daemons:
    """The cluster's Slurm daemons, for a test that holds the disruption lock."""

    def stop(self, daemon: str) -> None:
        """Stop ``daemon`` (slurmctld, slurmdbd, slurmd-n1, ...) and wait until it is gone."""
        _dev_cluster("stop", daemon)

    def start(self, daemon: str) -> None:
        """Start it and wait until it answers (does nothing if it runs)."""
        _dev_cluster("start", daemon)

    def restart(self, daemon: str) -> None:
        _dev_cluster("restart", daemon)

    def restore(self) -> None:
        """Every daemon running, every node schedulable, the controller and accounting
        answering: the cluster as the disruptive test found it."""
        nodes = node_names()
        for daemon in ("slurmdbd", "slurmctld", *(f"slurmd-{n}" for n in nodes)):
            _dev_cluster("start", daemon)
        deadline = time.monotonic() + READY_TIMEOUT_S
        resumed: set[str] = set()
        while True:
            problems = self.problems(nodes)
            if not problems:
                return
            for node, state in problems.get("nodes", {}).items():
                # down or drained (no '*': its slurmd answers), by a fault injected here: once
                if state.rstrip("*~#") != state or node in resumed:
                    continue
                if state.split("+")[0] in ("down", "drained", "draining", "drain"):
                    run("scontrol", "update", f"nodename={node}", "state=resume", timeout=30)
                    resumed.add(node)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the dev cluster did not come back: {problems}")
            time.sleep(0.5)

    @staticmethod
    def problems(nodes: list[str]) -> dict:
        """What keeps the cluster from being ready ({} when ready)."""
        found: dict = {}
        if run("scontrol", "ping", timeout=15).returncode != 0:
            found["slurmctld"] = "scontrol ping fails"
            return found
        acct = run("sacct", "-n", "-X", "-S", "now-1minutes", "-o", "JobID", timeout=15)
        if acct.returncode != 0 or "error" in acct.stderr.lower():
            found["slurmdbd"] = (acct.stderr or acct.stdout).strip()[:200]
        listed = run("sinfo", "-h", "-N", "-o", "%N %T", timeout=15).stdout.split("\n")
        states = dict(line.split() for line in listed if len(line.split()) == 2)
        bad = {n: states.get(n, "missing") for n in nodes if states.get(n) not in SCHEDULABLE}
        if bad:
            found["nodes"] = bad
        return found


@contextlib.contextmanager
def disrupting() -> Iterator[Daemons]:
    """Hold the disruption lock and restore the cluster's daemons on the way out, whatever
    happened."""
    with holding_lock():
        daemons = Daemons()
        try:
            yield daemons
        finally:
            daemons.restore()  # the lock is released only once the cluster is back


@pytest.fixture(name="daemons")
def daemons_fixture(slurm_cluster) -> Iterator[Daemons]:
    """The cluster's daemons, this test alone disrupting them (skipped, or failed under CI=true,
    without a cluster: ``slurm_cluster``)."""
    with disrupting() as handle:
        yield handle
