"""A heartbeat file: touched by a daemon thread while its owner works; stale once it stops.

How a process that may die without cleaning up proves it is alive to processes on other
hosts (where its pid means nothing): the adaptive sweep's workers (hpcjobs/run/study.py)
and the decoded-image cache's builder and stager (hpcjobs/workloads/cnn/cache.py), whose
lock files are their heartbeats. Shared: both stages use it, neither owns it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

# A heartbeat this many beats old is taken for dead.
STALE_BEATS = 4


@contextmanager
def heartbeat(path: Path, interval_s: float) -> Iterator[None]:
    """Touch ``path`` every ``interval_s`` while the block runs (a daemon thread: dies with us)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(interval_s):
            with suppress(OSError):  # a file system hiccup: the next beat tries again
                os.utime(path)

    thread = threading.Thread(target=beat, name="hpcjobs-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def is_stale(path: Path, interval_s: float, now: float | None = None) -> bool:
    """Whether the owner beating ``path`` has stopped (missing: never started, also stale)."""
    try:
        last = path.stat().st_mtime
    except FileNotFoundError:
        return True
    return (now or time.time()) - last > STALE_BEATS * interval_s
