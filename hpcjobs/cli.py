"""The command line: the only code that prints tables or exits.

    hpcjobs [HYDRA OPTIONS] [OVERRIDES]      one run here, or a sweep with --multirun
    hpcjobs status [SWEEP_DIR] [--watch]    where each task stands (default: latest sweep)
    hpcjobs collect SWEEP_DIR... [--out DIR] aggregate sweeps into results/<experiment>/
    hpcjobs report SWEEP_DIR... [--out DIR]  the tables plus report.md and report.html
    hpcjobs export SWEEP_DIR... --to T       the runs into TensorBoard or MLflow

``main(argv)`` returns the exit status instead of exiting, so tests call it directly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hpcjobs import __version__, states
from hpcjobs.errors import ConfigError, HpcjobsError, JobEnds

if TYPE_CHECKING:  # imported lazily at run time: each subcommand loads only what it uses
    from hpcjobs.results.collect import Collection
    from hpcjobs.results.status import StudyProgress, SweepStatus, TaskStatus
    from hpcjobs.results.trials import StudyOverview
    from hpcjobs.sweepdir.manifest import SweepManifest

PROG = "python -m hpcjobs"
SUBCOMMANDS = ("collect", "report", "status", "retry", "export")


# --------------------------------------------------------------------------- Hydra app


def _parse_hydra_args(argv: list[str]) -> tuple[list[str], argparse.Namespace | None]:
    """Reorder argv options-first (Hydra's argparse rejects `a=1 --multirun b=2`) and parse it."""
    from hpcjobs.compat import hydra_args_parser

    try:
        args = hydra_args_parser().parse_intermixed_args(argv)
    except (SystemExit, TypeError):
        return argv, None  # let Hydra itself report the problem
    options = list(argv)
    for item in args.overrides:
        options.remove(item)
    return options + list(args.overrides), args


def run_app(argv: list[str]) -> int:
    """Run the Hydra app; after a local sweep, collect it and print the summary."""
    from hpcjobs.app import CONFIG_DIR, hydra_main
    from hpcjobs.launching import registry

    argv, args = _parse_hydra_args(argv)
    # --help and --hydra-help print Hydra's help text: no config to check (it costs a compose)
    if args is not None and not args.config_path and not (args.help or args.hydra_help):
        from hpcjobs.config.overrides import precheck

        only_inspecting = (
            args.cfg or args.info or args.help or args.hydra_help or args.shell_completion
        )
        checked = precheck(
            list(args.overrides),
            config_dir=CONFIG_DIR,
            config_name=args.config_name or "config",
            user_config_dir=str(Path(args.config_dir).absolute()) if args.config_dir else None,
            single_run=not (args.multirun or only_inspecting),
        )
        # _parse_hydra_args put overrides last
        argv = argv[: len(argv) - len(args.overrides)] + checked
    saved_argv = sys.argv
    sys.argv = [PROG, *argv]
    try:
        with registry.launches() as launched:  # Hydra returns nothing of what its launcher did
            hydra_main()
        status = 0
    except SystemExit as e:  # Hydra exits on errors, after printing them
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except JobEnds as end:  # a run here ended its job (another rank of a stopped distributed run)
        status = end.exit_status if isinstance(end.exit_status, int) else 1
    finally:
        sys.argv = saved_argv
    for sweep_dir in launched:
        status = _after_sweep(sweep_dir) or status
    return status


def _after_sweep(sweep_dir: Path) -> int:
    from hpcjobs.launching import backends
    from hpcjobs.launching.settings import LauncherSettings
    from hpcjobs.results import collect
    from hpcjobs.sweepdir import manifest, written

    sweep = written.last_written(sweep_dir) or manifest.read(sweep_dir)
    if not (
        backends.BACKENDS[sweep.executor].blocking
        or LauncherSettings.from_mapping(sweep.launcher).wait
    ):
        queued = sum(1 for t in sweep.tasks if t.attempts)
        if queued < len(sweep.tasks):
            print(
                f"\nQueued {queued} of {len(sweep.tasks)} tasks; sweep directory: {sweep_dir}",
                file=sys.stderr,
            )
            print(
                f"  the rest, once the queue has room:  {PROG} retry {sweep_dir}", file=sys.stderr
            )
            return 1
        print(f"\nSubmitted {len(sweep.tasks)} tasks; sweep directory: {sweep_dir}")
        print(f"  follow it:   {PROG} status {sweep_dir}")
        print(f"  collect it:  {PROG} collect {sweep_dir}")
        return 0
    collection = collect.collect([sweep_dir])
    paths = _write_outputs(collection, collect.default_out_dir(collection), with_report=True)
    _print_collection(collection, paths)
    # pruned: a result
    failed = sum(n for s, n in collection.counts.items() if s not in states.FINISHED)
    return 1 if failed else 0


# --------------------------------------------------------------------------- collect


def _format_summary(collection: Collection, max_rows: int = 25) -> str:
    from hpcjobs.results import formatting  # the report's wording, so both show the same numbers

    summary = collection.summary
    if summary.empty:
        return "(no runs)"
    shown = summary[
        collection.group_keys
        + ["n_runs", "n_failed"]
        + (["n_pruned"] if "n_pruned" in summary else [])
    ].copy()
    metric, reported = collection.metric, collection.reported
    for name in dict.fromkeys(m for m in (metric, reported) if m and f"{m}_mean" in summary):
        mean, std = summary[f"{name}_mean"], summary[f"{name}_std"]
        shown[f"{name} (mean ± std)"] = [formatting.mean_pm_std(m, s) for m, s in zip(mean, std)]
    if reported and f"{reported}_mean" in summary:  # the interval of what is reported
        mean, low, high = (summary[f"{reported}_{s}"] for s in ("mean", "ci95_low", "ci95_high"))
        n_completed = summary["n_completed"]
        shown[f"{reported} 95% CI"] = [
            formatting.ci_text(m, lo, hi, int(n))
            for m, lo, hi, n in zip(mean, low, high, n_completed)
        ]
    if "train_seconds_mean" in summary:
        shown["train s"] = summary["train_seconds_mean"].map(formatting.fmt_seconds)
    text = shown.head(max_rows).to_string(index=False)
    if len(shown) > max_rows:
        text += f"\n... {len(shown) - max_rows} more groups in summary.csv"
    return text


def _print_collection(collection: Collection, paths: dict[str, Path]) -> None:
    from hpcjobs.results import advice, formatting, trials

    counts = ", ".join(f"{n} {status}" for status, n in sorted(collection.counts.items()))
    print(f"\n{collection.experiment}: {len(collection.runs)} runs ({counts})")
    studies = [
        line
        for study in trials.overviews(collection)
        for line in _format_study(study, len(collection.sweeps))
    ]
    if studies:
        print("\n".join(studies))
    if collection.metric:
        print(f"over seeds, {formatting.selection_text(collection.selection)}; best first:")
    print(_format_summary(collection))
    for problem in collection.problems:
        print(f"warning: {problem}", file=sys.stderr)
    for note in collection.notes:
        print(f"note: {note}", file=sys.stderr)
    cost_line = _format_cost(collection)
    if cost_line:
        print(cost_line)
    hint = advice.workers_hint(collection.runs)
    if hint is not None:  # runs so short that starting each one cost most of the time
        print(f"hint: {hint.text()}")
    # a pruned run is a result
    failed = collection.runs[~collection.runs["status"].isin(states.FINISHED)]
    for _, row in failed.head(5).iterrows():
        error_type = row.get("error_type")
        reason = (
            f"{error_type}: {row.get('error_message')}"
            if isinstance(error_type, str)
            else row["status"]
        )
        print(f"  not completed: task {row['task']} ({row['run_dir']}): {reason}")
    if len(failed) > 5:
        print(f"  ... and {len(failed) - 5} more (see runs.csv)")
    print()
    caveat = formatting.selection_caveat(collection.selection)
    if caveat:
        print(f"note: {caveat}", file=sys.stderr)
    best = collection.best
    if len(best) and isinstance(best.loc[0, "runner_up"], str):
        row = best.iloc[0]
        print(
            f"\nbest: {row['best']}; runner-up: {row['runner_up']}"
            f" (selected on {row['selected_on']}; {formatting.difference_text(row)})"
        )
    print()
    width = max([18, *(len(name) + 1 for name in paths)])
    for name, path in paths.items():
        print(f"{name + ':':<{width}} {path}")


def _format_study(study: StudyOverview, n_sweeps: int) -> list[str]:
    """An adaptive sweep in a few lines: its trials by state, the best one, its seed re-runs."""
    from hpcjobs.results import formatting, trials

    spec, best = study.spec, study.best
    where = f" ({study.sweep.name})" if n_sweeps > 1 else ""
    lines = [
        f"study {spec.name}{where}: {len(study.trials)} of"
        f" {spec.n_trials} trials ({study.counts_text})"
    ]
    if best is None:
        lines.append("  no trial has completed yet: no best trial")
        return lines
    lines.append(
        f"  best: trial {best.number}, {spec.metric} {formatting.fmt(best.value)} (task"
        f" {best.task}): {trials.params_text(best.params)}"
    )
    if spec.rerun_best_seeds:
        mean, std, low, high = study.rerun_stats
        n = len(study.reruns)
        over_seeds = (
            f"{study.reported} {formatting.mean_pm_std(mean, std, n)},"
            f" 95% CI {formatting.ci_text(mean, low, high, n)}"
        )
        lines.append(
            f"  over its {n} re-run seed(s), the trial's own run left out: {over_seeds}"
            if n
            else f"  none of its {spec.rerun_best_seeds} re-runs with other seeds has completed yet"
        )
    return lines


def _format_cost(collection: Collection) -> str:
    """One line: what the runs cost, and how they were measured."""
    from hpcjobs.results import cost, formatting

    total = cost.totals(collection.runs)
    if total is None:
        return ""
    efficiency = formatting.percent(total["cpu_efficiency"])
    return (
        f"cost: {formatting.hours(total['cpu_hours'])} CPU-hours ({efficiency} of them used),"
        f" {formatting.hours(total['gpu_hours'])} GPU-hours; measured by sacct for"
        f" {total['n_sacct']} run(s), by their process for {total['n_process']}"
    )


def _write_outputs(collection: Collection, out: Path, with_report: bool) -> dict[str, Path]:
    from hpcjobs.results import collect

    paths = {f"{name}.csv": path for name, path in collect.write_tables(collection, out).items()}
    if with_report:
        from hpcjobs.results import report

        paths.update(report.write_report(collection, out))
    return paths


def _collect_and_write(args: argparse.Namespace, with_report: bool) -> int:
    from hpcjobs.results import collect

    collection = collect.collect(
        [Path(d) for d in args.sweep_dirs],
        metric=args.metric,
        group_by=args.group_by,
        seed_key=args.seed_key,
        report_metric=args.report_metric,
    )
    out = Path(args.out) if args.out else collect.default_out_dir(collection)
    _print_collection(collection, _write_outputs(collection, out, with_report))
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    return _collect_and_write(args, with_report=False)


def cmd_report(args: argparse.Namespace) -> int:
    return _collect_and_write(args, with_report=True)


# --------------------------------------------------------------------------- status


def _progress_bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} ended"


def format_status(st: SweepStatus, max_tasks: int = 30) -> str:
    """The status report as text: counts, a progress bar, failures with their errors."""
    lines = [
        f"{st.experiment}: {len(st.tasks)} tasks on {st.executor}  ({st.sweep_dir})",
        _progress_bar(st.ended, len(st.tasks)),
    ]
    if st.study is not None:
        lines += _format_study_progress(st.study)
    if st.note:
        lines.append(f"note: {st.note}")
    lines += [f"warning: {w}" for w in st.warnings]
    lines.append("")
    lines.append(f"{'state':<14}{'tasks':>6}  {'nodes':<20}longest elapsed")
    for state, n in st.counts.items():
        members = [t for t in st.tasks if t.state == state]
        nodes = (
            ",".join(sorted({t.node for t in members if t.node and t.node != "None assigned"}))
            or "-"
        )
        longest = max((t.elapsed for t in members if t.elapsed), default="-")
        lines.append(f"{state:<14}{n:>6}  {nodes[:19]:<20}{longest}")
    if st.groups:
        lines += _format_groups(st)
    if len(st.tasks) <= max_tasks:
        lines.append("")
        # an adaptive sweep's: which trial a task runs
        trial = f"{'trial':>5}  " if st.study is not None else ""
        lines.append(
            f"{'task':>5}  {trial}{'state':<13} {'job id':<12}"
            f" {'tries':>5}  {'elapsed':<10} overrides"
        )
        for t in st.tasks:
            shown = " ".join(o for o in t.overrides if not o.startswith("hydra"))
            if st.study is not None:
                label = "best" if t.role == "best" else t.trial if t.trial is not None else "-"
                trial = f"{label:>5}  "
            lines.append(
                f"{t.index:>5}  {trial}{t.state:<13} {t.job_id or '-':<12} {t.attempts or '-':>5}  "
                f"{t.elapsed or '-':<10} {shown}"
            )
    failed_under = [t for t in st.tasks if t.node_failures]
    if failed_under:
        lines.append("")
        lines.append(f"{len(failed_under)} task(s) lost a node under them:")
        lines += [f"  {line}" for t in failed_under[:max_tasks] for line in _node_failure_lines(t)]
        if len(failed_under) > max_tasks:
            lines.append(f"  ... and {len(failed_under) - max_tasks} more")
    problems = [t for t in st.tasks if t.error and t.state in states.UNSUCCESSFUL]
    if problems:
        lines.append("")
        lines.append(f"{len(problems)} task(s) did not complete:")
        for t in problems[:max_tasks]:
            first = t.error.splitlines()
            lines.append(f"  task {t.index} ({t.state}): {first[0] if first else ''}")
            lines += [f"      {extra}" for extra in first[1:]]
            lines.append(
                f"      run dir: {t.run_dir}" + (f"   log: {t.log_path}" if t.log_path else "")
            )
    if st.workers_hint is not None:  # runs so short that starting each one cost most of the time
        lines.append("")
        lines.append(f"hint: {st.workers_hint.text()}")
    retryable = st.retryable()
    if retryable:
        lines.append("")
        lines.append(
            f"{len(retryable)} task(s) can run again (never a"
            f" completed one):  {PROG} retry {st.sweep_dir}"
        )
    if st.done:
        lines.append("")
        lines.append(f"All {len(st.tasks)} tasks have ended. Collect them with:")
        lines.append(f"  {PROG} collect {st.sweep_dir}")
    return "\n".join(lines)


def _node_failure_lines(task: TaskStatus) -> list[str]:
    """'task 3 (12_3) n1: NODE_FAIL at 17:42:03, requeued, now on n2 (running)', one per failure."""
    lines = []
    for failure in task.node_failures:
        at = failure.ended_at.replace("T", " ")[-8:] or "?"
        line = f"task {task.index} ({failure.job_id}) {failure.node}: NODE_FAIL at {at}, "
        if failure is task.node_failures[-1] and task.state == states.NODE_FAIL:
            line += "not requeued: `retry` resumes it from its checkpoint"
        else:  # Slurm requeued it (JobRequeue): the same job id, on whichever node it got
            now = "now" if task.state in (states.PENDING, states.RUNNING) else "then"
            where = f" on {task.node}" if task.node and task.node != "None assigned" else ""
            line += f"requeued, {now}{where} ({task.state})"
        lines.append(line)
    return lines


def _format_groups(st: SweepStatus) -> list[str]:
    """Resources per configuration: each group's tasks, what it asks and its arrays (status)."""
    width = max(9, *(len(g.name) for g in st.groups))
    part = max(9, *(len(g.partition) for g in st.groups))
    gres = max(4, *(len(g.gres) for g in st.groups))
    lines = [
        "",
        f"{'resources':<{width}} {'tasks':>5} {'ended':>5}  {'partition':<{part}}  {'gres':<{gres}}"
        f"  {'job ids':<12} asks",
    ]
    for g in st.groups:
        arrays = ",".join(g.arrays) or "-"
        lines.append(
            f"{g.name:<{width}} {g.tasks:>5} {g.ended:>5}  {g.partition or '-':<{part}}"
            f"  {g.gres or '-':<{gres}}  {arrays:<12} {g.asks}"
        )
    return lines


def _format_study_progress(study: StudyProgress) -> list[str]:
    """An adaptive sweep's trials by state, and its best so far (status)."""
    from hpcjobs.results import formatting

    counts = study.counts
    # Always completed, pruned and failed (what users scan for); other ends only when they happened.
    shown = [states.COMPLETED, states.PRUNED, states.FAILED]
    shown += [
        s
        for s in states.TASK_STATES
        if s in states.UNSUCCESSFUL and s not in shown and counts.get(s)
    ]
    ended = ", ".join(f"{counts.get(s, 0)} {s}" for s in shown)
    running = counts.get(states.RUNNING, 0)
    waiting = study.n_trials - study.ended - running
    line = f"trials: {study.ended} of {study.n_trials} ended ({ended}), {running} running"
    line += f", {waiting} waiting" if waiting > 0 else ""
    if study.reruns:
        line += f"; re-runs of the best: {study.reruns_ended} of {study.reruns} ended"
    lines = [line]
    if study.best_trial is not None or study.best_value is not None:
        params = " ".join(_short_override(o) for o in study.best_params)
        lines.append(
            f"best so far: trial {study.best_trial} (task {study.best_task}), {study.metric}"
            f" {formatting.fmt(study.best_value)} ({study.direction}): {params}"
        )
    else:
        lines.append("best so far: none (no trial has completed yet)")
    return lines


def _short_override(override: str, digits: int = 4) -> str:
    """'optimizer.lr=0.0011252447990827477' -> 'optimizer.lr=0.001125' (full values: trial.json)."""
    key, sep, raw = override.partition("=")
    try:
        value = float(raw)
    except ValueError:
        return override
    return f"{key}{sep}{value:.{digits}g}" if "." in raw or "e" in raw.lower() else override


def cmd_retry(args: argparse.Namespace) -> int:
    from hpcjobs.launching import registry, snapshot, submission
    from hpcjobs.results import status
    from hpcjobs.run.task import TaskRunner
    from hpcjobs.run.worker import WorkerRunner
    from hpcjobs.sweepdir import manifest

    sweep_dir = Path(args.sweep_dir) if args.sweep_dir else registry.latest_sweep()
    changes = dict(_setting(item) for item in args.set or ())
    if "snapshot" in changes:
        raise ConfigError(
            "--set snapshot: a snapshot is taken when a sweep is submitted; a retry runs the code"
            " its sweep was submitted with (its snapshot, if it took one)"
        )
    before = status.sweep_status(sweep_dir)
    unknown = sorted(set(args.only or ()) - states.RETRYABLE)
    if unknown:
        raise ConfigError(
            f"--only {' '.join(unknown)}: not a state a retry runs again; "
            f"choose among {', '.join(sorted(states.RETRYABLE))}"
        )
    chosen = before.retryable(args.only or ())
    for warning in before.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    active = sum(1 for t in before.tasks if t.state in (states.PENDING, states.RUNNING))
    print(
        f"{before.experiment}: {len(chosen)} of {len(before.tasks)} tasks to run again"
        + (f" ({active} still pending or running: left alone)" if active else "")
    )
    for index, state in sorted(chosen.items()):
        task = next(t for t in before.tasks if t.index == index)
        print(f"  task {index} ({state}, attempt {task.attempts + 1}): {' '.join(task.overrides)}")
    submitted = manifest.read(sweep_dir)
    excluded = _failing_nodes(submitted, args.include_node or ()) if chosen else {}
    if not chosen or args.dry_run:
        return 0
    frozen = snapshot.latest(sweep_dir, submitted.provenance)
    # The tasks import the sweep's snapshot again, where it took one (else the working tree).
    with snapshot.exported(snapshot.environment(frozen, Path(submitted.cwd)) if frozen else {}):
        backend, sweep, _ = submission.resubmit(
            sweep_dir,
            chosen,
            changes,
            submission.Runners(task=TaskRunner, worker=WorkerRunner),
            excluded,
        )
    if backend.blocking:  # local: the runs have finished; show the sweep as it now stands
        return _after_sweep(sweep_dir)
    new_pools = sweep.pools[len(submitted.pools) :]  # a pool per resources group
    how = f" to {sum(p.workers for p in new_pools)} worker(s)" if new_pools else ""
    print(f"resubmitted {len(chosen)} task(s){how}; follow them:  {PROG} status {sweep_dir}")
    return 0


def _failing_nodes(sweep: SweepManifest, include: Sequence[str]) -> dict[str, str]:
    """The nodes a retry leaves out (node -> why), each said, with how to keep it in."""
    from hpcjobs.launching import failing_nodes

    failures, note = failing_nodes.node_failures(sweep)
    if note:
        print(f"note: which nodes failed this sweep's tasks is unknown ({note})", file=sys.stderr)
    excluded, kept = failing_nodes.exclusion(failures, include)
    for node, why in excluded.items():
        print(
            f"excluding {node} (sbatch --exclude): it failed this sweep's tasks"
            f" {failing_nodes.EXCLUDE_AFTER}+ times ({why}); keep it in: --include-node {node}"
        )
    for node, why in kept.items():
        print(f"keeping {node} in (--include-node), though it failed this sweep's tasks ({why})")
    for node in sorted(set(include) - set(kept)):
        print(
            f"warning: --include-node {node}: not a node this retry would exclude (it failed fewer"
            f" than {failing_nodes.EXCLUDE_AFTER} of this sweep's tasks); the sweep's own"
            " exclude is changed with --set exclude=...",
            file=sys.stderr,
        )
    return excluded


def _setting(item: str) -> tuple[str, object]:
    """'timeout_min=120' -> ('timeout_min', 120): a launcher setting for the retry."""
    from hpcjobs.sweepdir.runfiles import parse_scalar

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set timeout_min=120 mem_gb=16")
    return key.removeprefix("hydra.launcher."), parse_scalar(value)


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from hpcjobs.launching import registry
    from hpcjobs.launching.polling import Backoff
    from hpcjobs.results import status

    sweep_dir = Path(args.sweep_dir) if args.sweep_dir else registry.latest_sweep()
    if args.interval <= 0 or args.max_interval <= 0:
        raise ConfigError(
            f"--interval {args.interval} --max-interval"
            f" {args.max_interval}: both must be > 0 seconds"
        )
    backoff = Backoff(args.interval, args.max_interval)
    while True:
        st = status.sweep_status(sweep_dir)
        text = format_status(st)
        if args.watch and sys.stdout.isatty():
            print("\x1b[H\x1b[2J", end="")  # clear the screen between refreshes
        print(text, flush=True)
        if not args.watch or st.done:
            return 0
        # One sacct call per refresh; less often while nothing changes.
        time.sleep(backoff.after([(t.index, t.state) for t in st.tasks]))
        if not sys.stdout.isatty():
            print()


# --------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    from hpcjobs.results import export

    result = export.export(
        [Path(d) for d in args.sweep_dirs],
        args.to,
        out=Path(args.out) if args.out else None,
        tracking_uri=args.tracking_uri,
    )
    for problem in result.problems:
        print(f"warning: {problem}", file=sys.stderr)
    counts = result.counts
    print(
        f"{result.tracker}: {counts.added} run(s) added, {counts.replaced} replaced (they changed"
        f" since), {counts.unchanged} unchanged"
        + (f"; {result.not_started} not started yet" if result.not_started else "")
    )
    print(f"  into: {result.target}")
    print(f"  open: {result.view}")
    return 0


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="the runs into TensorBoard or MLflow (again: only what is new or changed)",
    )
    p.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR", help="one or more sweeps")
    # export.TRACKERS's names (spelt here: importing export loads pandas; a test keeps them equal)
    p.add_argument("--to", required=True, choices=("tensorboard", "mlflow"))
    p.add_argument(
        "--out",
        metavar="DIR",
        help="TensorBoard's log directory, or the folder of MLflow's SQLite store"
        " (default: results/<experiment>/<tracker>/)",
    )
    p.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow: any tracking URI instead (a server, sqlite:///FILE, databricks)",
    )
    p.set_defaults(func=cmd_export)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Collect and inspect hpcjobs sweeps.")
    parser.add_argument("--version", action="version", version=f"hpcjobs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_text in (
        (
            "collect",
            cmd_collect,
            "aggregate sweep directories into runs.csv, summary.csv and best.csv",
        ),
        ("report", cmd_report, "the tables plus report.md and report.html with plots"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "sweep_dirs",
            nargs="+",
            metavar="SWEEP_DIR",
            help="one or more sweep directories (several: compared side by side)",
        )
        p.add_argument(
            "--out", metavar="DIR", help="output directory (default: results/<experiment>/)"
        )
        p.add_argument(
            "--metric",
            help="metric to rank configurations by (default: the workload's"
            " select_metric, else a validation metric such as best_val_accuracy)",
        )
        p.add_argument(
            "--report-metric",
            metavar="METRIC",
            help="metric shown beside it and compared between the best and the runner-up"
            " (default: the selection metric's test counterpart, e.g. test_accuracy)",
        )
        p.add_argument(
            "--group-by",
            nargs="+",
            metavar="KEY",
            help="columns that define a configuration (default: every swept key but the seed)",
        )
        p.add_argument(
            "--seed-key",
            default="seed",
            metavar="KEY",
            help="the key whose runs are repeats of one configuration (default: seed)",
        )
        p.set_defaults(func=func)
    p = sub.add_parser(
        "retry", help="run again the tasks of a sweep that did not complete (never a completed one)"
    )
    p.add_argument(
        "sweep_dir", nargs="?", metavar="SWEEP_DIR", help="default: the latest sweep you launched"
    )
    p.add_argument(
        "--only",
        nargs="+",
        metavar="STATE",
        help=f"only tasks in these states ({', '.join(sorted(states.RETRYABLE))})",
    )
    p.add_argument(
        "--set",
        nargs="+",
        metavar="KEY=VALUE",
        help="launcher settings for the retry, e.g. timeout_min=240 mem_gb=32",
    )
    # One value per flag (NODE or NODE,NODE...), not nargs="+": `retry --include-node n1 DIR`
    # would take DIR for a node and retry the latest sweep instead.
    p.add_argument(
        "--include-node",
        action="extend",
        type=lambda text: [n for n in text.split(",") if n],
        default=[],
        metavar="NODE[,NODE...]",
        help="run on these nodes even though they failed this sweep's tasks twice (a retry"
        " excludes such nodes; the sweep's own exclude: --set exclude=...); repeatable",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list what would run again; submit nothing"
    )
    p.set_defaults(func=cmd_retry)
    p = sub.add_parser("status", help="where each task of a sweep stands (one sacct call per poll)")
    p.add_argument(
        "sweep_dir", nargs="?", metavar="SWEEP_DIR", help="default: the latest sweep you launched"
    )
    p.add_argument("--watch", action="store_true", help="refresh until every task has ended")
    p.add_argument(
        "--interval",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between refreshes while tasks change state (default 10)",
    )
    p.add_argument(
        "--max-interval",
        type=float,
        default=60.0,
        metavar="S",
        help="the wait grows 1.5x per refresh that saw no change, up to this (default 60)",
    )
    p.set_defaults(func=cmd_status)
    _add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            args = _parser().parse_args(argv)
            code = int(args.func(args))
        else:
            code = run_app(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
        return code
    except HpcjobsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `status DIR | head`: the reader left. Nothing more to say, and no traceback when the
        # interpreter flushes stdout at exit; the shell's code for a write to a closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
