"""hpcjobs on the real local Slurm cluster: submit, detach, status, collect."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from hpcjobs import cli
from hpcjobs.launching import registry
from hpcjobs.launching.backends import slurm_controller as slurm
from hpcjobs.results import collect, status
from hpcjobs.sweepdir import manifest

from .conftest import DEV_CLUSTER, run

TINY = ["trainer.epochs=1", "trainer.steps_per_epoch=2", "trainer.batch_size=32"]
SLURM = ["--multirun", "hydra/launcher=hpcjobs_slurm", "hydra.launcher.timeout_min=5"]


def launched_sweep() -> manifest.SweepManifest:
    return manifest.read(registry.registered_by_this_process()[-1])


def wait_sweep(sweep_dir: Path, timeout: float = 180) -> status.SweepStatus:
    deadline = time.monotonic() + timeout
    while True:
        st = status.sweep_status(sweep_dir)
        if st.done:
            return st
        if time.monotonic() > deadline:
            pytest.fail(f"sweep {sweep_dir} not done after {timeout} s: {st.counts}")
        time.sleep(1)


def array_ids(sweep: manifest.SweepManifest) -> list[str]:
    return slurm.array_ids(t.job_id for t in sweep.tasks)


def test_cnn_sweep_is_one_array_and_the_command_detaches(workdir, capsys):
    name = f"cnn_{uuid.uuid4().hex[:6]}"
    status_code = cli.main(
        [
            "experiment=cnn_sweep",
            *SLURM,
            *TINY,
            f"experiment_name={name}",
            "optimizer=sgd,adam",
            "optimizer.lr=0.01",
            "seed=0,1",
            "hydra.launcher.array_parallelism=2",
        ]
    )
    assert status_code == 0
    sweep = launched_sweep()
    # Back at the prompt before the tasks are done (each one imports torch and trains).
    assert not status.sweep_status(Path(sweep.sweep_dir)).done
    assert "status" in capsys.readouterr().out

    (array,) = array_ids(sweep)
    assert sorted(t.job_id for t in sweep.tasks) == [f"{array}_{i}" for i in range(4)]
    assert "ArrayTaskThrottle=2" in run("scontrol", "show", "job", array).stdout

    final = wait_sweep(Path(sweep.sweep_dir))
    assert final.counts == {"completed": 4}
    rows = run("sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,JobName,State").stdout.split()
    assert sorted(rows) == sorted(f"{array}_{i}|{name}|COMPLETED" for i in range(4))

    c = collect.collect([Path(sweep.sweep_dir)])
    assert len(c.runs) == 4 and set(c.runs["status"]) == {"completed"}
    assert c.runs["test_accuracy"].between(0, 1).all()
    assert set(c.runs["slurm_array_job_id"].astype(str)) == {array}


@pytest.fixture
def small_max_array_size(slurm_cluster):
    """The test cluster restarted with MaxArraySize=4, restored afterwards."""

    def up(env):
        proc = subprocess.run(
            [str(DEV_CLUSTER), "up"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    up({"HPCJOBS_CLUSTER_MAX_ARRAY_SIZE": "4"})
    yield 4
    up({})


def test_sweep_larger_than_max_array_size_is_split(workdir, small_max_array_size):
    assert cli.main(["workload=noop", *SLURM, "seed=range(0,10)"]) == 0
    sweep = launched_sweep()
    arrays = array_ids(sweep)
    assert len(arrays) == 3  # 4 + 4 + 2
    by_index = {t.index: t.job_id for t in sweep.tasks}
    assert [by_index[i] for i in range(10)] == (
        [f"{arrays[0]}_{i}" for i in range(4)]
        + [f"{arrays[1]}_{i}" for i in range(4)]
        + [f"{arrays[2]}_{i}" for i in range(2)]
    )
    assert wait_sweep(Path(sweep.sweep_dir)).counts == {"completed": 10}
    runs = collect.collect([Path(sweep.sweep_dir)]).runs
    assert list(runs["score"]) == [float(i) for i in range(10)]  # each task ran its own seed


def test_status_matches_sacct_and_shows_the_error_line(workdir, capsys):
    assert cli.main([*SLURM, *TINY, "trainer.device=cpu,cuda"]) == 0
    sweep = launched_sweep()
    final = wait_sweep(Path(sweep.sweep_dir))
    assert final.commands[0] == "sacct"
    assert final.counts == {"completed": 1, "failed": 1}
    (array,) = array_ids(sweep)
    sacct = dict(
        line.split("|")
        for line in run("sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,State").stdout.split()
    )
    # Slurm saw both tasks end cleanly; status says the same per task, except that the run
    # on cuda raised inside its (successful) job, which only the run directory knows.
    assert sacct == {t.job_id: "COMPLETED" for t in final.tasks}
    assert {t.job_id: t.scheduler_state for t in final.tasks} == sacct
    by_device = {t.overrides[-1]: t.state for t in final.tasks}
    assert by_device == {"trainer.device=cpu": "completed", "trainer.device=cuda": "failed"}
    capsys.readouterr()
    assert cli.main(["status", sweep.sweep_dir]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^completed\s+1\s", out, re.M) and re.search(r"^failed\s+1\s", out, re.M), out
    assert "RuntimeError: trainer.device=cuda but no CUDA device is visible" in out
    assert f"collect {sweep.sweep_dir}" in out


def test_task_cancelled_while_pending_is_reported_not_waited_on(workdir, capsys):
    assert (
        cli.main(
            [
                "workload=noop",
                *SLURM,
                "seed=range(0,3)",
                "hydra.launcher.array_parallelism=1",
                "hydra.launcher.setup=[sleep 3]",
            ]
        )
        == 0
    )
    sweep = launched_sweep()
    last = next(t for t in sweep.tasks if t.index == 2)
    run("scancel", last.job_id)  # still pending behind the throttle: Slurm forgets it
    capsys.readouterr()
    # --watch returns once every task has ended, the forgotten one included.
    assert cli.main(["status", sweep.sweep_dir, "--watch", "--interval", "1"]) == 0
    out = capsys.readouterr().out
    assert "[##############################] 3/3 ended" in out and "All 3 tasks have ended" in out
    final = status.sweep_status(Path(sweep.sweep_dir))
    assert final.counts == {"completed": 2, "cancelled": 1}
    assert next(t for t in final.tasks if t.index == 2).state == "cancelled"


def test_dry_run_submits_nothing(workdir, capsys):
    name = f"dry_{uuid.uuid4().hex[:6]}"
    assert (
        cli.main(
            [
                "workload=noop",
                *SLURM,
                "seed=0,1,2",
                f"experiment_name={name}",
                "hydra.launcher.dry_run=true",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    text = out.out + out.err
    assert "#SBATCH --array=0-2%3" in text and f"#SBATCH --job-name={name}" in text
    assert "nothing was submitted" in text
    assert name not in run("squeue", "-h", "-o", "%j").stdout
    assert name not in run("sacct", "-n", "-X", "-S", "now-1hour", "-o", "JobName%40").stdout
    assert not list(workdir.rglob("sweep.json"))


def test_wait_true_blocks_until_done_and_collects(workdir, capsys):
    assert (
        cli.main(
            [
                "workload=noop",
                *SLURM,
                "seed=0,1",
                "hydra.launcher.wait=true",
                "hydra.launcher.poll_interval_s=1",
            ]
        )
        == 0
    )
    sweep = launched_sweep()
    st = status.sweep_status(Path(sweep.sweep_dir))
    assert st.done and st.counts == {"completed": 2}  # done before the command returned
    out = capsys.readouterr().out
    assert "summary.csv" in out


def test_gpu_request_is_scheduled_on_the_fake_gpu_node(workdir):
    assert cli.main(["workload=noop", *SLURM, "seed=0", "hydra.launcher.gpus_per_node=1"]) == 0
    sweep = launched_sweep()
    assert wait_sweep(Path(sweep.sweep_dir)).counts == {"completed": 1}
    (array,) = array_ids(sweep)
    tres = run("sacct", "-n", "-X", "-P", "-j", array, "-o", "AllocTRES").stdout
    assert "gres/gpu=1" in tres


def test_bad_value_is_rejected_before_sbatch(workdir, capsys):
    name = f"bad_{uuid.uuid4().hex[:6]}"
    # noop's config is the core schema only: its seed must be >= 0.
    assert cli.main(["workload=noop", *SLURM, f"experiment_name={name}", "seed=0,-1"]) != 0
    err = capsys.readouterr().err
    assert "seed=-1: must be >= 0" in err and "nothing was submitted" in err
    assert name not in run("squeue", "-h", "-o", "%j").stdout


def test_injection_through_the_job_name_is_refused(workdir, capsys):
    assert (
        cli.main(
            ["workload=noop", *SLURM, "seed=0", "hydra.launcher.job_name='x\n#SBATCH --exclusive'"]
        )
        != 0
    )
    assert "newline or control character" in capsys.readouterr().err
    assert not list(workdir.rglob("sweep.json"))


def test_job_folder_with_pickles_is_private(workdir):
    assert cli.main(["workload=noop", *SLURM, "seed=0"]) == 0
    sweep = launched_sweep()
    folder = Path(sweep.sweep_dir) / ".submitit"
    assert oct(folder.stat().st_mode & 0o777) == oct(0o700)
    wait_sweep(Path(sweep.sweep_dir))
    metrics = json.loads((Path(sweep.sweep_dir) / "0" / "metrics.json").read_text())
    # A one-task sweep is a plain job (submitit submits a batch of one without --array).
    assert metrics["status"] == "completed" and metrics["slurm_job_id"] == sweep.tasks[0].job_id


def test_wait_true_returns_each_result_to_hydra(workdir):
    """Through Hydra's launcher API, as a sweeper that needs return values (Optuna) uses it."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus, setup_globals
    from hydra.types import HydraContext, RunMode

    from hpcjobs.app import CONFIG_DIR, task

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR))
    config = loader.load_configuration(
        "config",
        overrides=[
            "workload=noop",
            "hydra/launcher=hpcjobs_slurm",
            "hydra.launcher.wait=true",
            "hydra.launcher.poll_interval_s=1",
        ],
        run_mode=RunMode.MULTIRUN,
    )
    setup_globals()
    HydraConfig.instance().set_config(config)
    context = HydraContext(config_loader=loader, callbacks=Callbacks())
    launcher = Plugins.instance().instantiate_launcher(
        hydra_context=context, task_function=task, config=config
    )
    returns = launcher.launch(
        [["workload=noop", "seed=3"], ["workload=noop", "seed=4"]], initial_job_idx=0
    )
    assert [r.status for r in returns] == [JobStatus.COMPLETED, JobStatus.COMPLETED]
    assert [r.return_value["score"] for r in returns] == [3.0, 4.0]
    assert all(r.return_value["slurm_array_job_id"] for r in returns)


def test_login_node_never_imports_torch(workdir):
    """Validating and submitting a CNN sweep must not pay torch's import on the login node."""
    name = f"notorch_{uuid.uuid4().hex[:6]}"
    code = (
        "import sys; from hpcjobs import cli; "
        "status = cli.main(['experiment=cnn_sweep', '--multirun', 'hydra/launcher=hpcjobs_slurm', "
        f"'experiment_name={name}', 'optimizer=sgd', 'optimizer.lr=0.1', 'seed=0,1']); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', status)"
    )
    try:
        proc = subprocess.run(
            [os.sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert proc.stdout.strip().splitlines()[-1] == "NO-TORCH 0", proc.stdout + proc.stderr
        assert "submitted 2 tasks" in proc.stdout + proc.stderr
    finally:
        run("scancel", "-n", name)  # the check is done; the training itself is not needed
