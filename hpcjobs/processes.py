"""Process identity from Linux's /proc: a pid together with its start time names one process.

A pid is reused once its process has ended; (pid, start time) is not. sweep.json records
the launching process this way and a worker's journal its own, so that `status` can tell
whether the process it names still runs. Elsewhere than Linux these say None: not known.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot), to tell it from a later one with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[
        1
    ].split()  # after the command name: state is field 3, start time 22
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has ended already


def process_started_at(pid: int) -> float | None:
    """When a process started, as a time.time() value (Linux /proc), or None."""
    start = process_start(pid)
    try:
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return None
    return None if start is None else boot + int(start) / os.sysconf("SC_CLK_TCK")


def this_process() -> tuple[int, str | None]:
    """(pid, start) of this process, as launcher_pid / launcher_started record it."""
    return os.getpid(), process_start(os.getpid())


def still_runs(host: Any, pid: Any, started: Any) -> bool | None:
    """Whether the process recorded as (``host``, ``pid``, ``started``: its process_start)
    still runs; None where that cannot be told here (another host, or no start recorded)."""
    if host != socket.gethostname() or not isinstance(pid, int) or started is None:
        return None
    return process_start(pid) == started
