"""The chaos soak, short (benchmarks/chaos.py --quick --no-baseline): 60 runs on 4 workers
across the nodes, with a worker kill -9'd, a worker scancel'ed, a node down and up and
slurmctld restarted at random times, then `retry` until nothing is left: every run completed
exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_chaos_soak_loses_nothing_and_runs_nothing_twice(slurm_cluster, two_nodes, tmp_path):
    out = tmp_path / "chaos.json"
    # the script holds the disruption lock itself, and restores the cluster
    proc = subprocess.run(
        [sys.executable, "benchmarks/chaos.py", "--quick", "--no-baseline", "--json", str(out)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    kinds = ("kill -9 worker", "scancel worker", "node ", "slurmctld restarted")
    # each kind of fault, unless the sweep ended first (then fewer, never none)
    assert report["faults"] and all(any(k in f for k in kinds) for f in report["faults"]), report[
        "faults"
    ]
    audit = report["audit"]
    assert (audit["lost"], audit["completed_rerun"], audit["problems"]) == (0, 0, [])
    assert audit["completed_exactly_once"] == audit["tasks"] == 60
    assert audit["final_states"] == {"completed": 60}
    # the faults cost the workers they hit: Slurm recorded them
    assert set(audit["worker_job_attempts"]) - {"COMPLETED"}, audit["worker_job_attempts"]
