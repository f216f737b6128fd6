"""Train the seed CNN on one configuration and score it on the test split.

Reads top to bottom: seed -> device -> data (moved to the device once) -> model and
optimizer -> resume from a checkpoint, if an earlier attempt left one -> epochs of
shuffled, augmented batches with a validation pass and a checkpoint each -> the
best-validation weights scored on the test split. Between steps it stops (saving first)
when the scheduler asks. Returns plain Python values only, so the job can write them
straight to metrics.json.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from hpcjobs.run.context import RunContext, RunInterrupted
from hpcjobs.errors import ConfigError, choices_hint
from hpcjobs.workloads.cnn.augment import random_affine
from hpcjobs.workloads.cnn.config import OPTIMIZERS, momentum_of
from hpcjobs.workloads.cnn.data import Split, load_splits, to_float
from hpcjobs.workloads.cnn.metrics import classification_metrics
from hpcjobs.workloads.cnn.model import LossFn, build_model, loss_fn, predict

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
            raise RuntimeError(f"trainer.device=cuda but no CUDA device is visible (CUDA_VISIBLE_DEVICES={visible})")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index} {torch.cuda.get_device_name(device)}"
    return device.type


@contextlib.contextmanager
def torch_settings(device: torch.device, num_threads: int | None) -> Iterator[None]:
    """Process-wide torch settings for one run, restored afterwards (tests and in-process
    sweeps run several trainings in one interpreter)."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads(), torch.backends.cudnn.benchmark)
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)  # same config + seed -> same metrics
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


def build_optimizer(params: Any, opt: DictConfig) -> torch.optim.Optimizer:
    if opt.name in ("sgd", "momentum"):
        return torch.optim.SGD(
            params, lr=opt.lr, momentum=momentum_of(opt), nesterov=opt.nesterov, weight_decay=opt.weight_decay
        )
    betas = (opt.beta1, opt.beta2)
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=opt.lr, betas=betas, weight_decay=opt.weight_decay)
    if opt.name == "adamw":
        return torch.optim.AdamW(params, lr=opt.lr, betas=betas, weight_decay=opt.weight_decay)
    raise ConfigError(f"optimizer.name={opt.name}: {choices_hint(OPTIMIZERS)}")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def num_batches(n: int, batch_size: int, cap: int | None) -> int:
    full = math.ceil(n / batch_size)
    return min(full, cap) if cap else full


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    criterion: LossFn,
    num_classes: int,
    batch_size: int,
    precision: str,
    max_batches: int | None = None,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Mean loss, predictions and targets over the split's first max_batches batches."""
    model.eval()
    device = split.x.device
    steps = num_batches(len(split), batch_size, max_batches)
    loss_sum = torch.zeros((), device=device)
    preds = []
    for step in range(steps):
        xb = to_float(split.x[step * batch_size : (step + 1) * batch_size])
        yb = split.y[step * batch_size : (step + 1) * batch_size]
        with autocast(device, precision):
            logits = model(xb)
        loss_sum += criterion(logits, yb) * len(yb)
        preds.append(predict(logits, num_classes))
    pred = torch.cat(preds)
    return (loss_sum / len(pred)).item(), pred, split.y[: len(pred)]


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
    loss_sum: torch.Tensor | None = None  # its running sums, on the device (one host sync per epoch)
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


def checkpoint(p: Progress, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
               device: torch.device) -> dict[str, Any]:
    rng = {"torch": torch.get_rng_state(), "generator": generator.get_state()}  # dropout; shuffling, augmentation
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    progress = {f.name: getattr(p, f.name) for f in fields(p)}
    return {**progress, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng}


def resume(saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
           device: torch.device) -> Progress:
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])  # moves its state to the parameters' device
    torch.set_rng_state(saved["rng"]["torch"])
    generator.set_state(saved["rng"]["generator"])
    if device.type == "cuda" and "cuda" in saved["rng"]:
        torch.cuda.set_rng_state(saved["rng"]["cuda"], device)
    p = Progress(**{f.name: saved[f.name] for f in fields(Progress)})
    for name in ("order", "loss_sum", "correct"):  # loaded on the CPU
        if getattr(p, name) is not None:
            setattr(p, name, getattr(p, name).to(device))
    return p


# --------------------------------------------------------------------------- training


def train_and_evaluate(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    tr = cfg.trainer

    # Seed everything random: model init and dropout (global RNG); shuffling and
    # augmentation (one CPU generator, so they match on CPU and GPU).
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)

    device = pick_device(tr.device)
    # An explicit trainer.num_threads wins over the launcher's share of the cores.
    with torch_settings(device, tr.num_threads or ctx.num_threads):
        # Data: loaded once, moved to the device once; batches are index slices of it.
        splits = load_splits(cfg.data, cfg.data.split_seed, tr.num_workers)
        train, val = splits.train.to(device), splits.validation.to(device)
        test = val if splits.test is splits.validation else splits.test.to(device)
        num_classes = splits.num_classes

        model = build_model(cfg.model, splits.channels, splits.image_size, num_classes).to(device)
        optimizer = build_optimizer(model.parameters(), cfg.optimizer)
        criterion = loss_fn(num_classes)
        num_parameters = sum(p.numel() for p in model.parameters())
        log.info(
            "training %d parameters on %s: %d epochs of batch %d, %s, lr %g",
            num_parameters, describe_device(device), tr.epochs, tr.batch_size, cfg.optimizer.name, cfg.optimizer.lr,
        )  # fmt: skip

        steps = num_batches(len(train), tr.batch_size, tr.steps_per_epoch)
        # An earlier attempt of this run was stopped (requeued, retried): continue where it was.
        saved = ctx.load_checkpoint()
        p = resume(saved, model, optimizer, generator, device) if saved else Progress()
        if saved:
            log.info("resuming from the checkpoint at epoch %d, step %d", p.epoch, p.step)
        for epoch in range(p.epoch, tr.epochs + 1):
            if p.order is None:  # a new epoch; one resumed mid-way keeps its order and sums
                p.new_epoch(torch.randperm(len(train), generator=generator).to(device))
            t0 = time.perf_counter() - p.epoch_seconds
            model.train()
            for step in range(p.step, steps):
                if ctx.should_stop():  # the scheduler's warning (time limit, preemption): save and go
                    p.epoch_seconds = time.perf_counter() - t0
                    ctx.save_checkpoint(checkpoint(p, model, optimizer, generator, device))
                    raise RunInterrupted(f"stopped in epoch {epoch} after step {step} of {steps}")
                idx = p.order[step * tr.batch_size : (step + 1) * tr.batch_size]
                xb, yb = to_float(train.x[idx]), train.y[idx]
                xb = random_affine(xb, cfg.data.augment, generator)
                with autocast(device, tr.precision):
                    logits = model(xb)
                loss = criterion(logits, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                # Sums stay on the device: one host sync per epoch, not per step.
                p.loss_sum += loss.detach() * len(idx)
                p.correct += (predict(logits.detach(), num_classes) == yb).sum()
                p.seen += len(idx)
                p.step = step + 1
            train_loss = (p.loss_sum / p.seen).item()  # syncs: the epoch's steps are done
            train_accuracy = p.correct.item() / p.seen
            p.step_seconds += time.perf_counter() - t0
            p.images_trained += p.seen
            if not math.isfinite(train_loss):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch} (loss={train_loss}): lower optimizer.lr"
                    f" (now {cfg.optimizer.lr:g})"
                )

            val_loss, val_pred, val_true = evaluate(
                model, val, criterion, num_classes, tr.batch_size, tr.precision, tr.val_steps
            )
            val_accuracy = (val_pred == val_true).sum().item() / len(val_true)
            if val_accuracy > p.best_val_accuracy:  # strict: ties keep the earlier epoch
                p.best_val_accuracy, p.best_epoch = val_accuracy, epoch
                p.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            seconds = time.perf_counter() - t0
            p.train_seconds += seconds
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "seconds": seconds,
            }
            log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            ctx.log_epoch(row)  # then the checkpoint: a kill in between redoes (and relogs) this epoch
            p.epoch, p.step, p.order = epoch + 1, 0, None
            ctx.save_checkpoint(checkpoint(p, model, optimizer, generator, device))

        # Score the best-validation weights on the test split (all of it).
        assert p.best_state is not None  # epochs >= 1
        model.load_state_dict(p.best_state)
        test_loss, test_pred, test_true = evaluate(model, test, criterion, num_classes, tr.batch_size, tr.precision)
        scores = classification_metrics(test_pred, test_true, num_classes)

    results: dict[str, Any] = {f"test_{k}": v for k, v in scores.items()}
    results.update(
        test_loss=test_loss,
        best_val_accuracy=p.best_val_accuracy,
        best_epoch=p.best_epoch,
        epochs_completed=tr.epochs,
        train_seconds=p.train_seconds,
        train_images_per_second=p.images_trained / p.step_seconds if p.step_seconds > 0 else 0.0,
        device=describe_device(device),
        num_parameters=num_parameters,
        num_classes=num_classes,
        train_images=len(splits.train),
        val_images=len(splits.validation),
        test_images=len(splits.test),
    )
    log.info("test_accuracy=%.4f test_f1=%.4f best_epoch=%d", results["test_accuracy"], results["test_f1"],
             p.best_epoch)
    return results
