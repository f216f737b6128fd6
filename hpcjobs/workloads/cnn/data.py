"""Load a data source as train/validation/test splits, and hand the trainer their batches.

A split that fits the memory budget (:func:`memory_budget`, ``data.max_memory_gb``) is held
whole, as x [N, C, H, W] and y [N] int64, so that the trainer can move it to the GPU once
and slice batches there (no DataLoader, no per-batch copies). Image folders stay uint8 (a
quarter of float32's memory), memory-mapped from the decoded-image cache that the runs of
a sweep share (cache.py). An image folder over the budget is :class:`Streamed`: each batch
is read from the cache file by index on a background thread, a few batches ahead (into
pinned memory, copied with ``non_blocking``, when the device is a GPU). :func:`batches`
gives the trainer either kind's batches, the same samples in the same order, so a streamed
run's metrics are bitwise an in-memory run's. :func:`to_float` turns a batch into float32 in
[0, 1] on whatever device it lives on.

A process that runs several runs (tests, pull-based workers) loads each data config
once: :func:`load_splits` keeps the last few in memory, so their tensors are shared
between runs and must never be modified in place (``Split.to`` returns the same tensors
when they are already on that device in that layout, e.g. on the CPU).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from hpcjobs.errors import ConfigError, DataError, choices_hint
from hpcjobs.run.context import RunContext
from hpcjobs.workloads.cnn import cache, imagefolder
from hpcjobs.workloads.cnn.config import CACHE_OFF, SOURCES, decoded_bytes

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # [N, C, H, W]: uint8 in 0..255, or float32 in [0, 1]
    y: torch.Tensor  # [N] int64 class indices
    # Each batch to be made channels_last as it is taken (on the CPU, where converting the
    # whole split would copy it).
    channels_last: bool = False

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: np.ndarray) -> Split:
        """These samples only, in this order (a copy of them, not of the whole split)."""
        idx = torch.from_numpy(indices)
        return Split(self.x[idx], self.y[idx])

    def to(self, device: torch.device, channels_last: bool = False) -> Split:
        if channels_last and device.type == "cpu":
            # The split stays the one copy it is (the mapped cache file): batches() converts
            # each batch instead.
            return Split(self.x.to(device), self.y.to(device), channels_last=True)
        # channels_last here, once, so batches sliced from x need no conversion per step.
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return Split(self.x.to(device, memory_format=memory_format), self.y.to(device))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)

    @property
    def device(self) -> torch.device:
        return self.x.device


@dataclass(frozen=True)
class Streamed:
    """A split read from a cache file batch by batch, never held whole (over the budget).

    ``file`` is the open images.npy of a cache entry (kept open: a rebuild that replaces it
    leaves this one readable); the split's images lie one after another from ``offset``.
    The labels (8 bytes an image) are held: ``y`` on the training device, ``labels`` on the CPU.
    """

    file: Any  # an open binary file (io.BufferedReader)
    offset: int
    shape: tuple[int, ...]  # [N, C, H, W], uint8
    labels: torch.Tensor
    y: torch.Tensor
    channels_last: bool = False

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def device(self) -> torch.device:
        return self.y.device

    def to(self, device: torch.device, channels_last: bool = False) -> Streamed:
        return replace(self, y=self.labels.to(device), channels_last=channels_last)

    def subset(self, indices: np.ndarray) -> Split:
        """These samples only, in this order, read into memory (trainer.val_steps' few batches)."""
        x = torch.empty((len(indices), *self.shape[1:]), dtype=torch.uint8)
        self.read(indices, x.numpy())
        return Split(x, self.labels[torch.from_numpy(indices)])

    def read(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Images ``rows`` into ``out`` (uint8 [len(rows), C, H, W]): one read per run of
        consecutive rows (an evaluation batch: one). pread: the kernel's page cache holds the
        file, not this process, and threads read at once."""
        sample = int(np.prod(self.shape[1:]))
        flat = out.reshape(len(rows), sample)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
            view = flat[a:b].data.cast("B")
            at = self.offset + int(rows[a]) * sample
            while len(view):  # a read may return less than asked (signals, > 2 GB)
                got = os.preadv(self.file.fileno(), [view], at)
                if got <= 0:
                    raise DataError(
                        f"{self.file.name} ended at byte {at}, before image {rows[a]} of its"
                        " split: the cache entry changed under this run; run it again"
                    )
                view, at = view[got:], at + got


# Batches a streamed split reads ahead of the step that uses them.
PREFETCH = 3


def batches(
    split: Split | Streamed,
    order: torch.Tensor | None,
    batch_size: int,
    steps: Iterable[int],
    rank: int = 0,
    world_size: int = 1,
) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]:
    """(x, y) of each step: this rank's share ``order[step * batch_size : ...][rank::world_size]``
    of the global batch, or with no order the split's own next batch (evaluation). x as stored
    (uint8 for image folders; :func:`to_float` it), on the split's device.

    Either kind of split gives the same samples in the same order; a streamed one reads them
    on a background thread, :data:`PREFETCH` batches ahead, until the generator is exhausted
    or closed (close it when leaving mid-way).
    """

    def rows(step: int) -> slice | torch.Tensor:
        if order is None:
            return slice(step * batch_size, (step + 1) * batch_size)
        return order[step * batch_size : (step + 1) * batch_size][rank::world_size]

    if isinstance(split, Split):
        for step in steps:
            idx = rows(step)
            x = split.x[idx]
            if split.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, split.y[idx]
        return
    if order is not None:
        order = order.cpu()  # one copy per epoch; the reads need the indices on the CPU
    yield from _prefetched(split, (rows(step) for step in steps))


def _prefetched(
    split: Streamed, wanted: Iterator[slice | torch.Tensor]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    device = split.device
    pin = device.type == "cuda"
    ready: queue.Queue[tuple[torch.Tensor, torch.Tensor] | BaseException | None] = queue.Queue(
        PREFETCH
    )
    stop = threading.Event()

    def put(item: tuple[torch.Tensor, torch.Tensor] | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read_ahead() -> None:
        try:
            for want in wanted:
                idx = np.arange(len(split))[want] if isinstance(want, slice) else want.numpy()
                # A new pinned buffer each batch: torch's pinned-memory cache hands one back
                # only once the non_blocking copy from it has completed.
                x = torch.empty((len(idx), *split.shape[1:]), dtype=torch.uint8, pin_memory=pin)
                split.read(idx, x.numpy())
                if not put((x, split.labels[torch.from_numpy(idx)])):
                    return
        except BaseException as exc:  # the trainer's to raise, in its thread
            put(exc)
            return
        put(None)

    thread = threading.Thread(target=read_ahead, name="hpcjobs-prefetch", daemon=True)
    thread.start()
    memory_format = torch.channels_last if split.channels_last else torch.contiguous_format
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            x, y = item
            if device.type != "cpu":
                x = x.to(device, non_blocking=True, memory_format=memory_format)
                y = y.to(device, non_blocking=True)
            elif split.channels_last:
                x = x.contiguous(memory_format=memory_format)
            yield x, y
    finally:  # also when the trainer stops mid-epoch: the thread ends at its next put
        stop.set()


@dataclass(frozen=True)
class Splits:
    train: Split | Streamed
    validation: Split | Streamed
    test: Split | Streamed
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.shape[-1])

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, Streamed)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """A batch as float32 in [0, 1], whichever dtype the split is stored in (never in place)."""
    if x.dtype == torch.uint8:
        return x / 255  # one pass to float32, the same values as x.float() / 255; keeps x's layout
    return x.float()


def stratified_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seeded order of the samples in which every prefix is stratified.

    Each sample gets a key (rank within its class + uniform jitter) / class size; sorting
    by it interleaves the classes evenly, so any prefix holds each class in (almost
    exactly) its proportion of the whole.
    """
    key = np.empty(len(y))
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        key[rng.permutation(members)] = (np.arange(len(members)) + rng.random(len(members))) / len(
            members
        )
    return np.argsort(key, kind="stable")


def stratified_split(
    y: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Indices of a seeded split with each class in (almost exactly) the same proportions.

    The first round(N * test_fraction) of :func:`stratified_order` go to test, the next
    round(N * val_fraction) to validation.
    """
    order = stratified_order(y, np.random.default_rng(seed))
    n_test = max(1, round(len(y) * test_fraction))
    n_val = max(1, round(len(y) * val_fraction))
    if len(y) - n_test - n_val < 1:
        raise ConfigError(
            f"{len(y)} samples leave no training images after the validation and test splits"
        )
    return {
        "test": np.sort(order[:n_test]),
        "validation": np.sort(order[n_test : n_test + n_val]),
        "train": np.sort(order[n_test + n_val :]),
    }


def fixed_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of n samples drawn at random, stratified by class, fixed by ``seed``.

    What a capped evaluation (``trainer.val_steps``) scores: the same images every epoch, on
    every rank and after a resume, and never just the first batches of a class-sorted split.
    """
    if n >= len(y):
        return np.arange(len(y))
    # Its own stream of seed: not the draw that made the splits.
    return np.sort(stratified_order(y, np.random.default_rng([seed, 1]))[:n])


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1]
    )


def _load_digits(data: DictConfig, seed: int) -> Splits:
    from sklearn.datasets import load_digits

    if data.channels != 1:
        raise ConfigError(
            f"data.channels={data.channels}: digits images are grayscale; set data.channels=1"
        )
    bunch = load_digits()
    x = torch.from_numpy(bunch.images / 16.0).float().unsqueeze(1)  # pixel values are 0..16
    x = _resize(x, data.image_size).clamp_(0, 1)
    y = torch.from_numpy(bunch.target).long()
    idx = stratified_split(bunch.target, data.val_fraction, data.test_fraction, seed)
    parts = {name: Split(x[torch.from_numpy(i)], y[torch.from_numpy(i)]) for name, i in idx.items()}
    return Splits(**parts, classes=[str(d) for d in bunch.target_names])


def _synthetic_images(
    y: torch.Tensor, prototypes: torch.Tensor, g: torch.Generator
) -> torch.Tensor:
    # Half class pattern, half noise: learnable, yet not trivially so. Built in chunks of
    # uint8 so a large synthetic set costs 1 byte per pixel, not 4 plus temporaries.
    out = torch.empty((len(y), *prototypes.shape[1:]), dtype=torch.uint8)
    for start in range(0, len(y), 1024):
        yc = y[start : start + 1024]
        noise = torch.rand((len(yc), *prototypes.shape[1:]), generator=g)
        out[start : start + 1024] = (
            ((0.5 * prototypes[yc] + 0.5 * noise) * 255).round_().to(torch.uint8)
        )
    return out


def _load_synthetic(data: DictConfig, seed: int) -> Splits:
    g = torch.Generator().manual_seed(seed)
    k, c, s = data.num_classes, data.channels, data.image_size
    prototypes = torch.rand((k, c, s, s), generator=g)
    y_all = torch.arange(data.num_samples) % k  # balanced classes
    y_all = y_all[torch.randperm(data.num_samples, generator=g)]
    idx = stratified_split(y_all.numpy(), data.val_fraction, data.test_fraction, seed)
    parts = {}
    for name in SPLIT_NAMES:  # images are i.i.d. given the label: draw each split's directly
        y = y_all[torch.from_numpy(idx[name])]
        parts[name] = Split(_synthetic_images(y, prototypes, g), y)
    return Splits(**parts, classes=[f"class_{i}" for i in range(k)])


def _tensor(array: np.ndarray) -> torch.Tensor:
    """The array as a tensor sharing its memory: no copy of a memory-mapped cache file."""
    with warnings.catch_warnings():
        # A read-only mapping: torch warns that writing to it is undefined. Nothing writes to
        # the shared splits (the trainer copies each batch).
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _load_imagefolder(
    data: DictConfig, num_workers: int, budget: int, node_tmpdir: str | None
) -> tuple[Splits, str]:
    if not data.root:
        raise ConfigError(
            "data.root is not set: data=imagefolder needs"
            " data.root=DIR holding train/ and validation/"
        )
    if data.channels not in (1, 3):
        raise ConfigError(
            f"data.channels={data.channels}: image folders load as grayscale (1) or RGB (3)"
        )
    index = imagefolder.scan(data.root)
    size = decoded_bytes(index, data.image_size, data.channels)
    stream = size > budget
    cache_dir = data.get("cache_dir")
    if stream:
        if cache_dir == CACHE_OFF:
            raise ConfigError(
                f"the folder's {size / 1e9:.2f} GB of decoded images exceed the memory budget of"
                f" {budget / 1e9:.2f} GB ({_budget_rule(data)}), and data.cache_dir={CACHE_OFF}"
                " leaves no cache file to stream them from: set data.cache_dir to a folder (or"
                " null), or raise data.max_memory_gb"
            )
        log.info(
            "data: %.2f GB of decoded images, over the memory budget of %.2f GB (%s): streamed"
            " from the cache file", size / 1e9, budget / 1e9, _budget_rule(data),
        )  # fmt: skip
    decoded = cache.load(
        index,
        data.image_size,
        data.channels,
        cache_dir,
        max(1, num_workers),
        in_memory_ok=not stream,
        stage_dir=_stage_dir(data, node_tmpdir),
    )

    def split(name: str) -> Split | Streamed:
        start, stop = decoded.ranges[name]
        labels = _tensor(decoded.labels[start:stop])
        if stream:
            assert decoded.entry is not None  # in_memory_ok=False: from a cache entry
            images = decoded.images
            file = open(decoded.entry / cache.IMAGES, "rb", buffering=0)  # noqa: SIM115
            offset = images.offset + start * images[0].nbytes  # type: ignore[attr-defined]
            shape = (stop - start, *images.shape[1:])
            return Streamed(file, offset, shape, labels, labels)
        return Split(_tensor(decoded.images[start:stop]), labels)

    train, validation = split("train"), split("validation")
    test = validation if index.test_is_validation else split("test")
    splits = Splits(train=train, validation=validation, test=test, classes=index.classes)
    return splits, decoded.status


def _stage_dir(data: DictConfig, node_tmpdir: str | None) -> Path | None:
    """Where data.stage=node copies the cache entry: data.stage_dir, else the job's node-local
    scratch ($SLURM_TMPDIR, from the scheduler), else $TMPDIR, else /tmp."""
    if data.get("stage", "off") != "node":
        return None
    where = data.get("stage_dir") or node_tmpdir or os.environ.get("TMPDIR") or "/tmp"
    return Path(where).expanduser()


# The share of the run's memory an in-memory data set may take (data.max_memory_gb=null);
# the rest is the model's, the optimizer's, torch's (~0.3 GB) and the batches'.
MEMORY_SHARE = 0.5


def memory_budget(max_memory_gb: float | None, ctx: RunContext | None = None) -> int:
    """Bytes of decoded images a run may hold in memory; a larger image folder is streamed.

    ``data.max_memory_gb`` when set; else :data:`MEMORY_SHARE` of the memory the run was
    given: the scheduler's (Slurm's --mem-per-cpu x CPUs, or --mem shared by the node's
    tasks: ``ctx.memory_bytes``), else the machine's physical memory times the run's share
    of its cores (``ctx.num_threads``: the launcher's, of parallel local runs).
    """
    if max_memory_gb is not None:
        return int(max_memory_gb * 1e9)
    if ctx is not None and ctx.memory_bytes:
        return int(ctx.memory_bytes * MEMORY_SHARE)
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cores = os.cpu_count() or 1
    share = min(1.0, ctx.num_threads / cores) if ctx is not None and ctx.num_threads else 1.0
    return int(machine * share * MEMORY_SHARE)


def _budget_rule(data: DictConfig) -> str:
    if data.get("max_memory_gb") is not None:
        return f"data.max_memory_gb={data.max_memory_gb:g}"
    return "data.max_memory_gb=null: half the memory the run was given"


# Loaded data by config content, most recent last. Small: each entry holds a whole data set.
CACHE_SIZE = 2
_cache: OrderedDict[str, Splits] = OrderedDict()


def _cache_key(data_cfg: DictConfig, seed_for_split: int, budget: int) -> str:
    # The config's content (not the object): every run composes its own copy. The augmentation
    # knobs do not change what is loaded, so runs that differ only there share an entry.
    content = OmegaConf.to_container(data_cfg, resolve=True)
    assert isinstance(content, dict)
    content.pop("augment", None)
    return json.dumps([content, seed_for_split, budget], sort_keys=True, default=str)


def clear_cache() -> None:
    """Forget the data :func:`load_splits` kept (the next call loads again)."""
    _cache.clear()


@dataclass(frozen=True)
class Loaded:
    splits: Splits
    # The memory budget applied (memory_budget): over it, an image folder is streamed.
    budget: int
    # How this process came by them (metrics.json's data_cache): an image folder's cache.HIT,
    # BUILT, UNCACHED or UNWRITABLE; REUSED when loaded earlier in this process; NO_CACHE for
    # the generated sources (digits, synthetic).
    cache: str
    seconds: float


REUSED, NO_CACHE = "reused", "none"


def load_splits(
    data_cfg: DictConfig, seed_for_split: int, num_workers: int = 0, ctx: RunContext | None = None
) -> Splits:
    """The train/validation/test splits of ``data_cfg.name``'s source (see :func:`load`)."""
    return load(data_cfg, seed_for_split, num_workers, ctx).splits


def load(
    data_cfg: DictConfig, seed_for_split: int, num_workers: int = 0, ctx: RunContext | None = None
) -> Loaded:
    """The train/validation/test splits of ``data_cfg.name``'s source, how they were come by
    and how long that took.

    ``seed_for_split`` fixes the digits/synthetic split and synthetic images (normally
    ``data.split_seed``, not the run's seed, so every seed is scored on the same test set).
    ``num_workers`` processes decode an image folder (and threads check its cache entry).
    ``ctx``, the run's, says the memory and node-local scratch the scheduler gave it: an
    image folder over :func:`memory_budget` is :class:`Streamed`.

    The same data config again in this process returns the same Splits, not a reload (an
    image folder is not scanned again either: its files are assumed not to change while
    the process lives). Callers must not modify its tensors in place.
    """
    start = time.perf_counter()
    budget = memory_budget(data_cfg.get("max_memory_gb"), ctx)
    key = _cache_key(data_cfg, seed_for_split, budget)
    if key in _cache:
        _cache.move_to_end(key)
        log.info("data %s: loaded earlier in this process, reused", data_cfg.name)
        how = REUSED if data_cfg.name == "imagefolder" else NO_CACHE
        return Loaded(_cache[key], budget, how, time.perf_counter() - start)
    splits, how = _load(
        data_cfg, seed_for_split, num_workers, budget, ctx.node_tmpdir if ctx else None
    )
    _cache[key] = splits
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return Loaded(splits, budget, how, time.perf_counter() - start)


def _load(
    data_cfg: DictConfig,
    seed_for_split: int,
    num_workers: int,
    budget: int,
    node_tmpdir: str | None,
) -> tuple[Splits, str]:
    data = data_cfg
    how = NO_CACHE
    if data.name == "digits":
        splits = _load_digits(data, seed_for_split)
    elif data.name == "synthetic":
        splits = _load_synthetic(data, seed_for_split)
    elif data.name == "imagefolder":
        splits, how = _load_imagefolder(data, num_workers, budget, node_tmpdir)
    else:
        raise ConfigError(f"data.name={data.name}: {choices_hint(SOURCES)}")
    log.info(
        "data %s: %d classes, %d/%d/%d train/validation/test images of %dx%dx%d%s%s",
        data.name, splits.num_classes, len(splits.train), len(splits.validation), len(splits.test),
        splits.channels, splits.image_size, splits.image_size,
        "" if how == NO_CACHE else f" (cache: {how})", ", streamed" if splits.streamed else "",
    )  # fmt: skip
    return splits, how
