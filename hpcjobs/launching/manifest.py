"""Moved, deprecated: this module held six jobs, each now in a module of its own. It re-exports
their names, so that code written against it keeps working (importing it warns); new code imports
them from there:

    sweep.json's schema and I/O         hpcjobs.sweepdir.manifest (read, write, SweepManifest, ...)
    the manifest last written here      hpcjobs.sweepdir.written (last_written)
    claiming a sweep directory          hpcjobs.launching.claim (claim, CLAIM_FILE)
    the "latest sweep" registry         hpcjobs.launching.registry (register, latest_sweep, ...)
    process identity from /proc         hpcjobs.processes (process_start, this_process, ...)
    the commit a sweep was submitted at hpcjobs.launching.provenance (git_commit)
    no cyclic GC while building a lot   hpcjobs.gcpause (gc_paused)
"""

from hpcjobs.deprecation import moved
from hpcjobs.gcpause import gc_paused
from hpcjobs.launching.claim import CLAIM_FILE, claim
from hpcjobs.launching.provenance import git_commit
from hpcjobs.launching.registry import (
    REGISTRY_FILE,
    STATE_DIR_ENV,
    latest_sweep,
    record,
    recorded_by_this_process,
    state_dir,
)
from hpcjobs.processes import process_start, process_started_at, this_process
from hpcjobs.sweepdir.manifest import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    Attempt,
    SweepManifest,
    TaskRecord,
    WorkerPool,
    exists,
    launcher_alive,
    read,
    write,
)
from hpcjobs.sweepdir.written import last_written

moved(
    __name__,
    "hpcjobs.sweepdir.manifest (sweep.json), hpcjobs.sweepdir.written, hpcjobs.launching.claim,"
    " hpcjobs.launching.registry, hpcjobs.launching.provenance, hpcjobs.processes, hpcjobs.gcpause",
)

__all__ = [
    "CLAIM_FILE",
    "MANIFEST_FILE",
    "REGISTRY_FILE",
    "SCHEMA_VERSION",
    "STATE_DIR_ENV",
    "Attempt",
    "SweepManifest",
    "TaskRecord",
    "WorkerPool",
    "claim",
    "exists",
    "gc_paused",
    "git_commit",
    "last_written",
    "latest_sweep",
    "launcher_alive",
    "process_start",
    "process_started_at",
    "read",
    "record",
    "recorded_by_this_process",
    "state_dir",
    "this_process",
    "write",
]
