"""The time as hpcjobs' files record it: UTC, ISO 8601, to the second.

Every timestamp a sweep's files carry (sweep.json, metrics.json, accounting.json, the
"latest sweep" registry) comes from :func:`now`, so they compare as strings and read alike.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> str:
    """The current time, e.g. ``2024-05-01T12:00:00+00:00``."""
    return datetime.now(UTC).isoformat(timespec="seconds")
