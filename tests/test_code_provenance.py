"""Code frozen at submit: what a sweep records of its code, and the snapshot its tasks import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcjobs import cli, compat
from hpcjobs.errors import ConfigError
from hpcjobs.launching import provenance, registry
from hpcjobs.run.task import code_dir, load_payload
from hpcjobs.sweepdir import manifest

LOCAL = ["--multirun", "hydra/launcher=hpcjobs_local", "hydra.launcher.poll_interval_s=0.1"]

WORKLOAD = """
import hpcjobs
import mywork


def run(cfg, ctx):
    import os
    return {"score": float(cfg.seed) + cfg.workload.bonus, "hpcjobs_file": hpcjobs.__file__,
            "mywork_file": mywork.__file__, "safepath": os.environ.get("PYTHONSAFEPATH", "")}
"""


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout


@pytest.fixture
def project(workdir: Path) -> Path:
    """A user's project (the working directory): a workload package and a config folder."""
    (workdir / "mywork").mkdir()
    (workdir / "mywork" / "__init__.py").write_text("")
    (workdir / "mywork" / "work.py").write_text(WORKLOAD)
    (workdir / "mywork" / "weights.bin").write_bytes(b"\0" * 100)  # not code: not copied
    (workdir / "helpers.py").write_text("X = 1\n")
    (workdir / "data").mkdir()  # no __init__.py: not a package, not copied
    (workdir / "data" / "big.py").write_text("")
    (workdir / "my_conf" / "workload").mkdir(parents=True)
    (workdir / "my_conf" / "workload" / "mine.yaml").write_text(
        "_target_: mywork.work.run\nbonus: 10\n"
    )
    return workdir


def test_a_snapshot_sweep_imports_the_copied_code_and_configs(project, capsys):
    env_before = dict(os.environ)
    assert (
        cli.main(
            [
                "--config-dir",
                "my_conf",
                "workload=mine",
                *LOCAL,
                "seed=0,1",
                "hydra.launcher.snapshot=true",
            ]
        )
        == 0
    )
    sweep = manifest.read(registry.latest_sweep())
    (entry,) = sweep.provenance
    frozen = Path(sweep.sweep_dir) / entry["snapshot"]
    assert frozen == code_dir(Path(sweep.sweep_dir) / ".submitit" / sweep.payload)
    copied = {
        str(p.relative_to(frozen))
        for p in frozen.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert {
        "mywork/__init__.py",
        "mywork/work.py",
        "helpers.py",
        "hpcjobs/run/job.py",
        "hpcjobs/conf/config.yaml",
        "hydra_plugins/hpcjobs_launcher/launcher.py",
    } <= copied
    assert not any(p.startswith(("data/", "mywork/weights")) or p.endswith(".j2") for p in copied)
    for task in sweep.tasks:  # each task imported hpcjobs and the workload from the copy
        metrics = json.loads((Path(sweep.sweep_dir) / task.run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["score"] == 10.0 + int(
            task.overrides[-1][-1]
        )
        assert Path(metrics["hpcjobs_file"]) == frozen / "hpcjobs" / "__init__.py"
        assert Path(metrics["mywork_file"]) == frozen / "mywork" / "__init__.py"
        # set for the imports only: the run's own children start as usual
        assert metrics["safepath"] == ""
    # The payload composes from the copied config folders, not from the working tree.
    payload = load_payload(Path(sweep.sweep_dir) / ".submitit" / sweep.payload)
    dirs = compat.config_dirs(payload.hydra_context)
    assert dirs and all(Path(d).is_relative_to(frozen) for d in dirs)
    assert (Path(dirs[-1]) / "workload" / "mine.yaml").read_text().endswith("bonus: 10\n")
    assert dict(os.environ) == env_before  # the launching process's environment is as it was
    assert str(frozen) in sys.path
    sys.path.remove(str(frozen))


def test_a_retry_may_not_ask_for_a_snapshot(project, capsys):
    assert cli.main(["--config-dir", "my_conf", "workload=mine", *LOCAL, "seed=0"]) == 0
    with pytest.raises(ConfigError, match="snapshot is taken when a sweep is submitted"):
        cli.cmd_retry(
            cli._parser().parse_args(
                ["retry", str(registry.latest_sweep()), "--set", "snapshot=true"]
            )
        )


def test_provenance_records_commit_patch_and_versions_and_notices_changes(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "train.py").write_text("lr = 0.1\n")
    (repo / "stale.py").write_text("old\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD").strip()
    (repo / "train.py").write_text("lr = 0.2\n")
    (repo / "stale.py").unlink()
    (repo / "new_module.py").write_text("print('untracked')")  # no trailing newline
    (repo / "multirun" / "x" / ".hydra").mkdir(parents=True)  # what runs write: not code
    (repo / "multirun" / "x" / ".hydra" / "config.yaml").write_text("a: 1\n")
    (repo / "multirun" / "x" / "multirun.yaml").write_text("a: 1\n")
    (repo / "results.csv").write_text("a\n1\n")
    sweep_dir = tmp_path / "sweep"

    entry = provenance.capture_code(sweep_dir, "abc", None, repo)
    project = next(c for c in entry["checkouts"] if c["role"] == "project")
    assert project["path"] == str(repo) and project["commit"] == head and project["dirty"]
    assert entry["python"] == ".".join(map(str, sys.version_info[:3]))
    assert {"hydra-core", "omegaconf", "submitit", "hpcjobs"} <= set(entry["packages"])
    # The patch on the commit gives the working tree back, untracked files included.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    git(clone, "apply", str(sweep_dir / project["patch"]))
    for name in ("train.py", "new_module.py"):
        assert (clone / name).read_text() == (repo / name).read_text()
    assert not (clone / "stale.py").exists()
    assert not (clone / "multirun").exists() and not (clone / "results.csv").exists()

    sweep = manifest.SweepManifest("demo", str(sweep_dir), "local", provenance=[entry])
    assert provenance.changed_since_submission(sweep, waiting=3) == []
    (repo / "multirun" / "y").mkdir()  # another sweep's outputs: not a change of the code
    (repo / "multirun" / "y" / "multirun.yaml").write_text("b: 2\n")
    assert provenance.changed_since_submission(sweep, waiting=3) == []
    (repo / "train.py").write_text("lr = 0.3\n")
    (warning,) = provenance.changed_since_submission(sweep, waiting=3)
    assert (
        f"{repo}: its uncommitted changes differ" in warning
        and "3 task(s) not started yet" in warning
    )
    assert "hydra.launcher.snapshot=true" in warning
    git(repo, "commit", "-q", "-am", "second")
    assert "HEAD is" in provenance.changed_since_submission(sweep, waiting=0)[0]
    sweep.provenance[0] = {**entry, "snapshot": ".submitit/code.abc"}
    # its tasks import the snapshot
    assert provenance.changed_since_submission(sweep, waiting=3) == []


def test_versions_never_import_torch():
    code = (
        "import sys; from hpcjobs.launching import provenance; v = provenance.versions();"
        " assert 'torch' not in sys.modules; print(v['packages'].get('torch'), v.get('cuda', '?'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    import torch

    assert out.split()[0] == torch.__version__
    assert out.split()[1] == str(torch.version.cuda)  # None on a CPU build


def test_cuda_version_from_torch_files(tmp_path, monkeypatch):
    class FakeTorch:
        def __init__(self, version: str, version_py: str | None) -> None:
            self.version = version
            if version_py is not None:
                (tmp_path / "torch").mkdir(exist_ok=True)
                (tmp_path / "torch" / "version.py").write_text(version_py)

        def locate_file(self, name: str) -> Path:
            return tmp_path / name

    def use(fake):
        monkeypatch.setattr(provenance.metadata, "distribution", lambda name: fake)

    use(FakeTorch("2.5.1", "__version__ = '2.5.1'\ncuda: Optional[str] = '12.4'\n"))
    assert provenance.torch_cuda() == (True, "12.4")
    use(FakeTorch("2.5.1+cpu", "cuda: Optional[str] = None\n"))
    assert provenance.torch_cuda() == (True, None)
    (tmp_path / "torch" / "version.py").unlink()
    use(FakeTorch("2.3.0+cu118", None))
    assert provenance.torch_cuda() == (True, "11.8")
    use(FakeTorch("2.3.0", None))
    assert provenance.torch_cuda() == (False, None)


def test_the_job_script_exports_what_the_tasks_need_to_import_the_snapshot(tmp_path, monkeypatch):
    from hpcjobs.launching import snapshot
    from hpcjobs.launching.backends import SlurmBackend, slurm_controller

    monkeypatch.setattr(slurm_controller, "max_array_size", lambda: 1001)  # no controller asked
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    backend = SlurmBackend(
        {
            "submitit_folder": str(tmp_path / "%j"),
            "job_name": "x",
            "timeout_min": 5,
            "setup": ["module load cuda"],
            "mem_gb": 2.5,
        }
    )
    backend.environment = snapshot.environment(tmp_path / "my sweep" / "code.abc", tmp_path)
    script = backend.describe(2)
    lines = script.splitlines()
    assert lines.index("module load cuda") < lines.index(
        f"export PYTHONPATH='{tmp_path}/my sweep/code.abc:{tmp_path}'"
    )
    assert "export PYTHONSAFEPATH=1" in lines and "export HPCJOBS_SET_PYTHONSAFEPATH=1" in lines
    assert "#SBATCH --mem=2560M" in lines  # whole megabytes: sbatch refuses --mem=2.5
