"""What resources per configuration cost the login node: planning a sweep with and without
resolving each configuration's launcher settings.

Run from the repository root (no cluster needed):

    python benchmarks/plan_resources.py [--tasks 100000] [--repeat 3]

Plans `experiment=cnn_resources workload=noop` sweeps, as the launcher does before it
submits anything (hpcjobs.config.planning.plan_tasks: compose once per combination of group
choices, type and range-check every value), in this one process, median of --repeat after
one untimed run of each arm, the arms alternated:

  one group     resources=gpu1, N seeds (one combination);
  three groups  resources=cpu,gpu1,gpu2 x N/3 seeds (three combinations, three groups);
  by value      resources=gpu1, N seeds, and mem_gb interpolated from a swept key
                (`+mem=1,2`, `hydra.launcher.mem_gb=${oc.select:mem,1}`): a value override
                of every task reaches the launcher;

each planned without launcher keys (the baseline: planning before this change) and with
them (every launcher key resolved per configuration; what the launcher does now), then
grouped (hpcjobs.launching.groups). Prints the times and the ratio with/without.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import _common  # noqa: F401  (first: this checkout's hpcjobs, not the installed one)
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

import hydra_plugins.hpcjobs_launcher.config  # noqa: F401  (registers hydra/launcher=hpcjobs_slurm)
from hpcjobs.app import CONFIG_DIR
from hpcjobs.config import planning
from hpcjobs.launching import backends, groups

BASE = ["experiment=cnn_resources", "workload=noop"]


def seconds(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.tasks
    cases = {
        "one group": (BASE, [[*BASE, "resources=gpu1", f"seed={i}"] for i in range(n)]),
        "three groups": (
            BASE,
            [
                [*BASE, f"resources={r}", f"seed={i}"]
                for r in ("cpu", "gpu1", "gpu2")
                for i in range(n // 3)
            ],
        ),
        "by value": (
            [*BASE, "hydra.launcher.mem_gb=${oc.select:mem,1}"],
            [[*BASE, "resources=gpu1", f"+mem={1 + i % 2}", f"seed={i}"] for i in range(n)],
        ),
    }
    print(f"{'sweep':<14}{'tasks':>8}{'groups':>8}{'without':>10}{'with':>10}{'ratio':>8}")
    for name, (base, overrides) in cases.items():
        n_groups, before, after = measure(base, overrides, args.repeat)
        print(
            f"{name:<14}{len(overrides):>8}{n_groups:>8}{before:>9.2f}s{after:>9.2f}s"
            f"{after / before:>8.2f}"
        )


def measure(base: list[str], overrides: list[list[str]], repeat: int) -> tuple[int, float, float]:
    """(groups, seconds without launcher keys, seconds with them and grouping)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = compose(
            "config", overrides=[*base, "hydra/launcher=hpcjobs_slurm"], return_hydra_config=True
        )
        with open_dict(config):
            config.hydra.job.config_name = "config"
            # as the launcher finds it: the command line's Hydra overrides, re-applied per task
            config.hydra.overrides.hydra = [
                *(o for o in base if o.startswith("hydra.")),
                "hydra/launcher=hpcjobs_slurm",
            ]
        loader = GlobalHydra.instance().config_loader()
        backend = backends.create("slurm", {})
        found: list[groups.Group] = []

        def without() -> None:
            planning.plan_tasks(loader, config, overrides, 0)

        def with_keys() -> None:
            tasks = planning.plan_tasks(loader, config, overrides, 0, groups.RESOLVED_KEYS)
            found[:] = groups.group_tasks(tasks, backend)

        without(), with_keys()  # untimed: caches warm
        # alternated, so that a neighbour's load falls on both arms alike
        before, after = [], []
        for _ in range(repeat):
            before.append(seconds(without))
            after.append(seconds(with_keys))
        return len(found), statistics.median(before), statistics.median(after)


if __name__ == "__main__":
    main()
