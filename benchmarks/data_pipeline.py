"""The image-folder pipeline: decoding once into the shared cache, later runs, a grid, the loader.

From the repository root (no cluster, no download: the folder is generated):

    python benchmarks/data_pipeline.py [--images 20000] [--size 150] [--runs 9] [--workers N]
                                       [--dir DIR] [--parts first,later,grid,loader,rss]
    python benchmarks/data_pipeline.py --quick        # small sizes: checks the benchmark runs
    python benchmarks/data_pipeline.py --feed --device cuda [--images 6000] [--batch 128]

It writes a folder of JPEGs (quality 90, two classes, the seed's train/validation/test
layout, 70/15/15) and measures, in one run (issue 18's goals):

  first     the first decode: the cache build of `data.load` (scan, key, decode by
            trainer.num_workers processes, write, read back), by 1 process (the run's own)
            and by --workers (default: the cores), and with the cache off (into memory),
            against what a user writes by hand: a PIL Dataset in a torch
            DataLoader(num_workers=--workers) iterating every image once (batch 64); and the
            decoding alone (decode.decode_all, no cache) against that same DataLoader.
  later     a later run's `data.load` of the same folder (scan, key, checksums, mmap).
            Goal <= 0.05x the first decode.
  grid      --runs processes started together on the folder, a fresh cache: the decoding
            and loading they do in all (CPU seconds, the waiting excluded; the sum of their
            wall times, the waiting included), against one decode. Goal (CPU) <= 1.2x.
  loader    images/s the input pipeline alone delivers (data.batches, as the trainer asks
            for them: a shuffled batch gathered from the mapped split, or read from the
            cache file on the prefetch thread when streamed; to float, augmented as
            data=imagefolder does), in memory and streamed, against the training step's
            images/s (the workload's train_images_per_second, the seed CNN at --size, fp32
            and auto). Goal: >= 3x the step rate, both.
  rss       peak RSS (VmHWM) of whole runs in processes of their own (one epoch over every
            training image, whole validation and test passes; a small CNN, model.channels=[8],
            so that the data, not the training, takes the time): streamed with a budget of a
            quarter of the decoded size (the cache built by that run), in memory (the cache
            mapped; the cache off), against the same run on a folder of a few batches for
            as many steps (the interpreter, torch, the model, a batch: "base"). Goals:
            streamed <= base + budget + 300 MB; in memory <= base + 1.3x the decoded size.

--feed (what benchmarks/gpu_check.sh runs on a GPU): the workload's training images/s at
--size on --device, batch --batch, with its real loader streaming from the cache file
(data.max_memory_gb=0: pinned buffers, non_blocking copies) against the same run with the
data already on the device (in memory: the split moved to the GPU once). Goal: streamed
>= 0.9x. On the CPU (--device cpu) it is a smoke test of the same code.

Exit status 1 when a goal is missed (not with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from PIL import Image  # noqa: E402

from hpcjobs.config import schema  # noqa: E402
from hpcjobs.run.context import RunContext  # noqa: E402
from hpcjobs.workloads.cnn import data, decode  # noqa: E402
from hpcjobs.workloads.cnn.augment import random_affine  # noqa: E402
from hpcjobs.workloads.cnn.imagefolder import scan  # noqa: E402
from hpcjobs.workloads.cnn.train import train_and_evaluate  # noqa: E402

SPLIT_SHARES = {"train": 0.70, "validation": 0.15, "test": 0.15}
BATCH = 64


def generate(root: Path, images: int, size: int) -> float:
    """A JPEG folder of ``images`` in the seed's layout; its size in MB."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size)
    done = 0
    for split, share in SPLIT_SHARES.items():
        n = round(images * share) if split != "test" else images - done
        done += n
        for k in range(n):
            label = k % 2
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            # Smooth shapes plus noise: compresses like a photograph, not like white noise.
            base = np.outer(ramp, ramp) if label else np.outer(ramp[::-1], ramp)
            img = base[..., None] * rng.uniform(80, 255, 3) + rng.normal(0, 12, (size, size, 3))
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(
                folder / f"{k:06d}.jpg", quality=90
            )
    return sum(p.stat().st_size for p in root.rglob("*.jpg")) / 1e6


def compose_run(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "hpcjobs" / "conf"), version_base="1.3"):
        return schema.typed(compose("config", overrides=list(overrides)))


def data_cfg(root: Path, size: int, cache_dir: Path | str):
    return compose_run(
        "data=imagefolder", f"data.root={root}", f"data.image_size={size}",
        f"data.cache_dir={cache_dir}",
    ).data  # fmt: skip


def timed_load(root: Path, size: int, cache_dir: Path | str, workers: int) -> tuple[float, str]:
    data.clear_cache()  # what a new process sees
    loaded = data.load(data_cfg(root, size, cache_dir), 0, workers)
    return loaded.seconds, loaded.cache


def dataloader_epoch(root: Path, size: int, workers: int) -> float:
    """What a user writes by hand: a PIL Dataset in a DataLoader; one pass over every image."""

    class Folder(torch.utils.data.Dataset):
        def __init__(self, items: list) -> None:
            self.items = items

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int):
            path, label = self.items[i]
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img.size != (size, size):
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), label

    index = scan(root)
    items = [item for split in ("train", "validation", "test") for item in index.splits[split]]
    loader = torch.utils.data.DataLoader(Folder(items), batch_size=BATCH, num_workers=workers)
    # One torch thread, as in the DataLoader's worker processes: with num_workers=0 the batches
    # are collated here, and torch's idle threads spinning on a loaded machine made that pass
    # 10x slower than the decoding it is compared with.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for _ in loader:
            pass
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


# One run of the grid: load the folder, report the wall and CPU seconds of that alone (its
# decoding processes' included).
_GRID_RUN = """
import json, resource, sys, time
from pathlib import Path
from hpcjobs.workloads.cnn import cache
from hpcjobs.workloads.cnn.imagefolder import scan
root, size, where, workers, go = sys.argv[1:]
root, size, workers, go = Path(root), int(size), int(workers), Path(go)
import PIL.Image, numpy  # imports are start-up, not loading
while not go.exists():
    time.sleep(0.005)
def peak_rss_mb():  # VmHWM: ru_maxrss would carry the benchmark's own over exec
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
def cpu_seconds():
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)
wall, cpu = time.perf_counter(), cpu_seconds()
decoded = cache.load(scan(root), size, 3, where, workers)
print(json.dumps({"status": decoded.status, "wall": time.perf_counter() - wall,
                  "cpu": cpu_seconds() - cpu,
                  "max_rss_mb": peak_rss_mb()}))
"""


def grid(root: Path, size: int, runs: int, workers: int, work: Path) -> list[dict]:
    where, go = work / "grid-cache", work / "grid-go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", _GRID_RUN, str(root), str(size), str(where), str(workers)]
    procs = [
        subprocess.Popen([*command, str(go)], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(runs)
    ]
    time.sleep(3)  # let them all import and wait at the line
    go.touch()
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"a grid run failed (exit {p.returncode})")
        results.append(json.loads(out))
    return results


def loader_rate(root: Path, size: int, cache_dir: Path, seconds: float, streamed: bool) -> float:
    """Images/s of the input pipeline alone, as the trainer runs it on the CPU."""
    cfg = compose_run("data=imagefolder", f"data.root={root}", f"data.image_size={size}",
                      f"data.cache_dir={cache_dir}",
                      f"data.max_memory_gb={0 if streamed else 1000}")  # fmt: skip
    data.clear_cache()
    train = data.load(cfg.data, 0).splits.train
    assert isinstance(train, data.Streamed) == streamed
    g = torch.Generator().manual_seed(0)
    images, start = 0, time.perf_counter()
    steps = range((len(train) + BATCH - 1) // BATCH)
    while time.perf_counter() - start < seconds:
        order = torch.randperm(len(train), generator=g)
        for x, _ in data.batches(train, order, BATCH, steps):
            xb = random_affine(data.to_float(x), cfg.data.augment, g)
            images += len(xb)
            if time.perf_counter() - start >= seconds:
                break
    return images / (time.perf_counter() - start)


def step_rate(
    root: Path, size: int, cache_dir: Path, precision: str, steps: int, *extra: str
) -> float:
    cfg = compose_run(
        "data=imagefolder", f"data.root={root}", f"data.image_size={size}",
        f"data.cache_dir={cache_dir}", "trainer.device=cpu", f"trainer.precision={precision}",
        "trainer.epochs=1", f"trainer.steps_per_epoch={steps}", "trainer.val_steps=1",
        f"trainer.batch_size={BATCH}", *extra,
    )  # fmt: skip
    data.clear_cache()
    with tempfile.TemporaryDirectory(prefix="data_pipeline_run_") as run_dir:
        metrics = train_and_evaluate(cfg, RunContext(run_dir=Path(run_dir)))
    return float(metrics["train_images_per_second"])


# One whole run in a process of its own; prints its peak RSS (VmHWM: ru_maxrss would carry
# the benchmark's own over exec) and how it came by its data.
_RSS_RUN = """
import json, sys
from pathlib import Path
from hydra import compose, initialize_config_dir
from hpcjobs.config import schema
from hpcjobs.run.context import RunContext
from hpcjobs.workloads.cnn.train import train_and_evaluate
conf, run_dir, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
with initialize_config_dir(config_dir=conf, version_base="1.3"):
    cfg = schema.typed(compose("config", overrides=overrides))
metrics = train_and_evaluate(cfg, RunContext(run_dir=run_dir))
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_mb": int(hwm.split()[1]) / 1024, "cache": metrics["data_cache"],
                  "streamed": metrics["data_streamed"],
                  "images_per_second": metrics["train_images_per_second"]}))
"""


def peak_rss(root: Path, size: int, cache_dir: Path | str, work: Path, *extra: str) -> dict:
    overrides = [
        "data=imagefolder", f"data.root={root}", f"data.image_size={size}",
        f"data.cache_dir={cache_dir}", "model.channels=[8]", "model.hidden=16",
        "trainer.device=cpu", "trainer.precision=fp32", "trainer.epochs=1",
        f"trainer.batch_size={BATCH}", *extra,
    ]  # fmt: skip
    run_dir = Path(tempfile.mkdtemp(prefix="rss_", dir=work))
    out = subprocess.run(
        [sys.executable, "-c", _RSS_RUN, str(REPO / "hpcjobs" / "conf"), str(run_dir), *overrides],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False,
    )  # fmt: skip
    if out.returncode:
        raise SystemExit(f"an RSS run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def feed(args: argparse.Namespace) -> None:
    """Training images/s on --device: streamed from the cache file vs the data on the device."""
    with tempfile.TemporaryDirectory(prefix="data_pipeline_feed_", dir=args.dir) as tmp:
        work = Path(tmp)
        root = work / "images"
        mb = generate(root, args.images, args.size)
        print(f"feed: {args.images} JPEGs of {args.size}x{args.size} ({mb:.0f} MB),"
              f" device {args.device}, batch {args.batch}", flush=True)  # fmt: skip
        rates = {}
        for name, budget in (("on the device", 1000), ("streamed", 0), ("on the device ", 1000)):
            cfg = compose_run(
                "data=imagefolder", f"data.root={root}", f"data.image_size={args.size}",
                f"data.cache_dir={work / 'cache'}", f"data.max_memory_gb={budget}",
                f"trainer.device={args.device}", "trainer.epochs=2", "trainer.val_steps=1",
                f"trainer.batch_size={args.batch}", f"trainer.steps_per_epoch={args.steps}",
            )  # fmt: skip
            data.clear_cache()
            with tempfile.TemporaryDirectory(prefix="run_", dir=work) as run_dir:
                metrics = train_and_evaluate(cfg, RunContext(run_dir=Path(run_dir)))
            assert metrics["data_streamed"] == (budget == 0)
            rates.setdefault(name.strip(), []).append(metrics["train_images_per_second"])
            print(f"  {name.strip()}: {metrics['train_images_per_second']:.0f} images/s"
                  f" ({metrics['device']}, {metrics['precision']})", flush=True)  # fmt: skip
        # the data on the device measured before and after: the better of the two
        baseline = max(rates["on the device"])
        ratio = rates["streamed"][0] / baseline
        print(f"streamed / on the device: {ratio:.2f}x (goal >= 0.9)")
    raise SystemExit(1 if ratio < 0.9 and not args.quick else 0)


PARTS = ("first", "later", "grid", "loader", "rss")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--steps", type=int, default=10, help="training steps timed")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--parts", default=",".join(PARTS), help="which measurements")
    parser.add_argument("--feed", action="store_true", help="only the feed check (gpu_check.sh)")
    parser.add_argument("--device", default="cuda", help="--feed: the training device")
    parser.add_argument("--batch", type=int, default=128, help="--feed: the batch size")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"--parts: {', '.join(sorted(parts - set(PARTS)))}; choose from {PARTS}")
    if args.feed:
        if args.quick:
            args.images, args.size, args.steps, args.batch = 300, 64, 3, 32
        elif "--images" not in sys.argv:
            args.images, args.steps = 6000, 30
        feed(args)
    if args.quick:
        args.images, args.size, args.runs, args.steps = 300, 64, 3, 3

    goals: list[tuple[str, bool]] = []
    with tempfile.TemporaryDirectory(prefix="data_pipeline_", dir=args.dir) as tmp:
        work = Path(tmp)
        root = work / "images"
        t = time.perf_counter()
        mb = generate(root, args.images, args.size)
        decoded_mb = args.images * 3 * args.size**2 / 1e6
        print(f"folder: {args.images} JPEGs of {args.size}x{args.size}, {mb:.0f} MB on disk,"
              f" {decoded_mb:.0f} MB decoded (generated in {time.perf_counter() - t:.1f} s);"
              f" {args.workers} workers; load average {os.getloadavg()[0]:.1f}",
              flush=True)  # fmt: skip
        cache_dir = work / f"first-{args.workers}"
        one_decode = None
        if "first" in parts:
            one_decode = first_decode(root, args, work)
        if {"later", "loader"} & parts and one_decode is None:
            one_decode, how = timed_load(root, args.size, cache_dir, args.workers)
            assert how == "built", how
        if "later" in parts:
            assert one_decode is not None
            later, how = timed_load(root, args.size, cache_dir, args.workers)
            assert how == "hit", how
            print(f"later run: {later:.3f} s = {later / one_decode:.3f}x the first decode"
                  " (goal <= 0.05)", flush=True)  # fmt: skip
            goals.append(("later run <= 0.05x", later / one_decode <= 0.05))
        if "grid" in parts:
            runs = grid(root, args.size, args.runs, args.workers, work)
            built = [r for r in runs if r["status"] == "built"]
            cpu, wall = sum(r["cpu"] for r in runs), sum(r["wall"] for r in runs)
            slowest = max(r["wall"] for r in runs)
            hit_rss = max((r["max_rss_mb"] for r in runs if r["status"] == "hit"), default=0)
            print(f"grid of {args.runs} runs started together: {len(built)} decode(s),"
                  f" {sum(r['status'] == 'hit' for r in runs)} hits; CPU {cpu:.2f} s ="
                  f" {cpu / built[0]['cpu']:.2f}x one decode's CPU (goal <= 1.2; cache off:"
                  f" {args.runs}x); wall summed {wall:.1f} s, slowest {slowest:.1f} s;"
                  f" peak RSS builder {built[0]['max_rss_mb']:.0f} MB, a hit {hit_rss:.0f} MB",
                  flush=True)  # fmt: skip
            goals.append(("grid CPU <= 1.2x", cpu / built[0]["cpu"] <= 1.2 and len(built) == 1))
        if "loader" in parts:
            in_memory = loader_rate(root, args.size, cache_dir, 5, streamed=False)
            streamed = loader_rate(root, args.size, cache_dir, 5, streamed=True)
            steps = {
                p: step_rate(root, args.size, cache_dir, p, args.steps) for p in ("fp32", "auto")
            }
            fastest = max(steps.values())
            step_rates = ", ".join(f"{p} {v:.0f} images/s" for p, v in steps.items())
            print(f"input pipeline: in memory {in_memory:.0f} images/s, streamed {streamed:.0f}"
                  f" images/s ({streamed / in_memory:.2f}x); training step: {step_rates};"
                  f" pipeline / fastest step: in memory {in_memory / fastest:.1f}x, streamed"
                  f" {streamed / fastest:.1f}x (goal >= 3)", flush=True)  # fmt: skip
            goals.append(("pipeline >= 3x step", min(in_memory, streamed) >= 3 * fastest))
        if "rss" in parts:
            goals += rss(root, args, work, decoded_mb)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")

    missed = [name for name, ok in goals if not ok]
    print("goals missed: " + (", ".join(missed) if missed else "none"))
    raise SystemExit(1 if missed and not args.quick else 0)


def first_decode(root: Path, args: argparse.Namespace, work: Path) -> float:
    """The first decode (1 and --workers processes, the cache off), by hand, decoding alone."""
    dataloader_epoch(root, args.size, 0)  # warm the page cache and PIL for both sides
    index = scan(root)
    paths = [p for split in ("train", "validation", "test") for p, _ in index.splits[split]]

    def decoding(workers: int) -> float:
        t = time.perf_counter()
        for _ in decode.decode_all(paths, 3, args.size, workers):
            pass
        return time.perf_counter() - t

    # Each side 3 times, alternating, the best of each: on a machine others load, a single
    # pass of one side may land in a busy spell the other missed.
    by_hand, decode_alone, by_hand_1, decode_alone_1 = (float("inf"),) * 4
    for _ in range(3):
        by_hand = min(by_hand, dataloader_epoch(root, args.size, args.workers))
        decode_alone = min(decode_alone, decoding(args.workers))
        by_hand_1 = min(by_hand_1, dataloader_epoch(root, args.size, 0))
        decode_alone_1 = min(decode_alone_1, decoding(1))
    first = {}
    for workers in sorted({1, args.workers}):
        first[workers], how = timed_load(root, args.size, work / f"first-{workers}", workers)
        assert how == "built", how
    in_memory, how = timed_load(root, args.size, "off", args.workers)
    one_decode = first[args.workers]
    rate = args.images / one_decode
    print(f"first decode, {args.workers} processes: {one_decode:.2f} s ({rate:.0f} images/s);"
          f" 1 process: {first[1]:.2f} s ({first[1] / one_decode:.2f}x);"
          f" cache off (in memory, no write): {in_memory:.2f} s", flush=True)  # fmt: skip
    print(f"by hand, PIL Dataset + DataLoader(num_workers={args.workers}): {by_hand:.2f} s"
          f" ({args.images / by_hand:.0f} images/s); first decode / by hand:"
          f" {one_decode / by_hand:.2f}", flush=True)  # fmt: skip
    print(f"decoding alone (no cache: decode.decode_all; best of 3, alternating with by hand's),"
          f" {args.workers} processes:"
          f" {decode_alone:.2f} s = {decode_alone / by_hand:.2f}x by hand's; 1 process:"
          f" {decode_alone_1:.2f} s = {decode_alone_1 / by_hand_1:.2f}x"
          f" DataLoader(num_workers=0)'s {by_hand_1:.2f} s (goal <= 1: as fast per core)",
          flush=True)  # fmt: skip
    return one_decode


def rss(root: Path, args: argparse.Namespace, work: Path, decoded_mb: float) -> list:
    small = work / "small"
    generate(small, 4 * BATCH, args.size)
    # As many training steps as the runs on the folder (the allocator's caches grow with them).
    steps = -(-len(scan(root).splits["train"]) // BATCH)
    epochs = -(-steps // -(-len(scan(small).splits["train"]) // BATCH))
    base = peak_rss(small, args.size, "off", work, f"trainer.epochs={epochs}")
    budget_gb = decoded_mb / 4 / 1e3
    where = work / "rss-cache"
    streamed = peak_rss(root, args.size, where, work, f"data.max_memory_gb={budget_gb}")
    assert streamed["streamed"] and streamed["cache"] == "built", streamed
    mapped = peak_rss(root, args.size, where, work, "data.max_memory_gb=1000")
    off = peak_rss(root, args.size, "off", work, "data.max_memory_gb=1000")
    assert mapped["cache"] == "hit" and not mapped["streamed"] and not off["streamed"]
    mib = decoded_mb * 1e6 / 2**20
    b, budget_mib = base["peak_mb"], budget_gb * 1e9 / 2**20
    print(f"peak RSS (MiB): base (a folder of {4 * BATCH} images, {epochs} epochs) {b:.0f};"
          " streamed, budget"
          f" {budget_mib:.0f} MiB (a quarter of {mib:.0f}): {streamed['peak_mb']:.0f}"
          f" = base + {streamed['peak_mb'] - b:.0f}; in memory, mapped: {mapped['peak_mb']:.0f}"
          f" = base + {(mapped['peak_mb'] - b) / mib:.2f}x decoded; cache off:"
          f" {off['peak_mb']:.0f} = base + {(off['peak_mb'] - b) / mib:.2f}x decoded;"
          f" training images/s streamed {streamed['images_per_second']:.0f}, mapped"
          f" {mapped['images_per_second']:.0f}", flush=True)  # fmt: skip
    return [
        ("streamed RSS <= base + budget + 300 MB",
         streamed["peak_mb"] <= b + budget_mib + 300),
        ("in-memory RSS <= base + 1.3x decoded",
         max(mapped["peak_mb"], off["peak_mb"]) <= b + 1.3 * mib),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
