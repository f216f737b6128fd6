"""What packing runs into workers (hydra.launcher.workers) buys: the same sweep with and
without, in one run.

From the repository root, the dev cluster up for the Slurm parts (scripts/dev-cluster up):

    python benchmarks/pack_scale.py                      # all three parts
    python benchmarks/pack_scale.py --parts local        # or: slurm, scale
    python benchmarks/pack_scale.py --quick              # smaller sweeps, a smoke test

Parts (each timed from process start until every run has ended, in one run, alternated):
  local  the README's `cnn_sweep` (27 CNN runs on digits) on this machine, one process per
         run (max_parallel = cores) against `workers=<cores>`; goal <= 0.45x.
  slurm  a 200-run `noop` sweep on the dev cluster, one array task per run against 8
         workers (one array of 8); goal <= 0.2x.
  scale  a 100,000-configuration `noop` sweep submitted to 4 Slurm workers: the command's
         wall time (planning, validation of every value, manifest, sbatch; goal < 10 s)
         and one `python -m hpcjobs status` of it (goal < 2 s; sacct, 4 journals, the
         manifest). The workers are held (sbatch --begin=now+1hour), so that on a 2-core
         machine their noop runs do not compete with what is measured; then cancelled.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import _common  # first: this checkout's hpcjobs on sys.path

from hpcjobs.sweepdir import manifest


def completed(sweep_dir: Path) -> int:
    return sum(
        1
        for m in sweep_dir.glob("*/metrics.json")
        if json.loads(m.read_text())["status"] == "completed"
    )


def local_part(workdir: Path, quick: bool) -> tuple[float, float]:
    cores = os.cpu_count() or 1
    sweep = ["experiment=cnn_sweep", "hydra/launcher=hpcjobs_local"]
    if quick:
        sweep += ["trainer.epochs=2", "seed=0"]
    times = {}
    for label, extra in (
        ("one process per run", []),
        (f"workers={cores}", [f"hydra.launcher.workers={cores}"]),
    ):
        sweep_dir = workdir / f"local_{label.split()[0].split('=')[0]}"
        overrides = [*sweep, *extra, f"hydra.sweep.dir={sweep_dir}"]
        times[label] = _common.hpcjobs(workdir, "--multirun", *overrides).wall_s
        n = len(manifest.read(sweep_dir).tasks)
        print(
            f"  cnn_sweep, {label:<22} {times[label]:7.1f} s"
            f"  ({completed(sweep_dir)}/{n} runs completed)",
            flush=True,
        )
    base, packed = times["one process per run"], times[f"workers={cores}"]
    return base, packed


def slurm_part(workdir: Path, quick: bool) -> tuple[float, float]:
    n = 40 if quick else 200
    times = {}
    for label, extra in (
        ("one array task per run", []),
        ("8 workers", ["hydra.launcher.workers=8"]),
    ):
        name = f"bench_pack_{uuid.uuid4().hex[:6]}"
        sweep_dir = workdir / name
        start = time.perf_counter()
        _common.noop_sweep_on_slurm(workdir, name, n, *extra)
        st = _common.wait_done(sweep_dir, timeout=1200, every=0.5)
        times[label] = time.perf_counter() - start
        print(f"  noop x{n}, {label:<22} {times[label]:7.1f} s  ({st.counts})", flush=True)
    return times["one array task per run"], times["8 workers"]


def scale_part(workdir: Path, quick: bool) -> tuple[float, float]:
    n = 10_000 if quick else 100_000
    name = f"bench_scale_{uuid.uuid4().hex[:6]}"
    sweep_dir = workdir / name
    try:
        submit = _common.noop_sweep_on_slurm(
            workdir,
            name,
            n,
            "hydra.launcher.workers=4",
            "+hydra.launcher.additional_parameters.begin=now+3600",
        ).wall_s
        ran = _common.hpcjobs(workdir, "status", str(sweep_dir), check=False)
        poll, out = ran.wall_s, ran.proc
        counts = out.stdout.splitlines()[1] if out.stdout.count("\n") > 1 else out.stderr[-500:]
        print(
            f"  {n:,} configurations to 4 workers: submitted in {submit:.2f} s; one status:"
            f" {poll:.2f} s  [{counts.strip()}]",
            flush=True,
        )
    finally:
        subprocess.run(["scancel", "-n", name], capture_output=True)
    return submit, poll


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["local", "slurm", "scale"],
        choices=["local", "slurm", "scale"],
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sweeps: checks the benchmark runs"
    )
    args = parser.parse_args()
    if {"slurm", "scale"} & set(args.parts) and shutil.which("sbatch") is None:
        raise SystemExit(
            "no sbatch: start the dev cluster first (scripts/dev-cluster up), or --parts local"
        )

    results = []
    # Cancelled workers may still write while the directory is removed.
    with tempfile.TemporaryDirectory(prefix="pack_scale_", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        if "local" in args.parts:
            print("local (this machine):", flush=True)
            base, packed = local_part(workdir, args.quick)
            results.append(("cnn_sweep, local", base, packed, 0.45))
        if "slurm" in args.parts:
            print("dev cluster:", flush=True)
            base, packed = slurm_part(workdir, args.quick)
            results.append(("noop sweep, Slurm", base, packed, 0.2))
        if "scale" in args.parts:
            print("scale (dev cluster):", flush=True)
            submit, poll = scale_part(workdir, args.quick)
            size = "10k" if args.quick else "100k"
    print(f"\n{'sweep':<20} {'without s':>10} {'workers s':>10} {'ratio':>6} {'goal':>6}")
    missed = False
    for label, base, packed, goal in results:
        verdict = "ok" if packed / base <= goal else "MISSED"
        missed |= verdict == "MISSED"
        print(
            f"{label:<20} {base:>10.1f} {packed:>10.1f}"
            f" {packed / base:>6.2f} {'<=' + str(goal):>6} {verdict}"
        )
    if "scale" in args.parts:
        print(
            f"{'submit ' + size:<20} {submit:>10.2f} s  goal < 10 s"
            f" {'ok' if submit < 10 else 'MISSED'}"
        )
        print(
            f"{'status ' + size:<20} {poll:>10.2f} s  goal < 2 s {'ok' if poll < 2 else 'MISSED'}"
        )
        missed |= submit >= 10 or poll >= 2
    if missed and not args.quick:  # --quick's sizes are too small for the goals
        raise SystemExit(1)


if __name__ == "__main__":
    main()
