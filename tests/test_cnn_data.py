"""Data sources, image-folder scanning and the torch-free preflight."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import hpcjobs
from hpcjobs.errors import DataError
from hpcjobs.workloads.cnn import data, preflight
from hpcjobs.workloads.cnn.data import load_splits, to_float
from hpcjobs.workloads.cnn.imagefolder import scan

CONF_DIR = Path(hpcjobs.__file__).resolve().parent / "conf"


def _load(cfg):
    return load_splits(cfg.data, cfg.data.split_seed, cfg.trainer.num_workers)


def _check_split_shapes(splits, channels, size, num_classes):
    for split in (splits.train, splits.validation, splits.test):
        assert split.x.ndim == 4 and split.x.shape[1:] == (channels, size, size)
        assert split.y.dtype == torch.int64 and split.y.shape == (split.x.shape[0],)
        x = to_float(split.x)
        assert x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) <= 1
        assert int(split.y.min()) >= 0 and int(split.y.max()) < num_classes
    assert splits.num_classes == num_classes == len(splits.classes)


# --------------------------------------------------------------------------- sources


def test_digits_splits(compose_run):
    splits = _load(compose_run("data=digits"))
    _check_split_shapes(splits, channels=1, size=8, num_classes=10)
    sizes = [len(splits.train), len(splits.validation), len(splits.test)]
    assert sum(sizes) == 1797 and sizes[1] == sizes[2] == round(1797 * 0.15)
    assert float(splits.train.x.max()) == 1.0  # 16/16
    # Stratified: every class in every split, in about the same proportion.
    for split in (splits.validation, splits.test):
        assert torch.bincount(split.y, minlength=10).min() >= 25
    # The split is fixed by data.split_seed, not the run's seed.
    data.clear_cache()
    same = _load(compose_run("data=digits", "seed=5"))
    assert torch.equal(same.test.y, splits.test.y) and torch.equal(same.test.x, splits.test.x)
    other = _load(compose_run("data=digits", "data.split_seed=1"))
    assert not torch.equal(other.test.x, splits.test.x)


def test_digits_resized(compose_run):
    splits = _load(compose_run("data=digits", "data.image_size=16"))
    _check_split_shapes(splits, channels=1, size=16, num_classes=10)


def test_synthetic_splits(compose_run):
    cfg = compose_run(
        "data=synthetic", "data.num_samples=200", "data.num_classes=4", "data.image_size=8"
    )
    splits = _load(cfg)
    _check_split_shapes(splits, channels=3, size=8, num_classes=4)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 200
    data.clear_cache()  # really load it again
    assert torch.equal(_load(cfg).train.x, splits.train.x)  # seeded by split_seed


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("with_test", [True, False])
def test_imagefolder_splits(compose_run, make_image_folder, num_classes, with_test):
    root = make_image_folder(num_classes=num_classes, with_test=with_test)
    cfg = compose_run(
        "data=imagefolder", f"data.root={root}", "data.image_size=8", "trainer.num_workers=2"
    )
    splits = _load(cfg)
    _check_split_shapes(splits, channels=3, size=8, num_classes=num_classes)
    assert splits.classes == [f"class_{c}" for c in "abc"[:num_classes]]
    assert len(splits.train) == len(splits.validation) == len(splits.test) == 12 * num_classes
    assert splits.train.x.dtype == torch.uint8
    if not with_test:
        assert splits.test is splits.validation
    # Grayscale, decoded in the main thread: same images, one channel.
    gray = _load(
        compose_run("data=imagefolder", f"data.root={root}", "data.image_size=8", "data.channels=1")
    )
    _check_split_shapes(gray, channels=1, size=8, num_classes=num_classes)
    assert torch.equal(gray.train.y, splits.train.y)


# --------------------------------------------------------------------------- scan errors


def _scan_error(root: Path) -> str:
    with pytest.raises(DataError) as info:
        scan(root)
    return str(info.value)


def test_scan_ok_and_test_optional(make_image_folder, caplog):
    index = scan(make_image_folder(num_classes=3))
    assert index.classes == ["class_a", "class_b", "class_c"] and not index.test_is_validation
    assert {len(v) for v in index.splits.values()} == {36}
    assert all(os.path.splitext(p)[1].lower() in (".png", ".jpg") for p, _ in index.splits["train"])
    no_test = scan(make_image_folder(num_classes=2, with_test=False))
    assert no_test.test_is_validation and no_test.splits["test"] == no_test.splits["validation"]
    assert "no test/ folder" in caplog.text


def test_scan_missing_root(tmp_path):
    msg = _scan_error(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in msg and "no such directory" in msg
    (tmp_path / "file").write_text("x")
    assert "not a directory" in _scan_error(tmp_path / "file")


def test_scan_no_train(tmp_path):
    msg = _scan_error(tmp_path)
    assert msg == f"data.root={tmp_path}: no train/ folder; expected {tmp_path}/train/<class>/*.png"


def test_scan_no_validation(make_image_folder):
    root = make_image_folder(with_test=False)
    (root / "validation").rename(root / "val")
    msg = _scan_error(root)
    assert "no validation/ folder" in msg and str(root) in msg and "rename it to validation/" in msg


def test_scan_no_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "validation").mkdir()
    (tmp_path / "train" / "a.png").write_bytes(b"")
    msg = _scan_error(tmp_path)
    assert f"{tmp_path / 'train'} has no class folders" in msg and "one subfolder per class" in msg


def test_scan_single_class(make_image_folder):
    root = make_image_folder(num_classes=2, with_test=False)
    for split in ("train", "validation"):
        for f in (root / split / "class_b").iterdir():
            f.unlink()
        (root / split / "class_b").rmdir()
    msg = _scan_error(root)
    assert "only 1 class folder (class_a)" in msg and "at least 2" in msg


def test_scan_empty_class_folder(make_image_folder):
    root = make_image_folder(num_classes=2)
    (root / "validation" / "class_c").mkdir()
    (root / "train" / "class_c").mkdir()
    (root / "train" / "class_c" / "notes.txt").write_text("not an image")
    msg = _scan_error(root)
    assert str(root / "train" / "class_c") in msg and str(root / "validation" / "class_c") in msg
    assert "empty class folder" in msg


def test_scan_class_not_in_train(make_image_folder):
    root = make_image_folder(num_classes=2)
    (root / "test" / "class_b").rename(root / "test" / "class_z")
    msg = _scan_error(root)
    assert str(root / "test" / "class_z") in msg and "not in" in msg and "class_a, class_b" in msg


# --------------------------------------------------------------------------- preflight


def test_preflight(compose_run, make_image_folder, tmp_path):
    good = compose_run("data=imagefolder", f"data.root={make_image_folder()}")
    assert preflight(good) == []
    bad = compose_run("data=imagefolder", f"data.root={tmp_path / 'missing'}", "data.channels=2")
    errors = preflight(bad)
    assert len(errors) == 2 and any(str(tmp_path / "missing") in e for e in errors)
    assert preflight(compose_run()) == []
    grayscale = "data.channels=3: digits images are grayscale; set data.channels=1"
    assert preflight(compose_run("data.channels=3")) == [grayscale]


def test_preflight_is_torch_free(make_image_folder):
    # The login node imports the workload package only to run preflight: keep torch out.
    code = f"""
import sys
from hydra import compose, initialize_config_dir
import hpcjobs.config.schema
import hpcjobs.workloads.cnn as cnn
with initialize_config_dir(config_dir="{CONF_DIR}", version_base="1.3"):
    cfg = compose("config", overrides=["data=imagefolder", "data.root={make_image_folder()}"])
typed = hpcjobs.config.schema.validate(cfg)  # what the login node runs: schema, ranges, preflight
assert cnn.preflight(typed) == [], cnn.preflight(typed)
assert "torch" not in sys.modules, "validation imported torch"
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CONF_DIR.parents[1])


# -------------------------------------------------------------------------- loaded once per process


def test_the_same_data_config_is_loaded_once(compose_run, monkeypatch, empty_data_cache):
    loads = []
    real_load = data._load
    monkeypatch.setattr(data, "_load", lambda *a: loads.append(a[0].name) or real_load(*a))
    first = _load(compose_run("data=digits"))
    # Another run of the same data (another seed, optimizer, augmentation, thread count): no reload.
    again = _load(compose_run("data=digits", "seed=3", "optimizer=sgd", "data.augment.rotation=30",
                              "trainer.num_workers=2"))  # fmt: skip
    assert again is first and loads == ["digits"]
    # Different data, or another split of it: loaded.
    other = _load(compose_run("data=digits", "data.split_seed=1"))
    assert other is not first and not torch.equal(other.test.x, first.test.x)
    assert _load(compose_run("data=digits", "data.image_size=16")).image_size == 16
    assert loads == ["digits"] * 3
    # Bounded: the oldest entries go first.
    assert len(data._cache) == data.CACHE_SIZE
    assert _load(compose_run("data=digits")) is not first and loads == ["digits"] * 4


def test_training_leaves_the_shared_data_untouched(compose_run, tmp_path, empty_data_cache):
    from hpcjobs.run.context import RunContext
    from hpcjobs.workloads.cnn.train import train_and_evaluate

    for overrides in (
        ("data=digits",),
        ("data=synthetic", "data.num_samples=120", "data.image_size=8"),
    ):
        cfg = compose_run(*overrides, "trainer.device=cpu", "trainer.epochs=1",
                          "trainer.batch_size=16", "model.channels=[4]", "model.hidden=8",
                          "data.augment.rotation=10")  # fmt: skip
        splits = _load(cfg)
        before = {
            name: (s.x.clone(), s.y.clone())
            for name, s in vars(splits).items()
            if name != "classes"
        }
        for precision in ("fp32", "bf16"):  # bf16: channels_last copies of the splits
            train_and_evaluate(
                OmegaConf.merge(cfg, {"trainer": {"precision": precision}}),
                RunContext(run_dir=tmp_path / f"{overrides[0]}_{precision}", num_threads=1),
            )
        assert _load(cfg) is splits  # the run reused it
        for name, (x, y) in before.items():
            split = getattr(splits, name)
            assert torch.equal(split.x, x) and torch.equal(split.y, y), name
