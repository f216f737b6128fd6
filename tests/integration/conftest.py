"""Fixtures for the tests that run on the real local Slurm cluster.

Start the cluster first with ``scripts/dev-cluster up`` (as root). Without it the tests in this
directory are skipped, or fail when ``CI=true`` so that a CI run cannot pass without them.
Every test in this directory gets the ``slurm`` marker (``pytest -m "not slurm"`` leaves them out).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEV_CLUSTER = REPO_ROOT / "scripts" / "dev-cluster"
STATE_DIR = Path(os.environ.get("HPCJOBS_CLUSTER_DIR", "/tmp/hpcjobs-cluster"))

NOT_RUNNING = (
    "the local Slurm cluster does not answer; start it with `scripts/dev-cluster up` (as root)"
)

# sacct states after which a job never changes again ("CANCELLED by 0" is cut to its first word)
ENDED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml registers it too; add it only when run without that configuration
    if not any(line.split(":")[0].strip() == "slurm" for line in config.getini("markers")):
        config.addinivalue_line(
            "markers", "slurm: needs the real local Slurm cluster (scripts/dev-cluster up)"
        )


# tryfirst: xdist's own hook reads the xdist_group marker to name the test's group; named on
# the command line (pytest -n 2 tests/integration), this conftest's hook would run after it.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A conftest hook sees the items of the whole session: mark only those below this directory.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.slurm)
            # Under pytest-xdist (-n): one worker runs them all, one after the other, as
            # without it. They share the cluster's queue and CPUs, count its jobs, and some
            # take nodes or daemons down; the other workers run the tests that need no cluster.
            item.add_marker(pytest.mark.xdist_group("slurm"))


def run(
    *cmd: str, timeout: float = 10.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; never raises on a non-zero exit status."""
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )


class SlurmCluster:
    """Thin helpers around the Slurm command-line tools of the local cluster."""

    def sbatch(self, *args: str, cwd: Path | None = None) -> str:
        """Submit with ``sbatch --parsable ARGS`` and return the job id."""
        proc = run("sbatch", "--parsable", *args, cwd=cwd)
        assert proc.returncode == 0, f"sbatch {' '.join(args)} failed: {proc.stderr.strip()}"
        return proc.stdout.strip().split(";")[0]  # "ID" or "ID;cluster"

    def sacct(self, job_id: str, fields: str) -> list[list[str]]:
        """One row per job (or array task) of JOB_ID, no steps: ``sacct -n -X -P -o FIELDS``."""
        proc = run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", fields)
        assert proc.returncode == 0, f"sacct -j {job_id} failed: {proc.stderr.strip()}"
        return [line.split("|") for line in proc.stdout.splitlines() if line]

    def states(self, job_id: str) -> list[str]:
        """``sacct -n -X -P -j JOB_ID -o State``: one state per job or array task."""
        return [row[0].split()[0] for row in self.sacct(job_id, "State") if row[0]]

    def in_queue(self, job_id: str) -> bool:
        """Whether the controller still lists JOB_ID (or any of its array tasks) as not ended."""
        proc = run("squeue", "-h", "-j", job_id, "-o", "%i")
        return proc.returncode == 0 and bool(proc.stdout.strip())

    def wait_job(self, job_id: str, timeout: float = 60.0, tasks: int | None = None) -> list[str]:
        """Poll sacct until every row of JOB_ID has ended; return the final states.

        Ended means: sacct lists rows, all in an end state, and squeue no longer lists the job.
        For an array, pass TASKS: sacct records a task that started as the last pending one a
        few seconds late, so until then it can show e.g. 3 of 4 tasks, all COMPLETED.
        On timeout the job is cancelled and the test fails with the last states seen.
        """
        deadline = time.monotonic() + timeout
        states: list[str] = []
        while True:
            states = self.states(job_id)
            if (
                states
                and all(state in ENDED_STATES for state in states)
                and (tasks is None or len(states) >= tasks)
                and not self.in_queue(job_id)
            ):
                return states
            if time.monotonic() > deadline:
                run("scancel", job_id)
                pytest.fail(
                    f"job {job_id} did not end within {timeout:.0f} s;"
                    f" last sacct states: {states or 'none'}"
                )
            time.sleep(0.25)


def _answers() -> str | None:
    """None if sinfo and sacct both answer within a few seconds, else why not."""
    for cmd in (("sinfo", "-h"), ("sacct", "-n", "-X")):
        try:
            proc = run(*cmd, timeout=5)
        except FileNotFoundError:
            return f"{cmd[0]} is not installed"
        except subprocess.TimeoutExpired:
            return f"`{' '.join(cmd)}` did not answer within 5 s"
        if proc.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {(proc.stderr or proc.stdout).strip()[:200]}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The running local cluster; skipped (failed under CI=true) when it does not answer."""
    with pytest.MonkeyPatch.context() as mp:
        # Without /etc/slurm/slurm.conf, find the config that scripts/dev-cluster generated.
        conf = STATE_DIR / "etc" / "slurm.conf"
        if (
            "SLURM_CONF" not in os.environ
            and not Path("/etc/slurm/slurm.conf").exists()
            and conf.exists()
        ):
            mp.setenv("SLURM_CONF", str(conf))
        problem = _answers()
        if problem is not None:
            message = f"{NOT_RUNNING} ({problem})"
            if os.environ.get("CI") == "true":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        yield SlurmCluster()


def cluster_nodes() -> list[str]:
    """The cluster's compute nodes (those of the default partition), n1 first."""
    proc = run("sinfo", "-h", "-N", "-p", "debug", "-o", "%N", timeout=30)
    assert proc.returncode == 0, f"sinfo failed: {proc.stderr.strip()}"
    return sorted(set(proc.stdout.split()), key=lambda name: int(name.lstrip("n")))


@pytest.fixture(scope="session")
def two_nodes(slurm_cluster: SlurmCluster) -> list[str]:
    """The cluster's nodes, at least two (the multi-node tests); skipped (failed under CI=true)
    on a cluster of one node, as the whole directory is without a cluster."""
    nodes = cluster_nodes()
    if len(nodes) < 2:
        message = (
            f"needs a cluster of at least two nodes, this one has {nodes}: start it with"
            " HPCJOBS_CLUSTER_NODES unset (2) or >= 2 (`scripts/dev-cluster up`)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return nodes


@pytest.fixture
def workdir(tmp_path, monkeypatch, slurm_cluster):
    """An empty working directory and sweep registry, with the cluster up."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPCJOBS_STATE_DIR", str(tmp_path / "state"))
    return tmp_path
