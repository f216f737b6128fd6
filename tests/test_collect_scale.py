"""The collector's fast reading path gives exactly what the simple path gave.

`reference_read_runs` below is the straightforward reader the fast one replaced (pathlib
paths, read_text + json.loads, parse_override per item, an is_dir check per run). Every
test collects the same directories both ways and compares the whole Collection: runs,
summary, best, problems, sweeps. No timing here: see benchmarks/collect_scale.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from hpcjobs import states
from hpcjobs.errors import SweepDirError
from hpcjobs.results import collect
from hpcjobs.sweepdir import manifest, runfiles

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the simple path


def _ref_read_metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / runfiles.METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise runfiles.CorruptRunFile(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise runfiles.CorruptRunFile(
            f"{path}: expected a JSON object, found {type(data).__name__}"
        )
    return data


def _ref_read_overrides(run_dir: Path) -> list[str] | None:
    path = run_dir / runfiles.OVERRIDES_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    items: list[str] = []
    for line in text.splitlines():
        if not line.startswith("- "):
            if line.strip() in ("", "[]"):
                continue
            return _ref_yaml_list(path, text)
        item = line[2:]
        if item[:1] in ("'", '"'):
            return _ref_yaml_list(path, text)
        items.append(item)
    return items


def _ref_yaml_list(path: Path, text: str) -> list[str]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise runfiles.CorruptRunFile(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, list):
        raise runfiles.CorruptRunFile(f"{path}: expected a list of overrides")
    return [str(x) for x in data]


def _ref_run_row(run_dir: Path, task, overrides, problems) -> dict[str, Any]:
    row: dict[str, Any] = {"task": task, "run_dir": str(run_dir)}
    if overrides is None:
        try:
            overrides = _ref_read_overrides(run_dir)
        except runfiles.CorruptRunFile as e:
            problems.append(str(e))
    for item in overrides or []:
        parsed = runfiles.parse_override(item)
        if parsed is not None:
            row[parsed[0]] = parsed[1]
    if not run_dir.is_dir():
        row["status"] = states.NOT_STARTED
        return row
    try:
        metrics = _ref_read_metrics(run_dir)
    except runfiles.CorruptRunFile as e:
        problems.append(str(e))
        row["status"] = states.CORRUPT
        return row
    if metrics is None:
        row["status"] = states.NO_METRICS
        return row
    row["status"] = metrics.get("status", states.NO_METRICS)
    for key, value in metrics.items():
        if key not in collect.LONG_FIELDS and key not in row:
            row[key] = value
    return row


def _ref_find_run_dirs(sweep_dir: Path) -> list[Path]:
    found: list[Path] = []

    def walk(directory: Path, depth: int) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if (path / ".hydra").is_dir() or (path / runfiles.METRICS_FILE).is_file():
                found.append(path)
            elif depth < 3:
                walk(path, depth + 1)

    walk(sweep_dir, 0)
    return sorted(found, key=lambda p: (len(p.parts), collect._natural_key(p.name), str(p)))


def reference_read_runs(sweep_dir: Path, problems: list[str], notes=None):
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SweepDirError(f"{sweep_dir}: no such directory")
    if manifest.exists(sweep_dir):
        try:
            sweep = manifest.read(sweep_dir)
        except SweepDirError as e:
            problems.append(str(e))
        else:
            rows = [
                _ref_run_row(sweep.run_dir(t), t.index, t.overrides, problems) for t in sweep.tasks
            ]
            return rows, collect.SweepInfo(
                collect._sweep_name(sweep_dir),
                str(sweep_dir),
                sweep.experiment,
                sweep.command,
                sweep.git_commit,
                sweep.created_at,
                sweep.executor,
            )
    run_dirs = _ref_find_run_dirs(sweep_dir)
    if not run_dirs:
        raise SweepDirError(
            f"{sweep_dir}: no run directories found (expected"
            " sub-folders with metrics.json or .hydra/)"
        )
    rows = [
        _ref_run_row(d, int(d.name) if d.name.isdigit() else None, None, problems) for d in run_dirs
    ]
    return rows, collect.SweepInfo(
        collect._sweep_name(sweep_dir),
        str(sweep_dir),
        collect._experiment_from_config(run_dirs) or sweep_dir.name,
    )


def _comparable(rows):
    """Rows with NaN made equal to NaN (each json parse makes its own NaN object)."""
    return [
        [(k, "<nan>" if isinstance(v, float) and v != v else v) for k, v in row.items()]
        for row in rows
    ]


def assert_same_collection(sweeps, monkeypatch, **kwargs) -> collect.Collection:
    fast = collect.collect(sweeps, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(collect, "read_runs", reference_read_runs)
        ref = collect.collect(sweeps, **kwargs)
    assert list(fast.runs.columns) == list(ref.runs.columns)
    assert_frame_equal(fast.runs, ref.runs)
    assert_frame_equal(fast.summary, ref.summary)
    assert_frame_equal(fast.best, ref.best)
    assert (fast.group_keys, fast.metric, fast.experiment) == (
        ref.group_keys,
        ref.metric,
        ref.experiment,
    )
    assert fast.problems == ref.problems
    assert fast.sweeps == ref.sweeps
    for sweep in sweeps:
        fast_rows, ref_rows = (
            collect.read_runs(Path(sweep), []),
            reference_read_runs(Path(sweep), []),
        )
        # same keys, same order, same values
        assert _comparable(fast_rows[0]) == _comparable(ref_rows[0])
        assert fast_rows[1] == ref_rows[1]
    return fast


# ----------------------------------------------------------------------------- hand-made runs


def make_run(
    sweep: Path, name: str, overrides=None, metrics=None, raw_metrics=None, raw_overrides=None
) -> Path:
    run = sweep / name
    run.mkdir(parents=True)
    if overrides is not None or raw_overrides is not None:
        (run / ".hydra").mkdir()
        data = (
            raw_overrides
            if raw_overrides is not None
            else "".join(f"- {o}\n" for o in overrides).encode()
        )
        (run / runfiles.OVERRIDES_FILE).write_bytes(data)
    if metrics is not None:
        (run / runfiles.METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    if raw_metrics is not None:
        (run / runfiles.METRICS_FILE).write_bytes(raw_metrics)
    return run


def done(acc, **extra):
    return {
        "schema_version": 1,
        "status": "completed",
        "seed": extra.pop("seed", 0),
        "test_accuracy": acc,
        "test_loss": 1 - acc,
        "train_seconds": 10 * acc,
        "device": "cpu",
        **extra,
    }


@pytest.fixture
def messy(tmp_path):
    """One directory per way a run can be left, plus the odd files a collector must survive."""
    s = tmp_path / "multirun" / "demo" / "2026-11-27_03-22-41"
    make_run(s, "0", ["optimizer=sgd", "optimizer.lr=0.1", "seed=0"], done(0.80, seed=0))
    make_run(
        s, "1", ["optimizer=sgd", "optimizer.lr=0.1", "seed=1"], done(0.90, seed=1, best_epoch=7)
    )
    make_run(s, "2", ["optimizer=adam", "optimizer.lr=0.01", "seed=0"], done(0.95, seed=0))
    make_run(
        s,
        "3",
        ["optimizer=adam", "optimizer.lr=0.01", "seed=1"],
        {
            "schema_version": 1,
            "status": "failed",
            "error_type": "ValueError",
            "error_message": "boom",
            "traceback": "Traceback (most recent call last):\n  ...\nValueError: boom",
            "seed": 1,
        },
    )
    make_run(s, "4", ["optimizer=adam", "optimizer.lr=0.01", "seed=2"])  # never wrote metrics
    make_run(
        s,
        "5",
        ["optimizer=momentum", "optimizer.lr=0.1", "seed=0"],
        raw_metrics=b'{"status": "compl',
    )
    make_run(s, "6", ["optimizer=momentum", "optimizer.lr=0.1", "seed=1"], raw_metrics=b"[1, 2]")
    make_run(s, "7", ["optimizer=momentum", "optimizer.lr=0.1", "seed=2"], raw_metrics=b"")
    # Quoted items (the YAML fallback), +key / ~key, null / true, CRLF line ends.
    make_run(
        s,
        "8",
        raw_overrides=b"- 'data.root=/data/a b'\r\n- \"optimizer=adam\"\r\n- optimizer.lr=0.01\r\n"
        b"- +extra=true\r\n- ~trainer.val_steps\r\n- trainer.steps_per_epoch=null\r\n- seed=3\r\n",
        metrics=done(0.93, seed=3),
    )
    # What json accepts and strict JSON does not: NaN, Infinity, integers beyond 64 bits.
    make_run(
        s,
        "9",
        ["optimizer=sgd", "optimizer.lr=0.1", "seed=2"],
        raw_metrics=b'{"status": "completed", "seed": 2, "test_accuracy": NaN,'
        b' "test_loss": Infinity,'
        b' "num_parameters": 123456789012345678901234567890, "train_seconds": 1.5}',
    )
    make_run(
        s,
        "17",
        ["optimizer=sgd", "optimizer.lr=0.1", "seed=8"],  # a 20-digit integer stays an integer
        raw_metrics=b'{"status": "completed", "seed": 8, "test_accuracy": 0.75,'
        b' "slurm_job_id": 1234567890123456789012,'
        b' "neg": -9223372036854775809, "fine": 9223372036854775807,'
        b' "x": 0.12345678901234567890123}',
    )
    make_run(
        s,
        "10",
        ["optimizer=sgd", "optimizer.lr=0.1", "seed=3"],
        raw_metrics=b'{"status": "completed",\r\n "seed": 3,'
        b' "test_accuracy": 0.85, "test_accuracy": 0.86,'
        b' "note": "caf\xc3\xa9 \\u00e9 \\ud83d\\ude00", "test_loss": 1e-3,'
        b' "big": 18446744073709551615}\r\n',
    )
    make_run(
        s,
        "11",
        ["optimizer=sgd", "optimizer.lr=0.1", "seed=4"],
        raw_metrics=b'{"status": "completed", "seed": 4, "lone": "\\ud800", "test_accuracy": 0.7}',
    )
    make_run(
        s,
        "12",
        ["optimizer=sgd", "optimizer.lr=0.1", "seed=5"],
        raw_metrics=b'\xef\xbb\xbf{"status": "x"}',
    )
    # corrupt overrides
    make_run(s, "13", raw_overrides=b"optimizer: [unclosed\n", metrics=done(0.5))
    make_run(s, "14", raw_overrides=b"[]\n", metrics={"test_accuracy": 0.6})  # no status field
    make_run(
        s,
        "15",
        ["optimizer=sgd", "optimizer.lr=0.1", "seed=6"],
        raw_metrics=b'{"status": "running"}',
    )
    # overrides shadow metrics
    make_run(
        s,
        "16",
        raw_overrides=b"- optimizer=sgd\n- optimizer.lr=0.1\n- seed=7\n"
        b"- status=overridden\n- test_loss=0.5\n",
        metrics=done(0.81, seed=7),
    )
    # Not runs: a hidden folder, a plain file, a folder with no .hydra, metrics or runs below.
    make_run(s, ".submitit", ["x=1"], done(0.1))
    (s / "launcher.log").write_text("log")
    (s / "empty").mkdir()
    # Runs below a group folder, named as Hydra names them and otherwise.
    make_run(s, "group_b/0", ["optimizer=adamw", "optimizer.lr=0.001", "seed=0"], done(0.97))
    make_run(s, "group_a/10", ["optimizer=adamw", "optimizer.lr=0.001", "seed=10"], done(0.96))
    make_run(s, "group_a/9", ["optimizer=adamw", "optimizer.lr=0.001", "seed=9"], done(0.95))
    make_run(s, "group_a/extra", ["optimizer=adamw", "optimizer.lr=0.001", "seed=11"], done(0.94))
    (s / "0" / ".hydra" / "config.yaml").write_text(
        "model:\n  name: cnn\nexperiment_name: 'demo_exp'\nseed: 0\n"
    )
    return s


def test_scan_without_manifest_matches_the_simple_path(messy, monkeypatch):
    c = assert_same_collection([messy], monkeypatch)
    status = dict(zip(c.runs["run_dir"].map(lambda p: os.path.relpath(p, messy)), c.runs["status"]))
    assert status["0"] == "completed" and status["3"] == "failed" and status["4"] == "no_metrics"
    assert [status[k] for k in ("5", "6", "7", "12")] == ["corrupt"] * 4
    assert (
        status["9"] == "completed" and status["14"] == "no_metrics" and status["16"] == "completed"
    )
    # depth first, then natural name order
    assert list(c.runs["run_dir"].map(lambda p: os.path.relpath(p, messy)))[-4:] == [
        "group_b/0",
        "group_a/9",
        "group_a/10",
        "group_a/extra",
    ]
    assert c.experiment == "demo_exp" and len(c.runs) == 22
    rows = c.runs.set_index(c.runs["run_dir"].map(lambda p: os.path.relpath(p, messy)))
    # not rounded to a float
    assert rows.loc["9", "num_parameters"] == 123456789012345678901234567890
    assert (
        rows.loc["17", "slurm_job_id"] == 1234567890123456789012
        and rows.loc["17", "neg"] == -(2**63) - 1
    )
    assert rows.loc["10", "test_accuracy"] == 0.86 and rows.loc["10", "big"] == 18446744073709551615
    assert rows.loc["10", "note"] == "café é \U0001f600"
    assert rows.loc["8", "data.root"] == "/data/a b" and rows.loc["8", "extra"] is True
    assert rows.loc["16", "test_loss"] == 0.5  # the override wins over the metric of that name
    assert "traceback" not in c.runs.columns and "schema_version" not in c.runs.columns
    assert len(c.problems) == 5 and any("overrides.yaml" in p for p in c.problems)


def test_manifest_path_matches_the_simple_path(messy, monkeypatch):
    names = [
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
        "9",
        "17",
        "10",
        "11",
        "16",
        "group_a/9",
        "./2",
        "never_started",
        "group_a/../1",
        "",
        str(messy / "0"),
    ]
    tasks = [
        manifest.TaskRecord(
            i, [f"optimizer={'sgd' if i % 2 else 'adam'}", f"seed={i}", "~x", "+y=1.5"], name, "h"
        )
        for i, name in enumerate(names)
    ]
    (messy / "not_a_dir").write_text("")
    tasks.append(manifest.TaskRecord(99, ["optimizer=sgd", "seed=99"], "not_a_dir", "h"))
    manifest.write(
        manifest.SweepManifest(
            experiment="demo", sweep_dir=str(messy), executor="local", tasks=tasks
        )
    )
    c = assert_same_collection([messy], monkeypatch)
    assert len(c.runs) == len(tasks) and c.experiment == "demo"
    assert list(c.runs["status"][-5:]) == [
        "not_started",
        "completed",
        "no_metrics",
        "completed",
        "not_started",
    ]


def test_relative_sweep_dir_and_several_sweeps(messy, monkeypatch, tmp_path):
    other = tmp_path / "other"
    make_run(other, "0", ["optimizer=sgd", "optimizer.lr=0.1", "seed=0"], done(0.5))
    make_run(other, "1", ["optimizer=sgd", "optimizer.lr=0.1", "seed=1"], done(0.6))
    assert_same_collection([messy, other], monkeypatch)
    monkeypatch.chdir(other)
    c = assert_same_collection([Path(".")], monkeypatch)
    assert list(c.runs["run_dir"]) == ["0", "1"]
    monkeypatch.chdir(tmp_path)
    assert list(assert_same_collection([Path("other")], monkeypatch).runs["run_dir"]) == [
        "other/0",
        "other/1",
    ]


def test_corrupt_manifest_falls_back_to_the_scan(messy, monkeypatch):
    (messy / manifest.MANIFEST_FILE).write_text("{not json")
    c = assert_same_collection([messy], monkeypatch)
    assert any("sweep.json" in p for p in c.problems) and len(c.runs) == 22


def test_readers_treat_undecodable_files_as_corrupt(tmp_path):
    make_run(
        tmp_path, "r", raw_overrides=b"- optimizer=caf\xe9\n", raw_metrics=b'{"status": "caf\xe9"}'
    )
    with pytest.raises(runfiles.CorruptRunFile, match=r"metrics.json: not valid UTF-8"):
        runfiles.read_metrics(tmp_path / "r")
    with pytest.raises(runfiles.CorruptRunFile, match=r"overrides.yaml: not valid UTF-8"):
        runfiles.read_overrides(tmp_path / "r")
    c = collect.collect([tmp_path])
    assert list(c.runs["status"]) == ["corrupt"] and len(c.problems) == 2


def test_readers_take_str_or_path_and_report_the_same_path(tmp_path):
    make_run(tmp_path, "r", ["seed=1"], raw_metrics=b'{"status": "comp')
    for run_dir in (tmp_path / "r", str(tmp_path / "r")):
        assert runfiles.read_overrides(run_dir) == ["seed=1"]
        with pytest.raises(runfiles.CorruptRunFile) as e:
            runfiles.read_metrics(run_dir)
        assert str(e.value).startswith(f"{tmp_path / 'r' / 'metrics.json'}: not valid JSON (")
    assert (
        runfiles.read_metrics(tmp_path / "missing") is None
        and runfiles.read_overrides(tmp_path) is None
    )


def test_big_metrics_file_is_read_whole(tmp_path):
    metrics = {"status": "completed", "blob": "x" * 300_000, "test_accuracy": 0.5}
    make_run(tmp_path, "r", metrics=metrics)
    assert runfiles.read_metrics(tmp_path / "r") == metrics


# ----------------------------------------------------------------------------- a generated sweep


def _benchmark_module():
    spec = importlib.util.spec_from_file_location(
        "collect_scale", REPO / "benchmarks" / "collect_scale.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "scan"])
def test_generated_sweep_of_300_runs(tmp_path, monkeypatch, with_manifest):
    bench = _benchmark_module()
    sweep = bench.generate(tmp_path, 300, with_manifest=with_manifest)
    c = assert_same_collection([sweep], monkeypatch)
    assert len(c.runs) == 300 and not c.problems
    assert c.counts == {"completed": 294, "failed": 6}
    assert c.group_keys == ["optimizer", "optimizer.lr", "trainer.epochs"]
    assert c.metric == "best_val_accuracy"
    assert c.experiment == "cnn_sweep"
    assert len(c.summary) == 100 and set(c.summary["n_runs"]) == {3}
    assert c.summary["n_failed"].sum() == 6 and c.summary["n_completed"].sum() == 294
    assert c.summary["best_val_accuracy_mean"].is_monotonic_decreasing
    assert list(c.runs["task"]) == list(range(300))
    first = c.best.iloc[0]
    assert (first["selected_on"], first["reported_on"]) == ("best_val_accuracy", "test_accuracy")
    # The benchmark's naive loop reads the same values.
    naive = bench.naive(sweep)
    for column in ("optimizer", "optimizer.lr", "seed", "status", "test_accuracy", "hostname"):
        assert_frame_equal(
            naive[[column]].astype(object), c.runs[[column]].astype(object), check_dtype=False
        )
    assert (
        bench.main(
            [
                "--runs",
                "40",
                "--repeat",
                "1",
                "--dir",
                str(tmp_path / "bench"),
                "--max-seconds",
                "1e9",
                "--max-ratio",
                "1e9",
            ]
        )
        == 0
    )


def test_generator_writes_the_files_a_run_leaves(tmp_path):
    sweep = _benchmark_module().generate(tmp_path, 12)
    run = sweep / "3"  # Hydra's grid order: the last parameter varies fastest
    assert runfiles.read_overrides(run) == [
        "optimizer=sgd",
        "optimizer.lr=0.1",
        "trainer.epochs=40",
        "seed=0",
    ]
    assert len((run / runfiles.CONFIG_FILE).read_text().splitlines()) >= 40
    metrics = runfiles.read_metrics(run)
    assert list(metrics)[:2] == ["schema_version", "status"] and len(metrics) >= 23
    assert len(pd.read_csv(run / runfiles.HISTORY_FILE)) == 20
    assert [t.run_dir for t in manifest.read(sweep).tasks] == [str(i) for i in range(12)]
