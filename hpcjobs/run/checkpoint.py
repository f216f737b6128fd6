"""A run's checkpoint file: saved atomically, loaded safely.

A workload's state is a dict of tensors, numbers, strings, and lists, tuples and dicts
of those (model and optimizer ``state_dict()``, RNG states as tensors). It is written
with ``torch.save`` into a temporary file beside the checkpoint, fsynced, then renamed
onto it, so a process killed mid-write (``kill -9``, a node failure, Slurm's kill) leaves
the previous checkpoint whole. It is read with ``torch.load(weights_only=True)``, which
rebuilds tensors and plain containers only and never runs code from the file.

torch is imported inside the functions: the login node imports the run stage without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcjobs import atomic
from hpcjobs.errors import CheckpointError


def save(path: Path, state: Mapping[str, Any]) -> None:
    import torch

    path = Path(path)
    # Temporary files of an attempt killed mid-write: one writer per run directory, so
    # any that exist now are leftovers.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    with atomic.replacing(path) as f:
        torch.save(dict(state), f)


def load(path: Path) -> dict[str, Any] | None:
    """The saved state (tensors on the CPU), or None if there is no checkpoint."""
    import torch

    path = Path(path)
    try:
        # On the CPU: the run may resume on another node, or another GPU index.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as e:  # torch raises several kinds for a file it cannot read
        raise CheckpointError(
            f"{path}: cannot be loaded ({type(e).__name__}:"
            f" {str(e).splitlines()[0] if str(e) else ''}); a checkpoint holds tensors, numbers,"
            " strings and lists/tuples/dicts of them. Move it away to start the run afresh."
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(state).__name__}")
    return state


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()
