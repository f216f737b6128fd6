"""The run-file contract: atomic writes and tolerant reads."""

import json
import os

import pytest

from hpcjobs import atomic
from hpcjobs.sweepdir import runfiles


def test_write_metrics_is_atomic_and_leaves_no_temp_files(tmp_path):
    runfiles.write_metrics(tmp_path, {"status": "running"})
    runfiles.write_metrics(tmp_path, {"status": "completed", "test_accuracy": 0.9})
    assert json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"] == 0.9
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    runfiles.write_metrics(tmp_path, {"status": "running"})
    with pytest.raises(TypeError):
        atomic.write_json(tmp_path / "metrics.json", {"bad": object()} | {1j: 1})
    assert runfiles.read_metrics(tmp_path)["status"] == "running"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_read_metrics_missing_and_corrupt(tmp_path):
    assert runfiles.read_metrics(tmp_path) is None
    (tmp_path / "metrics.json").write_text('{"status": "comp')
    with pytest.raises(runfiles.CorruptRunFile, match=r"metrics.json"):
        runfiles.read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(runfiles.CorruptRunFile, match="JSON object"):
        runfiles.read_metrics(tmp_path)


def test_history_has_one_row_per_epoch(tmp_path):
    rows = [{"epoch": 1, "train_loss": 1.5}, {"epoch": 2, "train_loss": 0.5}]
    runfiles.write_history(tmp_path, rows)
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines == ["epoch,train_loss", "1,1.5", "2,0.5"]


def test_read_overrides_fast_path_and_quoted_fallback(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra/overrides.yaml").write_text(
        "- optimizer=adam\n- optimizer.lr=0.01\n- seed=1\n"
    )
    assert runfiles.read_overrides(tmp_path) == ["optimizer=adam", "optimizer.lr=0.01", "seed=1"]
    (tmp_path / ".hydra/overrides.yaml").write_text("- 'data.root=/a b'\n- seed=2\n")
    assert runfiles.read_overrides(tmp_path) == ["data.root=/a b", "seed=2"]
    (tmp_path / ".hydra/overrides.yaml").write_text("[]\n")
    assert runfiles.read_overrides(tmp_path) == []


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optimizer.lr=0.01", ("optimizer.lr", 0.01)),
        ("seed=3", ("seed", 3)),
        ("+extra=true", ("extra", True)),
        ("trainer.steps_per_epoch=null", ("trainer.steps_per_epoch", None)),
        ("optimizer=adam", ("optimizer", "adam")),
        ("~data.root", None),
    ],
)
def test_parse_override(override, expected):
    assert runfiles.parse_override(override) == expected


def test_atomic_writes_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        runfiles.write_metrics(tmp_path, {"status": "running"})
    finally:
        os.umask(old)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644


def test_existing_run_dirs_lists_the_sweep_once(tmp_path):
    """A run whose top folder is absent has no files; nested and absolute run dirs are kept."""
    (tmp_path / "3").mkdir()
    (tmp_path / "adam" / "1").mkdir(parents=True)
    present = runfiles.ExistingRunDirs(tmp_path)
    (tmp_path / "4").mkdir()  # after the listing: a snapshot
    assert present.may_exist("3") and present.may_exist("adam/1") and present.may_exist("adam/9")
    assert not present.may_exist("4") and not present.may_exist("sgd/1")
    assert present.may_exist(str(tmp_path / "elsewhere"))
    assert present.may_exist("./3") and present.may_exist("../outside/0")
    assert not runfiles.ExistingRunDirs(tmp_path / "missing").may_exist("0")
