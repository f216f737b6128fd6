"""An image-folder run on the real local Slurm cluster: the memory Slurm gives its task sets
the in-memory budget, and data.stage=node copies the cache to the node's storage."""

from __future__ import annotations

import uuid
from pathlib import Path

from hpcjobs import cli
from hpcjobs.results import collect
from hpcjobs.sweepdir import manifest
from hpcjobs.workloads.cnn import cache

from .test_slurm_sweep import SLURM, TINY, launched_sweep, wait_sweep


def test_the_tasks_memory_sets_the_budget_and_the_cache_is_staged_on_the_node(
    workdir, make_image_folder
):
    root = make_image_folder(num_classes=2, per_class=12)
    node_local = workdir / "node-local"
    overrides = [
        "data=imagefolder", f"data.root={root}", "data.image_size=16",
        f"data.cache_dir={workdir / 'shared-cache'}", "data.stage=node",
        f"data.stage_dir={node_local}", *SLURM, *TINY,
        f"experiment_name=imagefolder_{uuid.uuid4().hex[:6]}", "seed=0,1",
        "hydra.launcher.mem_gb=2",
    ]  # fmt: skip
    assert cli.main(overrides) == 0
    sweep: manifest.SweepManifest = launched_sweep()
    assert wait_sweep(Path(sweep.sweep_dir)).counts == {"completed": 2}
    runs = collect.collect([Path(sweep.sweep_dir)]).runs
    # --mem=2048M for the one task: half of it, in GB
    assert set(runs["data_memory_budget_gb"]) == {round(2048 * 2**20 / 2 / 1e9, 3)}
    assert set(runs["data_streamed"]) == {False}
    assert sorted(runs["data_cache"]) == ["built", "hit"]
    staged = list((node_local / cache.STAGE_SUBDIR).glob("imagefolder-*/"))
    assert len(staged) == 1 and (staged[0] / cache.MANIFEST).exists()
