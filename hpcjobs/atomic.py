"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Used by every stage that writes what others read (manifest, run files, tables, reports),
so it depends on none of them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

# Temporary names: unique in this process by the counter, across processes by the pid; a name
# left by a dead process that had this pid is skipped (O_EXCL).
_serial = itertools.count()


def _create_beside(path: Path) -> tuple[int, str]:
    """A new, exclusive temporary file beside ``path``: (its descriptor, its path).

    Mode 0o666 less the umask, as a plain open() makes it (teammates, and a web server showing
    reports, read results as the umask allows); the kernel applies the umask, so no umask or
    fchmod call per write (tempfile.mkstemp makes it 0600, which needed both)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = f"{path.parent}/.{path.name}.{os.getpid()}-{next(_serial)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except FileNotFoundError:  # its folder first (not before every write: a syscall each)
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(tmp, flags, 0o666), tmp


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
    fd, tmp = _create_beside(path)
    try:
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
    """Write ``data`` to a temporary file beside ``path``, then rename it onto ``path``.

    What :func:`replacing` does, on the descriptor itself: a run writes several small files,
    and a file object's layers cost more than the write."""
    path = Path(path)
    fd, tmp = _create_beside(path)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)  # the rename must not land before the data on a crash
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str, durable: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), durable)


def write_json(path: Path, obj: Any, durable: bool = True) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n", durable)
