"""SIGTERM handled as Ctrl-C: a process stopped by ``kill`` cleans up as it would on Ctrl-C.

Used by a local sweep's launcher (it stops its runs) and by each run outside Slurm (it
records itself interrupted). Ctrl-C alone is not enough: a shell's background jobs
ignore SIGINT, and schedulers and process managers stop things with SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt(enabled: bool = True) -> Iterator[None]:
    """While the block runs, SIGTERM raises KeyboardInterrupt (main thread only: elsewhere
    signals cannot be caught, and the block runs as it is)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
