"""An adaptive sweep (Optuna) on the real Slurm cluster: the command returns at once, three workers
(one array) run twelve trials, and a worker cancelled mid-trial hands its trial to another.

The same machinery on the local backend: tests/test_study.py.
"""

from __future__ import annotations

import subprocess
import sys
import time

import optuna

from hpcjobs import cli, states
from hpcjobs.launching import registry
from hpcjobs.results import collect, status
from hpcjobs.run import study
from hpcjobs.sweepdir import manifest, pools, runfiles

from .conftest import run
from .test_slurm_sweep import wait_sweep

# Trials of a few seconds each (60 small epochs); heartbeats every second, so a worker that
# died is noticed ~4 s later.
STUDY = [
    "--multirun",
    "experiment=cnn_optuna",
    "hydra/launcher=hpcjobs_slurm",
    "hydra.launcher.workers=3",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.cpus_per_task=1",
    "hydra.sweeper.n_trials=12",
    "hydra.sweeper.heartbeat_s=1",
    "hydra.sweeper.rerun_best_seeds=0",
    "model.channels=[4,8]",
    "model.hidden=8",
    "trainer.epochs=40",
    "trainer.device=cpu",
    "trainer.batch_size=range(64,129,step=64)",
]


def test_twelve_trials_on_three_workers_survive_a_worker_cancelled_mid_trial(workdir):
    started = time.monotonic()
    assert cli.main(STUDY) == 0
    returned_after = time.monotonic() - started
    sweep_dir = registry.latest_sweep()
    assert not status.sweep_status(sweep_dir).done  # back at the prompt while the study runs
    (workers,) = manifest.read(sweep_dir).pools
    assert workers.workers == 3 and all(workers.job_ids)

    # Cancel a worker two epochs into a trial (scancel: SIGTERM, SIGKILL after KillWait).
    where = pools.pool_dir(sweep_dir, workers.id)
    victim, deadline = None, time.monotonic() + 180
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.5)
        for worker in pools.read_pool(where).workers.values():
            if (
                worker.running is not None
                and len(runfiles.read_history(sweep_dir / str(worker.running))) >= 2
            ):
                victim = worker
                break
    assert victim is not None, (
        f"no worker got two epochs into a trial: {status.sweep_status(sweep_dir).counts}"
    )
    run("scancel", victim.job_id)

    st = wait_sweep(sweep_dir, timeout=300)
    assert set(st.counts) <= {states.COMPLETED, states.PRUNED} and sum(st.counts.values()) == 12, (
        st.counts
    )
    spec = study.StudySpec.from_dict(manifest.read(sweep_dir).study)
    trials = study.load(sweep_dir, spec).get_trials(deepcopy=False)
    finished = [
        t
        for t in trials
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    # the cancelled worker's trial was continued, not lost or doubled
    assert len(finished) == 12 == len(trials)
    view = pools.read_pool(where)
    taken = victim.running
    assert view.takeover[taken] == 1 and view.claimed_by[taken] != victim.worker
    # resumed in its own directory
    assert runfiles.read_metrics(sweep_dir / str(taken))["restarts"] == 1

    runs = collect.collect([sweep_dir]).runs
    assert len(runs) == 12 and set(runs["status"]) <= {states.COMPLETED, states.PRUNED}
    assert cli.main(["report", str(sweep_dir), "--out", str(workdir / "report")]) == 0
    best = max(
        (t for t in trials if t.value is not None and t.state == optuna.trial.TrialState.COMPLETE),
        key=lambda t: t.value,
    )
    report = (workdir / "report" / "report.md").read_text()
    assert f"{best.value:.4f}" in report and "trial" in report.lower()
    print(f"submitted and returned in {returned_after:.1f} s")


def test_submitting_a_study_never_imports_torch_on_the_login_node(workdir):
    args = [
        "--multirun",
        "experiment=cnn_optuna",
        "hydra/launcher=hpcjobs_slurm",
        "hydra.launcher.workers=1",
        "hydra.launcher.cpus_per_task=1",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.rerun_best_seeds=0",
        "trainer.epochs=1",
        "model.channels=[4,8]",
        "model.hidden=8",
        "trainer.device=cpu",
    ]
    code = (
        f"import sys; from hpcjobs import cli; rc = cli.main({args!r}); "
        "print(rc, 'torch' in sys.modules, 'optuna' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split()[-3:] == ["0", "False", "True"], out.stderr[-2000:]
    sweep_dir = max(
        (p.parent for p in workdir.glob("multirun/cnn_optuna/*/sweep.json")), key=lambda p: p.name
    )
    assert wait_sweep(sweep_dir).counts.keys() <= {states.COMPLETED, states.PRUNED}
