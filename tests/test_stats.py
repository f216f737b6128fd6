"""Summary statistics against hand computations: intervals, selection, the paired verdict."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from hpcjobs.results import intervals, selection, stats

T_975_DOF2 = (
    4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom (tables: 4.303)
)


def logit(p):
    return math.log(p / (1 - p))


def expit(x):
    return 1 / (1 + math.exp(-x))


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
    assert metric == "test_accuracy"  # no validation metric recorded: the test metric, as before
    assert sgd["n_runs"] == 3 and sgd["n_completed"] == 3 and sgd["n_failed"] == 0
    assert sgd["test_accuracy_mean"] == pytest.approx(0.85)
    # sample std (ddof=1): sqrt((0.05² + 0.05² + 0²) / 2) = 0.05
    assert sgd["test_accuracy_std"] == pytest.approx(0.05)
    assert (sgd["test_accuracy_min"], sgd["test_accuracy_max"]) == (0.80, 0.90)
    # A loss is unbounded: Student's t. 0.9, 0.5, 0.7: mean 0.7, std 0.2.
    half = T_975_DOF2 * 0.2 / math.sqrt(3)
    assert sgd["test_loss_ci95_low"] == pytest.approx(0.7 - half)
    assert sgd["test_loss_ci95_high"] == pytest.approx(0.7 + half)


def test_an_accuracy_interval_is_t_on_the_logit_scale_by_hand():
    summary, _ = stats.summarize(runs_table(), ["optimizer"])
    sgd = summary.set_index("optimizer").loc["sgd"]
    z = [logit(p) for p in (0.80, 0.90, 0.85)]
    mean = sum(z) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in z) / 2)
    half = T_975_DOF2 * std / math.sqrt(3)
    assert sgd["test_accuracy_ci95_low"] == pytest.approx(expit(mean - half))
    assert sgd["test_accuracy_ci95_high"] == pytest.approx(expit(mean + half))


def test_an_accuracy_interval_never_leaves_0_1():
    # The summary: 0.9716 ± 0.0140, whose t interval [0.9368, 1.0064] passed 1.
    values = [0.9556, 0.9778, 0.9815]
    mean, std = np.mean(values), np.std(values, ddof=1)
    assert mean + T_975_DOF2 * std / math.sqrt(3) > 1  # the old interval did leave [0, 1]
    runs = pd.DataFrame(
        [
            {"lr": 0.1, "seed": s, "status": "completed", "test_accuracy": v}
            for s, v in enumerate(values)
        ]
    )
    row = stats.summarize(runs, ["lr"])[0].iloc[0]
    assert 0 <= row["test_accuracy_ci95_low"] < mean < row["test_accuracy_ci95_high"] < 1
    # Many groups, some with a value on the bound (no logit: the t interval, clipped).
    rng = np.random.default_rng(0)
    rows = []
    for group in range(300):
        n = int(rng.integers(2, 6))
        p = rng.beta(*rng.choice([(50, 1), (5, 5), (1, 50), (200, 1)]), size=n)
        p[rng.random(n) < 0.1] = float(rng.integers(0, 2))  # now and then exactly 0 or 1
        rows += [
            {"g": group, "seed": s, "status": "completed", "val_accuracy": v}
            for s, v in enumerate(p)
        ]
    summary, _ = stats.summarize(pd.DataFrame(rows), ["g"])
    low, high = summary["val_accuracy_ci95_low"], summary["val_accuracy_ci95_high"]
    assert low.notna().all() and high.notna().all()
    assert (low >= 0).all() and (high <= 1).all() and (low <= high).all()


def test_a_value_on_the_bound_gets_the_t_interval_clipped():
    runs = pd.DataFrame(
        [
            {"seed": s, "status": "completed", "test_accuracy": v}
            for s, v in enumerate([1.0, 1.0, 0.97])
        ]
    )
    row = stats.summarize(runs, [])[0].iloc[0]
    half = T_975_DOF2 * np.std([1.0, 1.0, 0.97], ddof=1) / math.sqrt(3)
    assert row["test_accuracy_ci95_low"] == pytest.approx(0.99 - half)
    assert row["test_accuracy_ci95_high"] == 1.0


@pytest.mark.parametrize(
    ("metric", "values", "unit"),
    [
        ("test_accuracy", [0.9, 0.95], True),
        ("best_val_accuracy", [0.9, 1.0], True),
        ("val/acc", [0.5], True),
        ("test_f1", [0.7], True),
        ("test_accuracy", [97.1, 98.2], False),  # a percentage: not a proportion
        ("test_loss", [0.2, 0.3], False),
        ("acct_cpu_s", [0.5], False),  # 'acct' is not 'acc'
    ],
)
def test_which_metrics_count_as_proportions(metric, values, unit):
    assert intervals.is_unit_metric(metric, values) is unit


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


def seeded_runs(configs):
    """{lr: {seed: (val, test)}} -> a runs table."""
    return pd.DataFrame(
        [
            {
                "lr": lr,
                "seed": seed,
                "status": "completed",
                "best_val_accuracy": val,
                "test_accuracy": test,
            }
            for lr, by_seed in configs.items()
            for seed, (val, test) in by_seed.items()
        ]
    )


def collected(runs, metric=None, report_metric=None):
    chosen = selection.choose(stats.measured_metrics(runs, ["lr"]), metric, report_metric)
    summary, _ = stats.summarize(runs, ["lr"], chosen.metric)
    return summary, stats.best_configs(runs, summary, ["lr"], chosen)


def test_selected_on_validation_reported_on_test():
    # lr=0.1 leads on validation, lr=0.01 on test: the selection reads validation only.
    runs = seeded_runs(
        {0.1: {0: (0.95, 0.90), 1: (0.96, 0.91)}, 0.01: {0: (0.93, 0.94), 1: (0.92, 0.95)}}
    )
    summary, best = collected(runs)
    assert list(summary["lr"]) == [0.1, 0.01]
    assert list(summary.columns[summary.columns.str.endswith("_mean")][:2]) == [
        "best_val_accuracy_mean",
        "test_accuracy_mean",
    ]  # the reported metric beside the selection
    row = best.iloc[0]
    assert (row["selected_on"], row["selection_source"], row["reported_on"]) == (
        "best_val_accuracy",
        "default",
        "test_accuracy",
    )
    assert row["best"] == "lr=0.1" and row["runner_up"] == "lr=0.01"
    assert row["best_selected_mean"] == pytest.approx(0.955) and row["best_mean"] == pytest.approx(
        0.905
    )
    assert row["difference"] == pytest.approx(0.905 - 0.945)


def test_metric_option_ranks_on_what_it_names():
    runs = seeded_runs(
        {0.1: {0: (0.95, 0.90), 1: (0.96, 0.91)}, 0.01: {0: (0.93, 0.94), 1: (0.92, 0.95)}}
    )
    summary, best = collected(runs, metric="test_accuracy")
    assert list(summary["lr"]) == [0.01, 0.1]
    row = best.iloc[0]
    assert (row["selected_on"], row["selection_source"], row["reported_on"]) == (
        "test_accuracy",
        "--metric",
        "test_accuracy",
    )
    assert row["best"] == "lr=0.01"


def test_configurations_sharing_seeds_are_compared_paired_as_scipy_does():
    # Each seed moves both configurations alike (its luck), so the per-seed differences are
    # steady while the spread over seeds is wide: paired sees the lead, unpaired cannot.
    a = {0: 0.90, 1: 0.95, 2: 0.85, 3: 0.92, 4: 0.88}
    b = {0: 0.89, 1: 0.93, 2: 0.84, 3: 0.905, 4: 0.87}
    runs = seeded_runs(
        {0.1: {s: (v, v) for s, v in a.items()}, 0.01: {s: (v, v) for s, v in b.items()}}
    )
    _, best = collected(runs)
    row = best.iloc[0]
    diffs = [a[s] - b[s] for s in a]
    ci = scipy_stats.ttest_rel(list(a.values()), list(b.values())).confidence_interval(0.95)
    assert (row["comparison"], row["n_pairs"]) == ("paired", 5)
    assert row["difference"] == pytest.approx(np.mean(diffs))
    assert (row["difference_ci95_low"], row["difference_ci95_high"]) == pytest.approx(
        (ci.low, ci.high)
    )
    assert row["verdict"] == stats.CLEAR
    # The same numbers without shared seeds: unpaired (pooled std), and the lead is noise.
    runs = seeded_runs(
        {0.1: {s: (v, v) for s, v in a.items()}, 0.01: {s + 5: (v, v) for s, v in b.items()}}
    )
    _, best = collected(runs)
    row = best.iloc[0]
    ci = scipy_stats.ttest_ind(
        list(a.values()), list(b.values()), equal_var=True
    ).confidence_interval(0.95)
    assert (row["comparison"], row["n_pairs"]) == ("unpaired", 0)
    assert (row["difference_ci95_low"], row["difference_ci95_high"]) == pytest.approx(
        (ci.low, ci.high)
    )
    assert row["verdict"] == stats.NOISE


def test_pairs_only_on_the_seeds_both_have():
    runs = seeded_runs(
        {
            0.1: {0: (0.9, 0.90), 1: (0.9, 0.94), 2: (0.9, 0.91), 7: (0.9, 0.5)},
            0.01: {0: (0.8, 0.88), 1: (0.8, 0.93), 2: (0.8, 0.89)},
        }
    )
    row = collected(runs)[1].iloc[0]
    ci = scipy_stats.ttest_rel([0.90, 0.94, 0.91], [0.88, 0.93, 0.89]).confidence_interval(0.95)
    assert (row["comparison"], row["n_pairs"]) == ("paired", 3)
    assert row["difference"] == pytest.approx(np.mean([0.02, 0.01, 0.02]))
    assert (row["difference_ci95_low"], row["difference_ci95_high"]) == pytest.approx(
        (ci.low, ci.high)
    )
    assert row["best_n"] == 4  # the means are over every completed run


def test_a_seed_twice_in_one_configuration_is_compared_unpaired():
    a = pd.Series([0.9, 0.92, 0.91], index=[0, 0, 1])
    b = pd.Series([0.8, 0.85], index=[0, 1])
    assert intervals.difference(a, b).comparison == intervals.UNPAIRED


@pytest.mark.parametrize(
    ("low", "high", "higher", "verdict"),
    [
        (0.01, 0.03, True, stats.CLEAR),
        (-0.01, 0.03, True, stats.NOISE),
        (-0.03, -0.01, True, stats.REVERSED),
        (-0.03, -0.01, False, stats.CLEAR),
        (math.nan, math.nan, True, stats.NO_VERDICT),
    ],
)
def test_the_verdict_reads_the_interval_of_the_difference(low, high, higher, verdict):
    assert stats.lead_verdict(low, high, higher) == verdict


def test_single_runs_have_no_verdict():
    runs = seeded_runs({0.1: {0: (0.9, 0.9)}, 0.01: {1: (0.8, 0.8)}})
    row = collected(runs)[1].iloc[0]
    assert row["comparison"] == "unpaired" and row["verdict"] == stats.NO_VERDICT
    assert math.isnan(row["difference_ci95_low"]) and row["difference"] == pytest.approx(0.1)


def test_pooled_std():
    assert intervals.pooled_std(0.02, 3, 0.04, 3) == pytest.approx(
        math.sqrt((2 * 0.0004 + 2 * 0.0016) / 4)
    )
    assert math.isnan(intervals.pooled_std(math.nan, 1, math.nan, 1))


@pytest.mark.parametrize(
    ("metrics", "requested", "declared", "expected"),
    [
        (
            ["test_accuracy", "best_val_accuracy"],
            None,
            {},
            ("best_val_accuracy", "test_accuracy", "default"),
        ),
        (["test_loss", "val_loss"], None, {}, ("val_loss", "test_loss", "default")),
        (["val/acc", "test/acc"], None, {}, ("val/acc", "test/acc", "default")),  # Lightning's keys
        (
            ["test_accuracy", "val/acc", "test/acc"],
            None,
            {"select_metric": "val/acc", "report_metric": "test/acc"},
            ("val/acc", "test/acc", "workload.select_metric"),
        ),
        (["test_accuracy", "best_val_accuracy"], "test_f1", {}, ("test_f1", "test_f1", "--metric")),
        (
            ["test_accuracy", "best_val_accuracy", "val_loss", "test_loss"],
            "val_loss",
            {},
            ("val_loss", "test_loss", "--metric"),
        ),
        (["test_accuracy", "test_loss"], None, {}, ("test_accuracy", "test_accuracy", "default")),
        (["score"], None, {}, ("score", "score", "default")),
        (
            ["best_val_accuracy", "test_accuracy"],
            None,
            {"select_metric": "nope"},
            ("best_val_accuracy", "test_accuracy", "default"),
        ),  # a declared metric nobody recorded
    ],
)
def test_which_metric_selects_and_which_is_reported(metrics, requested, declared, expected):
    chosen = selection.choose(metrics, requested, declared=declared)
    assert (chosen.metric, chosen.reported, chosen.source) == expected
    assert chosen.on_test == chosen.metric.startswith("test_")


def test_nothing_is_ranked_when_every_run_failed():
    runs = pd.DataFrame([{"lr": lr, "status": "failed", "wall_seconds": 1.0} for lr in (0.1, 0.01)])
    summary, metric = stats.summarize(runs, ["lr"])
    assert metric is None
    assert list(summary["n_failed"]) == [1, 1]
