"""How long to wait between two polls of the scheduler: responsive at first, then backing off.

Slurm's documentation asks users not to run client commands in loops, and some sites
rate-limit RPCs per user. Waiting on a sweep (``hydra.launcher.wait=true``, ``status
--watch``) therefore polls after ``start`` seconds while something changes, and waits
``factor`` times longer after each poll that saw no change, up to ``ceiling`` (default
60 s); the next change brings it back to ``start``. Each poll is still one ``sacct`` call
for the whole sweep, so a sweep of any size costs the controller the same.
"""

from __future__ import annotations

from typing import Any

DEFAULT_CEILING_S = 60.0
DEFAULT_FACTOR = 1.5

_NOTHING_SEEN = object()


class Backoff:
    """``interval = backoff.after(what_the_poll_saw)``: the seconds to wait before the next poll."""

    def __init__(
        self, start: float, ceiling: float = DEFAULT_CEILING_S, factor: float = DEFAULT_FACTOR
    ) -> None:
        if start <= 0 or factor < 1:
            raise ValueError(f"start={start} must be > 0 and factor={factor} >= 1")
        self.start = float(start)
        # a ceiling below the start would never let it start
        self.ceiling = max(float(ceiling), self.start)
        self.factor = float(factor)
        self.interval = self.start
        self._seen: Any = _NOTHING_SEEN

    def after(self, seen: Any) -> float:
        """A poll's outcome (compared with ==): the same as last time backs off, else resets."""
        if seen == self._seen:
            self.interval = min(self.interval * self.factor, self.ceiling)
        else:
            self.interval = self.start
        self._seen = seen
        return self.interval
