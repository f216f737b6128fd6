"""Distributed data parallel training, locally: two CPU processes (gloo) joined through env://,
as the job starts them on a node (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpcjobs.sweepdir import runfiles
from hpcjobs.workloads.cnn.model import build_model
from hpcjobs.workloads.cnn.train import TIMING_METRICS, step_loss

CONF_DIR = Path(__file__).resolve().parents[1] / "hpcjobs" / "conf"
# digits with its augmentation, Adam: about 0.93 test accuracy, +-0.015 over seeds, in a second.
TINY = (
    "data=digits",
    "model.channels=[8,16]",
    "model.hidden=32",
    "model.dropout=0.1",
    "optimizer.lr=0.01",
    "trainer.epochs=6",
    "trainer.batch_size=32",
    "trainer.num_threads=1",
)

# One rank: compose the run config, train, write what it returned as JSON. Asked to stop, it
# starts the run again at once, as a requeued task would (its RNGs scrambled first: the
# checkpoint must restore them), and records the stop message and the second attempt.
RANK = """
import dataclasses, json, os, sys
import torch
from hydra import compose, initialize_config_dir
from hpcjobs.config import schema
from hpcjobs.run.context import RunContext, RunInterrupted
from hpcjobs.workloads.cnn.train import train_and_evaluate

conf_dir, overrides, run_dir, out, stop_rank, stop_check = sys.argv[1:]
with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
    cfg = schema.typed(compose("config", overrides=json.loads(overrides)))
rank = int(os.environ["RANK"])
checks = iter(range(10**6))
stop = lambda: rank == int(stop_rank) and next(checks) >= int(stop_check)  # one rank asked to stop
history = []
ctx = RunContext(run_dir=run_dir, log_epoch=history.append, stop_requested=stop, rank=rank,
                 local_rank=int(os.environ["LOCAL_RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
result = {}
try:
    metrics = train_and_evaluate(cfg, ctx)
except RunInterrupted as exc:
    result["stopped"], history[:] = str(exc), []
    torch.manual_seed(12345)
    os.environ["MASTER_PORT"] = os.environ["RESTART_PORT"]  # a new rendezvous, as on a requeue
    metrics = train_and_evaluate(cfg, dataclasses.replace(ctx, stop_requested=lambda: False))
with open(out, "w") as f:
    json.dump({**result, "metrics": metrics, "history": history}, f)
"""


# ------------------------------------------------------------------------- sharding, in one process


@pytest.mark.parametrize(("num_classes", "n", "world"), [(10, 7, 2), (2, 7, 3), (10, 2, 3)])
def test_the_ranks_shares_average_to_the_global_batchs_gradient(compose_run, num_classes, n, world):
    """Each rank takes batch[rank::world] (uneven, even empty); DDP averages their gradients: the
    result must be the gradient of the whole batch's mean loss, as one process computes it."""
    torch.manual_seed(0)
    model = build_model(
        compose_run("model.channels=[4]", "model.hidden=8").model, 1, 8, num_classes
    )
    x, y = torch.rand(n, 1, 8, 8), torch.randint(0, num_classes, (n,))

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return torch.autograd.grad(loss, list(model.parameters()))

    whole = grads(step_loss(num_classes, 1)(model(x), y, n))
    loss_of = step_loss(num_classes, world)
    shares = [grads(loss_of(model(x[r::world]), y[r::world], n)) for r in range(world)]
    averaged = [sum(g) / world for g in zip(*shares)]  # what DDP's all_reduce leaves on every rank
    for a, b in zip(averaged, whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- two processes


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]  # all bound at once: n different ports
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_ranks(
    tmp_path: Path,
    name: str,
    overrides: tuple[str, ...],
    run_dirs: list[Path],
    stop_rank: int = -1,
    stop_check: int = 0,
    device: str = "cpu",
) -> list[dict]:
    """Start one process per run_dirs entry (rank r in run_dirs[r]) and wait for all of them."""
    world = len(run_dirs)
    port, restart_port = _free_ports(2)
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RESTART_PORT": str(restart_port),
        "WORLD_SIZE": str(world),
    }
    outs = [tmp_path / f"{name}_rank{r}.json" for r in range(world)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(CONF_DIR),
             json.dumps([*overrides, f"trainer.device={device}"]),
             str(run_dirs[r]), str(outs[r]), str(stop_rank), str(stop_check)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for r in range(world)
    ]  # fmt: skip
    try:
        logs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{logs[r][-3000:]}"
    return [json.loads(out.read_text()) for out in outs]


def _without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_METRICS}


def _rows(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory) -> list[dict]:
    tmp_path = tmp_path_factory.mktemp("ddp")
    run_dirs = [tmp_path / "rank0", tmp_path / "rank1"]
    results = run_ranks(tmp_path, "undisturbed", TINY, run_dirs)
    return [*results, *[(d / runfiles.CHECKPOINT_FILE).exists() for d in run_dirs]]


@pytest.mark.slow
def test_two_cpu_ranks_agree_and_only_rank_0_saves(undisturbed):
    rank0, rank1, saved0, saved1 = undisturbed
    m0, m1 = rank0["metrics"], rank1["metrics"]
    assert m0["world_size"] == m1["world_size"] == 2 and m0["device"] == "cpu"
    # The same weights on both ranks: the same test figures; the epoch figures are the global ones.
    assert _without_timing(m0) == _without_timing(m1)
    assert _rows(rank0["history"]) == _rows(rank1["history"]) and len(rank0["history"]) == 6
    # Only rank 0 writes a checkpoint (each rank ran in a directory of its own here).
    assert saved0 and not saved1


@pytest.mark.slow
def test_two_cpu_ranks_take_the_steps_one_process_takes(one_process_reference, tmp_path):
    """trainer.batch_size is the global batch: two ranks, each on its half, end with the weights
    and the per-epoch losses of one process on the whole batch."""
    run_dirs = [tmp_path / "rank0", tmp_path / "rank1"]
    rank0, _ = run_ranks(tmp_path, "exact", one_process_reference.overrides, run_dirs)
    assert rank0["metrics"]["train_images"] == one_process_reference.metrics["train_images"]
    one_process_reference.assert_reproduced_by(
        run_dirs[0] / runfiles.CHECKPOINT_FILE, rank0["history"]
    )


@pytest.mark.slow
def test_a_stop_on_one_rank_stops_both_and_they_resume_to_the_same_metrics(undisturbed, tmp_path):
    # Rank 1 alone is asked to stop at its 46th check (epoch 2, after 5 of its 40 steps); rank 0
    # must stop after the same step rather than wait in the next all_reduce.
    run_dir = tmp_path / "run"  # shared, as on a node: rank 0 saves, both ranks read
    resumed = run_ranks(tmp_path, "stopped", TINY, [run_dir, run_dir], stop_rank=1, stop_check=45)
    assert [r["stopped"] for r in resumed] == ["stopped in epoch 2 after step 5 of 40"] * 2
    rank0 = undisturbed[0]
    for r in resumed:
        assert _without_timing(r["metrics"]) == _without_timing(rank0["metrics"])
        # epoch 1 was logged by the first attempt
        assert _rows(r["history"]) == _rows(rank0["history"])[1:]
    # What rank 0 saved last (after epoch 6) holds every rank's RNG states and sums.
    saved = torch.load(run_dir / runfiles.CHECKPOINT_FILE, weights_only=True)
    assert len(saved["ranks"]) == 2 and all("augment" in r and "torch" in r for r in saved["ranks"])
    assert (saved["epoch"], saved["seen"]) == (7, 1257)  # the last epoch's images, both ranks'


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_cuda_ranks_nccl(tmp_path):
    results = run_ranks(
        tmp_path, "cuda", TINY, [tmp_path / "rank0", tmp_path / "rank1"], device="cuda"
    )
    devices = [r["metrics"]["device"] for r in results]
    assert devices[0].startswith("cuda:0") and devices[1].startswith("cuda:1")
    assert all(r["metrics"]["world_size"] == 2 for r in results)
    assert results[0]["metrics"]["test_accuracy"] > 0.8
