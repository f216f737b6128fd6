"""The smallest workload: returns at once. Used for launcher scale tests.

A workload is any importable function ``fn(cfg, ctx) -> dict`` named by a yaml in
``conf/workload/``; the job records the dict it returns in the run's metrics.json.
"""

from __future__ import annotations

import time

from omegaconf import DictConfig

from hpcjobs.run.context import RunContext


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    # `+sleep_s=2`: a run that takes a while (packing and walltime tests, benchmarks).
    # its keys first: get() of a key the config lacks raises and catches inside OmegaConf
    sleep_s = float(cfg.sleep_s or 0) if "sleep_s" in cfg.keys() else 0.0  # noqa: SIM118
    if sleep_s > 0:  # not sleep(0): a syscall that yields the core, when nothing was asked
        time.sleep(sleep_s)
    return {"score": float(cfg.seed)}
