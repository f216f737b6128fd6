"""An Optuna study against the grid: what each picks, judged on test, and the training it takes.

Goal (the issue): on the 8x8 `digits` CNN, the study `cnn_optuna` (30 TPE trials, median
pruning, the best re-run with 3 more seeds) reaches within 0.5 points of the grid
`cnn_sweep`'s best run (3 optimizers x 3 learning rates x 3 seeds = 27 runs x 20 epochs =
540 epochs) in at most half the grid's training: study epochs / 540 <= 0.5.

Both select on validation (best_val_accuracy: the study's objective, and the grid's ranking
in collect) and are judged on test (test_accuracy), which neither selection reads.

From the repository root (no cluster needed; both run locally with workers=2, one after the
other, in a temporary directory):

    python benchmarks/optuna_vs_grid.py                       # the grid, then the study (seed 0)
    python benchmarks/optuna_vs_grid.py --seeds 0 1 2         # the study once per sampler seed
    python benchmarks/optuna_vs_grid.py --grid DIR --study DIR [--study DIR ...]   # recompute only
    python benchmarks/optuna_vs_grid.py --keep DIR --json out.json
    python benchmarks/optuna_vs_grid.py --grid-override seed=0 --study-override \
        hydra.sweeper.n_trials=4      # a reduced run: a smoke test, a time per run

Figures, from each run directory's metrics.json (status, best_val_accuracy, test_accuracy),
history.csv (one row per epoch trained) and trial.json (the study's trials; role "trial" or
"best"):

  grid   best run (validation); its pick: the configuration (optimizer, lr) with the best
         mean validation accuracy over its 3 seeds, judged on test (mean ± std over those
         seeds); total epochs (540); epochs to within 0.5 points of its own best validation
         accuracy: runs ordered by when they ended, epochs summed (history.csv rows) up to
         and including the first run within 0.5 points.
  study  best trial (validation); its pick, the best trial's configuration, re-run with
         fresh seeds (1-3), judged on test (mean ± std over the re-runs only: not the seed it
         was picked on); against the grid's pick on test; epochs to target: trials ordered
         by when they ended, every trial's epochs summed (a pruned trial counts the epochs
         it trained) up to and including the first trial within 0.5 points of the grid's
         best run on validation; that / the grid's total (goal <= 0.5). The re-runs of the
         best come after the 30 trials and are not counted in it (they are in "total
         epochs").
  both   wall: the command's wall time; "to target": seconds from the sweep's first worker
         start to the end of the run that reached it. Secondary: the machine is shared.

"When a run ended": the workers' journal end time (.pools/*/workers/*.jsonl, milliseconds),
else metrics.json's finished_at (whole seconds), ties by task index. Epochs of runs still
in flight when the target run ended are not counted, on either side (with 2 workers, at most
one run's worth). Validation and test sets have 270 images each (one image is 0.37 points,
so "within 0.5 points" allows one image fewer than the best). TPE with parallel workers is
not deterministic: --seeds gives the spread over sampler seeds (hydra.sweeper.sampler.seed).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpcjobs.sweepdir import manifest  # noqa: E402  (after the repo is on sys.path)

SELECT, REPORT = "best_val_accuracy", "test_accuracy"  # what both select on; what judges them
WITHIN = 0.005  # 0.5 points of accuracy
GOAL = 0.5  # study epochs to target / grid epochs
EPS = 1e-9
GRID = ["experiment=cnn_sweep"]
STUDY = ["experiment=cnn_optuna"]


@dataclass
class Run:
    index: int
    status: str
    val: float | None  # SELECT, validation (completed runs)
    test: float | None  # REPORT (completed runs)
    epochs: int  # history.csv rows: epochs trained
    ended: float  # epoch seconds
    config: str  # its configuration without the seed
    seed: int | None
    role: str | None = None  # study: trial | best
    trial: int | None = None


def run_sweep(workdir: Path, sweep_dir: Path, overrides: list[str], workers: int) -> float:
    """Run `python -m hpcjobs ... --multirun` locally; its wall time."""
    env = {**os.environ, "HPCJOBS_STATE_DIR": str(workdir / "state")}
    cmd = [
        sys.executable,
        "-m",
        "hpcjobs",
        *overrides,
        "--multirun",
        "hydra/launcher=hpcjobs_local",
        f"hydra.launcher.workers={workers}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    # The exit status is 1 when a run failed: judge by the runs themselves.
    if sweep_dir.is_dir():  # not when the command failed before making it
        (sweep_dir / "benchmark_command.log").write_text(
            " ".join(cmd)
            + f"\nexit {proc.returncode}, {elapsed:.1f} s\n"
            + proc.stdout
            + proc.stderr
        )
    if not manifest.exists(sweep_dir):
        raise SystemExit(
            f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
    return elapsed


def journal_times(sweep_dir: Path) -> tuple[dict[int, float], float | None]:
    """Each task's last end time and the first worker start, from the workers' journals."""
    ends: dict[int, float] = {}
    starts: list[float] = []
    for path in sweep_dir.glob(".pools/*/workers/*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            if event.get("event") == "end" and isinstance(event.get("task"), int):
                ends[event["task"]] = max(ends.get(event["task"], 0.0), float(event["time"]))
            elif event.get("event") == "start":
                starts.append(float(event["time"]))
    return ends, min(starts, default=None)


def read_runs(sweep_dir: Path) -> tuple[list[Run], float | None]:
    """The sweep's ended runs, in the order they ended; the time the first worker started."""
    sweep = manifest.read(sweep_dir)
    ends, first_start = journal_times(sweep_dir)
    runs = []
    for task in sweep.tasks:
        run_dir = sweep.run_dir(task)
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except FileNotFoundError:
            continue
        history = run_dir / "history.csv"
        epochs = sum(1 for _ in csv.DictReader(history.open())) if history.exists() else 0
        overrides = list(task.overrides)
        trial_file = run_dir / "trial.json"
        trial = json.loads(trial_file.read_text()) if trial_file.exists() else None
        if trial is not None:
            overrides = list(trial["overrides"])
        seed = next(
            (int(o.split("=", 1)[1]) for o in overrides if o.split("=", 1)[0] == "seed"), None
        )
        config = " ".join(o for o in overrides if o.split("=", 1)[0] not in ("seed", "experiment"))
        ended = ends.get(task.index)
        if ended is None and metrics.get("finished_at"):
            ended = datetime.fromisoformat(metrics["finished_at"]).timestamp()
        done = metrics.get("status") == "completed"
        val, test = (metrics.get(SELECT), metrics.get(REPORT)) if done else (None, None)
        runs.append(
            Run(
                task.index,
                str(metrics.get("status")),
                val,
                test,
                epochs,
                ended or math.inf,
                config,
                seed if seed is not None else metrics.get("seed"),
                trial["role"] if trial else None,
                trial["number"] if trial else None,
            )
        )
    runs.sort(key=lambda r: (r.ended, r.index))
    return runs, first_start


def first_within(runs: list[Run], target: float) -> tuple[int | None, Run | None]:
    """Epochs summed over the runs in order, up to and including the first whose validation
    accuracy reaches target."""
    total = 0
    for run in runs:
        total += run.epochs
        if run.val is not None and run.val >= target - EPS:
            return total, run
    return None, None


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class GridFigures:
    sweep_dir: str
    runs: int
    best_run: float  # validation
    best_config: str  # the pick: by its mean validation accuracy over seeds
    best_config_val_mean: float
    best_config_mean: float  # test, over the same seeds
    best_config_std: float
    best_config_seeds: int
    total_epochs: int
    epochs_to_own_best: int | None
    wall_s: float | None
    wall_to_own_best_s: float | None


@dataclass
class StudyFigures:
    sweep_dir: str
    label: str
    trials: int
    completed: int
    pruned: int
    failed: int
    trial_epochs: int
    total_epochs: int  # trials and re-runs of the best
    best_trial: float | None  # validation
    best_trial_number: int | None
    rerun_config: str | None
    rerun_trial_accuracy: float | None  # the re-run configuration's own trial, on test
    rerun_mean: float | None  # test, over the re-runs (fresh seeds)
    rerun_std: float | None
    rerun_seeds: int
    pick_gap: float | None  # rerun_mean - the grid's pick on test
    target: float  # validation
    epochs_to_target: int | None
    trial_to_target: int | None
    ratio: float | None  # epochs_to_target / grid total epochs
    wall_s: float | None
    wall_to_target_s: float | None
    per_trial: list[dict] = field(default_factory=list)


def grid_figures(sweep_dir: Path, wall: float | None) -> GridFigures:
    runs, first_start = read_runs(sweep_dir)
    done = [r for r in runs if r.val is not None]
    if not done:
        raise SystemExit(f"{sweep_dir}: no completed run")
    best = max(r.val for r in done)
    by_config: dict[str, list[Run]] = {}
    for r in done:
        by_config.setdefault(r.config, []).append(r)
    config = max(by_config, key=lambda c: statistics.fmean(r.val for r in by_config[c]))
    mean, std = mean_std([r.test for r in by_config[config] if r.test is not None])
    val_mean = statistics.fmean(r.val for r in by_config[config])
    epochs, hit = first_within(runs, best - WITHIN)
    return GridFigures(
        str(sweep_dir),
        len(runs),
        best,
        config,
        val_mean,
        mean,
        std,
        len(by_config[config]),
        sum(r.epochs for r in runs),
        epochs,
        wall,
        hit.ended - first_start if hit and first_start else None,
    )


def study_figures(
    sweep_dir: Path, label: str, wall: float | None, grid: GridFigures
) -> StudyFigures:
    runs, first_start = read_runs(sweep_dir)
    trials = [r for r in runs if r.role != "best"]
    reruns = [r for r in runs if r.role == "best"]
    done = [r for r in trials if r.val is not None]
    best = max(done, key=lambda r: r.val) if done else None
    target = grid.best_run - WITHIN
    epochs, hit = first_within(trials, target)
    rerun_acc = [r.test for r in reruns if r.test is not None]
    rerun_trial = next((r for r in trials if reruns and r.trial == reruns[0].trial), None)
    mean, std = mean_std(rerun_acc) if rerun_acc else (None, None)
    count = {s: sum(1 for r in trials if r.status == s) for s in ("completed", "pruned", "failed")}
    return StudyFigures(
        str(sweep_dir),
        label,
        len(trials),
        count["completed"],
        count["pruned"],
        len(trials) - count["completed"] - count["pruned"],
        sum(r.epochs for r in trials),
        sum(r.epochs for r in runs),
        best.val if best else None,
        best.trial if best else None,
        reruns[0].config if reruns else None,
        rerun_trial.test if rerun_trial else None,
        mean,
        std,
        len(rerun_acc),
        mean - grid.best_config_mean if mean is not None else None,
        target,
        epochs,
        hit.trial if hit else None,
        epochs / grid.total_epochs if epochs is not None else None,
        wall,
        hit.ended - first_start if hit and first_start else None,
        [asdict(r) for r in runs],
    )


def recorded_wall(sweep_dir: Path) -> float | None:
    """The wall time this script recorded when it ran the sweep (benchmark_command.log), if any."""
    try:
        line = (sweep_dir / "benchmark_command.log").read_text().splitlines()[1]  # "exit N, X s"
        return float(line.split(", ")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def label_of(sweep_dir: Path) -> str:
    """'seed N' for a sweep this script ran (study_seedN_<time>), else the directory's name."""
    parts = sweep_dir.name.split("_")
    return (
        f"seed {parts[1][4:]}"
        if len(parts) > 1 and parts[0] == "study" and parts[1].startswith("seed")
        else sweep_dir.name[:20]
    )


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def num(x: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--grid", type=Path, help="a finished cnn_sweep directory: do not run the grid"
    )
    parser.add_argument(
        "--study",
        type=Path,
        action="append",
        default=[],
        help="a finished cnn_optuna directory (repeatable): do not run the study",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="run the study once per sampler seed (hydra.sweeper.sampler.seed); default 0",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="hydra.launcher.workers for both (default 2)"
    )
    parser.add_argument(
        "--study-override",
        action="append",
        default=[],
        help="an extra override for the study runs, e.g. hydra.sweeper.pruner.n_warmup_steps=6",
    )
    parser.add_argument(
        "--grid-override",
        action="append",
        default=[],
        help="an extra override for the grid, e.g. seed=0 (a reduced run)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="run the sweeps in this directory and keep them (default: a "
        "temporary directory, removed at the end)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="optuna_vs_grid_", ignore_cleanup_errors=True) as tmp:
        workdir = (args.keep or Path(tmp)).absolute()
        workdir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d_%H%M%S")
        grid_wall = None
        if args.grid is None:
            args.grid = workdir / f"grid_{stamp}"
            print(f"cnn_sweep (workers={args.workers}) ...", flush=True)
            grid_wall = run_sweep(workdir, args.grid, [*GRID, *args.grid_override], args.workers)
        grid = grid_figures(
            args.grid.absolute(), grid_wall if grid_wall is not None else recorded_wall(args.grid)
        )
        studies = [(d.absolute(), label_of(d), recorded_wall(d)) for d in args.study]
        if not args.study:
            for seed in args.seeds:
                sweep_dir = workdir / f"study_seed{seed}_{stamp}"
                print(f"cnn_optuna (sampler seed {seed}, workers={args.workers}) ...", flush=True)
                wall = run_sweep(
                    workdir,
                    sweep_dir,
                    [*STUDY, f"hydra.sweeper.sampler.seed={seed}", *args.study_override],
                    args.workers,
                )
                studies.append((sweep_dir, f"seed {seed}", wall))
        results = [study_figures(d, label, wall, grid) for d, label, wall in studies]

    g = grid
    print(
        f"\ngrid cnn_sweep ({g.runs} runs): best run {pct(g.best_run)} on validation;"
        f" its pick [{g.best_config}] (validation {pct(g.best_config_val_mean)}) on test:"
        f" {pct(g.best_config_mean)} ± {pct(g.best_config_std)} over {g.best_config_seeds} seeds;"
        f" {g.total_epochs} epochs, within 0.5 points of its best after"
        f" {num(g.epochs_to_own_best)}; wall {num(g.wall_s, '{:.1f}')} s"
    )
    print(
        f"target: validation accuracy >= {pct(g.best_run - WITHIN)}"
        " (the grid's best run - 0.5 points)\n"
    )
    print(
        f"{'sweep':<14} {'best run':>8} {'pick on test (n)':>23} {'vs grid':>7} {'epochs':>7}"
        f" {'to target':>9} {'x grid':>6} {'goal':>6} {'wall s':>7} {'to target s':>11}"
    )
    own = g.epochs_to_own_best and g.epochs_to_own_best / g.total_epochs
    pick = f"{pct(g.best_config_mean)}±{pct(g.best_config_std)}"
    print(
        f"{'grid':<14} {pct(g.best_run):>8} {pick:>18}"
        f" ({g.best_config_seeds}) {'':>7} {g.total_epochs:>7} {num(g.epochs_to_own_best):>9}"
        f" {num(own, '{:.2f}'):>6} {'':>6}"
        f" {num(g.wall_s, '{:.1f}'):>7} {num(g.wall_to_own_best_s, '{:.1f}'):>11}"
    )
    missed = 0
    for s in results:
        ok = s.ratio is not None and s.ratio <= GOAL
        missed += not ok
        cfg = f"{pct(s.rerun_mean)}±{pct(s.rerun_std)}" if s.rerun_mean is not None else "-"
        gap = "-" if s.pick_gap is None else f"{100 * s.pick_gap:+.2f}"
        print(
            f"{'study ' + s.label:<14.26} {pct(s.best_trial):>8} {cfg:>18} ({s.rerun_seeds})"
            f" {gap:>7} {s.total_epochs:>7} {num(s.epochs_to_target):>9}"
            f" {num(s.ratio, '{:.2f}'):>6} {'ok' if ok else 'MISSED':>6}"
            f" {num(s.wall_s, '{:.1f}'):>7} {num(s.wall_to_target_s, '{:.1f}'):>11}"
        )
    print(
        "\n(best run: validation accuracy; pick on test: the grid's best configuration by mean"
        " validation over its seeds, the study's best trial re-run with fresh seeds; vs grid:"
        " points of test accuracy; grid 'to target': within 0.5 points of its own best;"
        f" x grid: study epochs to target / grid epochs, goal <= {GOAL})"
    )
    for s in results:
        print(
            f"study {s.label}: {s.trials} trials ({s.completed} completed, {s.pruned} pruned,"
            f" {s.failed} failed), {s.trial_epochs} trial epochs"
            f" + {s.total_epochs - s.trial_epochs} re-run epochs; target reached by trial"
            f" {num(s.trial_to_target)}; best trial {num(s.best_trial_number)}"
            f" ({pct(s.best_trial)} validation); re-ran [{s.rerun_config}]"
            f" (its trial's own test {pct(s.rerun_trial_accuracy)})"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "grid": asdict(grid),
                    "studies": [asdict(s) for s in results],
                    "within": WITHIN,
                    "goal": GOAL,
                },
                indent=1,
            )
        )
        print(f"figures: {args.json}")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
