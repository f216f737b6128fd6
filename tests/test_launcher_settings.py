"""The launcher's settings: declared once (the configs Hydra composes), read as one typed object."""

from __future__ import annotations

import dataclasses

from omegaconf import OmegaConf

from hpcjobs.launching import backends
from hpcjobs.launching.settings import LauncherSettings
from hpcjobs.launching.submission import WorkerSlot
from hydra_plugins.hpcjobs_launcher.config import LAUNCHER_CONFIGS


def test_every_key_a_launcher_config_declares_is_a_typed_setting():
    typed = {f.name: f for f in dataclasses.fields(LauncherSettings)}
    for name, conf in LAUNCHER_CONFIGS.items():
        missing = {f.name for f in dataclasses.fields(conf)} - set(typed)
        assert not missing, f"{name}: {missing} not in LauncherSettings"


def test_settings_from_a_composed_config_or_a_sweep_record():
    composed = OmegaConf.structured(LAUNCHER_CONFIGS["hpcjobs_slurm"])
    composed.submitit_folder, composed.job_name = "/s/.submitit/%j", "exp"
    composed.setup = ["module load cuda"]
    settings = LauncherSettings.from_mapping({k: composed[k] for k in composed})
    # plain lists, for submitit
    assert settings.setup == ["module load cuda"] and type(settings.setup) is list
    assert (settings.executor, settings.timeout_min, settings.workers) == ("slurm", 60, None)
    # sweep.json's record, from another version: keys it no longer knows are left out.
    recorded = LauncherSettings.from_mapping(
        {"executor": "local", "workers": 3, "gone_key": 1, "_target_": "x"}
    )
    assert (recorded.workers, recorded.submitit_folder, recorded.job_name) == (3, "", None)


def test_a_backend_is_made_with_its_settings_and_environment():
    settings = LauncherSettings.from_mapping(
        {"executor": "local", "workers": 2, "submitit_folder": "/f/%j"}
    )
    backend = backends.create("local", settings, {"PYTHONPATH": "/code"})
    assert backend.settings is settings and backend.folder == "/f/%j"
    assert backend.environment == {"PYTHONPATH": "/code"} and backend.params["workers"] == 2
    assert backends.create("local", {"workers": 2}).settings.workers == 2  # a mapping still does
    slot = WorkerSlot(1)  # a worker is no planned task: just its number
    assert (slot.index, slot.overrides, slot.label) == (1, (), "worker 1")
