"""Training throughput: the CNN workload's own training loop against a plain PyTorch loop.

Run from the repository root (no cluster needed):

    python benchmarks/workload_throughput.py [--quick] [--device cpu|cuda] [--image-size 64]
        [--batch 32] [--steps 40] [--rounds 7] [--threads N] [--compile]

Both sides train the same model (the workload's ``build_model`` with the default model
config: conv blocks of 32, 64, 128 filters, dense 128) with Adam on the same synthetic
images (``data=synthetic``: 10 classes, 3 channels, augmentation off), batch for batch:

  plain ...     the textbook loop: float32 images already on the device, a contiguous slice
                per step (made channels_last per step where asked), autocast, cross-entropy,
                zero_grad, backward, step;
  workload ...  ``train_and_evaluate`` itself, one epoch of --steps steps, with
                trainer.precision=fp32 and auto (and bf16 where auto is not bf16; with
                --compile also auto + trainer.compile=true): its shuffled uint8 batches,
                to_float, augmentation (a no-op here), step and running sums.

Speed: on a CPU, batch / the mean of the fastest three quarters of the step times (the
workload's steps timed between its per-step ctx.should_stop() calls; a shared VM's pauses
only ever slow a step); on CUDA, images / the whole step loop (the workload's
train_images_per_second: validation and the test pass are outside it), the GPU
synchronised at its end.

Every round runs each variant once (a fresh model each time, caches warm), starting one
further along the list each round, after a warm-up round that is not counted; figures are
medians over the rounds, ratios the median of the per-round ratios. It prints a table and
checks the goals: on a CPU, workload fp32 >= 0.97x plain fp32, workload auto >= 1.5x plain
fp32 (where auto picks bf16) and >= 0.95x the best plain loop; on CUDA, workload auto >= 2x
plain fp32. Exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hpcjobs.config import schema  # noqa: E402  (after the repo is on sys.path)
from hpcjobs.run.context import RunContext  # noqa: E402
from hpcjobs.workloads.cnn.data import load_splits, to_float  # noqa: E402
from hpcjobs.workloads.cnn.model import build_model  # noqa: E402
from hpcjobs.workloads.cnn.train import (  # noqa: E402
    bf16_is_fast,
    cpu_bf16_instructions,
    train_and_evaluate,
)

CONF_DIR = REPO / "hpcjobs" / "conf"
HOLDOUT = 0.05  # validation and test fractions: small, they are not timed


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(
    batch: int, stamps: list[float], total: float, n: int, device: torch.device
) -> float:
    """On a CPU, batch / the mean of the fastest three quarters of the steps (steps run
    synchronously there; a shared VM's pauses only ever slow a step, and fp32 steps on this
    CPU come in a fast and a slow mode that a median would flip between). On a GPU, which
    runs ahead of the host, n / the whole loop."""
    if device.type == "cpu":
        steps = sorted(b - a for a, b in itertools.pairwise(stamps))
        return batch / statistics.fmean(steps[: max(1, len(steps) * 3 // 4)])
    return n / total


def workload_config(args: argparse.Namespace, precision: str, compile: bool):
    train_images = args.steps * args.batch
    num_samples = math.ceil(train_images / (1 - 2 * HOLDOUT)) + 4
    overrides = [
        "data=synthetic", f"data.image_size={args.image_size}", "data.channels=3",
        "data.num_classes=10", f"data.num_samples={num_samples}",
        f"++data.val_fraction={HOLDOUT}", f"++data.test_fraction={HOLDOUT}",
        "optimizer=adam", "trainer.epochs=1", f"trainer.batch_size={args.batch}",
        f"trainer.steps_per_epoch={args.steps}", "trainer.val_steps=1",
        f"trainer.device={args.device}",
        f"trainer.precision={precision}", f"trainer.compile={str(compile).lower()}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return schema.typed(compose("config", overrides=overrides))


def workload(
    args: argparse.Namespace, precision: str, compile: bool = False
) -> Callable[[], tuple[float, dict]]:
    cfg = workload_config(args, precision, compile)

    device = torch.device(args.device)

    def run() -> tuple[float, dict]:
        stamps: list[float] = []

        def step_started() -> bool:  # the workload asks once per step whether to stop
            stamps.append(time.perf_counter())
            return False

        # no checkpoint to resume from
        with tempfile.TemporaryDirectory(prefix="throughput_") as run_dir:
            metrics = train_and_evaluate(
                cfg, RunContext(run_dir=Path(run_dir), stop_requested=step_started)
            )
        n = args.steps * args.batch
        # train_images_per_second: the epoch's images / its step loop, synchronised at the end.
        return images_per_second(
            args.batch, stamps, n / metrics["train_images_per_second"], n, device
        ), metrics

    return run


def plain(
    args: argparse.Namespace, bf16: bool, channels_last: bool
) -> Callable[[], tuple[float, dict]]:
    device = torch.device(args.device)
    cfg = workload_config(args, "fp32", False)
    # the workload's images (cached: loaded once)
    splits = load_splits(cfg.data, cfg.data.split_seed)
    n = args.steps * args.batch
    x, y = to_float(splits.train.x[:n]).to(device), splits.train.y[:n].to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def run() -> tuple[float, dict]:
        torch.manual_seed(0)
        model = build_model(cfg.model, 3, args.image_size, 10).to(
            device, memory_format=memory_format
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
        model.train()
        sync(device)
        start = time.perf_counter()
        stamps = []
        for step in range(args.steps):
            stamps.append(time.perf_counter())
            xb = x[step * args.batch : (step + 1) * args.batch].contiguous(
                memory_format=memory_format
            )
            yb = y[step * args.batch : (step + 1) * args.batch]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        elapsed = time.perf_counter() - start
        return images_per_second(args.batch, stamps, elapsed, n, device), {
            "precision": "bf16" if bf16 else "fp32",
            "channels_last": channels_last,
            "compiled": False,
        }

    return run


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm{major}{minor}), CUDA {torch.version.cuda}"
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    bf16 = ", ".join(cpu_bf16_instructions()) or "no native bf16"
    return f"CPU {caps.get('cpu_name', '')} ({bf16}), {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=None, help="default: 32 on cpu, 256 on cuda")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per variant and round (default: 40 cpu, 100 cuda)",
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also the workload with trainer.compile=true"
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds of a third of the steps: a smoke test"
    )
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    args.batch = args.batch or (256 if cuda else 32)
    args.steps = args.steps or (100 if cuda else 40)
    if args.quick:
        args.rounds, args.steps = 2, max(5, args.steps // 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = (
        True  # the workload sets it on CUDA; the plain loop gets it too
    )
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")

    variants: dict[str, Callable[[], tuple[float, dict]]] = {
        "plain fp32": plain(args, bf16=False, channels_last=False),
        "plain bf16": plain(args, bf16=True, channels_last=False),
        "plain bf16 + channels_last": plain(args, bf16=True, channels_last=True),
        "workload fp32": workload(args, "fp32"),
        "workload auto": workload(args, "auto"),
    }
    if not bf16_is_fast(device):  # elsewhere auto is bf16: the same run twice
        variants["workload bf16"] = workload(args, "bf16")
    if args.compile:
        variants["workload auto + compile"] = workload(args, "auto", compile=True)

    print(f"{describe(device)}, torch {torch.__version__}")
    print(
        f"{args.image_size}x{args.image_size}x3 synthetic images, batch {args.batch}, {args.steps}"
        f" steps per variant, {args.rounds} rounds after a warm-up (medians)",
        flush=True,
    )
    speeds: dict[str, list[float]] = {name: [] for name in variants}
    chosen: dict[str, dict] = {}
    names = list(variants)
    for round_ in range(args.rounds + 1):  # round 0 warms up: oneDNN/cuDNN plans, compilation
        # Each round in another order, so that no variant always follows the same one.
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            images_per_second, info = variants[name]()
            chosen[name] = info
            if round_ > 0:
                speeds[name].append(images_per_second)
    plains = [name for name in variants if name.startswith("plain")]
    per_round_best = [max(speeds[name][r] for name in plains) for r in range(args.rounds)]

    def ratio(name: str, baseline: list[float]) -> float:
        return statistics.median(a / b for a, b in zip(speeds[name], baseline))

    print(
        f"\n{'variant':<28} {'precision':>9} {'ch.last':>7} {'compiled':>8} {'img/s':>8}"
        f" {'x plain fp32':>12} {'x best plain':>12}"
    )
    for name in variants:
        info = chosen[name]
        print(
            f"{name:<28} {info['precision']:>9} {'yes' if info['channels_last'] else 'no':>7}"
            f" {'yes' if info['compiled'] else 'no':>8} {statistics.median(speeds[name]):>8.0f}"
            f" {ratio(name, speeds['plain fp32']):>12.2f} {ratio(name, per_round_best):>12.2f}"
        )

    if "workload bf16" not in variants:
        print("(workload bf16: the same run as workload auto on this device)")

    goals: list[tuple[str, float, float]] = []  # (what, measured, at least)
    if cuda:
        goals.append(
            ("workload auto / plain fp32", ratio("workload auto", speeds["plain fp32"]), 2.0)
        )
    else:
        goals.append(
            ("workload fp32 / plain fp32", ratio("workload fp32", speeds["plain fp32"]), 0.97)
        )
        if bf16_is_fast(device):  # elsewhere auto is fp32 and the speed-ups below cannot happen
            goals.append(
                ("workload auto / plain fp32", ratio("workload auto", speeds["plain fp32"]), 1.5)
            )
        goals.append(("workload auto / best plain", ratio("workload auto", per_round_best), 0.95))
    print("\ngoals:")
    missed = 0
    for what, measured, least in goals:
        ok = measured >= least
        missed += not ok
        print(f"  {what:<28} {measured:5.2f}  (>= {least:g})  {'ok' if ok else 'MISSED'}")
    if args.quick:
        print("(--quick: too few steps for the goals to be reliable)")
    sys.exit(1 if missed and not args.quick else 0)


if __name__ == "__main__":
    main()
