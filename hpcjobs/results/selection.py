"""Which metric ranks configurations, and which one is reported beside it.

Choosing a configuration by its test score and then reporting that score is the textbook
leak, so the two are kept apart: configurations are *selected* on a validation metric and
*reported* on a test metric. A workload declares its pair in its config group (read from a
run's .hydra/config.yaml by the collector)::

    workload:
      _target_: mypackage.train
      select_metric: val/acc      # ranks configurations (a key of metrics.json)
      report_metric: test/acc     # shown beside it

Without a declaration the first validation metric recorded is selected on (see
SELECT_PREFERENCE), and reported on its test counterpart (``best_val_accuracy`` ->
``test_accuracy``). ``collect --metric M`` selects on M instead, whatever it is, and
``--report-metric R`` reports R; the output names both and where they came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The keys of a workload's config group that declare its pair.
SELECT_KEY, REPORT_KEY = "select_metric", "report_metric"
# Where the selection came from, as the tables and the report name it.
FROM_OPTION = "--metric"
FROM_WORKLOAD = f"workload.{SELECT_KEY}"
FROM_DEFAULT = "default"

SELECT_PREFERENCE = ("best_val_accuracy", "val_accuracy", "best_val_f1", "val_f1")
REPORT_PREFERENCE = ("test_accuracy", "test_f1")
# Without any validation metric: the collector's choice before selection and report were split.
FALLBACK_PREFERENCE = ("test_accuracy", "test_f1", "best_val_accuracy", "score")
# Both spellings: best_val_accuracy (hpcjobs' CNN) and val/acc (Lightning's logger keys).
VALIDATION_PREFIXES = tuple(
    f"{word}{sep}" for sep in "_/" for word in ("best_val", "val", "valid", "validation")
)
TEST_PREFIXES = ("test_", "test/")


@dataclass(frozen=True)
class Selection:
    """The metric configurations are ranked by, the one reported beside it, and why."""

    metric: str | None  # ranks configurations (summary.csv's order, best.csv's best)
    reported: str | None  # shown beside it; best.csv compares the best and the runner-up on it
    source: str = FROM_DEFAULT  # FROM_OPTION, FROM_WORKLOAD or FROM_DEFAULT

    @property
    def on_test(self) -> bool:
        """Whether the ranking itself reads the test set (the leak; allowed with --metric)."""
        return bool(self.metric and self.metric.startswith(TEST_PREFIXES))

    def describe(self) -> str:
        """'selected on best_val_accuracy (default), reported on test_accuracy'."""
        return f"selected on {self.metric} ({self.source}), reported on {self.reported}"


def is_validation(metric: str) -> bool:
    return metric.startswith(VALIDATION_PREFIXES)


def counterpart_on_test(metric: str) -> str:
    """best_val_accuracy -> test_accuracy, val/acc -> test/acc; other names as they are."""
    for prefix in VALIDATION_PREFIXES:
        if metric.startswith(prefix):
            return "test" + prefix[-1] + metric[len(prefix) :]
    return metric


def default_metric(metrics: Sequence[str]) -> str | None:
    """The first validation metric recorded, else what was ranked before (a test metric)."""
    for name in SELECT_PREFERENCE:
        if name in metrics:
            return name
    validation = [m for m in metrics if is_validation(m)]
    if validation:
        return validation[0]
    return next((m for m in FALLBACK_PREFERENCE if m in metrics), metrics[0] if metrics else None)


def choose(
    metrics: Sequence[str],
    requested: str | None = None,
    requested_report: str | None = None,
    declared: Mapping[str, str] | None = None,
) -> Selection:
    """The selection among ``metrics`` (those completed runs recorded).

    ``requested``/``requested_report``: --metric/--report-metric (used as given: the caller
    checked they are columns); ``declared``: the workload's select_metric/report_metric.
    """
    declared = declared or {}
    metric: str | None
    if requested is not None:
        metric, source = requested, FROM_OPTION
    elif declared.get(SELECT_KEY) in metrics:
        metric, source = declared[SELECT_KEY], FROM_WORKLOAD
    else:
        metric, source = default_metric(metrics), FROM_DEFAULT
    if requested_report is not None or metric is None:
        return Selection(metric, requested_report or metric, source)
    return Selection(metric, _reported(metric, source, metrics, declared), source)


def _reported(metric: str, source: str, metrics: Sequence[str], declared: Mapping[str, str]) -> str:
    counterpart = counterpart_on_test(metric)
    if source == FROM_WORKLOAD and declared.get(REPORT_KEY) in metrics:
        return declared[REPORT_KEY]
    if counterpart != metric and counterpart in metrics:
        return counterpart
    if not is_validation(metric):  # a test metric, a score: reported as it was ranked
        return metric
    if declared.get(REPORT_KEY) in metrics:
        return declared[REPORT_KEY]
    return next((m for m in REPORT_PREFERENCE if m in metrics), metric)
