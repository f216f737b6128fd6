"""The files of a worker pool: who claimed which task, and what each worker did.

``hydra.launcher.workers=N`` runs a sweep's tasks on N workers that pull them
(hpcjobs/run/worker.py). They share no server and no database, only these files in the
sweep directory::

    .pools/<pool>/claims/<task index>      linked (or created with O_EXCL) by the one worker
                                           that runs it, to .pools/<pool>/claims/.worker<k>
    .pools/<pool>/workers/<k>.jsonl        worker k's journal: one JSON object per line

A claim is atomic on local and network file systems alike (link(2), or O_EXCL; no lock to
go stale; a hard link costs no inode): each task of the pool runs once, on whichever worker
got there first. A journal has one
writer, its worker, which appends a line when it starts, claims a task, ends one, and
stops; `status` reads the N journals (not one file per run), so a poll of a
100,000-task sweep reads a handful of files. A worker that dies leaves a claim with no
end in its journal: `status` shows that task interrupted, and `retry` runs it again. (An
adaptive sweep's workers hand it out again themselves, ``<index>~<n>`` claims:
hpcjobs/run/study.py.)
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POOLS_DIR = ".pools"


def pool_dir(sweep_dir: Path | str, pool_id: str) -> Path:
    return Path(sweep_dir) / POOLS_DIR / pool_id


def claim(pool: Path, index: int, worker: int) -> bool:
    """Take task ``index`` for ``worker``; False if another worker has it.

    The claim is a hard link to the worker's own claim file (link(2) fails if the name
    exists: the exclusive create NFS has always honoured, as O_EXCL is): a name, not an inode,
    so a 100,000-run sweep's claims cost no inode quota. Where links are refused (a file
    system without them, or the worker's file at its link limit: ext4's is 65,000), the next
    claim file, or an O_EXCL file of its own.

    NFS (v3, or v4.0 without sessions) may send a link again whose reply was lost: the name
    then exists, made by this very call, and link(2) says EEXIST. So a name that exists is
    this worker's claim if it is its claim file (the same inode): otherwise no worker would run
    the task, its claim held by a worker that is alive (open(2)'s NFS advice, for a shared file).
    """
    name = pool / "claims" / str(index)
    for _ in range(2):
        own = _claim_file(pool, worker)
        try:
            os.link(own, name)
            return True
        except FileExistsError:
            return _same_file(own, name)
        except FileNotFoundError:  # the claims folder, or the worker's file, is not there yet
            _claim_files.pop((pool, worker), None)
        except OSError as e:
            if e.errno != errno.EMLINK:
                return _claim_exclusive(name, worker)  # no hard links here
            _claim_files[pool, worker] = _new_claim_file(pool, worker)
    return _claim_exclusive(name, worker)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# (pool, worker) -> the file its claims link to, in this process
_claim_files: dict[tuple[Path, int], Path] = {}


def _claim_file(pool: Path, worker: int) -> Path:
    if (pool, worker) not in _claim_files:
        _claim_files[pool, worker] = _new_claim_file(pool, worker, first=True)
    return _claim_files[pool, worker]


def _new_claim_file(pool: Path, worker: int, first: bool = False) -> Path:
    """A file that says ``worker``, for its claims to link to (dot-named: no task's claim).
    The first is reused by the worker started again; later ones (a link limit) are new."""
    claims = pool / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    for n in range(1_000_000):
        path = claims / (f".worker{worker}" if n == 0 else f".worker{worker}.{n}")
        flags = os.O_CREAT | os.O_WRONLY | (0 if first and n == 0 else os.O_EXCL)
        try:
            fd = os.open(path, flags, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{worker}\n")
        return path
    raise OSError(errno.EMLINK, f"{claims}: no claim file left for worker {worker}")


def _claim_exclusive(name: Path, worker: int) -> bool:
    try:
        fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{worker}\n")
    return True


def is_claimed(pool: Path, index: int) -> bool:
    return (pool / "claims" / str(index)).exists()


def takeovers(pool: Path, index: int) -> int:
    """How many times task ``index`` was taken from a worker that died (see :func:`take_over`)."""
    return sum(1 for _ in (pool / "claims").glob(f"{index}~*"))


def take_over(pool: Path, index: int, worker: int, seen: int) -> int | None:
    """Take task ``index`` from the worker that claimed it and died, ``seen`` being the number
    of that claim (0: the first claim, n: the n-th takeover): claim ``<index>~<seen + 1>``,
    with O_EXCL again, so of the workers that noticed, one gets it. The takeover's number,
    or None if another worker took it first."""
    n = seen + 1
    try:
        fd = os.open(pool / "claims" / f"{index}~{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as f:
        f.write(f"{worker}\n")
    return n


class Journal:
    """Worker ``k``'s journal: appended by that worker only, one line per event."""

    def __init__(self, pool: Path, worker: int) -> None:
        self.path = pool / "workers" / f"{worker}.jsonl"
        self._fd: int | None = None

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n"
        # One short O_APPEND write per event: a reader sees whole lines (bar a torn last one,
        # which it skips), and a killed worker loses at most the line it was writing. The file
        # stays open between events (two opens fewer per run); close() when the worker stops.
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            if _ends_torn(self._fd):  # a line its dead worker was writing: this one is whole
                line = "\n" + line
        os.write(self._fd, line.encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # as a file object does: a journal dropped unclosed (tests)
        self.close()


def _ends_torn(fd: int) -> bool:
    """Whether the file ends with part of a line (its writer killed mid-line)."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    yield from _events(text.splitlines())


def _events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The journal events of these lines; a line a killed worker was writing is skipped."""
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


@dataclass
class WorkerView:
    """What one worker's journal says."""

    worker: int
    job_id: str | None = None  # its latest start's (Slurm: ARRAYID_INDEX)
    host: str = ""
    pid: int = 0
    pid_started: str | None = (
        None  # /proc start time, to tell the process from a later one with its pid
    )
    starts: int = 0  # more than one: requeued (preempted, or its time limit came during a run)
    stopped: str | None = None  # why it stopped claiming, once it did
    running: int | None = None  # the task it claimed and has not ended
    running_takeover: int = 0  # that claim's takeover number (0: its first claim)
    ended: dict[int, dict[str, Any]] = field(default_factory=dict)  # task -> its end event


@dataclass
class PoolView:
    """A pool as its journals tell it: every claimed task, its worker, and how it ended."""

    workers: dict[int, WorkerView]
    claimed_by: dict[int, int]  # task -> the worker of its latest claim (or takeover)
    takeover: dict[int, int]  # task -> that claim's takeover number (0: the first claim)
    # task -> end event (state, seconds; an adaptive sweep's: value)
    ended: dict[int, dict[str, Any]]
    # An adaptive sweep's tasks: overrides and trial number, as the claiming worker began them.
    trials: dict[int, dict[str, Any]] = field(default_factory=dict)

    def durations(self) -> list[float]:
        return [
            float(e["seconds"])
            for e in self.ended.values()
            if isinstance(e.get("seconds"), (int, float))
        ]


def read_pool(pool: Path) -> PoolView:
    """The pool as its journals tell it now (:class:`PoolReader`, read once)."""
    return PoolReader(pool).read()


class PoolReader:
    """A pool's journals, read as they grow: each :meth:`read` parses only the lines written
    since the last, and says what all of them say together.

    A launcher polls its pool every half second while its workers run; parsing every journal
    from its start each time made a poll cost what the sweep had written so far (a 100,000-run
    sweep's last polls: 200,000 lines each, on the cores its workers run on). A line being
    written when it reads (no newline yet) waits for the next read; a line a killed worker left
    torn is skipped, as read_events skips it.
    """

    def __init__(self, pool: Path) -> None:
        self.pool = pool
        self._offsets: dict[Path, int] = {}  # journal -> bytes read, up to its last whole line
        self._workers: dict[int, WorkerView] = {}
        self._claimed_by: dict[int, int] = {}  # task -> the worker of its latest claim/takeover
        self._takeover: dict[int, int] = {}  # task -> the takeover number of that claim
        self._ended: dict[int, dict[str, Any]] = {}
        self._ended_claim: dict[int, int] = {}  # task -> the takeover its end event ended
        self._trials: dict[int, dict[str, Any]] = {}

    def read(self) -> PoolView:
        for path in sorted((self.pool / "workers").glob("*.jsonl")):
            if path.stem.isdigit():
                worker = int(path.stem)
                view = self._workers.setdefault(worker, WorkerView(worker))
                for event in self._new_events(path):
                    self._apply(view, event)
        ended = dict(self._ended)
        for task, n in self._ended_claim.items():  # taken over since: the run is under way again
            if n < self._takeover.get(task, 0):
                del ended[task]
        workers = {k: dataclasses.replace(w, ended=dict(w.ended)) for k, w in self._workers.items()}
        return PoolView(
            workers, dict(self._claimed_by), dict(self._takeover), ended, dict(self._trials)
        )

    def _new_events(self, path: Path) -> Iterator[dict[str, Any]]:
        offset = self._offsets.get(path, 0)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return
        whole = data.rfind(b"\n") + 1  # what follows the last newline is still being written
        self._offsets[path] = offset + whole
        yield from _events(data[:whole].decode("utf-8", errors="replace").splitlines())

    def _apply(self, view: WorkerView, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            view.starts += 1
            view.job_id, view.host = event.get("job_id"), event.get("host", "")
            view.pid, view.pid_started = int(event.get("pid") or 0), event.get("pid_started")
            view.stopped = None
        elif kind == "claim":
            task, n = int(event["task"]), int(event.get("takeover") or 0)
            if n >= self._takeover.get(task, 0):
                self._claimed_by[task], self._takeover[task] = view.worker, n
                if "overrides" in event:
                    self._trials[task] = {
                        "trial": event.get("trial"),
                        "overrides": event["overrides"],
                    }
            view.running, view.running_takeover = task, n
        elif kind == "end":
            task = int(event["task"])
            n = view.running_takeover if view.running == task else 0
            view.ended[task] = event
            if n >= self._ended_claim.get(task, -1):
                self._ended[task], self._ended_claim[task] = event, n
            if view.running == task:
                view.running = None
        elif kind == "stop":
            view.stopped = str(event.get("reason", ""))
