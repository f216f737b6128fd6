"""Random affine augmentation of a whole batch, on the device the batch lives on.

Keras ImageDataGenerator's knobs (rotation, shift, shear, zoom, horizontal flip), but
drawn per sample and composed into one 2x3 matrix each, so a batch costs a single
affine_grid + grid_sample instead of a Python loop over images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig


def is_identity(aug: DictConfig) -> bool:
    return not (aug.rotation or aug.shift or aug.shear or aug.zoom or aug.hflip)


def random_affine(
    x: torch.Tensor, aug: DictConfig, generator: torch.Generator, padding_mode: str = "border"
) -> torch.Tensor:
    """x [N, C, H, W] float, randomly rotated/shifted/sheared/zoomed/flipped per sample.

    Pixels moved in from outside the image repeat the nearest edge pixel ("border",
    Keras' fill_mode="nearest"); pass padding_mode="zeros" for black.

    Deterministic given ``generator``'s state. The parameters are drawn on the
    generator's device (6 numbers per sample) and then moved to x's device, so a CPU
    generator gives the same augmentation whether x is on the CPU or a GPU.
    """
    if is_identity(aug):
        return x  # nothing to do: skip the resampling (and its slight blur) entirely
    n = x.shape[0]
    u = torch.rand((n, 6), generator=generator, device=generator.device).to(x.device, x.dtype)
    sym = 2 * u[:, :5] - 1  # uniform in [-1, 1)
    angle = sym[:, 0] * math.radians(aug.rotation)
    shear = sym[:, 1] * math.radians(aug.shear)
    scale = 1 + sym[:, 2] * aug.zoom  # zoom < 1 (schema), so scale > 0
    # affine_grid's coordinates run from -1 to 1 across the image: a shift of f x size is 2f.
    tx, ty = sym[:, 3] * 2 * aug.shift, sym[:, 4] * 2 * aug.shift
    flip = (
        torch.where(u[:, 5] < 0.5, -1.0, 1.0).to(x.dtype) if aug.hflip else torch.ones_like(scale)
    )

    # Forward map M = rotate @ shear @ zoom @ flip (2x2), then shift by t.
    cos, sin, tan = angle.cos(), angle.sin(), shear.tan()
    a, b = cos * scale * flip, (cos * tan - sin) * scale
    c, d = sin * scale * flip, (sin * tan + cos) * scale
    # grid_sample asks, for each output pixel, where to read the input: the inverse map
    # x_in = M^-1 (x_out - t). det(M) = flip * scale^2, never 0.
    det = a * d - b * c
    inv = torch.stack([d, -b, -c, a], dim=1).view(n, 2, 2) / det.view(n, 1, 1)
    t = torch.stack([tx, ty], dim=1).unsqueeze(2)
    theta = torch.cat([inv, -inv @ t], dim=2)  # [N, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
