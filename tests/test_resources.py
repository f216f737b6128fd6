"""Resources per configuration: a sweep's tasks grouped by the launcher settings each
configuration resolves to, one submission per group (hpcjobs/launching/groups.py).

The real cluster's side (three arrays, each task on a node that fits): tests/integration/
test_resources_slurm.py."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from hpcjobs import cli, states
from hpcjobs.launching import backends, groups, registry
from hpcjobs.launching.backends import slurm_controller
from hpcjobs.launching.settings import LauncherSettings
from hpcjobs.results import status
from hpcjobs.sweepdir import manifest

# An experiment whose configurations set their CPUs, memory and partition from their own keys.
EXPERIMENT = """\
# @package _global_
cpus: 1
mem: 1
part: null
hydra:
  launcher:
    cpus_per_task: ${cpus}
"""
SLURM_KEYS = """\
    mem_gb: ${mem}
    partition: ${part}
"""


@pytest.fixture
def run_cli(tmp_path, monkeypatch, capsys):
    """run_cli(*argv) -> (exit status, stdout+stderr), in an empty working directory, with
    experiment=res (cpus, mem, part -> hydra.launcher) and res_slurm (also mem_gb, partition)."""
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "res.yaml").write_text(EXPERIMENT)
    (conf / "res_slurm.yaml").write_text(EXPERIMENT + SLURM_KEYS)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("HPCJOBS_STATE_DIR", str(tmp_path / "state"))
    # a Slurm dry run asks the controller its MaxArraySize: not here (tests/integration does),
    # where a Slurm test beside this one (pytest -n) may have stopped it
    monkeypatch.setattr(slurm_controller, "max_array_size", lambda: 1001)

    def _run(*argv):
        code = cli.main(["--config-dir", str(tmp_path / "conf"), *argv])
        out = capsys.readouterr()
        return code, out.out + out.err

    return _run


SLURM_DRY = ["--multirun", "hydra/launcher=hpcjobs_slurm", "hydra.launcher.dry_run=true"]


def submitted(workdir: Path) -> list[Path]:
    return [p for p in workdir.rglob("*") if p.name in ("metrics.json", "sweep.json")]


def sbatch_options(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH --") and "=" in line]


def test_the_dry_run_shows_each_groups_tasks_and_sbatch_script(run_cli):
    code, out = run_cli("experiment=cnn_resources", "workload=noop", *SLURM_DRY)
    assert code == 0, out
    assert submitted(Path.cwd()) == []
    # every group's ranks end their step when one of them dies (test_ddp_slurm.py: for real)
    srun = re.findall(r"^srun .*", out, re.M)
    assert len(srun) == 3 and all("--kill-on-bad-exit=1" in line for line in srun), srun
    # the task table says which group each task is in
    rows = re.findall(r"^(\d+)\s+(default|r\d)\s+[0-9a-f]{12}\s+resources=(\w+)", out, re.M)
    assert rows == [
        ("0", "default", "cpu"),
        ("1", "default", "cpu"),
        ("2", "r1", "gpu1"),
        ("3", "r1", "gpu1"),
        ("4", "r2", "gpu2"),
        ("5", "r2", "gpu2"),
    ]
    # then each group: its tasks, what it asks, and the script its array is submitted with
    parts = re.split(r"^resources ", out, flags=re.M)[1:]
    assert [p.splitlines()[0] for p in parts] == [
        "default (2 task(s): 0 1): the sweep's settings",
        "r1 (2 task(s): 2 3): gres=gpu:typea:1 mem_gb=8.0 partition=gpua",
        "r2 (2 task(s): 4 5): cpus_per_task=4 gres=gpu:typeb:2 mem_gb=16.0 partition=gpub",
    ]
    default, gpu1, gpu2 = (sbatch_options(p) for p in parts)
    assert "#SBATCH --array=0-1%2" in default and "#SBATCH --mem=4096M" in default
    assert not any("gres" in o or "partition" in o for o in default)
    assert {"#SBATCH --gres=gpu:typea:1", "#SBATCH --partition=gpua"} <= set(gpu1)
    assert {"#SBATCH --gres=gpu:typeb:2", "#SBATCH --partition=gpub"} <= set(gpu2)
    assert {"#SBATCH --cpus-per-task=4", "#SBATCH --mem=16384M"} <= set(gpu2)


def test_a_sweep_whose_configurations_ask_the_same_shows_no_groups(run_cli):
    code, out = run_cli("experiment=cnn_resources", "workload=noop", *SLURM_DRY, "resources=gpu1")
    assert code == 0, out
    assert not re.search(r"^resources |default", out, re.M)
    assert "#SBATCH --gres=gpu:typea:1" in sbatch_options(out)  # the sweep's own, as before


@pytest.mark.parametrize(
    "overrides, groups, option",
    [
        pytest.param(
            ["mem=1,2", "seed=0,1"],
            # the seeds do not reach the launcher: two groups, not four
            [
                "default (2 task(s): 0 1): the sweep's settings",
                "r1 (2 task(s): 2 3): mem_gb=2.0",
            ],
            "#SBATCH --mem=2048M",
            id="value-override-reached-by-an-interpolation",
        ),
        pytest.param(
            # quoted, 'gpua,gpub' is one value: a group that may run in either partition
            ["part=gpua,'gpua,gpub'"],
            ["r1 (1 task(s): 0): partition=gpua", "r2 (1 task(s): 1): partition=gpua,gpub"],
            "#SBATCH --partition=gpua,gpub",
            id="several-partitions-and-a-gpu-type-per-group",
        ),
    ],
)
def test_each_group_of_launcher_settings_is_listed_and_submitted_with_them(
    run_cli, overrides, groups, option
):
    code, out = run_cli("experiment=res_slurm", "workload=noop", *SLURM_DRY, *overrides)
    assert code == 0, out
    parts = re.split(r"^resources ", out, flags=re.M)[1:]
    assert [p.splitlines()[0] for p in parts] == groups
    assert option in sbatch_options(parts[1])


@pytest.mark.parametrize(
    "values, expected",
    [
        # a value Slurm would refuse: the configuration's overrides named
        (["mem=1,-2"], ["hydra.launcher.mem_gb=-2.0: must be > 0", "workload=noop mem=-2)"]),
        (["cpus=1,0"], ["hydra.launcher.cpus_per_task=0: must be >= 1", "workload=noop cpus=0)"]),
        # a value of the wrong type
        (["mem=1,lots"], ["hydra.launcher.mem_gb", "could not be converted", "mem=lots\n"]),
        # an interpolation that reaches nothing in one configuration
        (
            ["part=gpua,${nowhere}"],
            ["hydra.launcher.partition: Interpolation key 'nowhere' not found", "in 1 of 2"],
        ),
    ],
)
def test_a_resource_that_one_configuration_gets_wrong_is_refused_before_submission(
    run_cli, values, expected
):
    code, out = run_cli("experiment=res_slurm", "workload=noop", *SLURM_DRY, *values)
    assert code != 0 and "Traceback" not in out
    for text in expected:
        assert text in out, out
    assert "nothing was submitted" in out
    assert submitted(Path.cwd()) == []


def test_a_sweep_wide_setting_may_not_differ_between_configurations(run_cli, tmp_path):
    (tmp_path / "conf" / "experiment" / "res_workers.yaml").write_text(
        "# @package _global_\nw: 0\nhydra:\n  launcher:\n    workers: ${w}\n"
    )
    code, out = run_cli("experiment=res_workers", "workload=noop", *SLURM_DRY, "w=0,2")
    assert code != 0 and "Traceback" not in out
    assert "hydra.launcher.workers differs in 1 configuration(s), e.g. #1 " in out
    assert "workload=noop w=2\n" in out
    assert "set the others once for the sweep" in out


def test_a_local_sweep_ignores_what_only_slurm_asks_per_job(run_cli):
    # gres and partition differ, the local backend asks neither: one submission
    code, out = run_cli(
        "experiment=res",
        "workload=noop",
        "--multirun",
        "hydra/launcher=hpcjobs_auto",
        "hydra.launcher.executor=local",
        "hydra.launcher.dry_run=true",
        "hydra.launcher.gres=${oc.select:gres,null}",
        "+gres=gpu:1,gpu:2",
    )
    assert code == 0, out
    assert "resources " not in out


def test_an_adaptive_sweeps_resources_may_not_depend_on_its_sampled_values(run_cli):
    code, out = run_cli(
        "experiment=cnn_optuna",
        "--multirun",
        "hydra/launcher=hpcjobs_slurm",
        "hydra.launcher.dry_run=true",
        "hydra.launcher.mem_gb=${optimizer.lr}",
    )
    assert code != 0 and "Traceback" not in out
    assert "trials draw their values when a worker runs them" in out
    assert "hydra.launcher.mem_gb" in out


def test_older_manifests_read_as_one_group_and_new_ones_say_each_tasks(tmp_path):
    sweep = manifest.SweepManifest("e", str(tmp_path), "slurm", launcher={"partition": "a"})
    sweep.tasks = [manifest.TaskRecord(0, ["x=1"], "0", "h"), manifest.TaskRecord(1, [], "1", "h")]
    manifest.write(sweep)
    text = (tmp_path / manifest.MANIFEST_FILE).read_text()
    assert '"group"' not in text  # a sweep without groups is written as before
    old = json.loads(text)
    del old["groups"]  # as a version before groups wrote it
    (tmp_path / manifest.MANIFEST_FILE).write_text(json.dumps(old))
    read = manifest.read(tmp_path)
    assert read.groups == {} and [t.group for t in read.tasks] == [None, None]
    assert read.launcher_of(None) == {"partition": "a"}
    read.groups = {"r1": {"partition": "b", "gres": "gpu:1"}}
    read.tasks[1].group = "r1"
    manifest.write(read)
    again = manifest.read(tmp_path)
    assert [t.group for t in again.tasks] == [None, "r1"]
    assert again.launcher_of("r1") == {"partition": "b", "gres": "gpu:1"}


def cpus_given(sweep: manifest.SweepManifest) -> list[int]:
    """The CPUs each run of a local sweep was given, as it recorded them."""
    return [
        json.loads((sweep.run_dir(t) / "metrics.json").read_text())["cpus"] for t in sweep.tasks
    ]


@pytest.mark.slow
def test_a_local_sweep_on_workers_runs_a_pool_per_group_with_its_settings(run_cli):
    # cpus_per_task from each configuration: 1 and 2 CPUs
    local = ["experiment=res", "workload=noop", "--multirun", "hydra/launcher=hpcjobs_local"]
    code, out = run_cli(*local, "hydra.launcher.workers=2", "cpus=1,2", "seed=0,1")
    assert code == 0, out
    sweep_dir = registry.latest_sweep()
    sweep = manifest.read(sweep_dir)
    assert sweep.groups == {"r1": {"cpus_per_task": 2}}
    assert [t.group for t in sweep.tasks] == [None, None, "r1", "r1"]
    assert [(p.id, p.group, p.workers) for p in sweep.pools] == [
        ("pool0", None, 2),
        ("pool1", "r1", 2),
    ]
    assert cpus_given(sweep) == [1, 1, 2, 2]
    st = status.sweep_status(sweep_dir)
    assert [(g.name, g.tasks, g.ended, g.asks) for g in st.groups] == [
        ("default", 2, 2, "the sweep's settings"),
        ("r1", 2, 2, "cpus_per_task=2"),
    ]
    assert re.search(r"^r1\s+2\s+2\s+-\s+-\s+-\s+cpus_per_task=2$", cli.format_status(st), re.M)


@pytest.mark.slow
def test_default_local_workers_are_the_fewest_any_group_allows(run_cli, monkeypatch):
    """workers unset: cores // cpus_per_task for each group, and the sweep's pools take the
    fewest (4 cores: 4 workers for 1 CPU a run, 2 for 2), also where `retry` makes them again."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    local = ["experiment=res", "workload=noop", "--multirun", "hydra/launcher=hpcjobs_local"]
    code, out = run_cli(*local, "cpus=1,2", "seed=0,1,2,3")
    assert code == 0, out
    sweep_dir = registry.latest_sweep()
    sweep = manifest.read(sweep_dir)
    assert sweep.launcher["workers"] is None  # chosen, not set: a retry chooses again
    assert [(p.group, p.workers) for p in sweep.pools] == [(None, 2), ("r1", 2)]
    # `retry` makes the backend from sweep.json, as the first submission made it
    again = backends.create("local", LauncherSettings.from_mapping(sweep.launcher))
    assert again.settings.workers == 4
    assert groups.with_shared_workers(again, sweep.groups.values()).settings.workers == 2


def lose_run(sweep_dir: Path, index: int) -> None:
    """Task ``index``'s run never finished and its launcher is gone: `retry` runs it again."""
    sweep = manifest.read(sweep_dir)
    (sweep.run_dir(sweep.tasks[index]) / "metrics.json").unlink()
    sweep.launcher_started = "not this process"
    manifest.write(sweep)
    assert status.sweep_status(sweep_dir).retryable() == {index: states.INTERRUPTED}


@pytest.mark.slow
def test_a_retried_task_gets_its_groups_settings_and_then_what_set_asks(run_cli):
    local = ["experiment=res", "workload=noop", "--multirun", "hydra/launcher=hpcjobs_local"]
    code, out = run_cli(*local, "hydra.launcher.workers=0", "cpus=1,2")
    assert code == 0, out
    sweep_dir = registry.latest_sweep()
    assert cpus_given(manifest.read(sweep_dir)) == [1, 2]
    lose_run(sweep_dir, 1)
    assert cli.main(["retry", str(sweep_dir)]) == 0
    assert cpus_given(manifest.read(sweep_dir)) == [1, 2]  # its group's, not the sweep's 1
    lose_run(sweep_dir, 1)
    assert cli.main(["retry", str(sweep_dir), "--set", "cpus_per_task=1"]) == 0
    assert cpus_given(manifest.read(sweep_dir)) == [1, 1]


def test_groups_keep_their_ids_when_a_sweep_adds_tasks_and_follow_task_order():
    from hpcjobs.config.planning import PlannedTask
    from hpcjobs.launching import backends, groups

    def task(index: int, **launcher) -> PlannedTask:
        return PlannedTask(index, (f"seed={index}",), str(index), "h", launcher)

    slurm = backends.create("slurm", {"partition": "debug"})
    tasks = [task(0, gres="gpu:2"), task(1), task(2, gres="gpu:1"), task(3, gres="gpu:2")]
    # the sweep being added to has gres=gpu:1 as r1 already
    found = groups.group_tasks(tasks, slurm, known={"r1": {"gres": "gpu:1"}})
    assert [(g.id, g.changes, [t.index for t in g.tasks]) for g in found] == [
        ("r2", {"gres": "gpu:2"}, [0, 3]),
        (None, {}, [1]),
        ("r1", {"gres": "gpu:1"}, [2]),
    ]
    assert found[0].settings(slurm.settings).partition == "debug"  # the rest: the sweep's
    # the local backend asks no GPU of a job: one group, the sweep's
    local = backends.create("local", {})
    assert [(g.id, len(g.tasks)) for g in groups.group_tasks(tasks, local)] == [(None, 4)]
