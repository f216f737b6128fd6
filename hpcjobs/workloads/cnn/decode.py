"""Decode image files into uint8 arrays of one size, on several processes.

Torch-free (numpy and PIL): the cache (cache.py) builds with it in any process.
Processes, not threads: PIL parses a JPEG's headers in Python, holding the GIL for a third
of an image's time, and two threads measured no faster than one. Not multiprocessing
either: fork is unsafe in a trainer with threads running, and spawn/forkserver re-run the
parent's ``__main__`` (a user's script, stdin). The workers are plain
``python -c`` processes that read lists of paths on stdin and write raw arrays on stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from hpcjobs.errors import DataError

# How an image becomes size x size: converted to L or RGB, then the whole image resized
# (squashed, no crop) with PIL's bilinear filter. Part of the cache key: change it with the code.
RESIZE_RULE = "pil-convert-bilinear-squash-v1"
# Images per request to a worker process: one array sent back per chunk.
CHUNK = 32
# Requests queued per worker: it decodes the next chunk while the last one is being read.
_AHEAD_PER_WORKER = 2
# Seconds decoded in the run's own process before workers start (about a worker's start-up).
SERIAL_S = 0.5
# What a worker process runs: requests (a JSON list of paths) in, arrays (or an error) out.
_WORKER = "import sys; from hpcjobs.workloads.cnn.decode import serve; serve(*sys.argv[1:])"


def pil_version() -> str:
    import PIL

    return PIL.__version__


def decode_one(path: str | Path, channels: int, size: int) -> np.ndarray:
    """One image as uint8 [channels, size, size]; DataError naming the file if it is unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            img = opened.convert("L" if channels == 1 else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot decode {path}: {exc}; replace or delete the file") from exc
    if channels == 1:
        return pixels[None]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))  # HWC -> CHW, as the model reads it


def _decode_chunk(paths: Sequence[str | Path], channels: int, size: int) -> np.ndarray:
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode_one(path, channels, size)
    return out


def serve(channels: str, size: str) -> None:
    """A worker process's loop: for each line of paths on stdin, ``ok <bytes>`` and the
    chunk's raw uint8 [n, C, H, W], or ``error <bytes>`` and the message; ends at EOF."""
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    for line in requests:
        try:
            array = _decode_chunk(json.loads(line), int(channels), int(size))
        except DataError as exc:
            message = str(exc).encode()
            replies.write(b"error %d\n" % len(message) + message)
        else:
            replies.write(b"ok %d\n" % array.nbytes)
            replies.write(array.data)
        replies.flush()


class _Worker:
    def __init__(self, channels: int, size: int) -> None:
        # The same hpcjobs as this process's (a sweep's code snapshot, a checkout on PYTHONPATH).
        package_root = str(Path(__file__).resolve().parents[3])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(channels), str(size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.requests: IO[bytes] = self.proc.stdin
        self.replies: IO[bytes] = self.proc.stdout

    def send(self, paths: Sequence[str | Path]) -> None:
        # A request is a few KB and at most _AHEAD_PER_WORKER are unread: never a full pipe.
        try:
            self.requests.write(json.dumps([str(p) for p in paths]).encode() + b"\n")
            self.requests.flush()
        except BrokenPipeError:
            raise self._exited() from None

    def _exited(self) -> DataError:
        code = self.proc.wait()
        return DataError(
            f"a process decoding images exited (status {code}; its error, if any, is in this"
            " run's log above): set trainer.num_workers=1 to decode in the run's own process"
        )

    def receive(self, shape: tuple[int, ...]) -> np.ndarray:
        header = self.replies.readline().split()
        data = self.replies.read(int(header[1])) if len(header) == 2 else b""
        if len(header) != 2 or header[0] not in (b"ok", b"error") or len(data) != int(header[1]):
            raise self._exited()
        if header[0] == b"error":
            raise DataError(data.decode(errors="replace"))
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.requests.close()  # its loop ends at EOF
        if self.proc.poll() is None:
            self.proc.kill()  # it may be blocked writing a reply nobody will read
        self.proc.wait()
        self.replies.close()


def _worth_workers(elapsed: float, done: int, left: int, serial_s: float) -> bool:
    # Past serial_s in this process, with enough left that the workers' start-up (about
    # serial_s each, in parallel) is repaid: a small folder never starts them.
    return elapsed >= serial_s and left >= 2 * CHUNK and elapsed / done * left >= 2 * serial_s


def decode_all(
    paths: Sequence[str | Path], channels: int, size: int, workers: int, serial_s: float = SERIAL_S
) -> Iterator[np.ndarray]:
    """Each image of ``paths`` in order (see :func:`decode_one`), a bounded number ahead of
    the consumer: in this process for the first ``serial_s`` seconds, then, when what is left
    is worth it, on ``workers`` processes."""
    start = time.perf_counter()
    for done, path in enumerate(paths):
        if (
            workers > 1
            and done
            and _worth_workers(time.perf_counter() - start, done, len(paths) - done, serial_s)
        ):
            yield from _on_workers(paths[done:], channels, size, workers)
            return
        yield decode_one(path, channels, size)


def _on_workers(
    paths: Sequence[str | Path], channels: int, size: int, workers: int
) -> Iterator[np.ndarray]:
    """decode_all's images on worker processes: chunk k goes to worker k mod workers."""
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    pool: list[_Worker] = []
    try:
        pool = [_Worker(channels, size) for _ in range(min(workers, len(chunks)))]
        sent = 0
        for k, chunk in enumerate(chunks):
            while sent < len(chunks) and sent < k + len(pool) * _AHEAD_PER_WORKER:
                pool[sent % len(pool)].send(chunks[sent])
                sent += 1
            yield from pool[k % len(pool)].receive((len(chunk), channels, size, size))
    finally:  # also on an error or an abandoned consumer
        for worker in pool:
            worker.close()
