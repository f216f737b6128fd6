"""An installed (non-editable) hpcjobs finds its configs, plugins and templates."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "dist"),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp / "dist").glob("hpcjobs-*.whl")
    target = tmp / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def run_installed(target, *code_or_args, cwd):
    env = {**os.environ, "PYTHONPATH": str(target), "HPCJOBS_STATE_DIR": str(cwd / "state")}
    return subprocess.run(
        [sys.executable, *code_or_args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_installed_package_composes_its_configs(installed, tmp_path):
    proc = run_installed(
        installed, "-c", "import hpcjobs, sys; print(hpcjobs.__file__)", cwd=tmp_path
    )
    assert proc.stdout.strip().startswith(str(installed)), proc.stdout + proc.stderr
    proc = run_installed(
        installed, "-m", "hpcjobs", "experiment=cnn_sweep", "--cfg", "job", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "experiment_name: cnn_sweep" in proc.stdout and "channels:" in proc.stdout
    proc = run_installed(installed, "-m", "hpcjobs", "--info", "plugins", cwd=tmp_path)
    assert "HpcjobsLauncher" in proc.stdout and "HpcjobsSweeper" in proc.stdout


def test_installed_package_ships_the_report_templates(installed):
    templates = sorted(p.name for p in (installed / "hpcjobs" / "templates").glob("*.j2"))
    assert templates == sorted(p.name for p in (REPO / "hpcjobs" / "templates").glob("*.j2")) != []
