"""The sweeps launched from this account, so that commands can default to the latest.

A small per-user file (``$HPCJOBS_STATE_DIR/sweeps.jsonl``, default
``~/.local/state/hpcjobs``), one line appended per launched sweep. The launcher
registers each sweep it starts (:func:`register`); `status` and `retry` without a sweep
directory take the latest that still exists (:func:`latest_sweep`). A caller that runs
Hydra (which returns nothing of what its launcher did) learns which sweeps it launched
by asking, around the run: ``with registry.launches() as launched: ...``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from hpcjobs.clock import now as _now
from hpcjobs.deprecation import renamed
from hpcjobs.errors import SweepDirError
from hpcjobs.sweepdir import manifest

REGISTRY_FILE = "sweeps.jsonl"
STATE_DIR_ENV = "HPCJOBS_STATE_DIR"


def state_dir() -> Path:
    default = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "hpcjobs"
    return Path(os.environ.get(STATE_DIR_ENV, default))


_registered_here: list[Path] = []  # every sweep this process launched (registered_by_this_process)
_listening: list[list[Path]] = []  # one list per launches() block under way


def register(sweep_dir: Path) -> None:
    """Remember a newly launched sweep (for 'the latest sweep' defaults)."""
    sweep_dir = Path(sweep_dir).resolve()
    # once per launch (the launcher calls it on a sweep's first batch)
    for launched in [_registered_here, *_listening]:
        launched.append(sweep_dir)
    line = json.dumps({"sweep_dir": str(sweep_dir), "pid": os.getpid(), "time": _now()})
    try:
        state_dir().mkdir(parents=True, exist_ok=True)
        with open(state_dir() / REGISTRY_FILE, "a", encoding="utf-8") as f:
            f.write(line + "\n")  # one short append: atomic enough for concurrent writers
    except OSError:
        pass  # a read-only home must not stop a sweep; the default just won't be known


@contextlib.contextmanager
def launches() -> Iterator[list[Path]]:
    """The sweeps registered while the block runs, in launch order (filled in as they are)."""
    launched: list[Path] = []
    _listening.append(launched)
    try:
        yield launched
    finally:  # this very list: another may hold the same sweeps (list.remove compares by ==)
        _listening[:] = [listening for listening in _listening if listening is not launched]


def registered_by_this_process() -> list[Path]:
    """Sweeps launched by this process, in launch order."""
    return list(_registered_here)


def latest_sweep() -> Path:
    try:
        lines = (state_dir() / REGISTRY_FILE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    for line in reversed(lines):
        try:
            path = Path(json.loads(line)["sweep_dir"])
        except (ValueError, KeyError, TypeError):
            continue
        if manifest.exists(path):
            return path
    raise SweepDirError(
        "no sweep recorded yet: pass the sweep directory (e.g. multirun/<experiment>/<date_time>)"
    )


# Old names (hpcjobs/deprecation.py).
record = renamed(register, "record")
recorded_by_this_process = renamed(registered_by_this_process, "recorded_by_this_process")
