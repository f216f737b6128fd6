"""Train the seed CNN on one configuration and score it on the test split.

Reads top to bottom: seed -> device and precision -> data (moved to the device once) ->
model and optimizer -> resume from a checkpoint, if an earlier attempt left one -> epochs
of shuffled, augmented batches with a validation pass and a checkpoint each -> the
best-validation weights scored on the test split. Between steps it stops (saving first)
when the scheduler asks. Returns plain Python values only, so the job can write them
straight to metrics.json.

Distributed (``ctx.world_size > 1``, one process per rank, started by the job): every
rank draws the same shuffled order and takes its share of each global batch of
``trainer.batch_size`` images; DistributedDataParallel averages the gradients, so each
step is the step one process would take on the whole batch. The ranks agree on when to
stop, and only rank 0 writes the run's files.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hpcjobs.errors import ConfigError, choices_hint
from hpcjobs.run import usage
from hpcjobs.run.context import RunContext, RunInterrupted
from hpcjobs.workloads.cnn.augment import random_affine
from hpcjobs.workloads.cnn.config import (
    AUTO_PRECISION_ENV,
    OPTIMIZERS,
    forced_auto_precision,
    momentum_of,
)
from hpcjobs.workloads.cnn.data import (
    Split,
    Splits,
    Streamed,
    batches,
    fixed_subset,
    load,
    to_float,
)
from hpcjobs.workloads.cnn.metrics import classification_metrics
from hpcjobs.workloads.cnn.model import LossFn, build_model, loss_fn, predict

log = logging.getLogger(__name__)

# The metrics that are timings, the job's included (hpcjobs/run/usage.py): two runs of one
# configuration differ in these; on CPU every other metric is bitwise the same.
TIMING_METRICS = frozenset(
    {"train_seconds", "train_images_per_second", "data_load_seconds", *usage.TIMING_FIELDS}
)

# loss(logits, y, n): the loss of this rank's share of a global batch of n images.
StepLoss = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


# --------------------------------------------------------------------------- device, precision


def pick_device(requested: str, local_rank: int | None = None) -> torch.device:
    """The training device; with several ranks, cuda:local_rank (one GPU per rank on a node)."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        if not torch.cuda.is_available():
            raise RuntimeError(
                "trainer.device=cuda but no CUDA device is visible"
                f" (CUDA_VISIBLE_DEVICES={visible})"
            )
        if local_rank is None:
            return torch.device("cuda", torch.cuda.current_device())
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} trains on cuda:{local_rank}, but this node shows"
                f" {torch.cuda.device_count()} GPU(s) (CUDA_VISIBLE_DEVICES={visible}):"
                " give every task its own GPU"
                " (hydra.launcher.gpus_per_node = tasks_per_node), or train on trainer.device=cpu"
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index} {torch.cuda.get_device_name(device)}"
    return device.type


@functools.cache
def cpu_bf16_instructions() -> tuple[str, ...]:
    """The CPU's native bf16 instructions oneDNN uses (AVX512-BF16, AMX-BF16); () when none."""
    wanted = ("avx512_bf16", "amx_bf16")
    # recent torch; else the kernel's flags
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        found = capabilities()
        return tuple(f for f in wanted if found.get(f))
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return ()
    return tuple(f for f in wanted if f in flags)


def native_bf16(device: torch.device) -> str | None:
    """What makes the device compute bf16 natively, so autocast to bf16 pays off; else None."""
    if device.type == "cuda":
        # Ampere (sm80) and later. torch.cuda.is_bf16_supported() also says yes where bf16 is
        # emulated (V100, T4), which is slower than fp32.
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda sm{major}{minor}" if (major, minor) >= (8, 0) else None
    if (
        device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and (found := cpu_bf16_instructions())
    ):
        return "cpu " + "+".join(found)
    return None


def bf16_is_fast(device: torch.device) -> bool:
    return native_bf16(device) is not None


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """trainer.precision (auto | fp32 | bf16) for this device, and why (recorded in the metrics)."""
    if requested != "auto":
        return requested, f"trainer.precision={requested}"
    try:
        forced = forced_auto_precision()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if forced:
        return forced, f"auto: {AUTO_PRECISION_ENV}={forced}"
    native = native_bf16(device)
    return (
        ("bf16", f"auto: native bf16 ({native})")
        if native
        else ("fp32", f"auto: no native bf16 on {device.type}")
    )


def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot work here, or None. Inductor builds C++ on CPUs, Triton on GPUs."""
    if sys.version_info >= (3, 14):
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return f"torch.compile does not support Python {version} yet"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed (pip install triton, matching this torch)"
        return None
    # what Inductor runs
    cxx = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler {cxx!r} on PATH (install one, e.g. apt install g++, or set CXX)"
    return None


@dataclass(frozen=True)
class FastPath:
    """What trainer.precision and trainer.compile came to on this device (kept in the metrics)."""

    precision: str  # fp32 | bf16
    channels_last: bool
    compiled: bool
    precision_reason: str = ""  # why this precision: the setting, the environment, or the hardware

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def choose_fast_path(precision: str, compile: bool, device: torch.device) -> FastPath:
    """trainer.precision (auto | fp32 | bf16) and trainer.compile, resolved for this device."""
    precision, reason = resolve_precision(precision, device)
    if compile and (problem := compile_problem(device)) is not None:
        log.warning("trainer.compile=true: not compiling, %s", problem)
        compile = False
    # channels_last (NHWC) is the layout oneDNN's and cuDNN's bf16 convolutions run natively:
    # +35% per step on an AVX512-BF16 CPU. In fp32 it gained ~5% there; fp32 keeps the
    # default layout, the reference the other paths are compared against.
    return FastPath(
        precision=precision,
        channels_last=precision == "bf16",
        compiled=compile,
        precision_reason=reason,
    )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"
    )


@contextlib.contextmanager
def torch_settings(device: torch.device, num_threads: int | None) -> Iterator[None]:
    """Process-wide torch settings for one run, restored afterwards (tests and in-process
    sweeps run several trainings in one interpreter)."""
    # Its fill_uninitialized_memory is a property torch adds at runtime; the stubs lack it.
    deterministic: Any = torch.utils.deterministic
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.get_num_threads(),
        torch.backends.cudnn.benchmark,
        deterministic.fill_uninitialized_memory,
    )
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)  # same config + seed -> same metrics
            # ...without also filling every new tensor with NaN first (a debugging aid that comes
            # with it): that cost 3-4% per step, and every kernel here writes its whole output.
            deterministic.fill_uninitialized_memory = False
        else:
            # Batches have one shape (bar the last), so cuDNN's autotuning pays off; CUDA
            # runs trade bitwise reproducibility for speed.
            torch.backends.cudnn.benchmark = True
        if num_threads:
            torch.set_num_threads(num_threads)
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.set_num_threads(saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        deterministic.fill_uninitialized_memory = saved[3]


def decode_workers(num_workers: int) -> int:
    """Processes that decode an image folder: trainer.num_workers, or (0) one per core this run
    was given (torch's threads: trainer.num_threads, else the launcher's share of the cores)."""
    if num_workers > 0:
        return num_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(torch.get_num_threads(), cores or 1))


# --------------------------------------------------------------------------- distributed


@contextlib.contextmanager
def process_group(ctx: RunContext, device: torch.device) -> Iterator[Any]:
    """Joins the run's other ranks when there are several (torch.distributed, env://), and
    leaves the group at the end, also on an error. Yields the group for small CPU-side
    collectives (the stop flag, RNG states): None = the default group."""
    if ctx.world_size == 1:
        yield None
        return
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(
            f"world_size={ctx.world_size} but {' and '.join(missing)} not set: the job sets them"
            " for a distributed run; to start the ranks by hand,"
            " export MASTER_ADDR=<rank 0's host> MASTER_PORT=<free port>"
        )
    owned = not dist.is_initialized()  # a caller that joined already keeps its group
    if owned:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            init_method="env://",
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
    elif dist.get_world_size() != ctx.world_size:
        raise ConfigError(
            f"this process already joined a group of {dist.get_world_size()} ranks, but the run has"
            f" world_size={ctx.world_size}: start one process per rank of the run"
        )
    # A collective on NCCL waits for the GPU's queued work; the per-step stop flag goes
    # through gloo on the CPU instead, so the GPU keeps its queue full.
    cpu_group = dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else None
    try:
        yield cpu_group
    finally:
        if owned:
            dist.destroy_process_group()
        elif cpu_group is not None:
            dist.destroy_process_group(cpu_group)


def rank_seed(seed: int, rank: int) -> int:
    """A seed of its own per (run seed, rank), unrelated to seed + 1 or rank + 1."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def stop_agreed(ctx: RunContext, group: Any) -> bool:
    """ctx.should_stop(), true on one rank a step before another, made the same on every rank:
    they all stop after the same step, and none is left waiting in a collective."""
    stop = ctx.should_stop()
    if ctx.world_size == 1:
        return stop
    flag = torch.tensor(int(stop))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return bool(flag)


def step_loss(num_classes: int, world_size: int) -> StepLoss:
    """The loss whose DDP-averaged gradient is that of the global batch's mean loss."""
    if world_size == 1:
        mean = loss_fn(num_classes)
        return lambda logits, y, n: mean(logits, y)
    total = loss_fn(num_classes, reduction="sum")  # a rank's share may be smaller, or empty
    return lambda logits, y, n: total(logits, y) * (world_size / n)


def for_training(
    model: nn.Module, device: torch.device, fast: FastPath, world_size: int
) -> nn.Module:
    """What the training step calls: the model, in DDP when distributed, compiled when asked.
    Checkpoints and evaluation use the model itself."""
    net = model
    if world_size > 1:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if fast.compiled:
        # full batches and the last one: two graphs, no dynamic shapes
        net = cast(nn.Module, torch.compile(net, dynamic=False))  # compiling a Module gives one
    return net


# --------------------------------------------------------------------------- steps


def build_optimizer(params: Any, opt: DictConfig) -> torch.optim.Optimizer:
    if opt.name in ("sgd", "momentum"):
        return torch.optim.SGD(
            params,
            lr=opt.lr,
            momentum=momentum_of(opt),
            nesterov=opt.nesterov,
            weight_decay=opt.weight_decay,
        )
    betas = (opt.beta1, opt.beta2)
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=opt.lr, betas=betas, weight_decay=opt.weight_decay)
    if opt.name == "adamw":
        return torch.optim.AdamW(params, lr=opt.lr, betas=betas, weight_decay=opt.weight_decay)
    raise ConfigError(f"optimizer.name={opt.name}: {choices_hint(OPTIMIZERS)}")


def num_batches(n: int, batch_size: int, cap: int | None) -> int:
    full = math.ceil(n / batch_size)
    return min(full, cap) if cap else full


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_of: StepLoss,
    xb: torch.Tensor,
    yb: torch.Tensor,
    n: int,
    device: torch.device,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on this rank's share (xb, yb) of a global batch of n images.
    Returns the loss and the logits, detached."""
    with autocast(device, precision):
        logits = net(xb)
    loss = loss_of(logits, yb, n)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split | Streamed,
    criterion: LossFn,
    num_classes: int,
    batch_size: int,
    precision: str,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Mean loss, predictions and targets over the whole split."""
    model.eval()
    device = split.device
    loss_sum = torch.zeros((), device=device)
    preds = []
    steps = range(num_batches(len(split), batch_size, None))
    for xb, yb in batches(split, None, batch_size, steps):
        xb = to_float(xb)
        with autocast(device, precision):
            logits = model(xb)
        loss_sum += criterion(logits, yb) * len(yb)
        preds.append(predict(logits, num_classes))
    pred = torch.cat(preds)
    return (loss_sum / len(pred)).item(), pred, split.y


def validation_set(
    validation: Split | Streamed, val_steps: int | None, batch_size: int, seed: int
) -> Split | Streamed:
    """What each validation pass scores: the whole split, or with ``trainer.val_steps`` a fixed
    random stratified subset of val_steps batches (the same every epoch, on every rank)."""
    if not val_steps or val_steps * batch_size >= len(validation):
        return validation
    keep = fixed_subset(validation.y.numpy(), val_steps * batch_size, seed)
    return validation.subset(keep)


# --------------------------------------------------------------------------- checkpoints


@dataclass
class Progress:
    """Where training stands, besides the weights, the optimizer and the RNGs.

    Checkpointed with them, so a run stopped anywhere (after a step, after an epoch) and
    started again continues exactly where it was: on CPU it ends with bitwise the metrics
    of a run never stopped.
    """

    epoch: int = 1  # the epoch under way
    step: int = 0  # its steps done
    order: torch.Tensor | None = None  # its shuffled sample indices, once drawn
    # its running sums, on the device (one host sync per epoch)
    loss_sum: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    seen: int = 0
    epoch_seconds: float = 0.0  # spent on it before a stop
    best_val_accuracy: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    train_seconds: float = 0.0
    step_seconds: float = 0.0
    images_trained: int = 0

    def new_epoch(self, order: torch.Tensor) -> None:
        self.order, self.step, self.seen, self.epoch_seconds = order, 0, 0, 0.0
        self.loss_sum = torch.zeros((), device=order.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=order.device)


def epoch_totals(p: Progress, world_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The epoch's loss sum, correct predictions and images, over all ranks (one all_reduce)."""
    assert p.loss_sum is not None and p.correct is not None
    if world_size == 1:
        return p.loss_sum, p.correct, p.seen
    seen = torch.tensor(float(p.seen), dtype=torch.float64, device=p.loss_sum.device)
    sums = torch.stack([p.loss_sum.double(), p.correct.double(), seen])
    dist.all_reduce(sums)
    return sums[0].float(), sums[1].long(), int(sums[2].item())


def checkpoint(
    p: Progress,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    augment: torch.Generator,
    device: torch.device,
    world_size: int,
    group: Any,
) -> dict[str, Any]:
    """The run's whole state, for rank 0 to save; distributed, each rank's own part gathered."""
    progress = {f.name: getattr(p, f.name) for f in fields(p)}
    state = {**progress, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
    own: dict[str, Any] = {"torch": torch.get_rng_state()}  # model init, dropout
    if device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(device)
    if world_size == 1:
        # shuffling and augmentation
        return {
            **state,
            "rng": {**own, "generator": generator.get_state()},
        }
    assert p.loss_sum is not None and p.correct is not None
    own.update(
        augment=augment.get_state(), loss_sum=p.loss_sum.cpu(), correct=p.correct.cpu(), seen=p.seen
    )
    ranks: list[Any] = [None] * world_size
    dist.all_gather_object(ranks, own, group=group)
    # The epoch so far over all ranks, for a resume with another number of ranks; the same
    # number resumes each rank's own sums, exactly.
    state.update({k: sum(r[k] for r in ranks) for k in ("loss_sum", "correct", "seen")})
    # shuffling: one for all
    return {
        **state,
        "rng": {"generator": generator.get_state()},
        "ranks": ranks,
    }


def resume(
    saved: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    augment: torch.Generator,
    device: torch.device,
    rank: int,
    world_size: int,
) -> Progress:
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])  # moves its state to the parameters' device
    p = Progress(**{f.name: saved[f.name] for f in fields(Progress)})
    generator.set_state(saved["rng"]["generator"])
    ranks = saved.get("ranks") or []
    if world_size == 1:
        own = saved["rng"]  # without "torch" when the run was distributed before
    elif len(ranks) == world_size:
        own = ranks[rank]
        augment.set_state(own["augment"])
        p.loss_sum, p.correct, p.seen = own["loss_sum"], own["correct"], own["seen"]
    else:
        log.warning(
            "the checkpoint was saved by %d rank(s), this run has"
            " %d: dropout and augmentation go on from fresh seeds",
            len(ranks) or 1,
            world_size,
        )
        own = {}
        # the epoch's sums so far are all ranks': rank 0 carries them
        if rank > 0 and p.order is not None:
            assert p.loss_sum is not None and p.correct is not None  # drawn with the order
            p.loss_sum, p.correct, p.seen = (
                torch.zeros_like(p.loss_sum),
                torch.zeros_like(p.correct),
                0,
            )
    if "torch" in own:
        torch.set_rng_state(own["torch"])
    if device.type == "cuda" and "cuda" in own:
        torch.cuda.set_rng_state(own["cuda"], device)
    for name in ("order", "loss_sum", "correct"):  # loaded on the CPU
        if getattr(p, name) is not None:
            setattr(p, name, getattr(p, name).to(device))
    return p


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Training:
    """What the phases of a run share, set up once: the model (and what the step calls), the
    optimizer and losses, the generators, where it runs and as which rank."""

    model: nn.Module  # checkpointed and evaluated
    net: nn.Module  # what the training step calls: in DDP, compiled (for_training)
    optimizer: torch.optim.Optimizer
    criterion: LossFn  # the mean loss, for evaluation
    loss_of: StepLoss  # this rank's share of a global batch's loss, for training
    num_classes: int
    generator: torch.Generator  # shuffling (and augmentation in one process)
    augment: torch.Generator  # augmentation
    device: torch.device
    fast: FastPath
    rank: int
    world: int
    group: Any  # for the CPU-side collectives (process_group)

    def save(self, ctx: RunContext, p: Progress) -> None:
        ctx.save_checkpoint(
            checkpoint(
                p,
                self.model,
                self.optimizer,
                self.generator,
                self.augment,
                self.device,
                self.world,
                self.group,
            )
        )


def seeded_generators(seed: int, rank: int, world: int) -> tuple[torch.Generator, torch.Generator]:
    """Seeds everything random; returns the shuffling and the augmentation generators.

    Model init and dropout: the global RNG. Shuffling: one CPU generator (the same order on CPU
    and GPU, and on every rank). Augmentation: that same generator in one process; distributed,
    a generator per rank, so the ranks' shares differ."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    augment = torch.Generator().manual_seed(rank_seed(seed, rank)) if world > 1 else generator
    return generator, augment


def build_training(
    cfg: DictConfig,
    splits: Splits,
    generator: torch.Generator,
    augment: torch.Generator,
    device: torch.device,
    fast: FastPath,
    ctx: RunContext,
    group: Any,
) -> Training:
    """The model on the device, what the step calls, the optimizer and the losses."""
    world, num_classes = ctx.world_size, splits.num_classes
    model = build_model(cfg.model, splits.channels, splits.image_size, num_classes)
    # Module.to takes memory_format (as Tensor.to does); its typed overloads leave it out.
    model = model.to(device, memory_format=fast.memory_format)  # type: ignore[call-overload]
    if world > 1:  # DDP gives every rank rank 0's initial weights; dropout differs per rank
        torch.manual_seed(rank_seed(cfg.seed, ctx.rank))
    return Training(
        model=model,
        net=for_training(model, device, fast, world),
        optimizer=build_optimizer(model.parameters(), cfg.optimizer),
        criterion=loss_fn(num_classes),
        loss_of=step_loss(num_classes, world),
        num_classes=num_classes,
        generator=generator,
        augment=augment,
        device=device,
        fast=fast,
        rank=ctx.rank,
        world=world,
        group=group,
    )


def train_epoch(
    t: Training,
    p: Progress,
    train: Split | Streamed,
    epoch: int,
    steps: int,
    started: float,
    cfg: DictConfig,
    ctx: RunContext,
) -> tuple[float, float]:
    """The steps of the epoch under way, from p.step on; its mean loss and accuracy over all
    ranks. ``started``: when the epoch began, by time.perf_counter(), less its time before a stop.

    Asked to stop (the scheduler's warning: time limit, preemption), it saves a checkpoint
    between two steps and raises RunInterrupted."""
    batch_size = cfg.trainer.batch_size
    assert p.order is not None and p.loss_sum is not None and p.correct is not None
    t.net.train()
    # Closed on the way out, a stop's RunInterrupted included: a streamed split's prefetch
    # thread ends then, not whenever the traceback that holds this frame is dropped.
    loader = batches(train, p.order, batch_size, range(p.step, steps), t.rank, t.world)
    with contextlib.closing(loader):
        for step in range(p.step, steps):
            if stop_agreed(ctx, t.group):
                p.epoch_seconds = time.perf_counter() - started
                t.save(ctx, p)
                raise RunInterrupted(f"stopped in epoch {epoch} after step {step} of {steps}")
            # the global batch
            batch = p.order[step * batch_size : (step + 1) * batch_size]
            idx = batch[t.rank :: t.world]  # this rank's share
            xb, yb = next(loader)  # train.x[idx], train.y[idx]
            xb = to_float(xb)
            xb = random_affine(xb, cfg.data.augment, t.augment)
            loss, logits = train_step(
                t.net, t.optimizer, t.loss_of, xb, yb, len(batch), t.device, t.fast.precision
            )
            # Sums stay on the device: one host sync per epoch, not per step.
            p.loss_sum += loss * len(batch) / t.world  # this rank's share of the batch's loss sum
            p.correct += (predict(logits, t.num_classes) == yb).sum()
            p.seen += len(idx)
            p.step = step + 1
    loss_sum, correct, seen = epoch_totals(p, t.world)
    train_loss = (loss_sum / seen).item()  # syncs: the epoch's steps are done
    p.step_seconds += time.perf_counter() - started
    p.images_trained += seen
    if not math.isfinite(train_loss):
        raise FloatingPointError(
            f"training diverged at epoch {epoch} (loss={train_loss}): lower optimizer.lr"
            f" (now {cfg.optimizer.lr:g})"
        )
    return train_loss, correct.item() / seen


def validate(
    t: Training, p: Progress, val: Split | Streamed, epoch: int, batch_size: int
) -> tuple[float, float]:
    """The epoch's weights scored on the validation set: its loss and accuracy; kept in p as the
    best so far when they are. Every rank scores the same images: the same weights, the same
    figures."""
    val_loss, val_pred, val_true = evaluate(
        t.model, val, t.criterion, t.num_classes, batch_size, t.fast.precision
    )
    val_accuracy = (val_pred == val_true).sum().item() / len(val_true)
    if val_accuracy > p.best_val_accuracy:  # strict: ties keep the earlier epoch
        p.best_val_accuracy, p.best_epoch = val_accuracy, epoch
        p.best_state = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
    return val_loss, val_accuracy


def score_on_test(
    t: Training, p: Progress, test: Split | Streamed, batch_size: int
) -> dict[str, Any]:
    """The best-validation weights scored on the test split (all of it): test_loss, test_<score>."""
    assert p.best_state is not None  # epochs >= 1
    t.model.load_state_dict(p.best_state)
    test_loss, test_pred, test_true = evaluate(
        t.model, test, t.criterion, t.num_classes, batch_size, t.fast.precision
    )
    scores = classification_metrics(test_pred, test_true, t.num_classes)
    return {**{f"test_{k}": v for k, v in scores.items()}, "test_loss": test_loss}


def train_and_evaluate(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """Train the CNN that ``cfg`` describes and score it; the metrics, as plain Python values.

    One rank of ``ctx.world_size``; resumes from the checkpoint an earlier attempt of the run
    saved, if any; logs each epoch's row through ``ctx.log_epoch`` and saves a checkpoint
    after it. Raises RunInterrupted (checkpoint saved) when ``ctx.should_stop()`` turns true,
    FloatingPointError when the training loss diverges, ConfigError for a setting this
    machine cannot honour."""
    tr = cfg.trainer
    world, rank = ctx.world_size, ctx.rank
    generator, augment = seeded_generators(cfg.seed, rank, world)
    device = pick_device(tr.device, ctx.local_rank if world > 1 else None)
    fast = choose_fast_path(tr.precision, tr.compile, device)
    # An explicit trainer.num_threads wins over the launcher's share of the cores.
    with (
        torch_settings(device, tr.num_threads or ctx.num_threads),
        process_group(ctx, device) as cpu_group,
    ):
        # Data: loaded once, moved to the device once; batches are index slices of it (or,
        # streamed, read from the cache file a few batches ahead: data.batches).
        loaded = load(cfg.data, cfg.data.split_seed, decode_workers(tr.num_workers), ctx)
        splits = loaded.splits
        train = splits.train.to(device, fast.channels_last)
        val = validation_set(
            splits.validation, tr.val_steps, tr.batch_size, cfg.data.split_seed
        ).to(device, fast.channels_last)
        test = (
            val
            if splits.test is splits.validation and len(val) == len(splits.validation)
            else splits.test.to(device, fast.channels_last)
        )

        # Model, optimizer, losses.
        t = build_training(cfg, splits, generator, augment, device, fast, ctx, cpu_group)
        num_parameters = sum(p.numel() for p in t.model.parameters())
        log.info(
            "training %d parameters on %s%s: %d epochs of batch %d, %s, lr %g; %s%s%s",
            num_parameters, describe_device(device),
            f" (rank {rank} of {world})" if world > 1 else "",
            tr.epochs, tr.batch_size, cfg.optimizer.name, cfg.optimizer.lr, fast.precision,
            ", channels_last" if fast.channels_last else "", ", compiled" if fast.compiled else "",
        )  # fmt: skip

        # An earlier attempt of this run was stopped (requeued, retried): continue where it was.
        saved = ctx.load_checkpoint()
        p = (
            resume(saved, t.model, t.optimizer, generator, augment, device, rank, world)
            if saved
            else Progress()
        )
        if saved:
            log.info("resuming from the checkpoint at epoch %d, step %d", p.epoch, p.step)

        # Epochs: train, validate, log the row, then the checkpoint (a kill in between redoes
        # and relogs the epoch).
        steps = num_batches(len(train), tr.batch_size, tr.steps_per_epoch)
        for epoch in range(p.epoch, tr.epochs + 1):
            if p.order is None:  # a new epoch; one resumed mid-way keeps its order and sums
                p.new_epoch(torch.randperm(len(train), generator=generator).to(device))
            started = time.perf_counter() - p.epoch_seconds
            train_loss, train_accuracy = train_epoch(t, p, train, epoch, steps, started, cfg, ctx)
            val_loss, val_accuracy = validate(t, p, val, epoch, tr.batch_size)
            seconds = time.perf_counter() - started
            p.train_seconds += seconds
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "seconds": seconds,
            }
            log.info(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                )
            )
            ctx.log_epoch(row)
            p.epoch, p.step, p.order = epoch + 1, 0, None
            t.save(ctx, p)

        # Test: the best-validation weights.
        results = score_on_test(t, p, test, tr.batch_size)

    results.update(
        best_val_accuracy=p.best_val_accuracy,
        best_epoch=p.best_epoch,
        epochs_completed=tr.epochs,
        train_seconds=p.train_seconds,
        train_images_per_second=p.images_trained / p.step_seconds if p.step_seconds > 0 else 0.0,
        device=describe_device(device),
        world_size=world,
        precision=fast.precision,
        precision_reason=fast.precision_reason,
        channels_last=fast.channels_last,
        compiled=fast.compiled,
        num_parameters=num_parameters,
        num_classes=t.num_classes,
        data_cache=loaded.cache,
        data_load_seconds=loaded.seconds,
        data_streamed=splits.streamed,
        data_memory_budget_gb=round(loaded.budget / 1e9, 3),
        train_images=len(splits.train),
        val_images=len(splits.validation),
        test_images=len(splits.test),
    )
    log.info(
        "test_accuracy=%.4f test_f1=%.4f best_epoch=%d",
        results["test_accuracy"],
        results["test_f1"],
        p.best_epoch,
    )
    return results
