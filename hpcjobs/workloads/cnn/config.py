"""The CNN workload's config: one dataclass per config group, with each value's range.

The values live in ``conf/{model,data,optimizer,trainer}/*.yaml``; these dataclasses
declare their types and valid ranges (``check``), and :func:`preflight` the rules that
tie several keys together. ``conf/workload/cnn.yaml`` names them (``schema``,
``preflight``), exactly as a user's workload names its own. Torch-free: the login node
imports this module to validate a sweep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig

from hpcjobs.config.schema import RunConf, check
from hpcjobs.errors import DataError, choices_hint


def _positive_ints(value: Any) -> str | None:
    if (
        not isinstance(value, (list, ListConfig))
        or len(value) == 0
        or any(int(v) < 1 for v in value)
    ):
        return "must be a non-empty list of positive filter counts"
    return None


@dataclass
class ModelConf:
    name: str = "cnn"
    # filters of the conv 3x3 + ReLU + max-pool 2 blocks; one entry per block
    channels: list[int] = field(
        default_factory=lambda: [32, 64, 128], metadata=check(custom=_positive_ints)
    )
    kernel_size: int = field(default=3, metadata=check(min=1, max=15))
    hidden: int = field(default=128, metadata=check(min=1))  # dense layer width
    # Multiplies channels and hidden (0.5: [16, 32, 64] and 64): the network's width as one number.
    width: float = field(default=1.0, metadata=check(min=0, min_open=True, max=16))
    dropout: float = field(default=0.0, metadata=check(min=0, max=1, max_open=True))


@dataclass
class AugmentConf:
    # Keras ImageDataGenerator's knobs, applied to whole batches on the training device.
    rotation: float = field(default=0.0, metadata=check(min=0, max=180, why="degrees"))
    shift: float = field(
        default=0.0, metadata=check(min=0, max=1, max_open=True, why="fraction of the image size")
    )
    shear: float = field(default=0.0, metadata=check(min=0, max=90, max_open=True, why="degrees"))
    zoom: float = field(
        default=0.0, metadata=check(min=0, max=1, max_open=True, why="scale in [1-zoom, 1+zoom]")
    )
    hflip: bool = False


SOURCES = ("digits", "imagefolder", "synthetic")
CACHE_OFF = "off"  # data.cache_dir's value that turns the decoded-image cache off
# data.stage: off (map the cache where it is), node (copy it to node-local storage once per node)
STAGES = ("off", "node")


def _cache_dir(value: Any) -> str | None:
    if not str(value).strip():
        return (
            f"must be a folder, {CACHE_OFF} (no cache), or null (the default:"
            " data.root/.hpcjobs-cache where writable, else ~/.cache/hpcjobs)"
        )
    return None


@dataclass
class DataConf:
    name: str = field(default="digits", metadata=check(choices=SOURCES))
    root: str | None = None  # imagefolder: directory holding train/ validation/ [test/]
    # Images are resized to image_size x image_size; three 2x pools need at least 8.
    image_size: int = field(default=8, metadata=check(min=8, max=1024))
    channels: int = field(default=1, metadata=check(min=1, max=3))  # 1 = grayscale, 3 = RGB
    num_classes: int = field(default=10, metadata=check(min=2))  # synthetic only; others read it
    num_samples: int = field(default=1024, metadata=check(min=3))  # synthetic only
    # digits/synthetic: one fixed split, drawn with split_seed (not the run's seed) so that
    # runs with different seeds are scored on the same test images.
    val_fraction: float = field(default=0.15, metadata=check(min=0, max=0.5, min_open=True))
    test_fraction: float = field(default=0.15, metadata=check(min=0, max=0.5, min_open=True))
    split_seed: int = field(default=0, metadata=check(min=0))
    # imagefolder: where the decoded images are cached for every run (cache.py); null: in
    # data.root's .hpcjobs-cache/ where writable, else ${XDG_CACHE_HOME:-~/.cache}/hpcjobs;
    # off: decode into memory in every process.
    cache_dir: str | None = field(default=None, metadata=check(custom=_cache_dir))
    # imagefolder: a decoded set larger than this (GB) is streamed from the cache file batch by
    # batch instead of held in memory. null: half the memory the run was given (data.py's
    # memory_budget: Slurm's --mem or --mem-per-cpu for the task, else the machine's memory times
    # the run's share of its cores); the other half is the model's, torch's and the batches'.
    max_memory_gb: float | None = field(default=None, metadata=check(min=0))
    # imagefolder: node = copy the cache entry to node-local storage once per node and map the
    # copy (for a cache on a network file system); stage_dir: where (null: $SLURM_TMPDIR, else
    # $TMPDIR, else /tmp).
    stage: str = field(default="off", metadata=check(choices=STAGES))
    stage_dir: str | None = None
    augment: AugmentConf = field(default_factory=AugmentConf)


OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")


@dataclass
class OptimizerConf:
    name: str = field(default="adam", metadata=check(choices=OPTIMIZERS))
    lr: float = field(default=1e-3, metadata=check(min=0, min_open=True, why="learning rate"))
    # sgd/momentum
    momentum: float = field(default=0.0, metadata=check(min=0, max=1, max_open=True))
    nesterov: bool = False
    weight_decay: float = field(default=0.0, metadata=check(min=0))
    beta1: float = field(default=0.9, metadata=check(min=0, max=1, max_open=True))  # adam/adamw
    beta2: float = field(default=0.999, metadata=check(min=0, max=1, max_open=True))


# auto: bf16 autocast + channels_last where the device runs bf16 fast (CUDA sm80+, CPUs with
# AVX512-BF16 or AMX), fp32 elsewhere; the choice is recorded in the run's metrics.
PRECISIONS = ("auto", "fp32", "bf16")
# Where set, what precision=auto resolves to on every device instead of the hardware's answer:
# for a site that wants one precision everywhere, and for a test suite whose outcome must not
# depend on the CPU it lands on. Jobs inherit it from the submitting shell.
AUTO_PRECISION_ENV = "HPCJOBS_AUTO_PRECISION"


def forced_auto_precision() -> str | None:
    """HPCJOBS_AUTO_PRECISION's value (fp32 or bf16), None when unset; ValueError when invalid."""
    forced = os.environ.get(AUTO_PRECISION_ENV, "").strip()
    if not forced:
        return None
    valid = [p for p in PRECISIONS if p != "auto"]
    if forced not in valid:
        raise ValueError(
            f"{AUTO_PRECISION_ENV}={forced}: {choices_hint(valid)}"
            " (or unset it, and trainer.precision=auto follows the hardware)"
        )
    return forced


DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainerConf:
    epochs: int = field(default=10, metadata=check(min=1))
    batch_size: int = field(default=64, metadata=check(min=1))
    # As in Keras' fit(): cap the batches per epoch / per validation pass; null = one full pass.
    # A capped validation pass scores a fixed stratified sample (train.validation_set).
    steps_per_epoch: int | None = field(default=None, metadata=check(min=1))
    val_steps: int | None = field(default=None, metadata=check(min=1))
    precision: str = field(default="auto", metadata=check(choices=PRECISIONS))
    # torch.compile the model for training; skipped (with a warning) where the toolchain is missing.
    compile: bool = False
    device: str = field(default="auto", metadata=check(choices=DEVICES))  # auto: cuda if visible
    # Processes decoding an imagefolder; 0 = one per core the run was given (train.decode_workers).
    num_workers: int = field(default=0, metadata=check(min=0))
    # Threads torch uses for CPU ops; null = leave it to the launcher (cores / parallel runs).
    num_threads: int | None = field(default=None, metadata=check(min=1))


@dataclass
class CnnRunConf(RunConf):
    """The CNN workload's whole run config."""

    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)


# --------------------------------------------------------------------------- cross-field rules


def preflight(cfg: DictConfig) -> list[str]:
    """Rules that tie keys together, and the data on disk, as 'key=value: what to fix' lines.

    Run on the login node before submission (torch-free) and by each run before it starts.
    """
    from hpcjobs.workloads.cnn import imagefolder

    data, model, opt = cfg.data, cfg.model, cfg.optimizer
    errors: list[str] = []
    index = None
    if data.val_fraction + data.test_fraction >= 0.9:
        errors.append(
            f"data.val_fraction + data.test_fraction = {data.val_fraction + data.test_fraction:g}:"
            " must leave at least 10% of the images for training"
        )
    if isinstance(model.get("channels"), (list, ListConfig)):
        min_size = 2 ** len(model.channels)
        if data.image_size < min_size:
            errors.append(
                f"data.image_size={data.image_size}: {len(model.channels)} pooling blocks need"
                f" images of at least {min_size}x{min_size}"
            )
    if data.name == "digits" and data.channels != 1:
        errors.append(
            f"data.channels={data.channels}: digits images are grayscale; set data.channels=1"
        )
    if data.name == "imagefolder":
        if not data.root:
            errors.append(
                "data.root is not set: data=imagefolder needs"
                " data.root=DIR holding train/ and validation/"
            )
        else:
            try:
                index = imagefolder.scan(data.root)
            except DataError as exc:
                errors.append(str(exc))
        if data.channels not in (1, 3):
            errors.append(
                f"data.channels={data.channels}: image folders load as grayscale (1) or RGB (3)"
            )
        if index is not None and (problem := _unstreamable(data, index)):
            errors.append(problem)
        if data.get("stage") == "node" and data.get("cache_dir") == CACHE_OFF:
            errors.append(
                f"data.stage=node copies the data cache to the node, but data.cache_dir={CACHE_OFF}"
                ": set data.cache_dir to a folder (or null), or data.stage=off"
            )
    if cfg.trainer.precision == "auto":
        try:
            forced_auto_precision()
        except ValueError as exc:
            errors.append(str(exc))
    if opt.nesterov and momentum_of(opt) == 0:
        errors.append(
            f"optimizer.nesterov=true needs optimizer.momentum > 0 (optimizer={opt.name})"
        )
    return errors


def decoded_bytes(index: Any, image_size: int, channels: int) -> int:
    """What a scanned folder takes decoded: uint8, every image once (a test split that is the
    validation split counts once)."""
    splits = ("train", "validation") + (() if index.test_is_validation else ("test",))
    return sum(len(index.splits[s]) for s in splits) * channels * image_size**2


def _unstreamable(data: Any, index: Any) -> str | None:
    # Only an explicit budget is known here: a default one depends on the task's memory.
    if data.get("max_memory_gb") is None or data.get("cache_dir") != CACHE_OFF:
        return None
    size = decoded_bytes(index, data.image_size, data.channels)
    if size <= data.max_memory_gb * 1e9:
        return None
    return (
        f"data.max_memory_gb={data.max_memory_gb:g}: the folder's {size / 1e9:.2f} GB of decoded"
        f" images do not fit, and data.cache_dir={CACHE_OFF} leaves no cache file to stream"
        " them from: set data.cache_dir to a folder (or null), or raise data.max_memory_gb"
    )


def momentum_of(opt: Any) -> float:
    """`momentum`: SGD with heavy-ball momentum (0.9 unless set); `sgd` uses optimizer.momentum."""
    return (opt.momentum or 0.9) if opt.name == "momentum" else opt.momentum
