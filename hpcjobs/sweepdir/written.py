"""The manifest this process last wrote, kept while the file is still that one.

The CLI prints a summary right after a launch; reading back a sweep.json of 100,000
tasks that this very process has just written would take a while, and tell it nothing new.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpcjobs.sweepdir.manifest import SweepManifest

# sweep directory (absolute) -> (its manifest's path, mtime_ns, size, the manifest written there)
_written: dict[Path, tuple[Path, int, int, SweepManifest]] = {}


def remember(path: Path, manifest: SweepManifest) -> None:
    """Note that ``manifest`` was just written to ``path`` (by hpcjobs.sweepdir.manifest.write)."""
    stat = path.stat()
    _written[path.parent] = (path, stat.st_mtime_ns, stat.st_size, manifest)


def last_written(sweep_dir: Path) -> SweepManifest | None:
    """The manifest this process last wrote to ``sweep_dir``, if the file is still that one
    (the CLI's summary after a launch, without parsing 100,000 tasks again); else None."""
    if Path(sweep_dir).absolute() not in _written:
        return None
    path, mtime, size, manifest = _written[Path(sweep_dir).absolute()]
    try:
        stat = path.stat()
    except OSError:
        return None
    return manifest if (stat.st_mtime_ns, stat.st_size) == (mtime, size) else None
