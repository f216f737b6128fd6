"""hpcjobs: machine-learning experiment sweeps on Slurm clusters (and laptops).

For a workload's typed config: ``from hpcjobs import RunConf, check``
(docs/guides/experiments-and-workloads.md).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["RunConf", "__version__", "check"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `python -m hpcjobs status` need not load Hydra's config machinery.
    if name in ("RunConf", "check"):
        from hpcjobs.config import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'hpcjobs' has no attribute {name!r}")
