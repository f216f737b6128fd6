"""Claiming a sweep directory: exactly one sweep writes into each.

Used once per sweep by the launcher, for a time-stamped ``hydra.sweep.dir``: two sweeps
started in the same second resolve ``${now:...}`` to the same path.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from hpcjobs.clock import now as _now

CLAIM_FILE = ".hpcjobs-sweep"  # created exclusively by the one sweep that owns the directory


def claim(sweep_dir: Path) -> Path:
    """The directory this sweep may write: ``sweep_dir``, or ``sweep_dir_2``, ``_3``... if another
    sweep has it.

    Two sweeps started in the same second resolve ``${now:...}`` to the same path; the
    claim file is created with O_EXCL, so exactly one of them gets the path and the other
    takes the next free suffix (created with mkdir, also exclusive). Neither touches the
    other's files. Called once per sweep: the caller pins the result in the config, so the
    sweep's later batches never claim again, and a second sweep of the same process (a
    script calling main() twice) gets a directory of its own.
    """
    sweep_dir = Path(sweep_dir).absolute()
    sweep_dir.mkdir(parents=True, exist_ok=True)  # Hydra's sweeper may have made it already
    candidate, n = sweep_dir, 1
    while True:
        try:
            fd = os.open(candidate / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            pass
        while True:  # the next suffix nobody has made yet
            n += 1
            candidate = sweep_dir.with_name(f"{sweep_dir.name}_{n}")
            try:
                candidate.mkdir()
                break
            except FileExistsError:
                continue
    with os.fdopen(fd, "w") as f:
        f.write(
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": _now()}) + "\n"
        )
    return candidate
