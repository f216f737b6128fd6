"""End-to-end training: determinism, learning, the binary head, bf16, device errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hpcjobs.errors import ConfigError
from hpcjobs.run.context import RunContext
from hpcjobs.workloads.cnn import run, train
from hpcjobs.workloads.cnn.config import AUTO_PRECISION_ENV
from hpcjobs.workloads.cnn.train import TIMING_METRICS, train_and_evaluate

SMALL_MODEL = ("model.channels=[8,16]", "model.hidden=32")


def _train(cfg, tmp_path: Path) -> tuple[dict, list[dict]]:
    history: list[dict] = []
    # One torch thread, as the launcher gives each of several parallel runs: two OpenMP
    # pools spinning on 2 shared cores can slow a run tenfold.
    ctx = RunContext(run_dir=tmp_path, log_epoch=history.append, num_threads=1)
    metrics = train_and_evaluate(cfg, ctx)
    return metrics, history


def _without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_METRICS}


def test_same_seed_same_metrics(compose_run, tmp_path):
    # The digits default augmentation is on: shuffling and augmentation must both be seeded.
    overrides = (
        "trainer.device=cpu",
        "trainer.epochs=2",
        "trainer.steps_per_epoch=6",
        *SMALL_MODEL,
    )
    a, history_a = _train(compose_run(*overrides), tmp_path / "a")  # each run its own directory
    b, history_b = _train(compose_run(*overrides), tmp_path / "b")
    c, _ = _train(compose_run(*overrides, "seed=1"), tmp_path / "c")
    assert _without_timing(a) == _without_timing(b)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in history_a] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in history_b
    ]
    assert _without_timing(a) != _without_timing(c)
    assert a["test_images"] == c["test_images"]  # the split does not follow the run's seed


def test_digits_learns(compose_run, tmp_path):
    cfg = compose_run(
        "trainer.device=cpu", "optimizer=adam", "optimizer.lr=0.01", "trainer.epochs=10"
    )
    metrics, history = _train(cfg, tmp_path)
    assert metrics["test_accuracy"] > 0.9, metrics
    assert [r["epoch"] for r in history] == list(range(1, 11))
    assert set(history[0]) == {
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "seconds",
    }
    assert metrics["best_val_accuracy"] == max(r["val_accuracy"] for r in history)
    assert history[metrics["best_epoch"] - 1]["val_accuracy"] == metrics["best_val_accuracy"]
    assert (metrics["train_images"], metrics["val_images"], metrics["test_images"]) == (
        1257,
        270,
        270,
    )
    assert (
        metrics["device"] == "cpu"
        and metrics["num_classes"] == 10
        and metrics["epochs_completed"] == 10
    )
    for key, value in metrics.items():  # plain Python values, ready for JSON
        assert type(value) in (int, float, str, bool), key


def test_binary_imagefolder_end_to_end(compose_run, make_image_folder, tmp_path):
    root = make_image_folder(num_classes=2, with_test=False)
    cfg = compose_run(
        "data=imagefolder", f"data.root={root}", "data.image_size=16",
        "optimizer=momentum", "optimizer.nesterov=true",
        "trainer.epochs=3", "trainer.batch_size=8", "trainer.val_steps=2",
        "model.dropout=0.25", *SMALL_MODEL,
    )  # fmt: skip
    metrics = run(cfg, RunContext(run_dir=tmp_path, num_threads=1))
    assert metrics["num_classes"] == 2 and metrics["test_images"] == 24
    for key in ("test_accuracy", "test_precision", "test_recall", "test_f1", "best_val_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert math.isfinite(metrics["test_loss"]) and metrics["num_parameters"] > 0


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_bf16_and_other_optimizers(compose_run, tmp_path, optimizer):
    cfg = compose_run(
        "data=synthetic", "data.num_samples=240", "data.image_size=8", f"optimizer={optimizer}",
        "trainer.precision=bf16", "trainer.epochs=2", *SMALL_MODEL,
    )  # fmt: skip
    threads = torch.get_num_threads()
    metrics, history = _train(cfg, tmp_path)
    assert torch.get_num_threads() == threads  # process-wide settings are restored
    assert len(history) == 2 and all(math.isfinite(r["train_loss"]) for r in history)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_synthetic_is_learnable_in_bf16(compose_run, tmp_path):
    cfg = compose_run(
        "data=synthetic", "data.num_samples=400", "data.num_classes=4", "data.image_size=8",
        "optimizer.lr=0.003",
        "trainer.precision=bf16", "trainer.epochs=4", "trainer.batch_size=16", *SMALL_MODEL,
    )  # fmt: skip
    metrics, _ = _train(cfg, tmp_path)
    assert metrics["test_accuracy"] > 0.9, metrics


def test_divergence_is_reported(compose_run, tmp_path):
    cfg = compose_run(
        "optimizer=sgd", "optimizer.lr=1e6", "trainer.epochs=3", "trainer.steps_per_epoch=3"
    )
    diverged = r"training diverged at epoch 1 \(loss=(nan|inf)\): lower optimizer.lr"
    with pytest.raises(FloatingPointError, match=diverged):
        _train(cfg, tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_gpu_is_a_clear_error(compose_run, tmp_path):
    no_gpu = r"trainer.device=cuda but no CUDA device is visible \(CUDA_VISIBLE_DEVICES="
    with pytest.raises(RuntimeError, match=no_gpu):
        _train(compose_run("trainer.device=cuda"), tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_training(compose_run, make_image_folder, tmp_path, precision):
    root = make_image_folder(num_classes=3)
    cfg = compose_run(
        "data=imagefolder", f"data.root={root}", "data.image_size=16", "trainer.device=cuda",
        f"trainer.precision={precision}", "trainer.epochs=2", "trainer.batch_size=8", *SMALL_MODEL,
    )  # fmt: skip
    metrics, history = _train(cfg, tmp_path)
    assert metrics["device"].startswith("cuda:") and len(history) == 2
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and math.isfinite(metrics["test_loss"])


# ---------------------------------------------------------------------- precision, compile, devices


def test_auto_precision_follows_the_hardware(monkeypatch):
    monkeypatch.delenv(AUTO_PRECISION_ENV, raising=False)
    cpu = torch.device("cpu")
    monkeypatch.setattr(train, "cpu_bf16_instructions", lambda: ())
    assert train.choose_fast_path("auto", False, cpu) == train.FastPath(
        "fp32", channels_last=False, compiled=False, precision_reason="auto: no native bf16 on cpu"
    )
    monkeypatch.setattr(train, "cpu_bf16_instructions", lambda: ("avx512_bf16",))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    assert train.choose_fast_path("auto", False, cpu) == train.FastPath(
        "bf16",
        channels_last=True,
        compiled=False,
        precision_reason="auto: native bf16 (cpu avx512_bf16)",
    )
    # An explicit choice is kept, whatever the hardware.
    assert train.choose_fast_path("fp32", False, cpu).precision == "fp32"
    monkeypatch.setattr(train, "cpu_bf16_instructions", lambda: ())
    assert train.choose_fast_path("bf16", False, cpu) == train.FastPath(
        "bf16", channels_last=True, compiled=False, precision_reason="trainer.precision=bf16"
    )


@pytest.mark.parametrize("forced", ["fp32", "bf16"])
@pytest.mark.parametrize("native", [(), ("amx_bf16",)])
def test_the_environment_decides_what_auto_means(monkeypatch, forced, native):
    """HPCJOBS_AUTO_PRECISION pins auto on any CPU (a site's choice; the suite's, so that its
    outcome does not depend on the machine); an explicit trainer.precision still wins."""
    monkeypatch.setattr(train, "cpu_bf16_instructions", lambda: native)
    monkeypatch.setenv(AUTO_PRECISION_ENV, forced)
    cpu = torch.device("cpu")
    fast = train.choose_fast_path("auto", False, cpu)
    assert (fast.precision, fast.channels_last) == (forced, forced == "bf16")
    assert fast.precision_reason == f"auto: HPCJOBS_AUTO_PRECISION={forced}"
    other = "bf16" if forced == "fp32" else "fp32"
    assert train.choose_fast_path(other, False, cpu).precision == other


def test_a_bad_auto_precision_in_the_environment_is_a_config_error(monkeypatch):
    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp16")
    with pytest.raises(
        ConfigError, match=r"HPCJOBS_AUTO_PRECISION=fp16: valid choices: bf16, fp32"
    ):
        train.choose_fast_path("auto", False, torch.device("cpu"))
    # auto not asked for
    assert train.choose_fast_path("fp32", False, torch.device("cpu")).precision == "fp32"


@pytest.fixture
def detect():
    train.cpu_bf16_instructions.cache_clear()  # cached per process: the tests patch what it reads
    yield train.cpu_bf16_instructions
    train.cpu_bf16_instructions.cache_clear()


def test_cpu_bf16_detection(monkeypatch, detect):
    monkeypatch.setattr(
        torch.cpu,
        "get_capabilities",
        lambda: {"avx512_bf16": True, "amx_bf16": False},
        raising=False,
    )
    assert detect() == ("avx512_bf16",)
    detect.cache_clear()
    # A torch without get_capabilities: the kernel's CPU flags.
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    assert detect() == tuple(f for f in ("avx512_bf16", "amx_bf16") if f in flags)


def test_compile_without_a_toolchain_is_skipped_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv("CXX", "no-such-compiler++")
    fast = train.choose_fast_path("fp32", True, torch.device("cpu"))
    assert not fast.compiled
    assert (
        "trainer.compile=true: not compiling, no C++ compiler 'no-such-compiler++' on PATH"
        in caplog.text
    )


def test_what_was_chosen_is_recorded(compose_run, tmp_path, monkeypatch):
    monkeypatch.delenv(AUTO_PRECISION_ENV, raising=False)
    cfg_overrides = (
        "trainer.device=cpu",
        "trainer.epochs=1",
        "trainer.steps_per_epoch=2",
        *SMALL_MODEL,
    )
    metrics, _ = _train(compose_run(*cfg_overrides, "trainer.precision=fp32"), tmp_path / "fp32")
    assert (metrics["precision"], metrics["channels_last"], metrics["compiled"]) == (
        "fp32",
        False,
        False,
    )
    assert metrics["world_size"] == 1
    auto, _ = _train(compose_run(*cfg_overrides, "trainer.precision=auto"), tmp_path / "auto")
    bf16 = train.bf16_is_fast(torch.device("cpu"))
    assert (auto["precision"], auto["channels_last"]) == (
        ("bf16", True) if bf16 else ("fp32", False)
    )
    assert metrics["precision_reason"] == "trainer.precision=fp32"
    assert auto["precision_reason"].startswith(
        "auto: native bf16 (cpu " if bf16 else "auto: no native bf16 on cpu"
    )


def test_bf16_channels_last_same_seed_same_metrics(compose_run, tmp_path):
    # bf16 with channels_last stays deterministic on the CPU (checkpoint/resume relies on it).
    overrides = ("trainer.device=cpu", "trainer.precision=bf16", "trainer.epochs=2",
                 "trainer.steps_per_epoch=4", "model.dropout=0.2", *SMALL_MODEL)  # fmt: skip
    a, _ = _train(compose_run(*overrides), tmp_path / "a")
    b, _ = _train(compose_run(*overrides), tmp_path / "b")
    assert _without_timing(a) == _without_timing(b) and a["channels_last"]


def test_more_local_ranks_than_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(
        ConfigError,
        match=r"local rank 1 trains on cuda:1, but this node shows 1 GPU\(s\)"
        r" \(CUDA_VISIBLE_DEVICES=0\): give every task its own GPU",
    ):
        train.pick_device("cuda", local_rank=1)
    assert train.pick_device("cuda", local_rank=0) == torch.device("cuda", 0)


# ---------------------------------------------------------------------- capped validation


@pytest.mark.parametrize("num_classes", [2, 3])
def test_val_steps_scores_a_fixed_stratified_sample(compose_run, make_image_folder, num_classes):
    """trainer.val_steps on a class-sorted folder: every class in proportion, the same images
    every time (every epoch, rank and resume), never the first batches (all one class)."""
    from hpcjobs.workloads.cnn.data import load_splits

    root = make_image_folder(num_classes=num_classes, per_class=12)
    cfg = compose_run("data=imagefolder", f"data.root={root}", "data.image_size=8")
    validation = load_splits(cfg.data, cfg.data.split_seed).validation
    assert validation.y.tolist() == sorted(validation.y.tolist())  # class-sorted on disk
    batch_size = 2 * num_classes
    picked = train.validation_set(validation, 2, batch_size, seed=0)
    assert len(picked) == 2 * batch_size
    assert torch.bincount(picked.y, minlength=num_classes).tolist() == [4] * num_classes
    again = train.validation_set(validation, 2, batch_size, seed=0)
    assert torch.equal(again.x, picked.x) and torch.equal(again.y, picked.y)
    # The images are the labels' own: a subset of the split's rows, in the split's order.
    rows = [
        i for i in range(len(validation)) if any(torch.equal(validation.x[i], x) for x in picked.x)
    ]
    assert len(rows) == len(picked) and torch.equal(validation.y[rows], picked.y)
    assert rows != list(range(len(picked)))
    # Another split seed, another sample; no cap, or a cap past the end: the whole split.
    other = train.validation_set(validation, 2, batch_size, seed=1)
    assert not torch.equal(other.x, picked.x)
    assert train.validation_set(validation, None, batch_size, seed=0) is validation
    assert train.validation_set(validation, 100, batch_size, seed=0) is validation
