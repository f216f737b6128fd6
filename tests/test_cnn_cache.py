"""The decoded-image cache: decoded once for every process, rebuilt when stale or corrupt,
never a failed run when it cannot be written. Real files and real processes throughout."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpcjobs.errors import DataError
from hpcjobs.run.context import RunContext
from hpcjobs.workloads.cnn import cache, data
from hpcjobs.workloads.cnn.imagefolder import scan
from hpcjobs.workloads.cnn.train import TIMING_METRICS, train_and_evaluate

REPO = Path(__file__).resolve().parents[1]
SIZE = 8


# Every load here reaches the file cache.
pytestmark = pytest.mark.usefixtures("empty_data_cache")


@pytest.fixture
def folder(make_image_folder) -> Path:
    return make_image_folder(num_classes=2, per_class=6)


def _load(root: Path, cache_dir: Path | str | None, size: int = SIZE) -> cache.Decoded:
    return cache.load(scan(root), size, 3, None if cache_dir is None else str(cache_dir), 2)


def _builds(cache_dir: Path) -> list[dict]:
    journal = cache_dir / cache.JOURNAL
    return (
        [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []
    )


def _decoded_in_memory(root: Path, size: int = SIZE) -> np.ndarray:
    return _load(root, cache.OFF, size).images


# --------------------------------------------------------------------------- hits and keys


def test_built_once_then_mapped(folder, tmp_path):
    where = tmp_path / "cache"
    first = _load(folder, where)
    assert first.status == cache.BUILT and first.entry is not None
    assert first.entry.parent == where and len(_builds(where)) == 1
    again = _load(folder, where)
    assert again.status == cache.HIT and again.entry == first.entry
    assert isinstance(again.images, np.memmap) and not again.images.flags.writeable
    assert np.array_equal(again.images, _decoded_in_memory(folder))
    assert again.ranges == {"train": (0, 12), "validation": (12, 24), "test": (24, 36)}
    assert again.labels.tolist() == [0] * 6 + [1] * 6 + ([0] * 6 + [1] * 6) * 2
    assert len(_builds(where)) == 1
    manifest = json.loads((first.entry / cache.MANIFEST).read_text())
    assert manifest["shape"] == [36, 3, SIZE, SIZE] and manifest["image_size"] == SIZE
    for name in (cache.IMAGES, cache.LABELS):
        assert manifest["files"][name]["bytes"] == (first.entry / name).stat().st_size
    # Another size is another entry.
    assert _load(folder, where, size=16).entry != first.entry and len(_builds(where)) == 2


def test_the_same_folder_by_another_path_is_the_same_entry(folder, tmp_path, monkeypatch):
    where = tmp_path / "cache"
    entry = _load(folder, where).entry
    monkeypatch.chdir(folder)
    assert _load(Path("."), where).entry == entry
    monkeypatch.chdir(folder / "train")
    assert _load(Path(".."), where).entry == entry
    assert len(_builds(where)) == 1


def test_a_hit_writes_nothing(folder, tmp_path):
    """So a read-only folder holding a sound entry (a shared data set's) serves it."""
    where = tmp_path / "cache"
    _load(folder, where)

    def state() -> dict:
        return {str(p): p.stat().st_mtime_ns for p in [where, *where.rglob("*")]}

    before = state()
    assert _load(folder, where).status == cache.HIT
    assert state() == before


def test_the_default_folders(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.folders(None, folder) == [
        folder.resolve() / ".hpcjobs-cache",
        tmp_path / "xdg" / "hpcjobs",
    ]
    assert cache.folders("off", folder) == []
    assert cache.folders("~/somewhere", folder) == [Path.home() / "somewhere"]
    # The default: beside the data; scan does not see it as a split or a class.
    decoded = _load(folder, None)
    assert decoded.status == cache.BUILT and decoded.entry.parent == folder / ".hpcjobs-cache"
    assert len(scan(folder).splits["train"]) == 12


def _rewrite(path: Path, value: int) -> None:
    Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(path)


def test_a_file_added_removed_or_modified_is_a_new_entry(folder, tmp_path):
    where = tmp_path / "cache"
    entries = {_load(folder, where).entry}
    changes = [
        lambda: _rewrite(folder / "train" / "class_a" / "000.png", 7),  # modified
        lambda: _rewrite(folder / "train" / "class_b" / "100.png", 9),  # added
        lambda: (folder / "validation" / "class_a" / "001.png").unlink(),  # removed
    ]
    for change in changes:
        change()
        decoded = _load(folder, where)
        assert decoded.status == cache.BUILT and decoded.entry not in entries
        entries.add(decoded.entry)
        assert np.array_equal(decoded.images, _decoded_in_memory(folder))
    assert _load(folder, where).images[0].max() == 7  # the modified image, as it is now
    assert len(_builds(where)) == 4


def test_the_same_bytes_touched_is_a_new_entry(folder, tmp_path):
    # Only the modification time changes: the cache cannot know the content did not.
    where = tmp_path / "cache"
    first = _load(folder, where).entry
    image = folder / "test" / "class_b" / "004.png"
    os.utime(image, ns=(time.time_ns(), image.stat().st_mtime_ns + 10**9))
    assert _load(folder, where).entry != first


# --------------------------------------------------------------------------- corrupt entries


def _truncate(entry: Path) -> None:
    path = entry / cache.IMAGES
    path.write_bytes(path.read_bytes()[:-100])


def _flip_a_byte(entry: Path) -> None:
    path = entry / cache.IMAGES
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size: only the checksum tells
    path.write_bytes(bytes(raw))


CORRUPTIONS = {
    "truncated": (_truncate, "images.npy has"),
    "a flipped byte": (_flip_a_byte, "images.npy does not match its checksum"),
    "labels gone": (lambda entry: (entry / cache.LABELS).unlink(), "labels.npy is missing"),
    "manifest garbled": (
        lambda entry: (entry / cache.MANIFEST).write_text("{not json"),
        "unreadable manifest.json",
    ),
}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_a_corrupt_entry_is_rebuilt_with_a_warning(folder, tmp_path, caplog, how):
    where = tmp_path / "cache"
    entry = _load(folder, where).entry
    corrupt, reason = CORRUPTIONS[how]
    corrupt(entry)
    with caplog.at_level(logging.WARNING, logger="hpcjobs"):
        decoded = _load(folder, where)
    assert decoded.status == cache.BUILT and decoded.entry == entry
    assert f"the data cache {entry} is corrupt ({reason}" in caplog.text
    assert np.array_equal(decoded.images, _decoded_in_memory(folder))
    assert _load(folder, where).status == cache.HIT and len(_builds(where)) == 2


def test_a_copied_or_touched_entry_is_checked_in_full_and_served(folder, tmp_path):
    """A file that is not the one its builder checksummed (another inode or times) is read
    in full against its checksums: sound, it is served; corrupt, rebuilt."""
    import shutil

    where = tmp_path / "cache"
    entry = _load(folder, where).entry
    copy = tmp_path / "copy"
    shutil.copytree(where, copy)
    decoded = _load(folder, copy)
    assert decoded.status == cache.HIT and decoded.entry == copy / entry.name
    assert np.array_equal(decoded.images, _decoded_in_memory(folder))
    os.utime(entry / cache.IMAGES)
    assert _load(folder, where).status == cache.HIT
    _flip_a_byte(copy / entry.name)
    assert _load(folder, copy).status == cache.BUILT


# --------------------------------------------------------------------------- unwritable


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder nobody may create files in. root ignores permission bits: /proc then."""
    where = tmp_path / "read-only"
    where.mkdir()
    where.chmod(0o555)
    try:
        (where / "probe").touch()
    except PermissionError:
        return where
    (where / "probe").unlink()
    return Path("/proc")


@pytest.mark.parametrize("kind", ["read-only", "under a file"])
def test_an_unwritable_cache_dir_is_a_warning_and_an_in_memory_load(folder, tmp_path, caplog, kind):
    if kind == "read-only":
        where = _read_only_folder(tmp_path)
    else:
        (tmp_path / "a-file").write_text("")
        where = tmp_path / "a-file" / "cache"
    with caplog.at_level(logging.WARNING, logger="hpcjobs"):
        decoded = _load(folder, where)
    assert decoded.status == cache.UNWRITABLE and decoded.entry is None
    assert np.array_equal(decoded.images, _decoded_in_memory(folder))
    assert "decoding 36 images into memory instead (set data.cache_dir to a writable" in caplog.text
    assert str(where) in caplog.text


def test_the_default_falls_back_to_the_users_cache(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (folder / ".hpcjobs-cache").write_text("")  # not a folder: the root's cache cannot be made
    decoded = _load(folder, None)
    assert decoded.status == cache.BUILT
    assert decoded.entry.parent == tmp_path / "xdg" / "hpcjobs"


# --------------------------------------------------------------------------- the lock


def _ended_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def _lock_of(folder: Path, where: Path) -> Path:
    index = scan(folder)
    items, _ = cache._order(index)
    key, _ = cache.key_of(index, items, SIZE, 3)
    where.mkdir(parents=True, exist_ok=True)
    return where / f"imagefolder-{key[:24]}.lock"


def test_a_lock_owner_is_told_alive_by_its_pid_and_start_on_its_own_host_only():
    from hpcjobs.processes import process_start, still_runs

    here, me = socket.gethostname(), os.getpid()
    assert still_runs(here, me, process_start(me)) is True
    assert still_runs(here, me, "another start") is False  # its pid, reused
    assert still_runs(here, _ended_pid(), "1") is False
    assert still_runs("elsewhere", me, process_start(me)) is None  # the heartbeat's to tell
    assert still_runs(here, me, None) is None


@pytest.mark.parametrize("owner", ["ended here", "silent elsewhere"])
def test_an_abandoned_lock_is_broken(folder, tmp_path, caplog, owner):
    where = tmp_path / "cache"
    lock = _lock_of(folder, where)
    if owner == "ended here":
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": _ended_pid(),
                                    "pid_started": "1"}))  # fmt: skip
        expected = "has ended"
    else:
        lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "pid_started": "1"}))
        old = time.time() - cache.STALE_S - 5
        os.utime(lock, (old, old))
        expected = f"has not touched it for over {cache.STALE_S:g} s"
    # What a builder killed mid-write leaves: its lock, and a temporary file.
    left = lock.with_suffix("") / ".images.npy.x1y2z3.tmp"
    left.parent.mkdir()
    left.write_bytes(b"half an array")
    with caplog.at_level(logging.WARNING, logger="hpcjobs"):
        decoded = _load(folder, where)
    assert decoded.status == cache.BUILT and not lock.exists() and not left.exists()
    assert f"breaking the data cache lock {lock}: its owner" in caplog.text
    assert expected in caplog.text


def test_a_live_lock_is_waited_for(folder, tmp_path):
    where = tmp_path / "cache"
    lock = _lock_of(folder, where)
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "pid_started": "1"}))  # fresh
    result: list[cache.Decoded] = []
    waiter = threading.Thread(target=lambda: result.append(_load(folder, where)))
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive() and not result  # waits for the owner, however slow
    lock.unlink()  # the owner gave up without building: the waiter builds
    waiter.join(timeout=60)
    assert result and result[0].status == cache.BUILT


def test_a_builder_whose_lock_was_broken_leaves_the_new_owners_lock(
    folder, tmp_path, monkeypatch, caplog
):
    # Taken for dead while it decoded (its heartbeat unseen for STALE_S), the lock broken and
    # created again by another builder: ours to leave, not to remove under that builder.
    where = tmp_path / "cache"
    lock = _lock_of(folder, where)
    other = {"host": "elsewhere", "pid": 1, "pid_started": "1"}
    real_build = cache._build

    def build(*args, **kwargs):
        real_build(*args, **kwargs)
        lock.unlink()  # broken by a waiter on another host ...
        lock.write_text(json.dumps(other))  # ... which now holds it

    monkeypatch.setattr(cache, "_build", build)
    with caplog.at_level(logging.WARNING, logger="hpcjobs"):
        assert _load(folder, where).status == cache.BUILT
    assert json.loads(lock.read_text()) == other
    assert f"the data cache lock {lock} was broken while this process held it" in caplog.text


def test_an_unreadable_image_names_the_file(folder, tmp_path):
    bad = folder / "validation" / "class_b" / "003.png"
    bad.write_bytes(b"not a png")
    for cache_dir in (tmp_path / "cache", cache.OFF):
        with pytest.raises(DataError, match=f"cannot decode {bad}: .*replace or delete the file"):
            _load(folder, cache_dir)
    # Nothing half-built stays: no entry, no lock, no temporary file.
    left = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert left == [], left


def test_worker_processes_decode_the_same_images(make_image_folder, tmp_path):
    from hpcjobs.workloads.cnn import decode

    root = make_image_folder(num_classes=2, per_class=40)  # 240 images
    items, _ = cache._order(scan(root))
    paths = [p for p, _ in items]
    alone = np.stack(list(decode.decode_all(paths, 3, SIZE, 1)))
    # serial_s=0: workers from the second image on (a folder this small never starts them).
    assert np.array_equal(np.stack(list(decode.decode_all(paths, 3, SIZE, 3, serial_s=0))), alone)
    assert np.array_equal(np.stack(list(decode.decode_all(paths, 3, SIZE, 3))), alone)
    # An unreadable image in a worker's chunk: the worker's error, naming the file.
    bad = paths[len(paths) // 2]
    Path(bad).write_bytes(b"not an image")
    named = f"cannot decode {bad}: .*replace or delete the file"
    with pytest.raises(DataError, match=named) as info:
        list(decode.decode_all(paths, 3, SIZE, 2, serial_s=0))
    assert info.value.__cause__ is None  # raised from a worker's reply, not from PIL's error here


# --------------------------------------------------------------------------- processes


# Each process: signal ready, wait for the start signal, load, print how it went.
_WORKER = """
import json, sys, time
from pathlib import Path
from hpcjobs.workloads.cnn import cache
from hpcjobs.workloads.cnn.imagefolder import scan
root, where, sync, me = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
index = scan(root)
(sync / f"ready-{me}").touch()
while not (sync / "go").exists():
    time.sleep(0.005)
decoded = cache.load(index, 8, 3, where, 1)
print(json.dumps({"status": decoded.status, "sum": int(decoded.images.sum(dtype="int64"))}))
"""


# A builder that stops at ``when`` (signals it, then sleeps until killed).
_KILLED_BUILDER = """
import sys, time
from pathlib import Path
from hpcjobs.workloads.cnn import cache, decode
from hpcjobs.workloads.cnn.imagefolder import scan
root, where, marker, when = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
def stop(*args, **kwargs):
    marker.touch()
    time.sleep(600)
if when == "mid-decode":  # images.npy's temporary file half written
    real_decode, seen = decode.decode_one, []
    def decode_one(*args):
        seen.append(1)
        if len(seen) > 5:
            stop()
        return real_decode(*args)
    decode.decode_one = decode_one
else:  # "before the manifest": images.npy and labels.npy whole, being read back
    cache._block_crcs = stop
cache.load(scan(root), 8, 3, where, 1)
"""


@pytest.mark.parametrize("when", ["mid-decode", "before the manifest"])
def test_a_builder_killed_mid_build_leaves_nothing_that_is_read(folder, tmp_path, caplog, when):
    where, marker = tmp_path / "cache", tmp_path / "stopped"
    builder = subprocess.Popen(
        [sys.executable, "-c", _KILLED_BUILDER, str(folder), str(where), str(marker), when],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert builder.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        builder.kill()  # kill -9
        builder.wait()
    entry = next(where.glob("imagefolder-*/"))
    assert not (entry / cache.MANIFEST).exists()  # what is there is no entry yet
    if when == "before the manifest":
        assert (entry / cache.IMAGES).exists() and (entry / cache.LABELS).exists()
    else:
        assert list(entry.glob(".*.tmp"))
    with caplog.at_level(logging.WARNING, logger="hpcjobs"):
        decoded = _load(folder, where)
    assert decoded.status == cache.BUILT and "has ended" in caplog.text
    assert np.array_equal(decoded.images, _decoded_in_memory(folder))
    assert not list(entry.glob(".*.tmp")) and not list(where.glob("*.lock"))


def test_processes_started_together_decode_once(make_image_folder, tmp_path):
    root = make_image_folder(num_classes=2, per_class=25)
    where, sync = tmp_path / "cache", tmp_path / "sync"
    sync.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(root), str(where), str(sync), str(k)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for k in range(8)
    ]
    deadline = time.monotonic() + 120
    while len(list(sync.glob("ready-*"))) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    (sync / "go").touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    assert sorted(r["status"] for r in results) == [cache.BUILT] + [cache.HIT] * 7
    assert len({r["sum"] for r in results}) == 1
    assert len(_builds(where)) == 1
    assert not list(where.glob("*.lock"))


# --------------------------------------------------------------------------- in training


def test_metrics_are_the_same_with_and_without_the_cache(compose_run, folder, tmp_path):
    overrides = (
        "data=imagefolder", f"data.root={folder}", f"data.image_size={SIZE}",
        "model.channels=[4]", "model.hidden=8", "trainer.precision=fp32", "trainer.device=cpu",
        "trainer.epochs=2", "trainer.batch_size=4", "trainer.val_steps=1",
    )  # fmt: skip
    runs = {}
    for name, cache_dir in (
        ("off", "off"),
        ("built", str(tmp_path / "cache")),
        ("hit", str(tmp_path / "cache")),
    ):
        data.clear_cache()
        cfg = compose_run(*overrides, f"data.cache_dir={cache_dir}")
        runs[name] = train_and_evaluate(cfg, RunContext(run_dir=tmp_path / name, num_threads=1))
    assert [m["data_cache"] for m in runs.values()] == ["off", "built", "hit"]
    assert all(m["data_load_seconds"] > 0 for m in runs.values())
    timing = {*TIMING_METRICS, "data_cache"}
    same = [{k: v for k, v in m.items() if k not in timing} for m in runs.values()]
    assert same[0] == same[1] == same[2]
    # A second run of the same data in this process: reused, not read again.
    cfg = compose_run(*overrides, f"data.cache_dir={tmp_path / 'cache'}")
    again = train_and_evaluate(cfg, RunContext(run_dir=tmp_path / "again", num_threads=1))
    assert again["data_cache"] == "reused"


def _mapped_files(address: int) -> list[str]:
    """The files mapped at ``address`` in this process (Linux: /proc/self/maps)."""
    found = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split(maxsplit=5)
        start, end = (int(a, 16) for a in span.split("-"))
        if start <= address < end and len(rest) == 5:
            found.append(rest[4])
    return found


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_the_splits_are_the_mapped_file_not_a_copy(folder, tmp_path, compose_run):
    cfg = compose_run("data=imagefolder", f"data.root={folder}", f"data.image_size={SIZE}",
                      f"data.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert data.load(cfg.data, 0).cache == "built"
    data.clear_cache()
    loaded = data.load(cfg.data, 0)
    assert loaded.cache == "hit"
    images = next((tmp_path / "cache").glob("imagefolder-*")) / cache.IMAGES
    for split in (loaded.splits.train, loaded.splits.validation, loaded.splits.test):
        assert split.x.dtype == torch.uint8 and split.x.is_contiguous()
        assert _mapped_files(split.x.data_ptr()) == [str(images)]


def test_cache_dir_is_checked_before_submission(compose_run, folder):
    from hpcjobs.config import schema
    from hpcjobs.errors import ConfigError

    base = ("data=imagefolder", f"data.root={folder}")
    for ok in ("off", "/tmp/somewhere", "null"):
        schema.validate(compose_run(*base, f"data.cache_dir={ok}"))
    with pytest.raises(ConfigError, match=r"data.cache_dir=\s*: must be a folder, off \(no cache"):
        schema.validate(compose_run(*base, "data.cache_dir=''"))
