"""Every Hydra/submitit internal hpcjobs uses works with the installed versions, which are supported ones."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hpcjobs import compat


def test_installed_versions_are_within_the_declared_ranges():
    assert compat.version_problems() == []


def test_a_version_outside_the_declared_range_is_named_with_the_fix():
    problems = compat.version_problems({"hydra-core": "1.4.0", "submitit": "1.5.2", "omegaconf": "2.3.0"})
    assert len(problems) == 1
    assert "hydra-core 1.4.0 is installed" in problems[0] and "<1.4" in problems[0] and "pip install" in problems[0]


def test_hydra_internals():
    BasicSweeper, BasicSweeperConf = compat.basic_sweeper()
    assert BasicSweeperConf().max_batch_size is None and hasattr(BasicSweeper, "sweep")
    args = compat.hydra_args_parser().parse_args(["--multirun", "a=1"])
    assert args.multirun and args.overrides == ["a=1"]
    cfg = OmegaConf.create({"a": {"b": 1}})
    compat.apply_overrides(cfg, OverridesParser.create().parse_overrides(["a.b=2", "+c=3"]))
    assert cfg == {"a": {"b": 2}, "c": 3}
    ret = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("boom"))
    assert isinstance(compat.job_return_value(ret), ValueError)


def test_submitit_internals(tmp_path):
    import submitit

    stdout, stderr = compat.submitit_log_paths(tmp_path / "%j", "12_3")
    assert stdout.name == "12_3_0_log.out" and stderr.name == "12_3_0_log.err" and "12_3" in str(stdout.parent)
    assert compat.submitit_result_pickle(tmp_path / "%j", "12_3").name == "12_3_0_result.pkl"
    executor = submitit.SlurmExecutor(folder=tmp_path / "%j")
    executor.update_parameters(time=5, job_name="x")
    script = compat.sbatch_script(executor)
    assert script.startswith("#!/bin/bash") and "#SBATCH --time=5" in script and "submitit" in script
    assert not list(Path(tmp_path).iterdir())  # rendering a script submits and writes nothing



def test_submitit_stop_signal_and_requeue():
    from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

    assert compat.submitit_stop_signal() == signal.SIGUSR2  # what sbatch --signal asks for
    # In a task of submitit's local executor, a requeue is the exit code its controller restarts on.
    env = {**os.environ, "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "1"}
    proc = subprocess.run([sys.executable, "-c", "from hpcjobs import compat; compat.submitit_requeue()"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == LOCAL_REQUEUE_RETURN_CODE, proc.stderr
