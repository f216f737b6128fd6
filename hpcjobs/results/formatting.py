"""Numbers as the CLI and the report show them: one wording for both.

Pure functions from values to display strings (no printing, no file access), so that
`collect` in a terminal and report.md/report.html say the same thing about the same
sweep: 'mean ± std' with the std to its mean's precision, no interval for a single run
(never a zero-width one), what configurations were selected on and reported on, and
whether the selected configuration's lead is within seed noise (the rule itself,
stats.lead_verdict, lives with the statistics).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcjobs.results import intervals, stats
from hpcjobs.results.selection import FROM_OPTION, FROM_WORKLOAD, Selection

if TYPE_CHECKING:
    import pandas as pd

    BestRow = Mapping[str, Any] | pd.Series  # a row of best.csv: a dict, or pandas' row

MISSING = "—"
# The short readings of a lead over the runner-up (stats.lead_verdict's); the report's
# longer sentence starts with one.
SHORT_VERDICTS = {
    stats.CLEAR: "larger than the spread over seeds",
    stats.NOISE: "within seed noise",
    stats.REVERSED: "the runner-up is ahead beyond seed noise",
    stats.NO_VERDICT: "n/a",
}


def is_missing(value: object) -> bool:
    """None or NaN: nothing to show."""
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def fmt(value: object, digits: int = 4) -> str:
    """A number as a reader wants it: 0.9679, 12.35, 11,284; '—' when missing."""
    if value is None:
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return MISSING
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.2f}"
    if x != 0 and abs(x) < 10**-digits:
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def hours(value: object) -> str:
    """CPU- or GPU-hours: 1,234, 12.3, 0.123; a trace of one as '< 0.001'; '—' when missing."""
    if is_missing(value):
        return MISSING
    h = float(value)  # type: ignore[arg-type]
    if h == 0:
        return "0"
    if h < 0.001:
        return "< 0.001"
    return f"{h:,.0f}" if h >= 1000 else f"{h:.1f}" if h >= 10 else f"{h:.3f}"


def percent(value: object) -> str:
    """0.342 -> '34%'; '—' when missing."""
    return MISSING if is_missing(value) else f"{100 * float(value):.0f}%"  # type: ignore[arg-type]


def fmt_like(value: object, reference: object) -> str:
    """``value`` with as many decimals as ``reference`` shows (a std next to its mean)."""
    ref = abs(float(reference))  # type: ignore[arg-type]
    if ref >= 1000:
        return f"{float(value):,.0f}"  # type: ignore[arg-type]
    if ref >= 10:
        return f"{float(value):.2f}"  # type: ignore[arg-type]
    return fmt(value)


def fmt_seconds(value: object) -> str:
    """Durations: 5.59, 40.0, 1,234 (beyond that, a millisecond is noise)."""
    if is_missing(value):
        return MISSING
    x = float(value)  # type: ignore[arg-type]
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def mean_pm_std(mean: object, std: object, n: int | None = None) -> str:
    """'0.9679 ± 0.0057 (n=3)', '11,332 ± 100'; a lone value has no spread: '0.9500 (1 run)'."""
    if is_missing(mean):
        return MISSING
    if is_missing(std):
        return f"{fmt(mean)}" + (" (1 run)" if n == 1 else "")
    return f"{fmt(mean)} ± {fmt_like(std, mean)}" + (f" (n={n})" if n is not None else "")


def ci_text(mean: object, low: object, high: object, n_completed: int) -> str:
    """'[0.9538, 0.9820]'; a single run has no interval: '— (1 run)', never a zero-width one."""
    if is_missing(mean):
        return ""  # the mean cell already says "—"
    if is_missing(low) or is_missing(high):
        return f"{MISSING} (1 run)" if n_completed <= 1 else MISSING
    return f"[{fmt(low)}, {fmt(high)}]"


def selection_text(chosen: Selection) -> str:
    """'selected on best_val_accuracy (default), reported on test_accuracy'."""
    return chosen.describe()


def selection_caveat(chosen: Selection) -> str | None:
    """A warning when the ranking itself reads the test set; None otherwise."""
    if not chosen.on_test:
        return None
    why = {FROM_OPTION: "as --metric asked", FROM_WORKLOAD: "as the workload declares"}.get(
        chosen.source, "no validation metric was recorded"
    )
    return (
        f"ranked on the test metric {chosen.metric} ({why}): the best configuration was"
        " picked for its test value, so that value flatters it; rank on a validation"
        " metric to report the test set without that bias"
    )


def comparison_text(best: BestRow) -> str:
    """'paired on 3 shared seeds' or 'unpaired (fewer than 2 shared seeds)' (a best.csv row)."""
    if best.get("comparison") == intervals.PAIRED:
        return f"paired on {int(best['n_pairs'])} shared seeds"
    return f"unpaired (fewer than {intervals.MIN_PAIRS} shared seeds)"


def signed(value: object) -> str:
    """A difference with its sign: '+0.0400', '-0.0120'."""
    if is_missing(value):
        return MISSING
    return ("+" if float(value) > 0 else "") + fmt(value)  # type: ignore[arg-type]


def verdict_short(best: BestRow) -> str:
    """The reading in a few words, e.g. 'within seed noise' (a best.csv row)."""
    return SHORT_VERDICTS[str(best.get("verdict") or stats.NO_VERDICT)]


def difference_text(best: BestRow) -> str:
    """The difference best - runner-up as one line shows it: 'test_accuracy +0.0400, paired on
    3 shared seeds, 95% CI [0.0100, 0.0700]: larger than the spread over seeds'."""
    interval = f"[{fmt(best['difference_ci95_low'])}, {fmt(best['difference_ci95_high'])}]"
    ci = f", 95% CI {interval}" if not is_missing(best["difference_ci95_low"]) else ""
    return (
        f"{best['reported_on']} {signed(best['difference'])}, {comparison_text(best)}{ci}:"
        f" {verdict_short(best)}"
    )


def verdict_reading(best: BestRow) -> str:
    """One sentence of plain English on whether the lead is more than seed noise."""
    verdict = str(best.get("verdict") or stats.NO_VERDICT)
    how = comparison_text(best)
    short = SHORT_VERDICTS[verdict]
    if verdict == stats.NO_VERDICT:
        if int(best["best_n"]) <= 1 and int(best["runner_up_n"]) <= 1:
            return f"{short}: single runs (no spread over seeds to compare the difference with)"
        return f"{short}: no spread over seeds to compare the difference with"
    if verdict == stats.NOISE:
        return (
            f"{short}: the 95% interval of the difference ({how}) includes zero,"
            " so reseeding could swap the two"
        )
    if verdict == stats.REVERSED:
        return (
            f"{short}: on {best['reported_on']} the runner-up does better and the 95%"
            f" interval of the difference ({how}) excludes zero: the ranking on"
            f" {best['selected_on']} did not carry over"
        )
    return (
        f"{short}: the 95% interval of the difference ({how}) excludes zero,"
        " so the lead is unlikely to be seed noise"
    )
