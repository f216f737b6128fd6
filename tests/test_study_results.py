"""An adaptive sweep (Optuna) in the results stage: what status, collect and report show of it.

One real study sweep for the module: the seed CNN, tiny, on digits, 3 trials on one local
worker (a pool: its journal is what `status` reads) and the best trial re-run with 2 more
seeds. What each trial does is certain, not luck: a learning rate of 1e-6 learns nothing
(chance accuracy) while 0.03 learns in an epoch; the worker's sampler (seed 4: TPE's first
trials are drawn at random from the worker's seed, hpcjobs.run.study.worker_seed) draws 1e-6,
0.03, 1e-6; the median pruner waits for 2 completed trials, then stops a trial whose first
epoch is worse than theirs. So trials 0 and 1 complete (2 of them: enough for parameter
importances), trial 2 is pruned, and trial 1 is the best. (Two workers would make the order
in which trials end, and so what is pruned, a matter of timing.)
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from hpcjobs import cli, states
from hpcjobs.launching import registry
from hpcjobs.results import collect, trials
from hpcjobs.run import study
from hpcjobs.sweepdir import manifest

EXPERIMENT = """\
# @package _global_
defaults:
  - override /data: digits
  - override /model: cnn
  - override /hydra/sweeper: hpcjobs_optuna
experiment_name: tiny_optuna
trainer:
  epochs: 2
  device: cpu  # the docstring's outcome is checked on CPU; a GPU (bf16) would train differently
model:
  channels: [4, 8]
  hidden: 8
hydra:
  launcher:
    workers: 1
    poll_interval_s: 0.1
  sweeper:
    n_trials: 3
    rerun_best_seeds: 2
    sampler: {name: tpe, seed: 4, n_startup_trials: 10}
    pruner: {name: median, n_startup_trials: 2, n_warmup_steps: 0}
    params:
      optimizer.lr: choice(0.03, 0.000001)
      model.dropout: interval(0.0, 0.1)
"""
PNG = b"\x89PNG\r\n\x1a\n"


def _main(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The study sweep, run once: its directory, the summary the sweep printed, its study, and a
    report written by a fresh process (which must not import torch: it runs on a login node)."""
    root = tmp_path_factory.mktemp("study")
    (root / "conf" / "experiment").mkdir(parents=True)
    (root / "conf" / "experiment" / "tiny_optuna.yaml").write_text(EXPERIMENT)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HPCJOBS_STATE_DIR", str(root / "state"))
        code, printed = _main(
            "--config-dir",
            str(root / "conf"),
            "experiment=tiny_optuna",
            "--multirun",
            "hydra/launcher=hpcjobs_local",
        )
        sweep_dir = registry.latest_sweep()
    spec = study.StudySpec.from_dict(manifest.read(sweep_dir).study)
    drawn = [
        t.params["optimizer.lr"] for t in study.load(sweep_dir, spec).get_trials(deepcopy=False)
    ]
    assert drawn == [1e-6, 0.03, 1e-6], (
        f"the sampler drew {drawn}: pick the seed that draws the docstring's"
    )
    report = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys\nfrom hpcjobs import cli\n"
                f"code = cli.main(['report', {str(sweep_dir)!r},"
                f" '--out', {str(root / 'report')!r}])\n"
                "assert 'torch' not in sys.modules, 'the report imported torch'\nsys.exit(code)"
            ),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-3000:]
    return SimpleNamespace(
        root=root,
        dir=Path(sweep_dir),
        code=code,
        printed=printed,
        spec=spec,
        study=study.load(sweep_dir, spec),
        report=root / "report",
        report_stdout=report.stdout,
    )


def _trial_files(sweep_dir: Path) -> dict[int, dict]:
    record = manifest.read(sweep_dir)
    return {
        t.index: json.loads((sweep_dir / t.run_dir / "trial.json").read_text())
        for t in record.tasks
    }


@pytest.mark.slow
def test_a_study_with_pruned_trials_ends_cleanly_and_its_summary_names_the_best_trial(sweep):
    best = sweep.study.best_trial
    assert best.number == 1  # as the module docstring explains
    # pruned trials are results: the sweep did what it meant to
    assert sweep.code == 0, sweep.printed
    assert "study tiny_optuna: 3 of 3 trials (2 completed, 1 pruned)" in sweep.printed
    # The study selects on validation (the sweeper's default objective); its pick's re-runs
    # with other seeds are judged on test.
    assert sweep.spec.metric == "best_val_accuracy"
    assert f"best: trial {best.number}, best_val_accuracy {best.value:.4f}" in sweep.printed
    rerun_line = "over its 2 re-run seed(s), the trial's own run left out: test_accuracy "
    assert rerun_line in sweep.printed
    assert "not completed" not in sweep.printed


@pytest.mark.slow
def test_runs_csv_has_each_runs_trial_role_and_sampled_values(sweep):
    runs = pd.read_csv(sweep.report / "runs.csv")
    assert list(runs.columns[:4]) == ["sweep", "task", "trial", "role"]
    assert runs["role"].value_counts().to_dict() == {"trial": 3, "best": 2}
    assert pd.api.types.is_integer_dtype(runs["trial"])  # 3, not 3.0
    for index, recorded in _trial_files(sweep.dir).items():
        row = runs[runs["task"] == index].iloc[0]
        assert row["trial"] == recorded["number"] and row["role"] == recorded["role"]
        assert row["optimizer.lr"] == pytest.approx(recorded["params"]["optimizer.lr"])
        assert row["model.dropout"] == pytest.approx(recorded["params"]["model.dropout"])
    # The re-runs are of the study's best trial, with seeds of their own.
    reruns = runs[runs["role"] == "best"]
    assert set(reruns["trial"]) == {sweep.study.best_trial.number} and set(reruns["seed"]) == {1, 2}


@pytest.mark.slow
def test_pruned_runs_are_counted_as_pruned_never_as_failed(sweep):
    runs = pd.read_csv(sweep.report / "runs.csv")
    pruned = runs[runs["status"] == states.PRUNED]
    # 2 trials, 2 re-runs
    assert len(pruned) == 1 and (runs["status"] == states.COMPLETED).sum() == 4
    summary = pd.read_csv(sweep.report / "summary.csv")
    assert summary["n_failed"].sum() == 0 and summary["n_pruned"].sum() == len(pruned)
    markdown = (sweep.report / "report.md").read_text()
    failures = markdown.split("## Failures", 1)[1].split("\n## ", 1)[0]
    assert f"No failures: every run completed or was pruned ({len(pruned)}:" in failures
    assert "| pruned |" not in failures  # no pruned run in a failures table


@pytest.mark.slow
def test_the_best_trial_and_its_reruns_are_one_configuration(sweep):
    best = sweep.study.best_trial
    runs = pd.read_csv(sweep.report / "runs.csv")
    mine = runs[runs["trial"] == best.number]
    summary = pd.read_csv(sweep.report / "summary.csv").set_index("trial")
    assert summary.loc[best.number, "n_runs"] == 3 == len(mine)  # the trial and its 2 re-runs
    assert summary.loc[best.number, "test_accuracy_mean"] == pytest.approx(
        mine["test_accuracy"].mean()
    )
    # every other trial: a configuration of its own
    assert (summary.drop(index=best.number)["n_runs"] == 1).all()
    # The report's figure over seeds is the re-runs' alone (the trial was chosen for being best).
    c = collect.collect([sweep.dir])
    (overview,) = trials.overviews(c)
    reruns = mine[mine["role"] == "best"]["test_accuracy"]
    assert overview.best.number == best.number and overview.reruns == pytest.approx(list(reruns))
    assert overview.rerun_stats[0] == pytest.approx(reruns.mean())


@pytest.mark.slow
def test_status_shows_the_trials_by_state_and_the_best_so_far(sweep):
    best = sweep.study.best_trial
    code, text = _main("status", str(sweep.dir))
    assert code == 0
    assert (
        "trials: 3 of 3 ended (2 completed, 1 pruned, 0"
        " failed), 0 running; re-runs of the best: 2 of 2 ended" in text
    )
    assert f"best so far: trial {best.number} (task " in text
    assert f"best_val_accuracy {best.value:.4f} (maximize)" in text
    assert f"optimizer.lr={best.params['optimizer.lr']:.4g}" in text
    # The task table: each task's trial and the values it drew, not the manifest's base overrides.
    table = text.split(" task  trial  state", 1)[1]
    for index, recorded in _trial_files(sweep.dir).items():
        line = next(x for x in table.splitlines() if x.startswith(f"{index:>5}  "))
        assert (" best " if recorded["role"] == "best" else f" {recorded['number']} ") in line
        assert " ".join(recorded["overrides"]) in line


@pytest.mark.slow
def test_the_report_has_the_adaptive_sweep_section_and_both_plots(sweep):
    best = sweep.study.best_trial
    markdown = (sweep.report / "report.md").read_text()
    section = markdown.split("## Adaptive sweep", 1)[1].split("\n## ", 1)[0]
    assert "- **Trials:** 3 planned: 2 completed, 1 pruned" in section
    assert f"### Best trial: {best.number}" in section
    assert f"`best_val_accuracy` = {best.value:.4f}" in section
    assert "**Over seeds:** `test_accuracy` " in section
    assert "over its 2 re-run seeds only" in section
    assert "95% CI [" in section
    table = section.split("### Trials", 1)[1]
    rows = [
        line
        for line in table.splitlines()
        if line.startswith("| ") and "| task |" not in line and "---" not in line
    ]
    assert len(rows) == 3  # one per trial, with its state and epochs
    assert rows[2].startswith("| 2 | 2 | pruned | — | 1 | 1e-06 |") and rows[1].startswith(
        "| **1** | 1 | completed |"
    )
    for name in ("optimization_history", "param_importances"):
        png = sweep.report / "plots" / f"{name}.png"
        assert png.read_bytes().startswith(PNG) and f"(plots/{name}.png)" in section
    html = (sweep.report / "report.html").read_text()
    assert 'href="#study1">Adaptive sweep<' in html
    # curves, params, throughput + the study's two
    assert html.count('<img src="data:image/png;base64,') == 5
    assert "optimization_history:" in sweep.report_stdout


def test_figures_degrade_to_notes(tmp_path):
    """No journal, or too few completed trials for importances: a note, the rest of the report."""
    import optuna

    spec = study.StudySpec(name="s", params={"x": "interval(0, 1)"}, n_trials=3)
    info = collect.SweepInfo("s", str(tmp_path), "e", study=spec.as_dict())
    figures, notes = trials.figures(trials.StudyOverview(info, spec, [], None))
    assert figures == {} and "No study journal" in notes[0]
    assert not (tmp_path / study.STUDY_FILE).exists()  # reading never creates one

    study.create(tmp_path, spec)
    loaded = study.load(tmp_path, spec)
    loaded.add_trial(
        optuna.trial.create_trial(
            params={"x": 0.5},
            value=0.7,
            distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
        )
    )
    figures, notes = trials.figures(trials.StudyOverview(info, spec, [], None))
    assert set(figures) == {"optimization_history"} and figures["optimization_history"].startswith(
        PNG
    )
    assert notes == ["No parameter importances: they need 2 completed trials (1 so far)."]


def test_status_of_a_study_under_way():
    """While trials run: how many ended and how, how many run and wait, the best so far; a task
    no worker has claimed yet shows the base overrides and no trial."""
    from hpcjobs.results.status import StudyProgress, SweepStatus, TaskStatus

    tasks = [
        TaskStatus(
            0,
            states.COMPLETED,
            "s/0",
            ["e=1", "lr=0.0011252447990827477"],
            trial=0,
            role="trial",
            value=0.91,
        ),
        TaskStatus(1, states.PRUNED, "s/1", ["e=1", "lr=0.3"], trial=1, role="trial"),
        TaskStatus(2, states.RUNNING, "s/2", ["e=1", "lr=0.01"], trial=2, role="trial"),
        TaskStatus(3, states.PENDING, "s/3", ["e=1"], role="trial"),
        TaskStatus(4, states.PENDING, "s/4", ["e=1", "seed=1"], role="best"),
    ]
    progress = StudyProgress(
        4,
        "test_accuracy",
        "maximize",
        {states.COMPLETED: 1, states.PRUNED: 1, states.RUNNING: 1, states.PENDING: 1},
        best_trial=0,
        best_value=0.91,
        best_params=["lr=0.0011252447990827477"],
        best_task=0,
        reruns=1,
    )
    text = cli.format_status(SweepStatus(Path("s"), "x", "local", tasks, study=progress))
    lines = text.splitlines()
    assert lines[2] == (
        "trials: 2 of 4 ended (1 completed, 1 pruned, 0 failed), 1 running, 1 waiting;"
        " re-runs of the best: 0 of 1 ended"
    )
    assert lines[3] == "best so far: trial 0 (task 0), test_accuracy 0.9100 (maximize): lr=0.001125"
    assert (
        "    0      0  completed     -                -  -          e=1 lr=0.0011252447990827477"
        in lines
    )
    assert "    3      -  pending       -                -  -          e=1" in lines
    assert "    4   best  pending       -                -  -          e=1 seed=1" in lines
