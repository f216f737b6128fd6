"""`status` and `--version` load neither Hydra nor torch; Hydra, imported later, still prints
hpcjobs' errors compactly (they are its CompactHydraException)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hpcjobs.sweepdir import manifest, pools

# the trackers too: export imports its tracker's module only when asked for it
HEAVY = ("torch", "hydra", "omegaconf", "pandas", "submitit", "optuna", "tensorboard", "mlflow")


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True
    )


def _local_sweep_on_workers(sweep_dir: Path) -> None:
    """A local sweep of 5 tasks on 2 workers: task 0 ended, task 1 running, the rest unclaimed."""
    sweep = manifest.SweepManifest("lazy", str(sweep_dir), "local")
    pool = sweep.new_pool(2)
    for i in range(5):
        task = manifest.TaskRecord(i, [f"seed={i}"], str(i), "h")
        task.submitted(None, pool=pool.id)
        sweep.tasks.append(task)
    manifest.write(sweep)
    journal = pools.Journal(pools.pool_dir(sweep_dir, pool.id), 0)
    journal.write("start", worker=0, job_id="local_worker_0", host="elsewhere", pid=1)
    journal.write("claim", task=0, takeover=0)
    journal.write("end", task=0, state="completed", seconds=1.0)
    journal.write("claim", task=1, takeover=0)
    journal.close()


def test_status_loads_neither_hydra_nor_torch(tmp_path):
    _local_sweep_on_workers(tmp_path / "sweep")
    code = (
        "import sys\n"
        "from hpcjobs import cli\n"
        f"status = cli.main(['status', {str(tmp_path / 'sweep')!r}])\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules], status)\n"
    )
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    # what status says is what it says with everything loaded: 1 completed, 1 running, 3 waiting
    assert "completed          1" in proc.stdout and "running            1" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "LOADED [] 0"


def test_version_loads_no_hydra(tmp_path):
    code = (
        "import sys\n"
        "from hpcjobs import cli\n"
        "try:\n"
        "    cli.main(['status', '--version'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    proc = _python(code, tmp_path)
    assert proc.stdout.splitlines()[-1] == "LOADED []", proc.stderr


def test_hydra_imported_after_hpcjobs_errors_shares_its_exception_classes(tmp_path):
    code = (
        "import json, sys\n"
        "from hpcjobs import errors\n"
        "loaded = 'hydra' in sys.modules\n"
        "import hydra\n"
        "from hydra._internal import utils\n"
        "same = hydra.errors.CompactHydraException is errors.CompactHydraException\n"
        "compact = isinstance(errors.ConfigError('x'), utils.CompactHydraException)\n"
        "print(json.dumps([loaded, same, compact]))\n"
    )
    proc = _python(code, tmp_path)
    assert json.loads(proc.stdout.splitlines()[-1]) == [False, True, True], proc.stderr
