"""Decode image files into uint8 arrays of one size, on several threads.

Torch-free (numpy and PIL): the cache (cache.py) builds with it in any process. PIL
releases the GIL while it decodes, converts and resizes, so threads really overlap and
nothing is pickled between processes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hpcjobs.errors import DataError

# How an image becomes size x size: converted to L or RGB, then the whole image resized
# (squashed, no crop) with PIL's bilinear filter. Part of the cache key: change it with the code.
RESIZE_RULE = "pil-convert-bilinear-squash-v1"
# Images decoded ahead of the one being consumed, per thread: bounds the memory in flight.
_AHEAD_PER_THREAD = 16


def pil_version() -> str:
    import PIL

    return PIL.__version__


def decode_one(path: Path, channels: int, size: int) -> np.ndarray:
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


def decode_all(
    paths: Sequence[Path], channels: int, size: int, threads: int
) -> Iterator[np.ndarray]:
    """Each image of ``paths`` in order (see :func:`decode_one`), decoded on ``threads`` threads
    (1: in this thread), a bounded number ahead of the consumer."""
    if threads <= 1:
        for path in paths:
            yield decode_one(path, channels, size)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hpcjobs-decode") as pool:
        pending: deque[Future[np.ndarray]] = deque()
        todo = iter(paths)
        try:
            for path in todo:
                pending.append(pool.submit(decode_one, path, channels, size))
                if len(pending) >= threads * _AHEAD_PER_THREAD:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an error or an abandoned consumer: drop the work not started
            for future in pending:
                future.cancel()
