"""Adaptive sweeps (hydra/sweeper=hpcjobs_optuna) on the local backend: the search space and its
validation before submission, trials asked/run/told by workers, pruning as its own state, a
trial handed over from a worker that died, and a retried trial continuing with its values.

On the real Slurm cluster: tests/integration/test_study_slurm.py. What status, collect and
report show of a study: tests/test_study_results.py.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from hpcjobs import cli, heartbeat, states
from hpcjobs.config import search_space
from hpcjobs.errors import ConfigError
from hpcjobs.launching import registry
from hpcjobs.run import job, study
from hpcjobs.run.context import RunPruned
from hpcjobs.sweepdir import manifest, pools, runfiles

# A small CNN: a trial takes well under a second once the worker has imported torch.
TINY = ["model.channels=[4,8]", "model.hidden=8", "trainer.epochs=2", "trainer.device=cpu"]
STUDY = [
    "--multirun",
    "experiment=cnn_optuna",
    "hydra/launcher=hpcjobs_local",
    "hydra.launcher.poll_interval_s=0.2",
]
# A study of the noop workload (no torch to import): its score is its seed, searched here.
NOOP_STUDY = [
    "--multirun",
    "hydra/sweeper=hpcjobs_optuna",
    "workload=noop",
    "hydra/launcher=hpcjobs_local",
    "hydra.launcher.poll_interval_s=0.2",
    "hydra.sweeper.metric=score",
    "hydra.sweeper.intermediate=null",
    "seed=range(0,100)",
]


# --------------------------------------------------------------------------- the search space


def test_the_space_is_read_in_hydras_override_grammar():
    space = search_space.parse(
        {
            "optimizer": "choice(sgd, momentum, adam)",
            "optimizer.lr": "tag(log, interval(1e-4, 1e-1))",
            "trainer.batch_size": "range(16, 129, step=16)",
            "model.dropout": "interval(0.0, 0.5)",
            "trainer.epochs": "5",
        }
    )
    by_key = {p.key: p for p in space.params}
    assert by_key["optimizer"].choices == ("sgd", "momentum", "adam")
    assert (by_key["optimizer.lr"].kind, by_key["optimizer.lr"].log) == (search_space.FLOAT, True)
    batch = by_key["trainer.batch_size"]
    # stop excluded
    assert (batch.kind, batch.low, batch.high, batch.step) == (
        search_space.INT,
        16,
        128,
        16,
    )
    assert space.fixed == ("trainer.epochs=5",)
    # Every choice and both ends of every range, in sum(ends) configurations, not their product.
    corners = search_space.corners(space)
    # the first value of each param is shared by one configuration
    assert len(corners) == 3 + 2 + 2 + 2 - 3
    values = {o for c in corners for o in c}
    assert {
        "optimizer=adam",
        "optimizer.lr=0.1",
        "trainer.batch_size=128",
        "model.dropout=0.5",
    } <= values
    distributions = search_space.distributions(space)
    assert distributions["trainer.batch_size"] == optuna.distributions.IntDistribution(
        16, 128, step=16
    )
    assert distributions["optimizer.lr"].log


@pytest.mark.parametrize(
    "params, message",
    [
        ({"model.channels": "choice([4,8],[8,16])"}, "cannot be sampled"),
        ({"optimizer.lr": "tag(log, interval(0, 0.1))"}, "low > 0"),
        ({"optimizer.lr": "tag(loq, interval(1e-4, 0.1))"}, "unknown tag"),
        ({"trainer.epochs": "5"}, "nothing to search"),
        ({"model.dropout": "interval(0.5, 0.1)"}, "low < high"),
    ],
)
def test_a_malformed_space_names_the_entry_and_what_to_write(params, message):
    with pytest.raises(ConfigError, match=message):
        search_space.parse(params)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer=choice(sgd,nadam)", "nadam"),
        ("model.dropout=interval(0.0,1.5)", "model.dropout"),
        ("hydra.sweeper.n_trials=0", "n_trials"),
        ("hydra.sweeper.pruner.name=medain", "valid choices"),
        ("hydra.sweeper.direction=up", "maximize"),
        ("seed=range(0,9)", "rerun_best_seeds=0"),  # cnn_optuna re-runs its best with other seeds
    ],
)
def test_a_bad_study_is_refused_before_anything_is_submitted(workdir, capsys, override, message):
    assert cli.main([*STUDY, *TINY, override]) != 0
    assert message in capsys.readouterr().err
    assert not list(workdir.glob("multirun/*/*/sweep.json")) and not list(
        workdir.glob("multirun/*/*/optuna.journal")
    )


def test_the_grid_sweeper_stays_the_default_and_an_experiment_picks_its_own(workdir, capsys):
    assert cli.main(["experiment=cnn_sweep", "--info", "defaults"]) == 0
    assert "hydra/sweeper/hpcjobs " in capsys.readouterr().out
    assert cli.main(["experiment=cnn_optuna", "--info", "defaults"]) == 0
    assert "hydra/sweeper/hpcjobs_optuna" in capsys.readouterr().out


# --------------------------------------------------------------------------- a study, end to end


def trials_of(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    spec = study.StudySpec.from_dict(manifest.read(sweep_dir).study)
    return study.load(sweep_dir, spec).get_trials(deepcopy=False)


@pytest.mark.slow
def test_workers_ask_run_and_tell_every_trial_then_rerun_the_best_with_other_seeds(workdir):
    # noop's score is its seed; the study searches a key of its own (x) and the workload's sleep.
    assert (
        cli.main(
            [
                *NOOP_STUDY[:-1],
                "+x=interval(0.0,1.0)",
                "+sleep_s=choice(0.0,0.1)",
                "hydra.sweeper.n_trials=5",
                "hydra.launcher.workers=2",
                "hydra.sweeper.rerun_best_seeds=2",
            ]
        )
        == 0
    )
    sweep_dir = registry.latest_sweep()
    sweep = manifest.read(sweep_dir)
    assert [t.role for t in sweep.tasks] == ["trial"] * 5 + ["best"] * 2
    trials = trials_of(sweep_dir)
    assert sorted(t.number for t in trials) == list(range(5))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    told = {t.number: t for t in trials}
    # each run directory ran its trial's sampled values, and told its result
    for task in sweep.tasks[:5]:
        run_dir = sweep.run_dir(task)
        trial = runfiles.read_trial(run_dir)
        config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        assert (
            config.x == pytest.approx(trial["params"]["+x"])
            and config.sleep_s == trial["params"]["+sleep_s"]
        )
        assert told[trial["number"]].params == trial["params"]
        assert told[trial["number"]].value == runfiles.read_metrics(run_dir)["score"] == 0  # seed 0
    best = told[min(told)]  # all score 0: the first is the best
    for task, seed in zip(sweep.tasks[5:], (1, 2)):
        config = OmegaConf.load(sweep.run_dir(task) / ".hydra" / "config.yaml")
        assert config.seed == seed and config.x == pytest.approx(best.params["+x"])
        assert runfiles.read_trial(sweep.run_dir(task))["number"] == best.number
        assert runfiles.read_metrics(sweep.run_dir(task))["score"] == seed
    assert len(trials_of(sweep_dir)) == 5  # the re-runs are not trials of the study


# --------------------------------------------------------------------------- pruning


def small_study(tmp_path: Path, **pruner) -> study.StudySpec:
    spec = study.StudySpec(
        name="s",
        params={"optimizer.lr": "interval(0.001, 0.1)"},
        n_trials=3,
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0, **pruner},
    )
    study.create(tmp_path, spec)
    return spec


def test_a_trial_worse_than_the_median_at_an_epoch_is_pruned_and_recorded_as_pruned(tmp_path):
    spec = small_study(tmp_path)
    trials = study.Trials(tmp_path, spec, sampler_seed=0)
    good, _ = trials.start(tmp_path / "0", study.TRIAL_ROLE, [])
    for epoch in (1, 2, 3):
        trials.observer(good)({"epoch": epoch, "val_accuracy": 0.9}, OmegaConf.create({}))
    runfiles.write_metrics(tmp_path / "0", {"status": states.COMPLETED, "test_accuracy": 0.9})
    assert trials.tell(good, tmp_path / "0") == 0.9

    poor, overrides = trials.start(tmp_path / "1", study.TRIAL_ROLE, ["seed=0"])
    assert overrides[0] == "seed=0" and overrides[1].startswith("optimizer.lr=")
    cfg = OmegaConf.create({"seed": 0})
    history_rows = []

    def workload(ctx):
        for epoch in (1, 2, 3):
            history_rows.append(epoch)
            ctx.log_epoch({"epoch": epoch, "val_accuracy": 0.2})
        return {"test_accuracy": 0.2}

    (tmp_path / "1" / "checkpoint.pt").write_bytes(b"state")
    with job.observing_epochs(trials.observer(poor)):
        _, metrics = job.run_and_record(workload, cfg, tmp_path / "1", reraise=True, resumable=True)
    assert metrics["status"] == states.PRUNED and "epoch 1" in metrics["pruned_reason"]
    assert history_rows == [1]  # stopped after the first epoch it was judged on
    # its history is kept
    assert [r["epoch"] for r in runfiles.read_history(tmp_path / "1")] == ["1"]
    assert not (tmp_path / "1" / "checkpoint.pt").exists()
    assert trials.tell(poor, tmp_path / "1") is None
    assert study.load(tmp_path, spec).trials[poor.number].state == optuna.trial.TrialState.PRUNED
    assert states.PRUNED not in states.RETRYABLE and states.PRUNED in states.ENDED
    # Never at its last epoch: stopping then saves nothing and loses the run's test result.
    last, _ = trials.start(tmp_path / "2", study.TRIAL_ROLE, [])
    trials.observer(last)(
        {"epoch": 3, "val_accuracy": 0.1}, OmegaConf.create({"trainer": {"epochs": 3}})
    )
    same, _ = trials.start(tmp_path / "3", study.TRIAL_ROLE, [])
    with pytest.raises(RunPruned):  # the same, two epochs before its end
        trials.observer(same)(
            {"epoch": 3, "val_accuracy": 0.1}, OmegaConf.create({"trainer": {"epochs": 5}})
        )


def test_workers_of_nearby_seeds_draw_from_unrelated_streams():
    spec = study.StudySpec(
        name="s", params={"x": "interval(0, 1)"}, n_trials=1, sampler={"name": "tpe", "seed": 0}
    )
    seeds = {
        study.worker_seed(study.StudySpec(**{**spec.as_dict(), "sampler": {"seed": s}}), p, w)
        for s in range(3)
        for p in range(2)
        for w in range(4)
    }
    assert len(seeds) == 24 and study.worker_seed(spec, 0, 1) == study.worker_seed(spec, 0, 1)


def test_a_run_its_observer_prunes_is_recorded_pruned_not_failed(tmp_path):
    def prune(row, cfg):
        raise RunPruned("worse than the median")

    with job.observing_epochs(prune):
        _, metrics = job.run_and_record(
            lambda ctx: ctx.log_epoch({"epoch": 1}) or {"x": 1},
            OmegaConf.create({}),
            tmp_path / "a",
            reraise=True,
        )
    assert metrics["status"] == runfiles.read_metrics(tmp_path / "a")["status"] == states.PRUNED
    assert metrics["pruned_reason"] == "worse than the median"
    # Outside the block nothing judges the epochs.
    _, metrics = job.run_and_record(
        lambda ctx: ctx.log_epoch({"epoch": 1}) or {"x": 1},
        OmegaConf.create({}),
        tmp_path / "b",
        reraise=True,
    )
    assert metrics["status"] == states.COMPLETED


# --------------------------------------------------------------------- resumed, retried, taken over


def test_a_resumed_trial_continues_and_a_retried_failed_one_runs_again_with_its_values(tmp_path):
    spec = small_study(tmp_path)
    trials = study.Trials(tmp_path, spec, sampler_seed=0)
    first, overrides = trials.start(tmp_path / "0", study.TRIAL_ROLE, [])
    # The worker died (or was requeued): the run directory's next attempt continues the same trial.
    again, same = study.Trials(tmp_path, spec, sampler_seed=1).start(
        tmp_path / "0", study.TRIAL_ROLE, []
    )
    assert (again.number, same) == (first.number, overrides)
    # It failed: a retry runs the same values as a new trial of the study.
    runfiles.write_metrics(tmp_path / "0", {"status": states.FAILED})
    trials.tell(first, tmp_path / "0")
    retried, values = study.Trials(tmp_path, spec, sampler_seed=2).start(
        tmp_path / "0", study.TRIAL_ROLE, []
    )
    assert retried.number != first.number and values == overrides
    assert runfiles.read_trial(tmp_path / "0")["number"] == retried.number


def test_a_takeover_is_won_by_one_worker_and_wins_over_the_first_claim(tmp_path):
    assert pools.claim(tmp_path, 3, worker=0)
    assert pools.take_over(tmp_path, 3, worker=1, seen=0) == 1
    assert pools.take_over(tmp_path, 3, worker=2, seen=0) is None  # noticed too, too late
    pools.Journal(tmp_path, 1).write("claim", task=3, takeover=1, trial=7, overrides=["a=1"])
    pools.Journal(tmp_path, 0).write("claim", task=3, takeover=0, trial=7, overrides=["a=1"])
    view = pools.read_pool(tmp_path)
    assert view.claimed_by[3] == 1 and view.takeover[3] == 1 and view.trials[3]["trial"] == 7
    beat = study.beat_path(tmp_path, 0)
    with heartbeat.heartbeat(beat, 0.05):
        time.sleep(0.2)
        assert not heartbeat.is_stale(beat, 0.05)
    assert heartbeat.is_stale(beat, 0.05, now=time.time() + 1)


@pytest.mark.slow
def test_a_trial_whose_worker_was_killed_is_handed_to_another_and_run_again(workdir):
    # noop trials of 3 s (no torch: quick workers); a beat every 0.5 s: a dead worker shows in ~2 s.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpcjobs",
            *NOOP_STUDY,
            "+sleep_s=3",
            "hydra.sweeper.n_trials=3",
            "hydra.launcher.workers=2",
            "hydra.sweeper.heartbeat_s=0.5",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    victim = None
    while victim is None and time.time() < deadline:
        time.sleep(0.2)
        sweeps = list(workdir.glob("multirun/*/*/sweep.json"))
        if sweeps:
            victim = next(
                (
                    w
                    for w in pools.read_pool(
                        pools.pool_dir(sweeps[0].parent, "pool0")
                    ).workers.values()
                    if w.running is not None
                    and (sweeps[0].parent / str(w.running) / "metrics.json").exists()
                ),
                None,
            )  # a worker whose run has started
    assert victim is not None, (
        proc.stderr.read() if proc.poll() is not None else "no worker got going"
    )
    os.kill(victim.pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    sweep_dir = sweeps[0].parent
    trials = trials_of(sweep_dir)
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 3  # the study reached n_trials
    taken = victim.running
    view = pools.read_pool(pools.pool_dir(sweep_dir, "pool0"))
    assert view.takeover[taken] == 1 and view.claimed_by[taken] != victim.worker
    metrics = runfiles.read_metrics(sweep_dir / str(taken))
    # in the same run directory
    assert metrics["status"] == states.COMPLETED and metrics["restarts"] == 1
    trial = runfiles.read_trial(sweep_dir / str(taken))
    assert trials[trial["number"]].value == metrics["score"]  # the same trial, told once


@pytest.mark.slow
def test_trials_left_unclaimed_by_workers_out_of_time_are_run_by_retry(workdir, capsys):
    # A worker with no time left after its first trial: the rest stay unclaimed, `retry` runs them.
    assert (
        cli.main(
            [
                *NOOP_STUDY,
                "+sleep_s=3",
                "hydra.sweeper.n_trials=3",
                "hydra.launcher.workers=1",
                "hydra.launcher.timeout_min=0.1",
            ]
        )
        == 1
    )
    sweep_dir = registry.latest_sweep()
    capsys.readouterr()
    assert cli.main(["status", str(sweep_dir)]) == 0
    assert "unclaimed" in capsys.readouterr().out
    assert [t.state.name for t in trials_of(sweep_dir)] == ["COMPLETE"]

    assert cli.main(["retry", str(sweep_dir), "--set", "timeout_min=5", "workers=2"]) == 0
    assert sorted(t.state.name for t in trials_of(sweep_dir)) == ["COMPLETE"] * 3
    sweep = manifest.read(sweep_dir)
    assert len(sweep.pools) == 2 and all(runfiles.read_trial(sweep.run_dir(t)) for t in sweep.tasks)


def test_with_no_completed_trial_the_best_rerun_fails_with_the_reason(tmp_path):
    spec = small_study(tmp_path)
    with pytest.raises(study.NoTrialCompleted, match="no trial of the study completed"):
        study.Trials(tmp_path, spec, sampler_seed=0).start(
            tmp_path / "9", study.BEST_ROLE, ["seed=1"]
        )


def test_a_study_takes_a_new_directory_it_is_given_and_refuses_one_holding_a_sweep(workdir, capsys):
    assert cli.main([*NOOP_STUDY, "hydra.sweeper.n_trials=1", "hydra.sweep.dir=sweeps/mine"]) == 0
    assert [t.state.name for t in trials_of(workdir / "sweeps" / "mine")] == ["COMPLETE"]
    before = (workdir / "sweeps" / "mine" / "sweep.json").read_text()
    assert cli.main([*NOOP_STUDY, "hydra.sweeper.n_trials=1", "hydra.sweep.dir=sweeps/mine"]) != 0
    assert "holds a sweep already" in capsys.readouterr().err
    # nothing written is lost
    assert (workdir / "sweeps" / "mine" / "sweep.json").read_text() == before


def test_without_optuna_the_study_says_what_to_install(workdir, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a)
    )
    assert cli.main([*NOOP_STUDY, "hydra.sweeper.n_trials=1"]) != 0
    assert "pip install 'hpcjobs[optuna]'" in capsys.readouterr().err
    assert not list(workdir.glob("multirun/*/*/sweep.json"))


def test_the_best_is_the_best_value_in_the_studys_direction_and_the_first_of_equals():
    trials = [(3, 0.9), (1, 0.9), (2, None), (0, 0.5)]
    pick = lambda direction: study.best_of(trials, direction, lambda t: t[0], lambda t: t[1])  # noqa: E731
    assert pick("maximize") == (1, 0.9) and pick("minimize") == (0, 0.5)
    assert study.best_of([(0, None)], "maximize", lambda t: t[0], lambda t: t[1]) is None
