"""Shared fixtures: the real composed run config, and a small image-folder tree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from hpcjobs.config import schema

CONF_DIR = Path(__file__).resolve().parents[1] / "hpcjobs" / "conf"


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
