"""How fast `collect` reads a big sweep: hpcjobs vs the naive one-DataFrame-per-run loop.

Run from the repository root (no cluster needed):

    python benchmarks/collect_scale.py [--runs 10000] [--repeat 3] [--dir DIR]

It generates a realistic sweep tree of N run directories (into a temporary directory,
or DIR, which is reused when it already holds a tree of that size), laid out as Hydra and
the hpcjobs job write them::

    <sweep>/sweep.json                   the launcher's manifest (hpcjobs.sweepdir.manifest)
    <sweep>/<i>/.hydra/overrides.yaml    - optimizer=adam / - optimizer.lr=0.01 / ...
    <sweep>/<i>/.hydra/config.yaml       the composed config (~40 lines)
    <sweep>/<i>/metrics.json             ~25 fields; ~2% of the runs failed (with a traceback)
    <sweep>/<i>/history.csv              one row per epoch

then times, in this one process and with the page cache warm for each (one untimed run
first, then the median of --repeat):

  naive     for each run directory: json.load(metrics.json), yaml.safe_load(overrides.yaml),
            pd.DataFrame([row]); then pd.concat of the N frames (no summary);
  ours      hpcjobs.results.collect.collect([sweep]): reading, runs table, summary and best;
  ours/scan the same without sweep.json (the run directories found by a directory scan).

It prints the times, the ratio ours/naive and runs/second, and exits 1 when `ours` takes
more than --max-seconds (3) or more than --max-ratio (0.3) of the naive time, so it can be
used as a check. The generator (`generate`) is imported by tests/test_collect_scale.py.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from hpcjobs.results import collect  # noqa: E402
from hpcjobs.sweepdir import manifest, runfiles  # noqa: E402

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
LEARNING_RATES = (0.1, 0.03, 0.01, 0.003, 0.001)
EPOCHS = (5, 10, 20, 40, 80)
FAILED_FRACTION = 0.02
HISTORY_EPOCHS = 20

CONFIG_TEMPLATE = """\
workload:
  _target_: hpcjobs.workloads.cnn.run
  preflight: hpcjobs.workloads.cnn.preflight
model:
  name: cnn
  channels:
  - 32
  - 64
  - 128
  kernel_size: 3
  hidden: 128
  dropout: 0.0
data:
  name: digits
  image_size: 8
  channels: 1
  val_fraction: 0.15
  test_fraction: 0.15
  split_seed: 0
  augment:
    rotation: 10
    shift: 0.1
    shear: 5
    zoom: 0.1
    hflip: false
optimizer:
  name: {optimizer}
  lr: {lr}
  beta1: 0.9
  beta2: 0.999
  weight_decay: 0.0
trainer:
  epochs: {epochs}
  batch_size: 64
  steps_per_epoch: null
  val_steps: null
  precision: fp32
  device: auto
  num_workers: 0
  num_threads: null
experiment_name: {experiment}
seed: {seed}
"""

TRACEBACK = """\
Traceback (most recent call last):
  File "/home/user/hpcjobs/hpcjobs/job.py", line 106, in run_task
    result = dict(_call_workload(cfg, ctx))
  File "/home/user/hpcjobs/hpcjobs/workloads/cnn/train.py", line 183, in run
    loss.backward()
RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"""


def grid(n: int) -> list[list[str]]:
    """The first n overrides of an optimizer x lr x epochs x seed grid, in Hydra's order."""
    seeds = range(-(-n // (len(OPTIMIZERS) * len(LEARNING_RATES) * len(EPOCHS))))
    combos = itertools.product(OPTIMIZERS, LEARNING_RATES, EPOCHS, seeds)
    return [
        [f"optimizer={o}", f"optimizer.lr={lr}", f"trainer.epochs={e}", f"seed={s}"]
        for o, lr, e, s in itertools.islice(combos, n)
    ]


def _metrics(rng: random.Random, i: int, overrides: list[str], failed: bool) -> dict:
    values = dict(o.split("=", 1) for o in overrides)
    seed, epochs = int(values["seed"]), int(values["trainer.epochs"])
    started = f"2026-11-27T03:{22 + i // 3600 % 30:02d}:{i % 60:02d}+00:00"
    identity = {
        "seed": seed,
        "hostname": f"node{i % 16:03d}",
        "slurm_job_id": f"81234_{i}",
        "started_at": started,
    }
    if failed:
        metrics = {
            "status": "failed",
            "error_type": "RuntimeError",
            "error_message": "CUDA out of memory. Tried to allocate 2.00 GiB",
            "traceback": TRACEBACK,
            **identity,
        }
    else:
        acc = min(0.999, 0.9 + 0.08 * rng.random())
        metrics = {
            "status": "completed",
            **identity,
            "test_accuracy": acc,
            "test_precision": acc - 0.004 * rng.random(),
            "test_recall": acc - 0.004 * rng.random(),
            "test_f1": acc - 0.003 * rng.random(),
            "test_loss": 0.05 + 0.3 * rng.random(),
            "best_val_accuracy": min(1.0, acc + 0.01 * rng.random()),
            "best_epoch": rng.randint(1, epochs),
            "epochs_completed": epochs,
            "train_seconds": 2.0 * epochs * (0.8 + 0.4 * rng.random()),
            "train_images_per_second": 15000 + 3000 * rng.random(),
            "device": "cpu (2 threads)",
            "num_parameters": 110666,
            "num_classes": 10,
            "train_images": 1259,
            "val_images": 269,
            "test_images": 269,
        }
    metrics["wall_seconds"] = round(3.0 + 2.1 * epochs * rng.random(), 3)
    metrics["finished_at"] = started.replace("T03:", "T04:")
    return {"schema_version": runfiles.SCHEMA_VERSION, **metrics}


def _history(rng: random.Random, epochs: int) -> str:
    lines = ["epoch,train_loss,train_accuracy,val_loss,val_accuracy,seconds"]
    for e in range(1, epochs + 1):
        lines.append(
            f"{e},{2.3 / e * (1 + 0.1 * rng.random())},{1 - 0.9 / e},{2.2 / e},{1 - 0.85 / e},"
            f"{1.9 + 0.2 * rng.random()}"
        )
    return "\n".join(lines) + "\n"


def generate(
    root: Path,
    n: int,
    *,
    with_manifest: bool = True,
    experiment: str = "cnn_sweep",
    failed_fraction: float = FAILED_FRACTION,
    seed: int = 0,
) -> Path:
    """Write a sweep of n run directories under root/<experiment>/2026-11-27_03-22-41; return it.

    Every file is written as the job and Hydra write it (metrics.json: indent=2, schema_version
    first), but without the per-file fsync of the atomic writers, which only slows generation.
    """
    sweep = Path(root) / experiment / "2026-11-27_03-22-41"
    sweep.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    all_overrides = grid(n)
    failed = set(rng.sample(range(n), round(n * failed_fraction)))
    for i, overrides in enumerate(all_overrides):
        run = sweep / str(i)
        (run / ".hydra").mkdir(parents=True, exist_ok=True)
        values = dict(o.split("=", 1) for o in overrides)
        (run / runfiles.OVERRIDES_FILE).write_text("".join(f"- {o}\n" for o in overrides))
        (run / runfiles.CONFIG_FILE).write_text(
            CONFIG_TEMPLATE.format(
                optimizer=values["optimizer"],
                lr=values["optimizer.lr"],
                epochs=values["trainer.epochs"],
                experiment=experiment,
                seed=values["seed"],
            )
        )
        metrics = _metrics(rng, i, overrides, i in failed)
        (run / runfiles.METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        epochs = min(HISTORY_EPOCHS, int(values["trainer.epochs"])) if i not in failed else 3
        (run / runfiles.HISTORY_FILE).write_text(_history(rng, epochs))
    if with_manifest:
        tasks = [
            manifest.TaskRecord(
                i,
                o,
                str(i),
                hashlib.sha256(" ".join(o[:3]).encode()).hexdigest()[:12],
                f"81234_{i}",
            )
            for i, o in enumerate(all_overrides)
        ]
        manifest.write(
            manifest.SweepManifest(
                experiment=experiment,
                sweep_dir=str(sweep.resolve()),
                executor="slurm",
                command=["python", "-m", "hpcjobs", "experiment=cnn_sweep", "--multirun"],
                cwd=str(root),
                git_commit="0123456789abcdef0123456789abcdef01234567",
                launcher={"partition": "gpu"},
                tasks=tasks,
            )
        )
    return sweep


def naive(sweep: Path) -> pd.DataFrame:
    """The obvious loop: one JSON and one YAML parse, and one DataFrame, per run."""
    frames = []
    dirs = sorted(
        (d for d in sweep.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name)
    )
    for d in dirs:
        row = {"task": int(d.name), "run_dir": str(d)}
        with open(d / runfiles.OVERRIDES_FILE, encoding="utf-8") as f:
            for item in yaml.safe_load(f) or []:
                key, _, value = str(item).partition("=")
                row[key] = runfiles.parse_scalar(value)
        try:
            with open(d / runfiles.METRICS_FILE, encoding="utf-8") as f:
                metrics = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            metrics = {"status": "no_metrics"}
        metrics.pop("traceback", None)
        row.update(metrics)
        frames.append(pd.DataFrame([row]))
    return pd.concat(frames, ignore_index=True)


def timed(fn, repeat: int) -> tuple[float, object]:
    result = fn()  # warm the page cache (and imports) untimed
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _tree(base: Path, n: int) -> Path:
    sweep = base / "cnn_sweep" / "2026-11-27_03-22-41"
    marker = base / f".generated_{n}"
    if not marker.exists():
        if sweep.exists():
            shutil.rmtree(sweep)
        for old in base.glob(".generated_*"):
            old.unlink()
        start = time.perf_counter()
        generate(base, n)
        marker.touch()
        print(
            f"generated {n} run directories in {time.perf_counter() - start:.1f} s under {sweep}",
            flush=True,
        )
    return sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=10_000, help="run directories to generate (default 10000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed runs of each; the median is reported"
    )
    parser.add_argument(
        "--dir", type=Path, help="generate into (and reuse) this directory instead of a temp dir"
    )
    parser.add_argument("--max-seconds", type=float, default=3.0)
    parser.add_argument("--max-ratio", type=float, default=0.3)
    parser.add_argument(
        "--no-scan", action="store_true", help="skip the variant without sweep.json"
    )
    args = parser.parse_args(argv)

    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="collect_scale_")
        base = Path(tmp.name)
    else:
        base = args.dir
        base.mkdir(parents=True, exist_ok=True)
    try:
        sweep = _tree(base, args.runs)
        n = args.runs
        print(
            f"python {sys.version.split()[0]}, pandas {pd.__version__}, {os.cpu_count()} CPUs, "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            flush=True,
        )

        t_naive, frame = timed(lambda: naive(sweep), args.repeat)
        print(
            f"naive      {t_naive:7.3f} s  {n / t_naive:9.0f} runs/s  ({len(frame)} rows)",
            flush=True,
        )
        t_ours, c = timed(lambda: collect.collect([sweep]), args.repeat)
        ok = len(c.runs) == n and not c.problems
        print(
            f"ours       {t_ours:7.3f} s  {n / t_ours:9.0f} runs/s  ({len(c.runs)} rows,"
            f" {len(c.summary)} configurations, ratio {t_ours / t_naive:.3f})",
            flush=True,
        )
        failures = []
        if not ok:
            failures.append(
                f"ours read {len(c.runs)} rows (expected {n}), problems: {c.problems[:3]}"
            )
        if t_ours > args.max_seconds:
            failures.append(f"ours took {t_ours:.2f} s > {args.max_seconds} s")
        if t_ours > args.max_ratio * t_naive:
            failures.append(f"ours/naive = {t_ours / t_naive:.3f} > {args.max_ratio}")

        if not args.no_scan:
            hidden = sweep.parent / ".sweep.json.hidden"
            os.replace(sweep / manifest.MANIFEST_FILE, hidden)
            try:
                t_scan, c = timed(lambda: collect.collect([sweep]), args.repeat)
            finally:
                os.replace(hidden, sweep / manifest.MANIFEST_FILE)
            print(
                f"ours/scan  {t_scan:7.3f} s  {n / t_scan:9.0f} runs/s  ({len(c.runs)} rows, "
                f"ratio {t_scan / t_naive:.3f}; no sweep.json)",
                flush=True,
            )
            if len(c.runs) != n or c.problems:
                failures.append(
                    f"ours/scan read {len(c.runs)} rows (expected {n}), problems: {c.problems[:3]}"
                )
            if t_scan > args.max_seconds:
                failures.append(f"ours/scan took {t_scan:.2f} s > {args.max_seconds} s")
            if t_scan > args.max_ratio * t_naive:
                failures.append(f"ours/scan / naive = {t_scan / t_naive:.3f} > {args.max_ratio}")

        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for failure in failures:
            print(f"FAIL: {failure}")
        if not failures:
            print("OK")
        return 1 if failures else 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
