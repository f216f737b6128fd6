"""Does trainer.precision=auto pick the faster precision? The CNN in fp32 and bf16, per image size.

Run from the repository root (no cluster needed; meaningful on a CPU with native bf16):

    python benchmarks/auto_precision.py [--rounds 5] [--threads 1]

For digits (8x8, the README's data) and synthetic 3-channel images of 16x16 and 32x32, it
trains one epoch of the workload itself (`train_and_evaluate`, the default model, Adam,
batch 64) in fp32 and in bf16, alternating which goes first each round, and reports the
median over rounds of bf16's training images/s over fp32's (the workload's own
train_images_per_second). Then what `auto` picks for each size on this machine, and whether
that choice is the faster one (within 5 %). Exit status 1 when auto picks the slower one.
One thread by default: what each of several runs sharing a node gets.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from hpcjobs.config import schema  # noqa: E402
from hpcjobs.run.context import RunContext  # noqa: E402
from hpcjobs.workloads.cnn.train import resolve_precision, train_and_evaluate  # noqa: E402

CASES = {
    8: ["data=digits"],
    16: ["data=synthetic", "data.image_size=16", "data.channels=3", "data.num_samples=1400"],
    32: ["data=synthetic", "data.image_size=32", "data.channels=3", "data.num_samples=700"],
}
TOLERANCE = 0.05  # a choice within 5 % of the faster one is not a wrong choice on a noisy VM


def images_per_second(overrides: list[str], precision: str, threads: int) -> float:
    with initialize_config_dir(config_dir=str(REPO / "hpcjobs" / "conf"), version_base="1.3"):
        cfg = schema.typed(compose("config", overrides=[
            *overrides, f"trainer.precision={precision}", "trainer.device=cpu", "trainer.epochs=1",
            "trainer.val_steps=1", f"trainer.num_threads={threads}"]))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="auto_precision_") as run_dir:
        return float(
            train_and_evaluate(cfg, RunContext(run_dir=Path(run_dir)))["train_images_per_second"]
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    print(f"{'images':>8} {'bf16 / fp32':>12} {'auto picks':>11}  why")
    wrong = 0
    for size, overrides in CASES.items():
        images_per_second(overrides, "fp32", args.threads)  # warm-up: imports, data, oneDNN kernels
        ratios = []
        for r in range(args.rounds):
            order = ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")
            speed = {p: images_per_second(overrides, p, args.threads) for p in order}
            ratios.append(speed["bf16"] / speed["fp32"])
        ratio = statistics.median(ratios)
        picked, why = resolve_precision("auto", torch.device("cpu"))
        faster = "bf16" if ratio > 1 else "fp32"
        ok = picked == faster or abs(ratio - 1) <= TOLERANCE
        wrong += not ok
        print(
            f"{size:>6}px {ratio:>12.2f} {picked:>11}  {why}{'' if ok else '  <- the slower one'}",
            flush=True,
        )
    raise SystemExit(1 if wrong else 0)


if __name__ == "__main__":
    main()
