"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Used by every stage that writes what others read (manifest, run files, tables, reports),
so it depends on none of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replacing(path: Path, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file whose content replaces ``path`` once the block ends without an error.

    It is a temporary file beside ``path``, fsynced, then renamed onto it: a process killed
    mid-write (even ``kill -9``) leaves the old file whole. Streams, so a large file (a
    checkpoint) need not fit in memory twice.

    ``durable=False`` leaves out the fsync (a fraction of a millisecond each, most of what a
    small write costs): still whole for every reader and after any kill of the process, but
    a crash of the machine itself may leave the file empty. Only for a file that a later
    write supersedes and whose readers cope with an empty one (a run's "running" record).
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except FileNotFoundError:  # its folder first (not before every write: a syscall each)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would, so teammates
        # (and a web server showing reports) can read results as the umask allows.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())  # the rename must not land before the data on a crash
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it onto ``path``."""
    with replacing(path, durable) as f:
        f.write(data)


def write_text(path: Path, text: str, durable: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), durable)


def write_json(path: Path, obj: Any, durable: bool = True) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n", durable)
