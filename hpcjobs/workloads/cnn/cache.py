"""The decoded-image cache: an image folder decoded once, then memory-mapped by every run.

A sweep's runs (its tasks, workers and ranks) read the same folder at the same size; the
first that needs it decodes it into a cache folder they share, the others wait for it and
then map the file: no decode, no copy (the operating system shares the pages between the
processes of a node). One entry per (folder content, image size, channels, resize rule)::

    <cache dir>/imagefolder-<key>/images.npy     uint8 [N, C, H, W]: train, validation, test
    <cache dir>/imagefolder-<key>/labels.npy     int64 [N]
    <cache dir>/imagefolder-<key>/manifest.json  key, shapes, split ranges, each file's size
                                                 and CRC32s; written last (an entry without
                                                 one is not an entry yet)
    <cache dir>/imagefolder-<key>.lock           who builds it: host, pid, process start
    <cache dir>/builds.jsonl                     one line per build: what, who, how long
    <stage dir>/hpcjobs-stage/imagefolder-<key>/ data.stage=node: the entry copied once per
                                                 node, its manifest with the copies' identity

The key hashes the resolved root, every image's path, class, size and modification time,
the image size, channels, resize rule and Pillow version: a file added, removed or
modified gives another entry. The builder reads its files back against their CRC32s
before it writes the manifest, and records their identity (inode, modification and change
times). Every load checks each file's size, and its CRC32s whenever it is not that very
file untouched (a copy, a rewrite, a touch: anything written through the file system); a
truncated or corrupt entry is rebuilt with a warning, never read.

The lock is an ``O_EXCL`` file, as the workers' claims (hpcjobs/sweepdir/pools.py); its builder
touches it while it works (hpcjobs/heartbeat.py, as the workers do). It is broken
when its owner has ended (same host: its pid no longer runs with the start time it
recorded) or when it has not been touched for :data:`STALE_S` seconds (any host). The
files are written under temporary names and renamed (hpcjobs/atomic.py), so two builders
(after a lock broken by mistake) write the same bytes and nobody reads half a file.

Torch-free: numpy and PIL (decode.py) only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import mmap
import os
import shutil
import socket
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from hpcjobs import atomic
from hpcjobs.errors import DataError
from hpcjobs.heartbeat import STALE_BEATS, heartbeat, is_stale
from hpcjobs.processes import process_start, still_runs
from hpcjobs.workloads.cnn import decode
from hpcjobs.workloads.cnn.config import CACHE_OFF
from hpcjobs.workloads.cnn.imagefolder import SPLITS, ImageFolderIndex

log = logging.getLogger(__name__)

OFF = CACHE_OFF  # data.cache_dir=off: decode into memory, write nothing
DEFAULT_SUBDIR = ".hpcjobs-cache"  # in data.root, where writable
FORMAT = 1  # of the entry's files; part of the key
IMAGES, LABELS, MANIFEST = "images.npy", "labels.npy", "manifest.json"
JOURNAL = "builds.jsonl"
BLOCK_BYTES = 64 << 20  # one CRC32 per block
HEARTBEAT_S = 10.0  # the builder touches its lock this often
STALE_S = STALE_BEATS * HEARTBEAT_S  # an untouched lock this old is broken
_POLL_S = (0.05, 1.0)  # a waiter's first and longest pause between looks
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)  # Linux, macOS
STAGE_SUBDIR = "hpcjobs-stage"  # in data.stage=node's folder

# What a load came to (metrics.json's data_cache).
HIT, BUILT, UNCACHED, UNWRITABLE = "hit", "built", "off", "unwritable"


@dataclass(frozen=True)
class Decoded:
    """A folder's images, every split one after another, and where each split lies."""

    images: np.ndarray  # uint8 [N, C, H, W]; read-only and memory-mapped when from the cache
    labels: np.ndarray  # int64 [N]
    ranges: dict[str, tuple[int, int]]  # split -> [start, stop) in images
    status: str  # HIT, BUILT, UNCACHED or UNWRITABLE
    entry: Path | None  # the cache entry read, if any


# What _read finds in a sound entry: its images (mapped), labels and manifest.
_Found = tuple[np.ndarray, np.ndarray, dict]


@dataclass(frozen=True)
class _Wanted:
    """The entry a load wants: its key and what it describes (key_of), the images in the
    order it holds them and each split's range (_order)."""

    key: str
    about: dict[str, Any]
    items: Sequence[tuple[str, int]]
    ranges: dict[str, tuple[int, int]]


class _Unwritable(Exception):
    """This cache folder cannot take a new entry (read-only, not a folder, disk full)."""


def user_cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/hpcjobs``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hpcjobs"


def folders(setting: str | None, root: Path) -> list[Path]:
    """Where to look for (and put) an entry, in order: data.cache_dir, or by default the data
    root's own cache folder, then the user's; none when the cache is off."""
    if setting == OFF:
        return []
    if setting:
        return [Path(setting).expanduser()]
    return [root.expanduser().resolve() / DEFAULT_SUBDIR, user_cache_dir()]


# --------------------------------------------------------------------------- key


def _order(index: ImageFolderIndex) -> tuple[list[tuple[str, int]], dict[str, tuple[int, int]]]:
    """The images in the order the entry holds them, and each split's range (a test split that
    is the validation split is stored once)."""
    items: list[tuple[str, int]] = []
    ranges: dict[str, tuple[int, int]] = {}
    for split in SPLITS:
        if split == "test" and index.test_is_validation:
            ranges["test"] = ranges["validation"]
            continue
        ranges[split] = (len(items), len(items) + len(index.splits[split]))
        items += index.splits[split]
    return items, ranges


def key_of(
    index: ImageFolderIndex,
    items: Sequence[tuple[str, int]],
    size: int,
    channels: int,
) -> tuple[str, dict[str, Any]]:
    """The entry's key (sha256 hex) and what it describes, for the manifest."""
    root = index.root.resolve()
    # one stat per image: what the key is made of (a file modified in place changes it)
    stats = [os.stat(p) for p, _ in items]
    about = {
        "format": FORMAT,
        "root": str(root),
        "image_size": size,
        "channels": channels,
        "resize": decode.RESIZE_RULE,
        "pillow": decode.pil_version(),
        "classes": index.classes,
        "test_is_validation": index.test_is_validation,
    }
    digest = hashlib.sha256(json.dumps(about, sort_keys=True).encode())
    # scan's paths are index.root / the path inside it ("." joins as nothing: hence the "_")
    prefix = len(str(index.root / "_")) - 1
    for (path, label), st in zip(items, stats, strict=True):
        rel = path[prefix:]
        digest.update(f"{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest(), about


# --------------------------------------------------------------------------- reading


def _block_crcs(path: Path, threads: int) -> list[int]:
    """The CRC32 of each BLOCK_BYTES block of the file, over a read-only mapping (no copy),
    blocks in parallel (zlib releases the GIL): ~5 GB/s on 2 cores from the page cache."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            blocks = [view[i : i + BLOCK_BYTES] for i in range(0, size, BLOCK_BYTES)]

            def crc(k: int) -> int:
                value = zlib.crc32(blocks[k])
                # Unmap the block's pages from this process (the page cache keeps them): a
                # check of a file larger than the memory budget must not count it all in
                # this process's RSS (a streamed run's bound).
                if _DONTNEED is not None:
                    mapped.madvise(_DONTNEED, k * BLOCK_BYTES, len(blocks[k]))
                return value

            try:
                if threads > 1 and len(blocks) > 1:
                    with ThreadPoolExecutor(max_workers=threads) as pool:
                        return list(pool.map(crc, range(len(blocks))))
                return [crc(k) for k in range(len(blocks))]
            finally:  # the mapping closes only once no view of it is left
                for block in blocks:
                    block.release()
                view.release()


def _read(
    entry: Path, key: str, threads: int = 1
) -> tuple[tuple[np.ndarray, np.ndarray, dict] | None, str | None]:
    """(images, labels, manifest) of a sound entry; else (None, what is wrong), or (None, None)
    when there is no entry (yet)."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"unreadable {MANIFEST}: {exc}"
    try:
        if manifest.get("format") != FORMAT or manifest.get("key") != key:
            return None, f"{MANIFEST} is of another format or key"
        for name in (IMAGES, LABELS):
            expected = manifest["files"][name]
            st = (entry / name).stat()
            if st.st_size != expected["bytes"]:
                return None, f"{name} has {st.st_size} bytes, the manifest says {expected['bytes']}"
            # The very file its builder checksummed, untouched since (no write, copy or
            # rename changes nothing of this): its checksum holds without reading it all.
            if _identity(st) == expected.get("identity"):
                continue
            if _block_crcs(entry / name, threads) != expected["crc32"]:
                return None, f"{name} does not match its checksum"
        images = np.load(entry / IMAGES, mmap_mode="r")
        labels = np.load(entry / LABELS)
    except FileNotFoundError as exc:
        return None, f"{Path(exc.filename or '').name or 'a file'} is missing"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable: {exc}"
    if (
        list(images.shape) != manifest["shape"]
        or images.dtype != np.uint8
        or labels.shape != images.shape[:1]
    ):
        return None, f"the arrays' shapes do not match the manifest's {manifest['shape']}"
    return (images, labels, manifest), None


def _identity(st: os.stat_result) -> list[int]:
    """What changes when a file is rewritten, replaced, copied or touched: inode and times."""
    return [st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


# --------------------------------------------------------------------------- building


class _BlockCrcWriter:
    """Writes to a file and keeps the CRC32 of each BLOCK_BYTES block written."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.crcs: list[int] = []
        self.crc, self.filled = 0, 0

    def write(self, data: bytes | np.ndarray) -> None:
        view = memoryview(data if isinstance(data, bytes) else data.data).cast("B")
        self.f.write(view)
        while len(view):
            take = min(len(view), BLOCK_BYTES - self.filled)
            self.crc, self.filled = zlib.crc32(view[:take], self.crc), self.filled + take
            view = view[take:]
            if self.filled == BLOCK_BYTES:
                self.crcs.append(self.crc)
                self.crc, self.filled = 0, 0

    def done(self) -> tuple[int, list[int]]:
        """(bytes written, their block CRCs)."""
        if self.filled:
            self.crcs.append(self.crc)
        return self.f.tell(), self.crcs


def _write_npy(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, chunks: Iterable[bytes | np.ndarray]
) -> dict[str, Any]:
    """Write an .npy of ``shape`` from byte chunks, atomically; its size and CRC32s."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header,
        {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape},
    )
    with atomic.replacing(path) as f:
        writer = _BlockCrcWriter(f)
        writer.write(header.getvalue())
        for chunk in chunks:
            writer.write(chunk)
        size, crcs = writer.done()
    return {"bytes": size, "crc32": crcs}


def _unpublish(entry: Path) -> None:
    """Ready ``entry`` for its files to be written, under its lock: a rebuild's old entry
    stops being one (its manifest goes) before any of its files is replaced, and what a
    killed writer left (temporary files) is removed."""
    entry.mkdir(parents=True, exist_ok=True)
    _unlink(entry / MANIFEST)
    for left in entry.glob(".*.tmp"):
        _unlink(left)


def _build(entry: Path, wanted: _Wanted, workers: int) -> None:
    items, about = wanted.items, wanted.about
    size, channels = about["image_size"], about["channels"]
    shape = (len(items), channels, size, size)
    start = time.perf_counter()
    try:
        _unpublish(entry)
        images = _write_npy(
            entry / IMAGES,
            shape,
            np.dtype(np.uint8),
            decode.decode_all([p for p, _ in items], channels, size, workers),
        )
        seconds = time.perf_counter() - start
        labels = np.array([c for _, c in items], dtype=np.int64)
        labels_file = _write_npy(entry / LABELS, labels.shape, labels.dtype, [labels.tobytes()])
        files = {IMAGES: images, LABELS: labels_file}
        for name, written in files.items():  # read back once, before anyone may trust it
            if _block_crcs(entry / name, workers) != written["crc32"]:
                raise _Unwritable(f"{entry / name} does not read back as written")
            written["identity"] = _identity((entry / name).stat())
        atomic.write_json(
            entry / MANIFEST,
            {
                "format": FORMAT,
                "key": wanted.key,
                **about,
                "shape": list(shape),
                "dtype": "uint8",
                "splits": {name: list(r) for name, r in wanted.ranges.items()},
                "files": files,
                "built_by": {"host": socket.gethostname(), "pid": os.getpid()},
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "decode_seconds": round(seconds, 3),
                "decode_workers": workers,
            },
        )
        _journal(entry, len(items), seconds, workers)
    except OSError as exc:  # read-only, quota, disk full: image files' errors are DataErrors
        raise _Unwritable(f"cannot write {entry}: {exc}") from exc
    log.info(
        "decoded %d images on %d process(es) in %.1f s into %s",
        len(items), workers, seconds, entry,
    )  # fmt: skip


def _journal(entry: Path, images: int, seconds: float, workers: int) -> None:
    line = {
        "time": round(time.time(), 3),
        "entry": entry.name,
        "images": images,
        "seconds": round(seconds, 3),
        "workers": workers,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    # One short O_APPEND write, as the workers' journals: whole lines from every writer.
    fd = os.open(entry.parent / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the lock


def _owner() -> dict[str, Any]:
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_started": process_start(pid),
        "time": round(time.time(), 3),
    }


def _try_lock(lock: Path) -> bool:
    """Create the lock (O_EXCL: one process wins, on NFS too); False if another holds it.
    Any other OSError (read-only, no such folder) is the caller's."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_owner(), f)
    except OSError:  # disk full: leave no lock that the others would wait on
        _unlink(lock)
        raise
    return True


def _read_owner(lock: Path) -> dict[str, Any] | None:
    """The lock's owner; {} while it is being written (or unreadable); None once it is gone."""
    try:
        owner = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _abandoned(lock: Path, owner: dict[str, Any]) -> str | None:
    """Why the lock's owner is taken for dead, or None while it may be alive."""
    alive = still_runs(owner.get("host"), owner.get("pid"), owner.get("pid_started"))
    if alive is False:
        return f"its owner, pid {owner['pid']} on this host, has ended"
    if alive:
        return None  # alive here: however long it takes
    if is_stale(lock, HEARTBEAT_S):
        who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
        return f"its owner ({who}) has not touched it for over {STALE_S:g} s"
    return None


def _release(lock: Path) -> None:
    """Remove the lock this process created, unless it is no longer ours: broken while we
    worked (taken for dead) and created since by another, whose lock it now is."""
    owner, me = _read_owner(lock), _owner()
    if owner and all(owner.get(k) == me[k] for k in ("host", "pid", "pid_started")):
        _unlink(lock)
    elif owner is not None:
        log.warning("the data cache lock %s was broken while this process held it", lock)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# --------------------------------------------------------------------------- loading


def _decoded(found: tuple[np.ndarray, np.ndarray, dict], status: str, entry: Path) -> Decoded:
    images, labels, manifest = found
    ranges = {name: (int(a), int(b)) for name, (a, b) in manifest["splits"].items()}
    return Decoded(images, labels, ranges, status, entry)


def _once(
    lock: Path,
    look: Callable[[], tuple[_Found | None, str | None]],
    make: Callable[[], None],
    what: str,
    doing: str,
) -> tuple[_Found, bool]:
    """What ``look`` finds (it says what is wrong with what it finds instead, if anything);
    else ``make`` it under ``lock``, once: whoever creates the lock makes it, the others
    wait for it (a dead owner's lock broken). (found, made here). Raises _Unwritable when
    the lock cannot be created."""
    found, problem = look()
    warned, waiting_since, pause = None, None, _POLL_S[0]
    while not found:
        if problem and problem != warned:
            log.warning("%s is corrupt (%s): %s it again", what, problem, doing.split()[0])
            warned = problem
        try:
            locked = _try_lock(lock)
        except OSError as exc:
            raise _Unwritable(f"cannot create {lock}: {exc}") from exc
        if locked:
            try:
                found, problem = look()  # made while we waited for the lock?
                if found:
                    return found, False
                with heartbeat(lock, HEARTBEAT_S):
                    make()
            finally:
                _release(lock)
            found, problem = look()
            if not found:  # changed since we checked it: not ours to fix
                raise _Unwritable(f"{what} changed as it was written: {problem}")
            return found, True
        owner = _read_owner(lock)
        if owner is not None and (why := _abandoned(lock, owner)):
            log.warning("breaking the data cache lock %s: %s", lock, why)
            _unlink(lock)
            continue
        if waiting_since is None:
            waiting_since = time.monotonic()
            who = (
                f"pid {owner.get('pid')} on {owner.get('host')}"
                if owner
                else f"the owner of {lock}"
            )
            log.info("waiting for %s to %s %s", who, doing, what)
        time.sleep(pause)
        pause = min(pause * 2, _POLL_S[1])
        found, problem = look()
        if found:
            log.info("waited %.1f s for %s", time.monotonic() - waiting_since, what)
    return found, False


def _from_folder(folder: Path, wanted: _Wanted, workers: int) -> Decoded:
    """The entry in ``folder``: read, or built here, or waited for while another builds it."""
    key, items = wanted.key, wanted.items
    name = f"imagefolder-{key[:24]}"
    entry, lock = folder / name, folder / f"{name}.lock"
    found, _ = _read(entry, key, workers)  # a read-only folder can still serve a sound entry
    if found:
        log.info("%d images mapped from the data cache %s", len(items), entry)
        return _decoded(found, HIT, entry)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _Unwritable(f"cannot create {folder}: {exc}") from exc
    found, built = _once(
        lock,
        lambda: _read(entry, key, workers),
        lambda: _build(entry, wanted, workers),
        f"the data cache {entry}",
        f"decode {len(items)} images into",
    )
    return _decoded(found, BUILT if built else HIT, entry)


# --------------------------------------------------------------------------- staging


def _copy_entry(entry: Path, local: Path, manifest: dict[str, Any], workers: int) -> None:
    """Copy a sound entry's files to ``local``, check the copies against the entry's CRC32s,
    then write its manifest, with the copies' identity (later loads on the node skip the
    check)."""
    start = time.perf_counter()
    try:
        _unpublish(local)
        files = {}
        for name in (IMAGES, LABELS):
            with open(entry / name, "rb") as src, atomic.replacing(local / name) as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
            if _block_crcs(local / name, workers) != manifest["files"][name]["crc32"]:
                raise _Unwritable(f"{local / name} does not read back as {entry / name}")
            files[name] = {**manifest["files"][name], "identity": _identity((local / name).stat())}
        atomic.write_json(local / MANIFEST, {**manifest, "files": files, "staged_from": str(entry)})
    except OSError as exc:  # full local disk, read-only, no such folder
        raise _Unwritable(f"cannot copy {entry} to {local}: {exc}") from exc
    log.info("staged %s to %s in %.1f s", entry, local, time.perf_counter() - start)


def _staged(decoded: Decoded, key: str, where: Path, workers: int) -> Decoded:
    """``decoded``'s entry copied to ``where`` (node-local storage) once per node, under a
    per-node lock with the cache's discipline, and read from there; the shared entry, with
    a warning, when it cannot be copied."""
    assert decoded.entry is not None
    entry = decoded.entry
    folder = where / STAGE_SUBDIR
    local, lock = folder / entry.name, folder / f"{entry.name}.lock"
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        folder.mkdir(parents=True, exist_ok=True)
        found, copied = _once(
            lock,
            lambda: _read(local, key, workers),
            lambda: _copy_entry(entry, local, manifest, workers),
            f"the staged copy {local}",
            "copy the data cache to",
        )
    except (OSError, ValueError, _Unwritable) as exc:
        log.warning(
            "data.stage=node: %s; reading the data cache where it is (%s) instead (set"
            " data.stage_dir to a writable node-local folder)", exc, entry,
        )  # fmt: skip
        return decoded
    if not copied:
        log.info("reading the node-local copy %s of the data cache", local)
    return _decoded(found, decoded.status, local)


def _in_memory(
    items: Sequence[tuple[str, int]],
    ranges: dict[str, tuple[int, int]],
    size: int,
    channels: int,
    workers: int,
    status: str,
) -> Decoded:
    images = np.empty((len(items), channels, size, size), dtype=np.uint8)
    for i, image in enumerate(decode.decode_all([p for p, _ in items], channels, size, workers)):
        images[i] = image
    labels = np.array([c for _, c in items], dtype=np.int64)
    return Decoded(images, labels, ranges, status, None)


def load(
    index: ImageFolderIndex,
    size: int,
    channels: int,
    cache_dir: str | None,
    workers: int,
    in_memory_ok: bool = True,
    stage_dir: Path | None = None,
) -> Decoded:
    """Every image of a scanned folder at ``size`` x ``size`` with ``channels``: from the cache
    (``cache_dir``: data.cache_dir's value), decoded once by ``workers`` processes; with
    ``stage_dir`` (data.stage=node), from a copy of the entry there, made once per node.

    A cache folder that cannot be written is a warning and an in-memory decode, never an
    error (unless not ``in_memory_ok``: a data set streamed from the cache file, which a
    DataError says); an image that cannot be decoded is a DataError naming it.
    """
    items, ranges = _order(index)
    candidates = folders(cache_dir, index.root)
    if not candidates:
        return _in_memory(items, ranges, size, channels, workers, UNCACHED)
    wanted = _Wanted(*key_of(index, items, size, channels), items, ranges)
    problems = []
    for folder in candidates:
        try:
            decoded = _from_folder(folder, wanted, workers)
            return _staged(decoded, wanted.key, stage_dir, workers) if stage_dir else decoded
        except _Unwritable as exc:
            problems.append(str(exc))
            if folder is not candidates[-1]:
                log.info("data cache: %s; trying %s", exc, candidates[candidates.index(folder) + 1])
    if not in_memory_ok:
        raise DataError(
            f"data cache: {'; '.join(problems)}: a data set over the memory budget"
            " (data.max_memory_gb) is streamed from a cache file: set data.cache_dir to a"
            " writable folder, or raise data.max_memory_gb to load it into memory"
        )
    log.warning(
        "data cache: %s; decoding %d images into memory instead (set data.cache_dir to a"
        " writable folder to decode once for every run, or data.cache_dir=off to silence this)",
        "; ".join(problems), len(items),
    )  # fmt: skip
    return _in_memory(items, ranges, size, channels, workers, UNWRITABLE)
