"""Stopping and restarting the dev cluster's daemons in a test, one disruptive test at a time.

The dev cluster is shared (other sessions, other test runs). A test that stops slurmctld or
slurmdbd holds ``flock /tmp/hpcjobs-disrupt.lock`` while it does (the node-failure tests'
``disruption.py`` takes the same lock), and on the way out, passed or failed, brings every
daemon back and waits until the controller and accounting answer again. The daemons are
stopped and started by ``scripts/dev-cluster stop|start|restart DAEMON``, which owns their
lifecycles (``benchmarks/chaos.py`` uses this module too)::

    from .daemons import daemons_fixture  # noqa: F401  (the ``daemons`` fixture)

    def test_x(daemons):
        daemons.restart("slurmctld")
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DEV_CLUSTER = Path(__file__).resolve().parents[2] / "scripts" / "dev-cluster"
LOCK = Path(os.environ.get("HPCJOBS_DISRUPT_LOCK", "/tmp/hpcjobs-disrupt.lock"))
READY_TIMEOUT_S = 120.0
SCHEDULABLE = ("idle", "mixed", "allocated", "completing")


def _run(*argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _dev_cluster(action: str, daemon: str) -> None:
    proc = _run(str(DEV_CLUSTER), action, daemon, timeout=READY_TIMEOUT_S + 30)
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
                    _run("scontrol", "update", f"nodename={node}", "state=resume", timeout=30)
                    resumed.add(node)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the dev cluster did not come back: {problems}")
            time.sleep(0.5)

    @staticmethod
    def problems(nodes: list[str]) -> dict:
        """What keeps the cluster from being ready ({} when ready)."""
        found: dict = {}
        if _run("scontrol", "ping", timeout=15).returncode != 0:
            found["slurmctld"] = "scontrol ping fails"
            return found
        acct = _run("sacct", "-n", "-X", "-S", "now-1minutes", "-o", "JobID", timeout=15)
        if acct.returncode != 0 or "error" in acct.stderr.lower():
            found["slurmdbd"] = (acct.stderr or acct.stdout).strip()[:200]
        listed = _run("sinfo", "-h", "-N", "-o", "%N %T", timeout=15).stdout.split("\n")
        states = dict(line.split() for line in listed if len(line.split()) == 2)
        bad = {n: states.get(n, "missing") for n in nodes if states.get(n) not in SCHEDULABLE}
        if bad:
            found["nodes"] = bad
        return found


@contextmanager
def disrupting() -> Iterator[Daemons]:
    """Hold the disruption lock (waiting for another disruptive test to finish) and restore the
    cluster on the way out, whatever happened."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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
