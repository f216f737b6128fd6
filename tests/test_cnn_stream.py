"""Image folders over the memory budget, streamed from the cache file; the cache staged to
node-local storage. Real files and real processes: the RSS bound is measured in a process of
its own on a generated folder, the staging lock raced by two processes."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpcjobs.errors import ConfigError, DataError
from hpcjobs.run import scheduler, usage
from hpcjobs.run.context import RunContext
from hpcjobs.workloads.cnn import cache, data
from hpcjobs.workloads.cnn.imagefolder import scan
from hpcjobs.workloads.cnn.train import TIMING_METRICS, train_and_evaluate

REPO = Path(__file__).resolve().parents[1]
SIZE = 8
TIMING = {*TIMING_METRICS, "data_cache"}


# Every load here reaches the file cache.
pytestmark = pytest.mark.usefixtures("empty_data_cache")


@pytest.fixture
def folder(make_image_folder) -> Path:
    return make_image_folder(num_classes=3, per_class=20)


def _run(compose_run, tmp_path: Path, name: str, *overrides: str) -> dict:
    data.clear_cache()
    cfg = compose_run(*overrides)
    return train_and_evaluate(cfg, RunContext(run_dir=tmp_path / name, num_threads=1))


# --------------------------------------------------------------------------- the same metrics


@pytest.mark.parametrize("val_steps", ["null", "1"])
def test_a_streamed_run_has_the_in_memory_runs_metrics_bitwise(
    compose_run, folder, tmp_path, val_steps
):
    # Augmentation on, a last batch smaller than the others, several epochs, a capped
    # validation (a subset read into memory) or a whole one (streamed).
    overrides = (
        "data=imagefolder", f"data.root={folder}", f"data.image_size={SIZE}",
        f"data.cache_dir={tmp_path / 'cache'}", "model.channels=[4]", "model.hidden=8",
        "trainer.precision=fp32", "trainer.device=cpu", "trainer.epochs=3",
        "trainer.batch_size=7", f"trainer.val_steps={val_steps}",
    )  # fmt: skip
    in_memory = _run(compose_run, tmp_path, "memory", *overrides, "data.max_memory_gb=100")
    streamed = _run(compose_run, tmp_path, "streamed", *overrides, "data.max_memory_gb=0")
    assert in_memory["data_streamed"] is False and streamed["data_streamed"] is True
    keep = set(in_memory) - TIMING - {"data_streamed", "data_memory_budget_gb"}
    assert {k: streamed[k] for k in keep} == {k: in_memory[k] for k in keep}


def test_a_streamed_run_stopped_mid_epoch_resumes_to_the_in_memory_metrics(
    compose_run, folder, tmp_path, monkeypatch
):
    from hpcjobs.errors import RunStopped
    from hpcjobs.run import job
    from hpcjobs.sweepdir import runfiles

    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)  # a stopped run is recorded here
    overrides = (
        "data=imagefolder", f"data.root={folder}", f"data.image_size={SIZE}",
        f"data.cache_dir={tmp_path / 'cache'}", "model.channels=[4]", "model.hidden=8",
        "trainer.precision=fp32", "trainer.device=cpu", "trainer.epochs=2",
        "trainer.batch_size=8", "trainer.num_threads=1",
    )  # fmt: skip

    def run(name: str, budget: str, stop=None) -> dict:
        data.clear_cache()
        cfg = compose_run(*overrides, f"data.max_memory_gb={budget}")

        def call(ctx: RunContext) -> dict:
            if stop is not None:
                ctx = dataclasses.replace(ctx, stop_requested=stop)
            return train_and_evaluate(cfg, ctx)

        return job.run_and_record(call, cfg, tmp_path / name, reraise=False, resumable=True)[1]

    in_memory = run("memory", "100")
    checks = iter(range(100))
    with pytest.raises(RunStopped):
        run("streamed", "0", stop=lambda: next(checks) >= 11)  # 8 steps an epoch: epoch 2, step 3
    streamed = run("streamed", "0")
    assert streamed["restarts"] == 1
    assert (streamed["resumed_from_epoch"], streamed["resumed_from_step"]) == (2, 3)
    differ = {"data_streamed", "data_memory_budget_gb", "config_digest", "restarts",
              "wall_seconds", "started_at", "finished_at", *usage.FIELDS}  # fmt: skip
    keep = set(in_memory) - TIMING - differ
    assert {k: streamed.get(k) for k in keep} == {k: in_memory[k] for k in keep}

    def history(name: str) -> list[dict]:
        rows = runfiles.read_history(tmp_path / name)
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert history("streamed") == history("memory") and len(history("memory")) == 2


_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=_GPU)])
def test_streamed_batches_are_the_in_memory_batches(
    folder, tmp_path, compose_run, device, channels_last
):
    # On a GPU: read into pinned buffers, copied with non_blocking (the trainer's path there).
    cfg = compose_run("data=imagefolder", f"data.root={folder}", f"data.image_size={SIZE}",
                      f"data.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    on = torch.device(device)
    held = data.load(cfg.data, 0).splits
    data.clear_cache()
    cfg.data.max_memory_gb = 0
    streamed = data.load(cfg.data, 0).splits
    assert not held.streamed and streamed.streamed
    assert isinstance(streamed.train, data.Streamed) and len(streamed.train) == len(held.train)
    held_train = held.train.to(on, channels_last)
    streamed_train = streamed.train.to(on, channels_last)
    order = torch.randperm(len(held.train), generator=torch.Generator().manual_seed(1)).to(on)
    for rank in (0, 1):  # each rank's share of each global batch
        steps = range(1, 5)
        pairs = zip(
            data.batches(held_train, order, 8, steps, rank, 2),
            data.batches(streamed_train, order, 8, steps, rank, 2),
            strict=True,
        )
        for (x1, y1), (x2, y2) in pairs:
            assert x2.device == y2.device == x1.device and x2.device.type == device
            assert x2.is_contiguous(
                memory_format=torch.channels_last if channels_last else torch.contiguous_format
            )
            assert torch.equal(x1, x2) and torch.equal(y1, y2) and len(y1) == 4
    evaluation = list(data.batches(streamed.test.to(on), None, 5, range(3)))
    assert torch.equal(torch.cat([x for x, _ in evaluation]).cpu(), held.test.x[:15])
    assert torch.equal(torch.cat([y for _, y in evaluation]).cpu(), held.test.y[:15])


def test_a_streamed_loader_left_mid_epoch_stops_reading(folder, tmp_path, compose_run):
    cfg = compose_run("data=imagefolder", f"data.root={folder}", f"data.image_size={SIZE}",
                      f"data.cache_dir={tmp_path / 'cache'}", "data.max_memory_gb=0")  # fmt: skip
    train = data.load(cfg.data, 0).splits.train
    loader = data.batches(train, torch.arange(len(train)), 2, range(20))
    next(loader)
    loader.close()  # what a stop mid-epoch does (the trainer's generator is dropped)
    prefetch = [t for t in threading.enumerate() if t.name == "hpcjobs-prefetch"]
    for thread in prefetch:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in prefetch)


def test_a_streamed_run_stopped_mid_epoch_ends_its_prefetch_thread(compose_run, folder, tmp_path):
    # The RunInterrupted still held (as a worker's record of the run holds it): its traceback
    # keeps the epoch's frame, and so its loader, alive; the thread must not wait on that.
    from hpcjobs.run.context import RunInterrupted

    cfg = compose_run("data=imagefolder", f"data.root={folder}", f"data.image_size={SIZE}",
                      f"data.cache_dir={tmp_path / 'cache'}", "data.max_memory_gb=0",
                      "model.channels=[4]", "model.hidden=8", "trainer.precision=fp32",
                      "trainer.device=cpu", "trainer.epochs=1", "trainer.batch_size=2")  # fmt: skip
    checks = iter(range(100))
    ctx = RunContext(
        run_dir=tmp_path / "run", num_threads=1, stop_requested=lambda: next(checks) >= 3
    )
    with pytest.raises(RunInterrupted) as stopped:
        train_and_evaluate(cfg, ctx)
    prefetch = [t for t in threading.enumerate() if t.name == "hpcjobs-prefetch"]
    for thread in prefetch:
        thread.join(timeout=10)
    assert stopped.value.__traceback__ is not None
    assert not any(t.is_alive() for t in prefetch)


# --------------------------------------------------------------------------- the budget


def test_the_default_budget_is_half_the_memory_the_run_was_given(monkeypatch):
    assert data.memory_budget(1.5) == 1_500_000_000
    assert data.memory_budget(0) == 0
    ctx = RunContext(run_dir=Path("."), memory_bytes=8 << 30)
    assert data.memory_budget(None, ctx) == 4 << 30
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert data.memory_budget(None) == machine // 2
    cores = os.cpu_count() or 1
    one_core = RunContext(run_dir=Path("."), num_threads=1)
    assert data.memory_budget(None, one_core) == int(machine * min(1, 1 / cores) * 0.5)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"SLURM_MEM_PER_NODE": "4000"}, 4000 << 20),
        ({"SLURM_MEM_PER_NODE": "4000", "SLURM_NTASKS_PER_NODE": "4"}, 1000 << 20),
        ({"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_PER_TASK": "3"}, 3000 << 20),
        ({"SLURM_MEM_PER_CPU": "1000"}, 1000 << 20),
        ({"SLURM_MEM_PER_NODE": "0"}, None),  # --mem=0: the whole node, no number
        # --mem-per-gpu, as sbatch sets it (measured on the dev cluster's fake GPUs)
        ({"SLURM_MEM_PER_GPU": "1000", "SLURM_GPUS_ON_NODE": "2"}, 2000 << 20),
        (
            {"SLURM_MEM_PER_GPU": "1000", "SLURM_GPUS_ON_NODE": "2", "SLURM_GPUS_PER_TASK": "1"},
            1000 << 20,
        ),
        (
            {"SLURM_MEM_PER_GPU": "1000", "SLURM_GPUS_ON_NODE": "4", "SLURM_NTASKS_PER_NODE": "2"},
            2000 << 20,
        ),
    ],
)
def test_the_tasks_memory_as_slurm_says_it(monkeypatch, env, expected):
    for var in ("SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU", "SLURM_CPUS_PER_TASK",
                "SLURM_NTASKS_PER_NODE", "SLURM_MEM_PER_GPU", "SLURM_GPUS_ON_NODE",
                "SLURM_GPUS_PER_TASK"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert scheduler.memory_per_task() == expected


def test_over_the_budget_with_the_cache_off_is_refused_before_submission(compose_run, folder):
    from hpcjobs.config import schema

    base = ("data=imagefolder", f"data.root={folder}", "data.cache_dir=off")
    schema.validate(compose_run(*base, "data.max_memory_gb=1"))
    with pytest.raises(ConfigError, match=r"data.max_memory_gb=0: .* data.cache_dir=off leaves"):
        schema.validate(compose_run(*base, "data.max_memory_gb=0"))
    # ... and by the run itself, whose default budget only it knows
    cfg = compose_run(*base, "data.max_memory_gb=0")
    with pytest.raises(ConfigError, match="no cache file to stream them from"):
        data.load(cfg.data, 0)


def test_over_the_budget_with_no_writable_cache_is_a_clear_error(compose_run, folder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = compose_run("data=imagefolder", f"data.root={folder}", f"data.cache_dir={blocker}",
                      "data.max_memory_gb=0")  # fmt: skip
    with pytest.raises(DataError, match=r"streamed from a cache file: set data\.cache_dir"):
        data.load(cfg.data, 0)


# --------------------------------------------------------------------------- peak RSS

# One run in a process of its own; prints its peak RSS (VmHWM: ru_maxrss would carry the
# parent's over exec) in MB.
_RSS_RUN = """
import json, sys
from pathlib import Path
from hydra import compose, initialize_config_dir
from hpcjobs.config import schema
from hpcjobs.run.context import RunContext
from hpcjobs.workloads.cnn.train import TIMING_METRICS, train_and_evaluate
conf, run_dir, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
with initialize_config_dir(config_dir=conf, version_base="1.3"):
    cfg = schema.typed(compose("config", overrides=overrides))
metrics = train_and_evaluate(cfg, RunContext(run_dir=run_dir, num_threads=1))
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"peak_mb": int(hwm.split()[1]) / 1024, "cache": metrics["data_cache"],
                  "streamed": metrics["data_streamed"]}))
"""


def _jpeg_folder(root: Path, images: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size)
    for k in range(images):
        split = ("train", "train", "train", "train", "validation", "test")[k % 6]
        label = k % 2
        folder = root / split / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.outer(ramp, ramp) if label else np.outer(ramp[::-1], ramp)
        img = base[..., None] * rng.uniform(80, 255, 3) + rng.normal(0, 12, (size, size, 3))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{k:05d}.jpg")
    return root


def _peak(tmp_path: Path, name: str, root: Path, cache_dir: Path | str, *extra: str) -> dict:
    overrides = [
        "data=imagefolder", f"data.root={root}", f"data.image_size={RSS_SIZE}",
        f"data.cache_dir={cache_dir}", "model.channels=[4]", "model.hidden=8",
        "trainer.precision=fp32", "trainer.device=cpu", "trainer.epochs=1",
        "trainer.batch_size=32", "trainer.num_workers=1", *extra,
    ]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", _RSS_RUN, str(REPO / "hpcjobs" / "conf"), str(tmp_path / name),
         *overrides],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


RSS_SIZE, RSS_IMAGES = 128, 2100  # 103 MB decoded: well above the interpreter's scatter


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_peak_rss_streamed_within_the_budget_in_memory_one_copy(tmp_path):
    big = _jpeg_folder(tmp_path / "big", RSS_IMAGES, RSS_SIZE)
    # The interpreter, torch, the model, a batch's activations: the same run on a folder of a
    # few batches, in memory, for as many training steps (the allocator's caches grow with
    # them: ~25 MB over 44 steps).
    small = _jpeg_folder(tmp_path / "small", 96, RSS_SIZE)
    steps = -(-len(scan(big).splits["train"]) // 32)
    epochs = -(-steps // -(-len(scan(small).splits["train"]) // 32))
    decoded_mb = RSS_IMAGES * 3 * RSS_SIZE**2 / 2**20
    budget_gb = RSS_IMAGES * 3 * RSS_SIZE**2 / 4 / 1e9  # a quarter of the set
    base = _peak(tmp_path, "base", small, "off", f"trainer.epochs={epochs}")["peak_mb"]

    # A streamed run that builds the cache (decodes, writes, checks it back) and reads every
    # image (a whole epoch, whole validation and test passes).
    streamed = _peak(tmp_path, "s", big, tmp_path / "c", f"data.max_memory_gb={budget_gb}")
    assert (streamed["cache"], streamed["streamed"]) == ("built", True)
    # Bounded by the budget, with a margin of another quarter of the set for what the
    # machine adds: holding the set (or its mapped pages) would cost four quarters.
    assert streamed["peak_mb"] <= base + decoded_mb / 2, (base, decoded_mb, streamed)
    again = _peak(tmp_path, "s2", big, tmp_path / "c", f"data.max_memory_gb={budget_gb}")
    assert again["cache"] == "hit" and again["peak_mb"] <= base + decoded_mb / 2

    # In memory: the decoded set held once (no float copy, no second copy while loading).
    for name, cache_dir in (("mapped", tmp_path / "c"), ("off", "off")):
        held = _peak(tmp_path, name, big, cache_dir, "data.max_memory_gb=100")
        assert held["streamed"] is False
        assert held["peak_mb"] <= base + 1.3 * decoded_mb, (name, base, decoded_mb, held)


# --------------------------------------------------------------------------- staging


def test_staged_once_per_node_then_read_from_there(folder, tmp_path, compose_run, caplog):
    where = tmp_path / "node-local"
    cfg = compose_run("data=imagefolder", f"data.root={folder}", f"data.image_size={SIZE}",
                      f"data.cache_dir={tmp_path / 'shared'}", "data.stage=node",
                      f"data.stage_dir={where}")  # fmt: skip
    shared = data.load(cfg.data, 0).splits
    staged = next((where / cache.STAGE_SUBDIR).glob("imagefolder-*"))
    assert sorted(p.name for p in staged.iterdir()) == sorted(
        [cache.IMAGES, cache.LABELS, cache.MANIFEST]
    )
    entry = next((tmp_path / "shared").glob("imagefolder-*/"))
    assert (staged / cache.IMAGES).read_bytes() == (entry / cache.IMAGES).read_bytes()
    # A later run on the node: mapped from the copy, not copied again.
    data.clear_cache()
    before = (staged / cache.IMAGES).stat()
    caplog.clear()  # the first load's records, where an earlier test left INFO on
    with caplog.at_level(logging.INFO, logger="hpcjobs.workloads.cnn.cache"):
        again = data.load(cfg.data, 0)
    assert (staged / cache.IMAGES).stat().st_ino == before.st_ino
    assert not any("staged" in r.getMessage() and " in " in r.getMessage() for r in caplog.records)
    assert again.cache == cache.HIT and torch.equal(again.splits.train.x, shared.train.x)


def test_an_unwritable_stage_dir_reads_the_shared_entry(folder, tmp_path, compose_run, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = compose_run("data=imagefolder", f"data.root={folder}", f"data.image_size={SIZE}",
                      f"data.cache_dir={tmp_path / 'shared'}", "data.stage=node",
                      f"data.stage_dir={blocker}")  # fmt: skip
    with caplog.at_level(logging.WARNING):
        loaded = data.load(cfg.data, 0)
    assert loaded.cache == cache.BUILT
    assert any("reading the data cache where it is" in r.getMessage() for r in caplog.records)


def test_staging_without_a_cache_is_refused_before_submission(compose_run, folder):
    from hpcjobs.config import schema

    base = ("data=imagefolder", f"data.root={folder}", "data.stage=node")
    schema.validate(compose_run(*base))
    with pytest.raises(ConfigError, match=r"data.stage=node copies .* data.cache_dir=off: set"):
        schema.validate(compose_run(*base, "data.cache_dir=off"))


def test_the_default_stage_dir(monkeypatch, tmp_path, compose_run, folder):
    cfg = compose_run("data=imagefolder", f"data.root={folder}", "data.stage=node").data
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    assert data._stage_dir(cfg, str(tmp_path / "slurm")) == tmp_path / "slurm"
    assert data._stage_dir(cfg, None) == tmp_path / "tmp"
    cfg.stage_dir = str(tmp_path / "mine")
    assert data._stage_dir(cfg, str(tmp_path / "slurm")) == tmp_path / "mine"
    cfg.stage = "off"
    assert data._stage_dir(cfg, str(tmp_path / "slurm")) is None


_STAGER = """
import json, sys, time, logging
from pathlib import Path
logging.basicConfig(level=logging.INFO)
from hpcjobs.workloads.cnn import cache
from hpcjobs.workloads.cnn.imagefolder import scan
root, shared, where, sync, me = sys.argv[1:]
index = scan(root)
(Path(sync) / f"ready-{me}").touch()
while not (Path(sync) / "go").exists():
    time.sleep(0.005)
decoded = cache.load(index, 8, 3, shared, 1, stage_dir=Path(where))
print(json.dumps({"entry": str(decoded.entry), "sum": int(decoded.images.sum(dtype="int64"))}))
"""


def test_processes_staging_at_once_copy_once(folder, tmp_path):
    shared, where, sync = tmp_path / "shared", tmp_path / "node-local", tmp_path / "sync"
    sync.mkdir()
    cache.load(scan(folder), 8, 3, str(shared), 1)  # the shared entry exists; nothing staged
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", _STAGER, str(folder), str(shared), str(where), str(sync)]
    procs = [
        subprocess.Popen(
            [*command, str(k)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for k in range(4)
    ]
    deadline = time.monotonic() + 120
    while len(list(sync.glob("ready-*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    (sync / "go").touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    staged = where / cache.STAGE_SUBDIR
    assert {r["entry"] for r in results} == {str(next(staged.glob("imagefolder-*/")))}
    assert len({r["sum"] for r in results}) == 1
    copies = [err.count("cnn.cache:staged ") for _, err in outputs]  # "staged X to Y in Z s"
    assert sorted(copies) == [0, 0, 0, 1], [err for _, err in outputs]
    assert not list(staged.glob("*.lock"))


def test_channels_last_on_the_cpu_converts_batches_not_the_split(folder, tmp_path, compose_run):
    cfg = compose_run("data=imagefolder", f"data.root={folder}", f"data.image_size={SIZE}",
                      f"data.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    train = data.load(cfg.data, 0).splits.train
    assert isinstance(train, data.Split)
    moved = train.to(torch.device("cpu"), channels_last=True)
    assert moved.x.data_ptr() == train.x.data_ptr()  # the mapped file, not a copy of it
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    for x, _ in data.batches(moved, order, 4, range(3)):
        assert x.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- gpu_check.sh


@pytest.mark.slow
def test_gpu_checks_image_folder_feed_runs_on_the_cpu():
    # What gpu_check.sh runs on a GPU, here on the CPU: the day a GPU machine is lent, the
    # script and its Python work (the goal is not enforced with --quick).
    syntax = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")], check=False)
    assert syntax.returncode == 0
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "data_pipeline.py"), "--feed", "--device",
         "cpu", "--quick"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "streamed / on the device:" in out.stdout
