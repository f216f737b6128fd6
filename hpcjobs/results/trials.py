"""An adaptive sweep's trials, as collect and report show them: which trial is best so far,
how many were pruned, what its re-runs over other seeds say, and the study's own figures.

The run directories are the source of truth here as in the rest of hpcjobs/results: each
trial task's row in the runs table (collect.py) carries its trial number, role, sampled
values and status, so everything but the figures is pure pandas on that table, and
`collect` needs no Optuna. The figures (optimization history, parameter importances) are
Optuna's own (optuna.visualization.matplotlib), drawn from the study's journal in the sweep
directory; Optuna is imported there only, lazily. Nothing here imports torch: the results
stage runs on a login node.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hpcjobs import states
from hpcjobs.results import stats
from hpcjobs.results.collect import ROLE_KEY, TRIAL_KEY, Collection, SweepInfo
from hpcjobs.run.study import BEST_ROLE, STUDY_FILE, TRIAL_ROLE, StudySpec, best_of
from hpcjobs.sweepdir import runfiles

log = logging.getLogger(__name__)

# Parameter importances compare completed trials: with fewer there is nothing to compare.
MIN_TRIALS_FOR_IMPORTANCES = 2


@dataclass
class Trial:
    """One trial task of the sweep: the trial its run directory holds, and how it ended."""

    task: int | None
    number: int | None  # None: not started (no trial.json yet)
    state: str  # the run's status (states vocabulary): completed, pruned, failed, running...
    value: float | None  # the study's objective (StudySpec.metric), for a completed trial
    params: dict[str, Any]  # the sampled values, by key (StudySpec.params' keys)
    run_dir: str
    epochs: int | None = None  # epochs trained (only when asked for: it may read history.csv)


@dataclass
class StudyOverview:
    """One adaptive sweep's trials and its best one, from the runs table."""

    sweep: SweepInfo
    spec: StudySpec
    trials: list[Trial]  # the trial tasks, by trial number (not started last, by task)
    best: Trial | None  # the best completed trial by the study's metric and direction
    # The reported metric (a test metric; the study selects on its own) of each completed
    # re-run of the best: the pick judged on seeds it was not picked on.
    reruns: list[float] = field(default_factory=list)
    reported: str = ""  # the metric of ``reruns``
    n_reruns: int = 0  # re-run tasks in the sweep (rerun_best_seeds), ended or not
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Trial tasks by state, completed and pruned first."""
        counter = Counter(t.state for t in self.trials)
        order = [states.COMPLETED, states.PRUNED, states.FAILED]
        return {s: counter[s] for s in order + sorted(set(counter) - set(order)) if counter[s]}

    @property
    def counts_text(self) -> str:
        """'2 completed, 1 pruned' (as the CLI and the report both say it)."""
        return ", ".join(f"{n} {state}" for state, n in self.counts.items()) or "none started"

    @property
    def rerun_stats(self) -> tuple[float, float, float, float]:
        """Mean, std and 95% interval of the mean over the re-runs (not the trial's own run)."""
        return stats.mean_std_ci(self.reruns, self.reported)


def overviews(collection: Collection, epochs: bool = False) -> list[StudyOverview]:
    """One overview per adaptive sweep of the collection (none for a grid sweep)."""
    out = []
    for info in collection.sweeps:
        if not info.study:
            continue
        runs = collection.runs
        if "sweep" in runs.columns:
            runs = runs[runs["sweep"] == info.name]
        out.append(overview(runs, info, epochs, collection.reported))
    return out


def overview(
    runs: pd.DataFrame, info: SweepInfo, epochs: bool = False, reported: str | None = None
) -> StudyOverview:
    """The trials of one adaptive sweep (``runs``: its rows of the runs table).

    ``epochs``: also count each trial's epochs trained (metrics.json's epochs_completed, else
    the rows of its history.csv: a pruned run records no final metrics). ``reported``: the
    metric the re-runs of the best are judged on (default: the study's own).
    """
    spec = StudySpec.from_dict(info.study or {})
    reported = reported or spec.metric
    if ROLE_KEY not in runs.columns or TRIAL_KEY not in runs.columns:
        return StudyOverview(
            info, spec, [], None, notes=["no trial column: collected with another --group-by?"]
        )
    keys = list(spec.params)
    trials, reruns_rows = [], []
    for _, row in runs.iterrows():
        if row[ROLE_KEY] == BEST_ROLE:
            reruns_rows.append(row)
            continue
        if row[ROLE_KEY] != TRIAL_ROLE:
            continue
        trials.append(
            Trial(
                task=_int(row.get("task")),
                number=_int(row[TRIAL_KEY]),
                state=str(row["status"]),
                value=_objective(row, spec.metric),
                run_dir=str(row["run_dir"]),
                params={k: row[k] for k in keys if k in row.index and not _missing(row[k])},
                epochs=epochs_trained(row) if epochs else None,
            )
        )
    trials.sort(key=lambda t: (t.number is None, t.number if t.number is not None else t.task or 0))
    best = best_trial(trials, spec.direction)
    overview_ = StudyOverview(
        info, spec, trials, best, n_reruns=len(reruns_rows), reported=reported
    )
    if best is not None:
        done = [r for r in reruns_rows if r["status"] == states.COMPLETED]
        overview_.reruns = [
            v
            for r in done
            if _int(r[TRIAL_KEY]) == best.number and (v := _objective(r, reported)) is not None
        ]
        others = sorted(
            {n for r in done if (n := _int(r[TRIAL_KEY])) is not None and n != best.number}
        )
        if others:  # e.g. a trial retried after the re-runs ran became the best
            overview_.notes.append(
                f"{len(done) - len(overview_.reruns)} completed re-run(s) are of trial(s) "
                f"{', '.join(map(str, others))}, no longer the best: left out of its seeds."
            )
    return overview_


def best_trial(trials: Sequence[Trial], direction: str) -> Trial | None:
    """The completed trial with the best value (the first of equals, as Optuna's best_trial)."""
    done = [t for t in trials if t.state == states.COMPLETED and t.number is not None]
    return best_of(done, direction, lambda t: t.number, lambda t: t.value)


def epochs_trained(row: pd.Series) -> int | None:
    recorded = _int(row.get("epochs_completed"))
    if recorded is not None:
        return recorded
    if row["status"] == states.NOT_STARTED:
        return None
    history = runfiles.read_history(str(row["run_dir"]))
    return len(history) if history else None


def params_text(params: dict[str, Any], digits: int = 4) -> str:
    """'optimizer=adam optimizer.lr=0.00123': values to ``digits`` significant digits."""
    return " ".join(f"{k}={_short(v, digits)}" for k, v in params.items())


def _short(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _objective(row: pd.Series, metric: str) -> float | None:
    if row["status"] != states.COMPLETED:
        return None
    value: Any = row.get(metric)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    if _missing(value) or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


# ---------------------------------------------------------------- figures (Optuna)


def figures(study: StudyOverview) -> tuple[dict[str, bytes], list[str]]:
    """The study's optimization history and parameter importances as PNG bytes, by name
    ("optimization_history", "param_importances"), and a note for each one not drawn."""
    from hpcjobs.results import plots  # matplotlib, Agg backend

    notes: list[str] = []
    path = Path(study.sweep.path) / STUDY_FILE
    # JournalFileBackend would create an empty one: never write into a sweep here
    if not path.is_file():
        return {}, [f"No study journal ({path}): no optimization history or parameter importances."]
    try:
        loaded = _load(study)
    except ImportError:
        return {}, [
            (
                "Optuna is not installed here (pip install 'hpcjobs[optuna]'): no optimization"
                " history or parameter importances."
            )
        ]
    except Exception as e:  # a journal Optuna cannot read must not cost the rest of the report
        return {}, [
            (
                f"The study journal could not be read ({type(e).__name__}: {e}): no optimization"
                " history or parameter importances."
            )
        ]
    from optuna.importance import PedAnovaImportanceEvaluator  # named: the plot's title says which
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as optuna_plots

    completed = sum(t.state == TrialState.COMPLETE for t in loaded.trials)
    target = study.spec.metric
    out: dict[str, bytes] = {}
    if completed:
        out["optimization_history"] = _draw(
            plots,
            lambda: optuna_plots.plot_optimization_history(loaded, target_name=target),
            f"Optimization history: {target} of each completed"
            f" trial, and the best so far ({study.spec.direction})",
        )
    else:
        notes.append("No optimization history: no trial has completed.")
    if completed < MIN_TRIALS_FOR_IMPORTANCES:
        notes.append(
            f"No parameter importances: they need {MIN_TRIALS_FOR_IMPORTANCES} completed trials"
            f" ({completed} so far)."
        )
    else:
        try:
            out["param_importances"] = _draw(
                plots,
                lambda: optuna_plots.plot_param_importances(
                    loaded, evaluator=PedAnovaImportanceEvaluator(), target_name=target
                ),
                f"Parameter importances for {target} (PED-ANOVA over {completed} completed trials)",
            )
        except Exception as e:  # e.g. every trial gave the same value: nothing to apportion
            log.info("parameter importances not drawn: %s", e)
            notes.append(
                "No parameter importances: Optuna could not"
                f" compute them ({type(e).__name__}: {e})."
            )
    return out, notes


def _load(study: StudyOverview) -> Any:
    import optuna

    from hpcjobs.run import study as study_files

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A plain sampler: loading the spec's own (TPE) would only cost time and warnings here.
    return optuna.load_study(
        study_name=study.spec.name,
        storage=study_files.storage(study.sweep.path),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )


def _draw(plots: Any, draw: Any, title: str) -> bytes:
    """Run an Optuna plotting function in our figure size and style; its PNG bytes."""
    import matplotlib.pyplot as plt

    # rc_context: Optuna switches to the ggplot style sheet (plt.style.use); this undoes it after.
    with warnings.catch_warnings(), plt.rc_context(plots.STYLE):
        warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning on every call
        ax = draw()
        fig = ax.figure
        try:
            fig.set_size_inches(plots.WIDTH_IN, 3.8)
            for loc in ("left", "right"):  # Optuna puts its own title on one side
                ax.set_title("", loc=loc)
            ax.set_title(title, fontsize=plots.STYLE["axes.titlesize"])
            return plots.to_png(fig)
        finally:
            plt.close(fig)
