"""Numbers as the CLI and the report show them: one wording for both.

Pure functions from values to display strings (no printing, no file access), so that
`collect` in a terminal and report.md/report.html say the same thing about the same
sweep: 'mean ± std' with the std to its mean's precision, no interval for a single run
(never a zero-width one), and whether a lead is within seed noise (the rule itself,
stats.within_seed_noise, lives with the statistics).
"""

from __future__ import annotations

import math

import numpy as np

from hpcjobs.results import stats

MISSING = "—"
# The short readings of a lead over the runner-up; the report's longer sentence starts with one.
WITHIN_NOISE = "within seed noise"
BEYOND_NOISE = "larger than the spread over seeds"
NO_VERDICT = "n/a"


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


def gap_verdict(gap_in_pooled_std: float) -> str:
    """'noise', 'clear' or 'na' (no spread to compare the gap with): the report's CSS class."""
    within = stats.within_seed_noise(gap_in_pooled_std)
    return "na" if within is None else "noise" if within else "clear"


def gap_short(gap_in_pooled_std: float) -> str:
    """The reading in a few words: 'within seed noise', 'larger than the spread over seeds', n/a."""
    return {"noise": WITHIN_NOISE, "clear": BEYOND_NOISE, "na": NO_VERDICT}[
        gap_verdict(gap_in_pooled_std)
    ]


def gap_text(gap_in_pooled_std: float) -> str:
    """The gap with its reading, as one line shows it: '1.2 pooled std: within seed noise'."""
    if is_missing(gap_in_pooled_std):
        return NO_VERDICT
    return f"{gap_in_pooled_std:.1f} pooled std: {gap_short(gap_in_pooled_std)}"


def gap_reading(gap_in_pooled_std: float, best_n: int, runner_up_n: int) -> str:
    """One sentence of plain English on whether the lead is more than seed noise."""
    verdict = gap_verdict(gap_in_pooled_std)
    if verdict == "na":
        if best_n <= 1 and runner_up_n <= 1:
            return f"{NO_VERDICT}: single runs (no spread over seeds to compare the gap with)"
        return f"{NO_VERDICT}: no spread over seeds (every seed gave the same value)"
    if verdict == "noise":
        return (
            f"{WITHIN_NOISE}: the lead is under {stats.SEED_NOISE_GAP:g} times the spread over"
            " seeds, so reseeding could swap the two"
        )
    return f"{BEYOND_NOISE}: the lead is unlikely to be seed noise"
