"""sweep.json: what is written is what is read, older manifests included."""

from __future__ import annotations

import json

import pytest

from hpcjobs.errors import SweepDirError
from hpcjobs.sweepdir import manifest


def a_sweep(tmp_path) -> manifest.SweepManifest:
    """Tasks of a pool (attempts shared), of an array (ids of their own), and retried ones."""
    sweep = manifest.SweepManifest("e", str(tmp_path), "slurm", launcher={"partition": "a"})
    pool = sweep.new_pool(2)
    sweep.tasks = [manifest.TaskRecord(i, [f"seed={i}"], str(i), "h") for i in range(6)]
    for task in sweep.tasks[:4]:
        task.submitted(None, pool=pool.id)
    for i, task in enumerate(sweep.tasks[4:]):
        task.submitted(f"7_{i}")
    sweep.tasks[1].submitted("9_0", why="retry: interrupted", excluded={"n1": "failed twice"})
    sweep.tasks[2].submitted(None, why="retry: unclaimed", pool=sweep.new_pool(1).id)
    return sweep


def test_written_then_read_is_the_same_and_a_shared_attempt_is_written_once(tmp_path):
    sweep = a_sweep(tmp_path)
    manifest.write(sweep)
    read = manifest.read(tmp_path)
    assert read.tasks == sweep.tasks and read.pools == sweep.pools
    data = json.loads((tmp_path / manifest.MANIFEST_FILE).read_text())
    # the first pool's submission, and the retry's into the second pool: once each
    assert [s.get("pool") for s in data["submissions"]] == ["pool0", "pool1"]
    assert [t["attempts"][0] for t in data["tasks"][:4]] == [0, 0, 0, 0]
    # what a task shares with no other stays in the task
    assert data["tasks"][4]["attempts"] == [
        {"job_id": "7_0", "submitted_at": sweep.tasks[4].attempts[0].submitted_at,
         "why": "submitted"}
    ]  # fmt: skip
    assert data["tasks"][1]["attempts"][1]["excluded"] == {"n1": "failed twice"}


def test_a_version_1_sweep_reads_the_same_and_stays_version_1(tmp_path):
    """As versions before the submissions table wrote it: its workers may run that older code
    (a snapshot), so a later write (a retry's) keeps every attempt written out in its task,
    and the pools without the fields that code does not know."""
    sweep = a_sweep(tmp_path)
    manifest.write(sweep)
    path = tmp_path / manifest.MANIFEST_FILE
    data = json.loads(path.read_text())
    shared = data.pop("submissions")
    for task in data["tasks"]:
        task["attempts"] = [shared[a] if isinstance(a, int) else a for a in task["attempts"]]
    del data["schema_version"]  # version 1 wrote it as 1; older ones not at all
    path.write_text(json.dumps(data))
    read = manifest.read(tmp_path)
    assert read.tasks == sweep.tasks and read.schema_version == 1
    manifest.write(read)
    again = json.loads(path.read_text())
    assert again["schema_version"] == 1 and "submissions" not in again
    assert all(isinstance(a, dict) for t in again["tasks"] for a in t["attempts"])
    assert all("group" not in p for p in again["pools"])  # None: left out
    assert manifest.read(tmp_path).tasks == sweep.tasks


def test_a_manifest_of_a_newer_version_is_refused_with_what_to_do(tmp_path):
    manifest.write(a_sweep(tmp_path))
    path = tmp_path / manifest.MANIFEST_FILE
    data = json.loads(path.read_text())
    data["schema_version"] = manifest.SCHEMA_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(SweepDirError, match=r"newer than this hpcjobs .* update hpcjobs"):
        manifest.read(tmp_path)


@pytest.mark.parametrize("attempt", [5, -1, True, "pool0"])
def test_an_attempt_that_is_not_there_is_a_corrupt_manifest_named(tmp_path, attempt):
    manifest.write(a_sweep(tmp_path))
    path = tmp_path / manifest.MANIFEST_FILE
    data = json.loads(path.read_text())
    data["tasks"][3]["attempts"] = [attempt]
    path.write_text(json.dumps(data))
    with pytest.raises(SweepDirError, match=rf"{path} is corrupt \(task 3"):
        manifest.read(tmp_path)
