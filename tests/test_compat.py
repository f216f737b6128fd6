"""Every Hydra/submitit internal hpcjobs uses works with the installed, supported versions."""

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, read_write
from omegaconf.errors import ValidationError

from hpcjobs import compat


def test_installed_versions_are_within_the_declared_ranges():
    assert compat.version_problems() == []


def test_a_version_outside_the_declared_range_is_named_with_the_fix():
    problems = compat.version_problems(
        {"hydra-core": "1.4.0", "submitit": "1.5.2", "omegaconf": "2.3.0"}
    )
    assert len(problems) == 1
    assert (
        "hydra-core 1.4.0 is installed" in problems[0]
        and "<1.4" in problems[0]
        and "pip install" in problems[0]
    )


def test_hydra_internals():
    BasicSweeper, BasicSweeperConf = compat.basic_sweeper()
    assert BasicSweeperConf().max_batch_size is None and hasattr(BasicSweeper, "sweep")
    args = compat.hydra_args_parser().parse_args(["--multirun", "a=1"])
    assert args.multirun and args.overrides == ["a=1"]
    cfg = OmegaConf.create({"a": {"b": 1}})
    compat.apply_overrides(cfg, OverridesParser.create().parse_overrides(["a.b=2", "+c=3"]))
    assert cfg == {"a": {"b": 2}, "c": 3}
    parsed = OverridesParser.create().parse_overrides(["seed=1", "a.b=2", "skip=x"])
    assert (
        compat.overrides_dirname(parsed, exclude_keys=["skip"], item_sep=",", kv_sep=":")
        == "a.b:2,seed:1"
    )
    ret = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("boom"))
    assert isinstance(compat.job_return_value(ret), ValueError)


def test_hydra_config_search_path(tmp_path):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import HydraContext, RunMode

    for version in ("a", "b"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "config.yaml").write_text(f"version: {version}\n")
    context = HydraContext(
        config_loader=ConfigLoaderImpl(create_config_search_path(str(tmp_path / "a"))),
        callbacks=None,
    )
    (tmp_path / "extra").mkdir()
    context.config_loader.get_search_path().append(
        "test", f"file://{tmp_path / 'extra'}", anchor="main"
    )
    assert compat.config_dirs(context) == [str(tmp_path / "a"), str(tmp_path / "extra")]
    moved = compat.with_config_dirs_moved(context, {str(tmp_path / "a"): str(tmp_path / "b")})
    assert compat.config_dirs(moved) == [str(tmp_path / "b"), str(tmp_path / "extra")]
    assert moved.config_loader.load_configuration("config", [], RunMode.RUN).version == "b"
    # a copy
    assert context.config_loader.load_configuration("config", [], RunMode.RUN).version == "a"


@pytest.mark.parametrize(
    "folder", ["%j", "logs/%A/%a", "~/x/%j_%t", "plain", "ABS/.submitit/%j", "ABS//x/%j/"]
)
@pytest.mark.parametrize("job_id", ["12", "12_3", "5001_10000"])
def test_log_paths_are_submitits(tmp_path, monkeypatch, folder, job_id):
    from submitit.core.utils import JobPaths

    monkeypatch.chdir(tmp_path)
    folder = folder.replace("ABS", str(tmp_path))
    if "%a" in folder and "_" not in job_id:
        with pytest.raises(ValueError, match="not an array task"):
            compat.submitit_log_paths(folder, job_id)
        return
    paths = JobPaths(folder, job_id=job_id, task_id=0)
    assert compat.submitit_log_paths(folder, job_id) == (paths.stdout, paths.stderr)


def test_submitit_internals(tmp_path):
    import submitit

    stdout, stderr = compat.submitit_log_paths(tmp_path / "%j", "12_3")
    assert (
        stdout.name == "12_3_0_log.out"
        and stderr.name == "12_3_0_log.err"
        and "12_3" in str(stdout.parent)
    )
    assert compat.submitit_result_pickle(tmp_path / "%j", "12_3").name == "12_3_0_result.pkl"
    executor = submitit.SlurmExecutor(folder=tmp_path / "%j")
    executor.update_parameters(time=5, job_name="x")
    script = compat.sbatch_script(executor)
    assert (
        script.startswith("#!/bin/bash") and "#SBATCH --time=5" in script and "submitit" in script
    )
    assert not list(Path(tmp_path).iterdir())  # rendering a script submits and writes nothing


def test_submitit_stop_signal_and_requeue():
    from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

    assert compat.submitit_stop_signal() == signal.SIGUSR2  # what sbatch --signal asks for
    # In a task of submitit's local executor, a requeue is the exit code its controller restarts on.
    env = {**os.environ, "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", "from hpcjobs import compat; compat.submitit_requeue()"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == LOCAL_REQUEUE_RETURN_CODE, proc.stderr


def test_set_in_place_sets_a_read_only_config_as_an_assignment_does():
    """Hydra's node is read-only; set_in_place sets its per-task fields as an assignment under
    read_write would: converted and checked by each node's type, read-only after, and the
    same values as the assignment gives, whether in place or (another shape) by assignment."""

    @dataclass
    class Job:
        num: int = 0
        name: str = "a"
        task: list[str] = field(default_factory=lambda: ["x=1"])

    def fresh():
        cfg = OmegaConf.structured({"job": Job(), "other": 1})
        OmegaConf.set_readonly(cfg, True)
        return cfg

    for values in (
        {"job.num": 7, "job.name": "b", "job.task": ["y=2"]},  # in place
        {"job.num": "8", "job.task": ["y=2", "z=3"], "job.name": "${other}"},  # by assignment
    ):
        cfg, expected = fresh(), fresh()
        compat.set_in_place(cfg, values)
        for key, value in values.items():
            parent, _, last = key.rpartition(".")
            with read_write(expected):
                OmegaConf.select(expected, parent)[last] = value
        assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(expected)
        assert cfg.job.name == expected.job.name and isinstance(cfg.job.num, int)
        assert OmegaConf.is_readonly(cfg.job) and OmegaConf.is_readonly(cfg.job.task)
    with pytest.raises(ValidationError):
        compat.set_in_place(fresh(), {"job.num": "many"})
