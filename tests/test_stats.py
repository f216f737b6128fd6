"""Summary statistics against a hand-computed example."""

import math

import pandas as pd
import pytest

from hpcjobs.results import stats

T_975_DOF2 = (
    4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom (tables: 4.303)
)


def runs_table():
    return pd.DataFrame(
        [
            {
                "optimizer": "sgd",
                "seed": 0,
                "status": "completed",
                "test_accuracy": 0.80,
                "test_loss": 0.9,
            },
            {
                "optimizer": "sgd",
                "seed": 1,
                "status": "completed",
                "test_accuracy": 0.90,
                "test_loss": 0.5,
            },
            {
                "optimizer": "sgd",
                "seed": 2,
                "status": "completed",
                "test_accuracy": 0.85,
                "test_loss": 0.7,
            },
            {
                "optimizer": "adam",
                "seed": 0,
                "status": "completed",
                "test_accuracy": 0.95,
                "test_loss": 0.2,
            },
            {
                "optimizer": "adam",
                "seed": 1,
                "status": "failed",
                "test_accuracy": None,
                "test_loss": None,
            },
            {
                "optimizer": "momentum",
                "seed": 0,
                "status": "failed",
                "test_accuracy": None,
                "test_loss": None,
            },
        ]
    )


def test_mean_std_min_max_and_t_interval_by_hand():
    summary, metric = stats.summarize(runs_table(), ["optimizer"])
    sgd = summary.set_index("optimizer").loc["sgd"]
    assert metric == "test_accuracy"
    assert sgd["n_runs"] == 3 and sgd["n_completed"] == 3 and sgd["n_failed"] == 0
    assert sgd["test_accuracy_mean"] == pytest.approx(0.85)
    # sample std (ddof=1): sqrt((0.05² + 0.05² + 0²) / 2) = 0.05
    assert sgd["test_accuracy_std"] == pytest.approx(0.05)
    assert (sgd["test_accuracy_min"], sgd["test_accuracy_max"]) == (0.80, 0.90)
    half = T_975_DOF2 * 0.05 / math.sqrt(3)  # = 0.12421
    assert sgd["test_accuracy_ci95_low"] == pytest.approx(0.85 - half)
    assert sgd["test_accuracy_ci95_high"] == pytest.approx(0.85 + half)


def test_a_single_run_has_no_interval_rather_than_zero():
    summary, _ = stats.summarize(runs_table(), ["optimizer"])
    adam = summary.set_index("optimizer").loc["adam"]
    assert adam["n_runs"] == 2 and adam["n_completed"] == 1 and adam["n_failed"] == 1
    assert adam["test_accuracy_mean"] == 0.95
    assert math.isnan(adam["test_accuracy_std"])
    assert math.isnan(adam["test_accuracy_ci95_low"]) and math.isnan(
        adam["test_accuracy_ci95_high"]
    )


def test_a_group_where_every_run_failed_is_listed_last():
    summary, _ = stats.summarize(runs_table(), ["optimizer"])
    assert list(summary["optimizer"]) == ["adam", "sgd", "momentum"]
    momentum = summary.iloc[-1]
    assert momentum["n_failed"] == 1 and math.isnan(momentum["test_accuracy_mean"])


def test_sort_direction_follows_the_metric():
    by_accuracy, _ = stats.summarize(runs_table(), ["optimizer"], metric="test_accuracy")
    by_loss, _ = stats.summarize(runs_table(), ["optimizer"], metric="test_loss")
    assert list(by_accuracy["optimizer"][:2]) == ["adam", "sgd"]  # higher is better
    assert list(by_loss["optimizer"][:2]) == ["adam", "sgd"]  # 0.2 < 0.7: lower is better
    assert stats.lower_is_better("test_loss") and stats.lower_is_better("train_seconds")
    assert not stats.lower_is_better("train_images_per_second")


def test_grouping_with_and_without_the_seed():
    over_seeds, _ = stats.summarize(runs_table(), ["optimizer"])
    per_seed, _ = stats.summarize(runs_table(), ["optimizer", "seed"])
    everything, _ = stats.summarize(runs_table(), [])
    assert len(over_seeds) == 3 and len(per_seed) == 6
    assert set(per_seed["n_runs"]) == {1}
    assert len(everything) == 1 and everything.loc[0, "n_runs"] == 6
    assert everything.loc[0, "test_accuracy_mean"] == pytest.approx((0.80 + 0.90 + 0.85 + 0.95) / 4)


def test_best_and_runner_up_with_the_gap_in_pooled_std():
    runs = pd.DataFrame(
        [
            {"lr": lr, "seed": s, "status": "completed", "test_accuracy": acc}
            for lr, accs in ((0.1, [0.90, 0.92, 0.94]), (0.01, [0.86, 0.88, 0.90]))
            for s, acc in enumerate(accs)
        ]
    )
    summary, metric = stats.summarize(runs, ["lr"])
    best = stats.best_configs(summary, ["lr"], [metric]).iloc[0]
    assert best["best"] == "lr=0.1" and best["runner_up"] == "lr=0.01"
    assert best["gap"] == pytest.approx(0.04)
    assert best["pooled_std"] == pytest.approx(0.02)  # both groups have std 0.02
    assert best["gap_in_pooled_std"] == pytest.approx(2.0)


def test_pooled_std():
    assert stats.pooled_std(0.02, 3, 0.04, 3) == pytest.approx(
        math.sqrt((2 * 0.0004 + 2 * 0.0016) / 4)
    )
    assert math.isnan(stats.pooled_std(math.nan, 1, math.nan, 1))


def test_nothing_is_ranked_when_every_run_failed():
    runs = pd.DataFrame([{"lr": lr, "status": "failed", "wall_seconds": 1.0} for lr in (0.1, 0.01)])
    summary, metric = stats.summarize(runs, ["lr"])
    assert metric is None
    assert list(summary["n_failed"]) == [1, 1]
