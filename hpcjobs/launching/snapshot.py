"""The code a sweep's tasks import, frozen at submission (``hydra.launcher.snapshot=true``).

Without it, each task imports the working tree as it is when the task starts: a file
edited while 900 tasks are pending changes what they run. With it, the launcher copies
into ``code.<id>/``, beside the sweep's pickled payload (``<sweep_dir>/.submitit/``):

- the hpcjobs package and its Hydra launcher plugin (``hydra_plugins/hpcjobs_launcher``),
  from wherever they are imported;
- the app's own code: the Python packages (folders with an ``__init__.py``) and modules
  (``*.py``) of the directory the sweep is submitted from — where the tasks start, and
  what Python puts first on their path — and of the app script's folder if it is another;
- every file-system config folder on Hydra's search path (hpcjobs' ``conf/``,
  ``--config-dir``), because a task composes its config again where it runs.

Only ``*.py`` and ``*.yaml``/``*.yml`` files are copied: code and configs, not data or
checkpoints. Installed packages (torch, hydra, your site-packages) are not copied.

The tasks import from the copy: it comes first on PYTHONPATH (then the submission
directory, for anything not copied), with PYTHONSAFEPATH=1 so that Python does not put
the working directory ahead of it; the runner puts it first on ``sys.path`` again
before it unpickles the payload, and unsets PYTHONSAFEPATH for the run's own children.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hpcjobs import compat
from hpcjobs.errors import ConfigError
from hpcjobs.sweepdir.payloads import SAFEPATH_SET_ENV

COPIED_SUFFIXES = (".py", ".yaml", ".yml")
SKIPPED_DIRS = {"__pycache__", "node_modules"}
# code and configs: anything bigger is a mistake (a data folder with an __init__.py?)
MAX_BYTES = 256 << 20
CONFIGS_DIR = "_hydra_configs"  # config folders that are not inside a copied package


def code_sources(cwd: Path) -> list[tuple[Path, str]]:
    """(source, its place in the snapshot) of everything a snapshot copies but config folders."""
    import hpcjobs

    # Found, not imported: the plugin (an entry point) is a later stage than this one.
    plugin = importlib.util.find_spec("hydra_plugins.hpcjobs_launcher")
    assert plugin is not None and plugin.origin is not None
    sources = [
        (Path(hpcjobs.__file__).parent, "hpcjobs"),
        (Path(plugin.origin).parent, "hydra_plugins/hpcjobs_launcher"),
    ]
    projects = [cwd]
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if (
        script is not None
        and script.suffix == ".py"
        and script.is_file()
        and script.parent.resolve() != cwd.resolve()
    ):
        projects.append(script.parent.resolve())
    for project in projects:
        try:
            entries = sorted(project.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.name in SKIPPED_DIRS:
                continue
            if (entry.is_file() and entry.suffix == ".py") or (
                entry.is_dir() and (entry / "__init__.py").is_file()
            ):
                sources.append((entry, entry.name))
    # one of each name: the first (hpcjobs as imported, then the project's)
    unique: dict[str, Path] = {}
    for src, dest in sources:
        unique.setdefault(dest, src)
    return [(src, dest) for dest, src in unique.items()]


def take(code: Path, hydra_context: Any, cwd: Path) -> Any:
    """Copy the tasks' code and config folders into ``code``; return Hydra's context with its
    config folders read from the copy (what the payload pickles)."""
    sources = code_sources(cwd)
    plan = [(src, code / dest) for src, dest in sources]
    moved: dict[str, str] = {}
    for k, config_dir in enumerate(compat.config_dirs(hydra_context)):
        where = Path(config_dir).resolve()
        inside = next(
            (
                (src, dest)
                for src, dest in plan
                if src.is_dir() and where.is_relative_to(src.resolve())
            ),
            None,
        )
        if inside is None:
            target = code / CONFIGS_DIR / str(k)
            plan.append((where, target))
        else:
            target = inside[1] / where.relative_to(inside[0].resolve())
        moved[config_dir] = str(target)
    copied = 0
    for src, dest in plan:
        copied += _copy(src, dest, copied)
    return compat.with_config_dirs_moved(hydra_context, moved)


def _copy(src: Path, dest: Path, so_far: int) -> int:
    """Copy a file, or a folder's code and config files; the bytes copied."""
    files = [src] if src.is_file() else [p for p in _walk(src) if p.suffix in COPIED_SUFFIXES]
    copied = 0
    for path in files:
        target = dest if src.is_file() else dest / path.relative_to(src)
        size = path.stat().st_size
        if so_far + copied + size > MAX_BYTES:
            raise ConfigError(
                "hydra.launcher.snapshot=true would copy more than"
                f" {MAX_BYTES >> 20} MB of code and configs (at {path}): move data"
                f" out of the packages in {src.parent}, or set snapshot=false"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied += size
    return copied


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS)
        for name in sorted(files):
            yield Path(root) / name


def environment(code: Path, cwd: Path) -> dict[str, str]:
    """What a task's environment needs to import the snapshot first."""
    path = os.pathsep.join(
        [str(code), str(cwd)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    )
    env = {"PYTHONPATH": path}
    if not os.environ.get("PYTHONSAFEPATH"):
        env.update({"PYTHONSAFEPATH": "1", SAFEPATH_SET_ENV: "1"})
    return env


@contextlib.contextmanager
def exported(env: Mapping[str, str]) -> Iterator[None]:
    """``env`` in this process's environment while the block runs (what it starts inherits it,
    local processes and sbatch alike), the earlier values restored afterwards."""
    earlier = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in earlier.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def latest(sweep_dir: Path, provenance: list[dict[str, Any]]) -> Path | None:
    """The sweep's latest snapshot that still exists, from its manifest's provenance."""
    for entry in reversed(provenance):
        where = entry.get("snapshot") if isinstance(entry, dict) else None
        if where and (Path(sweep_dir) / where).is_dir():
            return Path(sweep_dir) / where
    return None
