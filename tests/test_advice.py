"""The workers hint (hpcjobs/results/advice.py): computed from what runs recorded, exactly."""

import json
import math

import pandas as pd
import pytest

from hpcjobs.results import advice


def runs(**columns) -> pd.DataFrame:
    return pd.DataFrame(columns)


def test_runs_mostly_start_up_get_the_number_of_workers_that_would_run_them():
    # The sweep: 27 runs of 1.5 s, each after 3.5 s of start-up (its process measured it).
    hint = advice.workers_hint(runs(wall_seconds=[1.5] * 27, startup_seconds=[3.5] * 27))
    assert hint is not None
    assert (hint.runs, hint.mean_s, hint.startup_s) == (27, 5.0, 3.5)
    # 31.5 s of runs per worker keeps its one start-up at 10% of its time: 21 runs, 2 workers.
    assert hint.workers == 2
    assert hint.saved == pytest.approx(25 * 3.5 / (27 * 5.0), rel=0, abs=1e-12)
    assert hint.text() == (
        "27 runs averaged 5.0 s, of which 3.5 s (70%) was start-up: hydra.launcher.workers=2"
        " would start 2 process(es) instead of 27 and save about 65% of the core time"
    )


def test_slurm_accounting_measures_start_up_where_recorded():
    # A Slurm task's elapsed (sacct) less the run's own wall time; the process's figure elsewhere.
    table = runs(
        acct_elapsed_s=[6.0] * 5 + [math.nan],
        acct_attempts=[1] * 5 + [math.nan],
        wall_seconds=[2.0] * 6,
        startup_seconds=[3.0] * 5 + [4.0],
    )
    assert list(advice.startup_seconds(table)) == [4.0] * 6
    hint = advice.workers_hint(table)
    assert hint is not None and (hint.runs, hint.startup_s, hint.mean_s) == (6, 4.0, 6.0)
    assert hint.workers == 1


def test_a_retried_runs_accounting_sums_its_attempts_and_is_not_used():
    table = runs(acct_elapsed_s=[60.0], acct_attempts=[2], wall_seconds=[2.0])
    assert advice.startup_seconds(table).isna().all()


@pytest.mark.parametrize(
    "table",
    [
        # start-up a small share of each run: workers would save little
        runs(wall_seconds=[30.0] * 10, startup_seconds=[3.0] * 10),
        # a worker's runs record no start-up: nothing to save
        runs(wall_seconds=[0.1] * 10),
        # one run: nothing to pack
        runs(wall_seconds=[0.1], startup_seconds=[3.0]),
        # so few runs that one worker would save a third of their time only
        runs(wall_seconds=[3.0] * 3, startup_seconds=[3.0] * 3),
        runs(),
    ],
)
def test_no_hint_where_workers_would_not_save_most_of_the_time(table):
    assert advice.workers_hint(table) is None


def test_collect_prints_the_hint_for_runs_that_were_mostly_start_up(tmp_path, capsys):
    from hpcjobs import cli

    def sweep_of(name: str, startup: float) -> str:
        for i in range(27):
            run = tmp_path / name / str(i)
            (run / ".hydra").mkdir(parents=True)
            (run / ".hydra/overrides.yaml").write_text(f"- seed={i}\n")
            metrics = {"status": "completed", "score": 1.0, "wall_seconds": 1.5}
            (run / "metrics.json").write_text(json.dumps({**metrics, "startup_seconds": startup}))
        return str(tmp_path / name)

    out_dir = str(tmp_path / "results")
    assert cli.main(["collect", sweep_of("short", 3.5), "--out", out_dir]) == 0
    assert "hint: 27 runs averaged 5.0 s, of which 3.5 s (70%) was start-up" in (
        capsys.readouterr().out
    )
    assert cli.main(["collect", sweep_of("long", 0.1), "--out", out_dir]) == 0
    assert "hint:" not in capsys.readouterr().out


def test_hint_for_judges_the_runs_ended_and_suggests_workers_for_the_whole_sweep():
    # 12 of 100 tasks ended, each 1.5 s after 3.5 s of start-up: the sweep's 100 runs would
    # take 21 per worker (31.5 s of runs keeps a start-up at 10%), so 5 workers.
    hint = advice.hint_for([3.5] * 12, [1.5] * 12, tasks=100)
    assert hint is not None and (hint.runs, hint.workers, hint.of) == (12, 5, 100)
    assert hint.saved == pytest.approx(95 * 3.5 / (100 * 5.0), rel=0, abs=1e-12)
    assert hint.text().startswith(
        "12 runs averaged 5.0 s, of which 3.5 s (70%) was start-up: hydra.launcher.workers=5"
        " would start 5 process(es) instead of 100 and save about 66% of the core time"
    )
    # the same numbers as the runs table gives collect's hint
    table = runs(wall_seconds=[1.5] * 12, startup_seconds=[3.5] * 12)
    assert advice.hint_for([3.5] * 12, [1.5] * 12) == advice.workers_hint(table)
    assert advice.hint_for([3.5], [1.5], tasks=100) is None  # one run: nothing to judge by


def _sweep_of_processes(sweep_dir, ended: int, tasks: int = 20, how: str = "completed") -> None:
    """A local sweep of a process per task (no workers): ``ended`` of its tasks ended (``how``),
    each after 3.5 s of start-up and 1.5 s of run, as their metrics.json say; the rest not
    started."""
    from hpcjobs.sweepdir import manifest

    sweep = manifest.SweepManifest("short", str(sweep_dir), "local")
    for i in range(tasks):
        task = manifest.TaskRecord(i, [f"seed={i}"], str(i), "h")
        task.submitted(None)
        sweep.tasks.append(task)
        if i < ended:
            (sweep_dir / str(i)).mkdir(parents=True)
            metrics = {"status": how, "wall_seconds": 1.5, "startup_seconds": 3.5}
            (sweep_dir / str(i) / "metrics.json").write_text(json.dumps(metrics))
    manifest.write(sweep)


def test_status_gives_the_hint_once_enough_runs_ended(tmp_path, capsys):
    from hpcjobs import cli
    from hpcjobs.results import status

    _sweep_of_processes(tmp_path / "few", ended=advice.ENOUGH_RUNS - 1)
    assert status.sweep_status(tmp_path / "few").workers_hint is None
    _sweep_of_processes(tmp_path / "enough", ended=advice.ENOUGH_RUNS)
    st = status.sweep_status(tmp_path / "enough")
    assert st.workers_hint == advice.hint_for([3.5] * 10, [1.5] * 10, tasks=20)
    cli.main(["status", str(tmp_path / "enough")])
    assert (
        "hint: 10 runs averaged 5.0 s, of which 3.5 s (70%) was start-up:"
        " hydra.launcher.workers=1 would start 1 process(es) instead of 20"
    ) in capsys.readouterr().out
    # a sweep smaller than that: once all of its runs ended
    _sweep_of_processes(tmp_path / "small", ended=4, tasks=4)
    assert status.sweep_status(tmp_path / "small").workers_hint is not None
    # runs that failed (in their first line, say) do not tell what workers would save
    _sweep_of_processes(tmp_path / "failed", ended=advice.ENOUGH_RUNS, how="failed")
    assert status.sweep_status(tmp_path / "failed").workers_hint is None
