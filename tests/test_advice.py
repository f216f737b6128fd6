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
