"""The seed CNN: [conv + ReLU + max-pool 2] per entry of model.channels, then a dense head.

Two classes get one logit and binary cross-entropy; more get one logit per class and
softmax cross-entropy (as the Keras seed did with sigmoid/softmax outputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from hpcjobs.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def num_outputs(num_classes: int) -> int:
    return 1 if num_classes == 2 else num_classes


def scaled(n: int, width: float) -> int:
    """A layer's size times model.width (one number to search instead of one per layer)."""
    return max(1, round(n * width))


def build_model(
    model_cfg: DictConfig, in_channels: int, image_size: int, num_classes: int
) -> nn.Module:
    blocks: list[nn.Module] = []
    c, size = in_channels, image_size
    width = float(model_cfg.get("width", 1.0))
    hidden = scaled(model_cfg.hidden, width)
    for out in (scaled(n, width) for n in model_cfg.channels):
        blocks += [
            nn.Conv2d(c, out, model_cfg.kernel_size, padding="same"),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        c, size = out, size // 2
    if size < 1:
        raise ConfigError(
            f"data.image_size={image_size}: {len(model_cfg.channels)} pooling blocks need images of"
            f" at least {2 ** len(model_cfg.channels)}x{2 ** len(model_cfg.channels)}"
        )
    head: list[nn.Module] = [nn.Flatten(), nn.Linear(c * size * size, hidden), nn.ReLU()]
    if model_cfg.dropout > 0:
        head.append(nn.Dropout(model_cfg.dropout))
    head.append(nn.Linear(hidden, num_outputs(num_classes)))
    return nn.Sequential(nn.Sequential(*blocks), nn.Sequential(*head))


def loss_fn(num_classes: int, reduction: str = "mean") -> LossFn:
    """Loss of a batch (its mean, or with reduction="sum" its sum): BCE-with-logits for 2
    classes, cross-entropy otherwise."""
    # Computed in float32 even when the forward pass ran under bf16 autocast.
    if num_classes == 2:
        return lambda logits, y: F.binary_cross_entropy_with_logits(
            logits.float().squeeze(1), y.float(), reduction=reduction
        )
    return lambda logits, y: F.cross_entropy(logits.float(), y, reduction=reduction)


def predict(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices [N] from logits [N, 1] (binary: logit > 0 is class 1) or [N, K]."""
    if num_classes == 2:
        return (logits.squeeze(1) > 0).long()
    return logits.argmax(dim=1)
