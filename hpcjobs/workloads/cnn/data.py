"""Load a data source into memory as train/validation/test tensors.

Every split is held whole, as x [N, C, H, W] and y [N] int64, so that the trainer can
move it to the GPU once and slice batches there (no DataLoader, no per-batch copies).
Image folders stay uint8 (a quarter of float32's memory), memory-mapped from the
decoded-image cache that the runs of a sweep share (cache.py); :func:`to_float` turns a
batch into float32 in [0, 1] on whatever device it lives on.

A process that runs several runs (tests, pull-based workers) loads each data config
once: :func:`load_splits` keeps the last few in memory, so their tensors are shared
between runs and must never be modified in place (``Split.to`` returns the same tensors
when they are already on that device in that layout, e.g. on the CPU).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from hpcjobs.errors import ConfigError, choices_hint
from hpcjobs.workloads.cnn import cache, imagefolder
from hpcjobs.workloads.cnn.config import SOURCES

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # [N, C, H, W]: uint8 in 0..255, or float32 in [0, 1]
    y: torch.Tensor  # [N] int64 class indices

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: np.ndarray) -> Split:
        """These samples only, in this order (a copy of them, not of the whole split)."""
        idx = torch.from_numpy(indices)
        return Split(self.x[idx], self.y[idx])

    def to(self, device: torch.device, channels_last: bool = False) -> Split:
        # channels_last here, once, so batches sliced from x need no conversion per step.
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return Split(self.x.to(device, memory_format=memory_format), self.y.to(device))


@dataclass(frozen=True)
class Splits:
    train: Split
    validation: Split
    test: Split
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.x.shape[-1])


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


def _load_imagefolder(data: DictConfig, num_workers: int) -> tuple[Splits, str]:
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
    decoded = cache.load(
        index, data.image_size, data.channels, data.get("cache_dir"), max(1, num_workers)
    )

    def split(name: str) -> Split:
        start, stop = decoded.ranges[name]
        return Split(_tensor(decoded.images[start:stop]), _tensor(decoded.labels[start:stop]))

    train, validation = split("train"), split("validation")
    test = validation if index.test_is_validation else split("test")
    splits = Splits(train=train, validation=validation, test=test, classes=index.classes)
    return splits, decoded.status


# Loaded data by config content, most recent last. Small: each entry holds a whole data set.
CACHE_SIZE = 2
_cache: OrderedDict[str, Splits] = OrderedDict()


def _cache_key(data_cfg: DictConfig, seed_for_split: int) -> str:
    # The config's content (not the object): every run composes its own copy. The augmentation
    # knobs do not change what is loaded, so runs that differ only there share an entry.
    content = OmegaConf.to_container(data_cfg, resolve=True)
    assert isinstance(content, dict)
    content.pop("augment", None)
    return json.dumps([content, seed_for_split], sort_keys=True, default=str)


def clear_cache() -> None:
    """Forget the data :func:`load_splits` kept (the next call loads again)."""
    _cache.clear()


@dataclass(frozen=True)
class Loaded:
    splits: Splits
    # How this process came by them (metrics.json's data_cache): an image folder's cache.HIT,
    # BUILT, UNCACHED or UNWRITABLE; REUSED when loaded earlier in this process; NO_CACHE for
    # the generated sources (digits, synthetic).
    cache: str
    seconds: float


REUSED, NO_CACHE = "reused", "none"


def load_splits(data_cfg: DictConfig, seed_for_split: int, num_workers: int = 0) -> Splits:
    """The train/validation/test tensors of ``data_cfg.name``'s source (see :func:`load`)."""
    return load(data_cfg, seed_for_split, num_workers).splits


def load(data_cfg: DictConfig, seed_for_split: int, num_workers: int = 0) -> Loaded:
    """The train/validation/test tensors of ``data_cfg.name``'s source, how they were come by
    and how long that took.

    ``seed_for_split`` fixes the digits/synthetic split and synthetic images (normally
    ``data.split_seed``, not the run's seed, so every seed is scored on the same test set).
    ``num_workers`` processes decode an image folder (and threads check its cache entry).

    The same data config again in this process returns the same Splits, not a reload (an
    image folder is not scanned again either: its files are assumed not to change while
    the process lives). Callers must not modify its tensors in place.
    """
    start = time.perf_counter()
    key = _cache_key(data_cfg, seed_for_split)
    if key in _cache:
        _cache.move_to_end(key)
        log.info("data %s: loaded earlier in this process, reused", data_cfg.name)
        how = REUSED if data_cfg.name == "imagefolder" else NO_CACHE
        return Loaded(_cache[key], how, time.perf_counter() - start)
    splits, how = _load(data_cfg, seed_for_split, num_workers)
    _cache[key] = splits
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return Loaded(splits, how, time.perf_counter() - start)


def _load(data_cfg: DictConfig, seed_for_split: int, num_workers: int) -> tuple[Splits, str]:
    data = data_cfg
    how = NO_CACHE
    if data.name == "digits":
        splits = _load_digits(data, seed_for_split)
    elif data.name == "synthetic":
        splits = _load_synthetic(data, seed_for_split)
    elif data.name == "imagefolder":
        splits, how = _load_imagefolder(data, num_workers)
    else:
        raise ConfigError(f"data.name={data.name}: {choices_hint(SOURCES)}")
    log.info(
        "data %s: %d classes, %d/%d/%d train/validation/test images of %dx%dx%d%s",
        data.name, splits.num_classes, len(splits.train), len(splits.validation), len(splits.test),
        splits.channels, splits.image_size, splits.image_size,
        "" if how == NO_CACHE else f" (cache: {how})",
    )  # fmt: skip
    return splits, how
