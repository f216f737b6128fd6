"""Shared fixtures: the real composed run config, a small image-folder tree, and the
one-process reference that a distributed run must reproduce.

Outcomes must not depend on the machine. ``trainer.precision=auto`` follows the hardware
(bf16 where the CPU has AVX512-BF16/AMX): a test that needs one precision sets it, and the
whole suite is green under ``HPCJOBS_AUTO_PRECISION=fp32`` and ``=bf16`` alike (.ci/run
runs the training tests under the precision this machine would not pick).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from hpcjobs.config import schema

CONF_DIR = Path(__file__).resolve().parents[1] / "hpcjobs" / "conf"


def pytest_report_header(config: pytest.Config) -> str:
    import torch

    from hpcjobs.workloads.cnn.train import resolve_precision

    precision, reason = resolve_precision("auto", torch.device("cpu"))
    return f"hpcjobs: trainer.precision=auto trains in {precision} on this CPU ({reason})"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory, and a sweep registry of its own (for 'the latest sweep')."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPCJOBS_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


@pytest.fixture
def compose_run() -> Callable[..., DictConfig]:
    """compose_run("data=synthetic", "trainer.epochs=1") -> the run config a workload gets:
    composed as `python -m hpcjobs` does it, typed by the workload's schema."""

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return schema.typed(compose("config", overrides=list(overrides)))

    return _compose


@pytest.fixture
def empty_data_cache() -> Iterator[None]:
    """The loaded-data cache of this process (data.load_splits) empty before and after the test:
    every load in it reaches the source (an image folder: the decoded-image cache)."""
    from hpcjobs.workloads.cnn import data

    data.clear_cache()
    yield
    data.clear_cache()


def _pattern(class_index: int, size: int, rng: np.random.Generator) -> np.ndarray:
    # Class 0: bright left half; 1: bright top half; 2: bright centre square; all with noise.
    img = rng.uniform(0, 60, (size, size, 3))
    half, quarter = size // 2, size // 4
    region = [np.s_[:, :half], np.s_[:half, :], np.s_[quarter:-quarter, quarter:-quarter]][
        class_index % 3
    ]
    img[region] += 180
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture
def make_image_folder(tmp_path: Path) -> Callable[..., Path]:
    """make_image_folder(num_classes=2, with_test=True) -> root of train/validation[/test]/<class>/.

    The images are PNGs, every third a .JPG (extensions are matched case-insensitively).
    """
    from PIL import Image

    def _make(
        num_classes: int = 2, with_test: bool = True, per_class: int = 12, size: int = 16
    ) -> Path:
        root = tmp_path / f"images_{num_classes}{'_test' if with_test else ''}"
        rng = np.random.default_rng(0)
        for split in ("train", "validation", "test") if with_test else ("train", "validation"):
            for k in range(num_classes):
                folder = root / split / f"class_{chr(ord('a') + k)}"
                folder.mkdir(parents=True)
                for i in range(per_class):
                    name = f"{i:03d}.JPG" if i % 3 == 2 else f"{i:03d}.png"
                    Image.fromarray(_pattern(k, size, rng)).save(folder / name)
        return root

    return _make


# What DDP promises, made exact: fp32, no dropout, no augmentation. The ranks' averaged gradient
# is then the global batch's, so after k steps the weights are one process's up to float
# rounding (measured: 4e-7 after these 120 steps), whatever the CPU. Momentum SGD, not Adam:
# Adam divides by sqrt(v), which magnifies rounding in near-zero gradients.
EXACT_DDP = (
    "data=digits", "data.augment.rotation=0", "data.augment.shift=0",
    "data.augment.shear=0", "data.augment.zoom=0",
    "model.channels=[8,16]", "model.hidden=32", "model.dropout=0",
    "optimizer=momentum", "optimizer.lr=0.05",
    "trainer.precision=fp32", "trainer.device=cpu", "trainer.epochs=3", "trainer.batch_size=32",
    "trainer.num_threads=1", "seed=0",
)  # fmt: skip
WEIGHTS_ATOL = 1e-5


@dataclass(frozen=True)
class OneProcessReference:
    """EXACT_DDP trained by one process on the whole global batch: its final weights and losses."""

    overrides: tuple[str, ...]
    weights: Mapping[str, object]  # name -> tensor
    train_losses: list[float]
    metrics: Mapping[str, object]

    def assert_reproduced_by(
        self, checkpoint_file: Path, history: Sequence[Mapping[str, object]]
    ) -> None:
        """The run that saved checkpoint_file (after its last epoch) and logged history took the
        same steps: the same weights within WEIGHTS_ATOL, the same loss each epoch within 1e-5."""
        import torch

        saved = torch.load(checkpoint_file, weights_only=True)["model"]
        assert saved.keys() == self.weights.keys()
        for name, expected in self.weights.items():
            torch.testing.assert_close(
                saved[name],
                expected,
                rtol=0,
                atol=WEIGHTS_ATOL,
                msg=lambda m, name=name: f"{name}: {m}",
            )
        losses = [float(row["train_loss"]) for row in history]
        assert len(losses) == len(self.train_losses)
        assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(losses, self.train_losses)), (
            losses, self.train_losses)  # fmt: skip


@pytest.fixture(scope="session")
def one_process_reference(tmp_path_factory) -> OneProcessReference:
    import torch

    from hpcjobs.run.context import RunContext
    from hpcjobs.sweepdir import runfiles
    from hpcjobs.workloads.cnn.train import train_and_evaluate

    run_dir = tmp_path_factory.mktemp("one_process")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = schema.typed(compose("config", overrides=list(EXACT_DDP)))
    history: list[dict] = []
    metrics = train_and_evaluate(cfg, RunContext(run_dir=run_dir, log_epoch=history.append))
    weights = torch.load(run_dir / runfiles.CHECKPOINT_FILE, weights_only=True)["model"]
    return OneProcessReference(EXACT_DDP, weights, [row["train_loss"] for row in history], metrics)
