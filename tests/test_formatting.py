"""Numbers as users read them, and the CLI and the report reading them the same way."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from hpcjobs import cli
from hpcjobs.results import collect, formatting, report, stats
from hpcjobs.results.selection import FROM_OPTION, Selection

# ---------------------------------------------------------------- the pure functions


def test_mean_and_std_share_the_means_precision():
    assert formatting.mean_pm_std(0.967901, 0.00571) == "0.9679 ± 0.0057"
    assert formatting.mean_pm_std(0.9679, 0.0057, 3) == "0.9679 ± 0.0057 (n=3)"
    assert formatting.mean_pm_std(11332.0, 99.55) == "11,332 ± 100"
    assert formatting.mean_pm_std(12.3456, 0.4567) == "12.35 ± 0.46"


def test_a_single_run_shows_no_spread_and_no_interval():
    assert formatting.mean_pm_std(0.95, math.nan, 1) == "0.9500 (1 run)"
    assert formatting.ci_text(0.95, math.nan, math.nan, 1) == "— (1 run)"


def test_a_single_run_group_from_summarize_gets_no_zero_width_interval():
    runs = pd.DataFrame(
        [
            {"optimizer": "sgd", "status": "completed", "test_accuracy": 0.80},
            {"optimizer": "sgd", "status": "completed", "test_accuracy": 0.90},
            {"optimizer": "adam", "status": "completed", "test_accuracy": 0.55},
        ]
    )
    summary, _ = stats.summarize(runs, ["optimizer"])
    texts = {
        row["optimizer"]: formatting.ci_text(
            row["test_accuracy_mean"],
            row["test_accuracy_ci95_low"],
            row["test_accuracy_ci95_high"],
            int(row["n_completed"]),
        )
        for _, row in summary.iterrows()
    }
    assert texts["adam"] == "— (1 run)"
    # Two runs, a wide interval; on the logit scale it stays within [0, 1]
    # (t alone: [0.2147, 1.4853]).
    z = [math.log(p / (1 - p)) for p in (0.80, 0.90)]
    std = abs(z[1] - z[0]) / math.sqrt(2)
    half = 12.706204736174696 * std / math.sqrt(2)  # t(0.975, 1) * std / sqrt(n)
    low, high = (1 / (1 + math.exp(-(sum(z) / 2 + d))) for d in (-half, half))
    assert texts["sgd"] == f"[{low:.4f}, {high:.4f}]" and 0 < low < high < 1


def best_row(verdict, low=0.01, high=0.03, comparison="paired", n_pairs=3, best_n=3, runner_up_n=3):
    return {
        "selected_on": "best_val_accuracy",
        "reported_on": "test_accuracy",
        "difference": 0.02,
        "difference_ci95_low": low,
        "difference_ci95_high": high,
        "comparison": comparison,
        "n_pairs": n_pairs,
        "verdict": verdict,
        "best_n": best_n,
        "runner_up_n": runner_up_n,
    }


def test_missing_values_read_as_a_dash_never_nan():
    assert formatting.fmt(math.nan) == "—" and formatting.fmt(None) == "—"
    assert formatting.mean_pm_std(math.nan, 0.1) == "—"
    assert formatting.fmt_seconds(math.nan) == "—"
    # the mean cell already says "—"
    assert formatting.ci_text(math.nan, math.nan, math.nan, 0) == ""
    # 3 completed, the metric from fewer
    assert formatting.ci_text(0.5, math.nan, math.nan, 3) == "—"
    row = best_row(stats.NO_VERDICT, math.nan, math.nan, "unpaired", 0, 1, 1)
    for text in (formatting.difference_text(row), formatting.verdict_reading(row)):
        assert "nan" not in text.lower()


@pytest.mark.parametrize(
    ("verdict", "short"),
    [
        (stats.NOISE, "within seed noise"),
        (stats.CLEAR, "larger than the spread over seeds"),
        (stats.REVERSED, "the runner-up is ahead beyond seed noise"),
        (stats.NO_VERDICT, "n/a"),
    ],
)
def test_one_wording_per_verdict(verdict, short):
    row = best_row(verdict)
    assert formatting.verdict_short(row) == short
    assert formatting.verdict_reading(row).startswith(short)
    assert formatting.difference_text(row).endswith(f": {short}")


def test_the_comparison_says_whether_it_was_paired():
    paired = best_row(stats.CLEAR)
    assert formatting.difference_text(paired) == (
        "test_accuracy +0.0200, paired on 3 shared seeds, 95% CI [0.0100, 0.0300]:"
        " larger than the spread over seeds"
    )
    assert "(paired on 3 shared seeds) excludes zero" in formatting.verdict_reading(paired)
    unpaired = best_row(stats.NOISE, -0.01, 0.05, "unpaired", 0)
    assert "unpaired (fewer than 2 shared seeds)" in formatting.difference_text(unpaired)
    assert "includes zero" in formatting.verdict_reading(unpaired)
    reversed_ = formatting.verdict_reading(best_row(stats.REVERSED))
    assert "ranking on best_val_accuracy did not carry over" in reversed_


def test_a_ranking_on_the_test_set_is_called_out():
    assert formatting.selection_caveat(Selection("best_val_accuracy", "test_accuracy")) is None
    caveat = formatting.selection_caveat(Selection("test_accuracy", "test_accuracy", FROM_OPTION))
    assert caveat.startswith("ranked on the test metric test_accuracy (as --metric asked)")
    assert formatting.selection_text(Selection("val_loss", "test_loss", FROM_OPTION)) == (
        "selected on val_loss (--metric), reported on test_loss"
    )


# ---------------------------------------------------------------- CLI and report agree


def _sweep(root: Path, values: dict[str, tuple[list[float], list[float]]]) -> Path:
    """One run directory per (optimizer, seed): values[optimizer] = (validation, test) per seed."""
    task = 0
    for opt, (val, test) in values.items():
        for seed in range(len(test)):
            run = root / str(task)
            (run / ".hydra").mkdir(parents=True)
            (run / ".hydra/overrides.yaml").write_text(f"- optimizer={opt}\n- seed={seed}\n")
            (run / ".hydra/config.yaml").write_text("experiment_name: agree\n")
            (run / "metrics.json").write_text(
                json.dumps(
                    {
                        "schema_version": 1,
                        "status": "completed",
                        "seed": seed,
                        "best_val_accuracy": val[seed],
                        "test_accuracy": test[seed],
                        "train_seconds": 12.5 + seed,
                    }
                )
            )
            task += 1
    return root


ADAM = ([0.93, 0.91, 0.95], [0.90, 0.88, 0.92])


@pytest.mark.parametrize(
    ("runner_up", "short"),
    [
        (([0.90, 0.90, 0.91], [0.89, 0.89, 0.90]), "within seed noise"),
        (([0.88, 0.87, 0.905], [0.87, 0.86, 0.895]), "larger than the spread over seeds"),
        (([0.90, 0.90, 0.90], [0.95, 0.92, 0.96]), "the runner-up is ahead beyond seed noise"),
    ],
)
def test_cli_and_report_give_the_same_reading_and_numbers(
    tmp_path, monkeypatch, capsys, runner_up, short
):
    from scipy import stats as scipy_stats

    sweep = _sweep(tmp_path / "sweep", {"adam": ADAM, "sgd": runner_up})
    monkeypatch.chdir(tmp_path)
    assert cli.main(["collect", str(sweep), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out

    c = collect.collect([sweep])
    row = c.best.iloc[0]
    # adam leads on validation; on test, the paired interval decides (as scipy computes it).
    ci = scipy_stats.ttest_rel(ADAM[1], runner_up[1]).confidence_interval(0.95)
    expected = stats.CLEAR if ci.low > 0 else stats.REVERSED if ci.high < 0 else stats.NOISE
    assert row["best"] == "optimizer=adam" and row["verdict"] == expected
    assert formatting.verdict_short(row) == short
    best = report.best_section(c)
    assert best is not None and best["reading"].startswith(short)
    assert best["heading"] == "Selected on best_val_accuracy (default), reported on test_accuracy"
    assert (
        "over seeds, selected on best_val_accuracy (default), reported on test_accuracy" in printed
    )
    assert (
        f"runner-up: optimizer=sgd (selected on best_val_accuracy;"
        f" test_accuracy {best['difference']}, paired on 3 shared seeds,"
        f" 95% CI {best['difference_ci']}: {short})"
    ) in printed

    # Every mean ± std cell the report shows for the selection and the reported metric, and the
    # reported metric's interval, the CLI prints too.
    section = report.summary_section(c)
    assert section["metrics"][:2] == ["best_val_accuracy", "test_accuracy"]
    for row in section["rows"]:
        line = next(
            line for line in printed.splitlines() if line.lstrip().startswith(row["keys"][0] + " ")
        )
        selected, reported = row["metrics"][:2]
        assert selected["mean"] in line, (row, line)
        assert reported["mean"] in line and reported["ci"] in line, (row, line)


def test_the_cli_says_when_it_ranks_on_the_test_set(tmp_path, monkeypatch, capsys):
    sgd = ([0.90, 0.90, 0.91], [0.95, 0.93, 0.97])
    sweep = _sweep(tmp_path / "sweep", {"adam": ADAM, "sgd": sgd})
    monkeypatch.chdir(tmp_path)
    out_dir = str(tmp_path / "out")
    assert cli.main(["collect", str(sweep), "--metric", "test_accuracy", "--out", out_dir]) == 0
    out, err = capsys.readouterr()
    assert "over seeds, selected on test_accuracy (--metric), reported on test_accuracy" in out
    assert "runner-up: optimizer=adam (selected on test_accuracy;" in out  # sgd leads on test
    assert "note: ranked on the test metric test_accuracy (as --metric asked)" in err
