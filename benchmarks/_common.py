"""What the benchmarks share: this checkout's code first on sys.path, a command of Python's run
in a work directory and timed (`python -m hpcjobs ...`), and the wait for a sweep to end.

The scripts beside it ``import _common`` (``python benchmarks/X.py`` puts benchmarks/ on
sys.path) before they import hpcjobs: importing it puts the repository first on sys.path, so
that a benchmark measures this checkout's hpcjobs, not the one installed.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from hpcjobs.results.status import SweepStatus


@dataclass(frozen=True)
class Ran:
    """A command that ran: its wall time, its CPU time (user + system, its children's included:
    on a loaded machine the wall time is mostly waiting for a core) and what it printed."""

    wall_s: float
    cpu_s: float
    proc: subprocess.CompletedProcess[str]


def python(workdir: Path, *argv: str, env: Mapping[str, str] | None = None) -> Ran:
    """Run `python ARGV` in workdir, timed, with a sweep registry of its own (HPCJOBS_STATE_DIR
    under workdir: "the latest sweep" is never another run's) and `env` over this process's
    environment; the code imported is this checkout's (:func:`this_checkout`)."""
    full_env = {
        **os.environ,
        "PYTHONPATH": this_checkout(),
        "HPCJOBS_STATE_DIR": str(workdir / "state"),
        **(env or {}),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *argv], cwd=workdir, env=full_env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Ran(wall, cpu, proc)


def this_checkout() -> str:
    """The PYTHONPATH a command (and its jobs, which inherit it) imports this checkout's code
    with: REPO first, unless the caller put another hpcjobs first (overhead.py --baseline)."""
    current = os.environ.get("PYTHONPATH", "")
    first = current.split(os.pathsep)[0]
    if first and (Path(first) / "hpcjobs").is_dir():
        return current
    return os.pathsep.join(filter(None, [str(REPO), current]))


def hpcjobs(
    workdir: Path, *args: str, check: bool = True, env: Mapping[str, str] | None = None
) -> Ran:
    """Run `python -m hpcjobs ARGS` in workdir (see :func:`python`); exits with the end of its
    output when it fails, unless check=False."""
    ran = python(workdir, "-m", "hpcjobs", *args, env=env)
    out, err = ran.proc.stdout, ran.proc.stderr
    if check and ran.proc.returncode != 0:
        raise SystemExit(f"hpcjobs {' '.join(args)} failed:\n{out[-3000:]}\n{err[-3000:]}")
    return ran


def noop_sweep_on_slurm(
    workdir: Path, name: str, n: int, *overrides: str, env: Mapping[str, str] | None = None
) -> Ran:
    """Submit a sweep of N `noop` runs (seed=range(0,N)) named NAME to the dev cluster, in
    workdir/NAME, with `overrides` (see :func:`hpcjobs`); it detaches once they are queued."""
    return hpcjobs(
        workdir,
        "workload=noop",
        "--multirun",
        "hydra/launcher=hpcjobs_slurm",
        f"experiment_name={name}",
        f"seed=range(0,{n})",
        *overrides,
        f"hydra.sweep.dir={workdir / name}",
        env=env,
    )


def wait_done(sweep_dir: Path, timeout: float, every: float = 1.0) -> SweepStatus:
    """Poll the sweep's status every `every` s until each of its tasks has ended; exits when
    `timeout` s pass first."""
    from hpcjobs.results import status  # after REPO is on sys.path (and only where it waits)

    deadline = time.monotonic() + timeout
    while True:
        st = status.sweep_status(sweep_dir)
        if st.done:
            return st
        if time.monotonic() > deadline:
            raise SystemExit(f"{sweep_dir}: not done after {timeout:.0f} s: {st.counts}")
        time.sleep(every)
