"""Slurm's commands faked for the unit tests: what sbatch/sacct/squeue/scontrol print, without
a cluster (tests/integration/ asks the real ones).

Imported as ``from slurm_fakes import fake_commands``: tests/ is no package, and pytest puts it
on sys.path to import the test modules beside this one.
"""

from __future__ import annotations

import subprocess

import pytest

from hpcjobs.launching.backends import slurm_controller as slurm


def fake_commands(
    monkeypatch: pytest.MonkeyPatch, outputs: dict[str, tuple[int, str, str]]
) -> list[list[str]]:
    """Make slurm._run answer from `outputs` (command name -> (returncode, stdout, stderr));
    return the argv of each call, in order (a command not in `outputs` is a KeyError)."""
    calls: list[list[str]] = []

    def run(argv):
        calls.append(list(argv))
        code, out, err = outputs[argv[0]]
        return subprocess.CompletedProcess(argv, code, out, err)

    monkeypatch.setattr(slurm, "_run", run)
    return calls
