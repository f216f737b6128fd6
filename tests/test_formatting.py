"""Numbers as users read them, and the CLI and the report reading them the same way."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from hpcjobs import cli
from hpcjobs.results import collect, formatting, report, stats

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
    # 0.85 ± t(0.975, 1) * 0.0707 / sqrt(2): two runs, a wide interval
    assert texts["sgd"] == "[0.2147, 1.4853]"


def test_missing_values_read_as_a_dash_never_nan():
    assert formatting.fmt(math.nan) == "—" and formatting.fmt(None) == "—"
    assert formatting.mean_pm_std(math.nan, 0.1) == "—"
    assert formatting.fmt_seconds(math.nan) == "—"
    # the mean cell already says "—"
    assert formatting.ci_text(math.nan, math.nan, math.nan, 0) == ""
    # 3 completed, the metric from fewer
    assert formatting.ci_text(0.5, math.nan, math.nan, 3) == "—"
    for text in (formatting.gap_text(math.nan), formatting.gap_reading(math.nan, 3, 3)):
        assert "nan" not in text.lower()


@pytest.mark.parametrize(
    ("gap", "verdict", "short"),
    [
        (1.2, "noise", "within seed noise"),
        (2.5, "clear", "larger than the spread over seeds"),
        (
            stats.SEED_NOISE_GAP,
            "clear",
            "larger than the spread over seeds",
        ),  # the threshold itself is a clear lead
        (math.nan, "na", "n/a"),
    ],
)
def test_one_rule_decides_whether_a_gap_is_seed_noise(gap, verdict, short):
    assert formatting.gap_verdict(gap) == verdict
    assert formatting.gap_short(gap) == short
    assert formatting.gap_reading(gap, 3, 3).startswith(short)
    assert formatting.gap_text(gap) == (
        short if math.isnan(gap) else f"{gap:.1f} pooled std: {short}"
    )


def test_the_sentence_names_the_threshold_it_uses():
    assert f"under {stats.SEED_NOISE_GAP:g} times the spread" in formatting.gap_reading(1.2, 3, 3)


# ---------------------------------------------------------------- CLI and report agree


def _sweep(root: Path, means: dict[str, float]) -> Path:
    """One run directory per (optimizer, seed): seeds at mean -0.02, mean, mean +0.02 (std 0.02)."""
    task = 0
    for opt, mean in means.items():
        for seed in range(3):
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
                        "test_accuracy": mean + (seed - 1) * 0.02,
                        "train_seconds": 12.5 + seed,
                    }
                )
            )
            task += 1
    return root


@pytest.mark.parametrize(
    ("runner_up", "gap_in_std", "short"),
    [
        (0.876, 1.2, "within seed noise"),
        (0.850, 2.5, "larger than the spread over seeds"),
    ],
)
def test_cli_and_report_give_the_same_reading_and_numbers(
    tmp_path, monkeypatch, capsys, runner_up, gap_in_std, short
):
    sweep = _sweep(tmp_path / "sweep", {"adam": 0.90, "sgd": runner_up})
    monkeypatch.chdir(tmp_path)
    assert cli.main(["collect", str(sweep), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out

    c = collect.collect([sweep])
    assert c.best.loc[0, "gap_in_pooled_std"] == pytest.approx(gap_in_std)
    best = report.best_section(c)
    assert best is not None and best["reading"].startswith(short)
    assert f"(gap {gap_in_std:.1f} pooled std: {short})" in printed

    # Every mean ± std and CI cell the report shows for the main metric, the CLI prints too.
    section = report.summary_section(c)
    column = section["metrics"].index(c.metric)
    for row in section["rows"]:
        cell = row["metrics"][column]
        line = next(
            line for line in printed.splitlines() if line.lstrip().startswith(row["keys"][0] + " ")
        )
        assert cell["mean"] in line and cell["ci"] in line, (cell, line)
