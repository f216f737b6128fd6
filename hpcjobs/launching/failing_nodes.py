"""Nodes that keep failing a sweep's tasks, left out of its `retry`.

A node under which two attempts of this sweep's tasks ended ``NODE_FAIL`` (the same task twice
or two tasks) is likely to fail the next one too: `retry` asks Slurm not to use it
(``--exclude``, added to any exclude the sweep sets), says so, and records it with the retry's
attempts in sweep.json. ``retry --include-node NODE`` keeps a node in; the sweep's own
``exclude`` is changed as any setting is, ``--set exclude=...``.

What failed is asked of the scheduler's accounting, in one call for every attempt of every
task and every worker job of its pools (sacct lists an attempt Slurm requeued itself, too).
An allocation of several nodes that ended NODE_FAIL does not say which of its nodes failed:
it counts against none of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hpcjobs.launching import backends
from hpcjobs.sweepdir import manifest

# NODE_FAIL attempts on one node, in one sweep, after which a retry of the sweep excludes it.
EXCLUDE_AFTER = 2


@dataclass(frozen=True)
class NodeFailure:
    node: str
    task: int | None  # the task's index in the sweep; None for a worker's job (a pool's)
    job_id: str  # the attempt's (Slurm: ARRAYID_INDEX)
    at: str  # when it ended, as the scheduler says
    what: str = ""  # "task 0", "worker 1 of pool0"


def node_failures(sweep: manifest.SweepManifest) -> tuple[list[NodeFailure], str]:
    """Every attempt of the sweep's tasks, and of its workers' jobs (a pool's tasks run in
    them), that ended because its node failed, oldest first per job: one poll for all of them;
    none where the backend keeps no accounting. (the failures, a note when the scheduler's
    accounting could not say)"""
    known = backends.BACKENDS.get(sweep.executor)
    if known is None or not known.keeps_accounting or not known.available():
        return [], ""
    owners: dict[str, tuple[int | None, str]] = {
        a.job_id: (t.index, f"task {t.index}") for t in sweep.tasks for a in t.attempts if a.job_id
    }
    owners.update(
        (job_id, (None, f"worker {k} of {pool.id}"))
        for pool in sweep.pools
        for k, job_id in enumerate(pool.job_ids)
        if job_id
    )
    if not owners:
        return [], ""
    poll = backends.create(sweep.executor, sweep.launcher).poll(list(owners))
    return [
        NodeFailure(failure.node, *owners[job_id][:1], job_id, failure.ended_at, owners[job_id][1])
        for job_id, state in poll.states.items()
        if job_id in owners
        for failure in state.node_failures()
        if is_one_node(failure.node)
    ], poll.note


def is_one_node(nodelist: str) -> bool:
    """'n1' -> True; 'n[1-2]', 'n1,n2', 'None assigned', '' -> False."""
    return bool(nodelist) and not re.search(r"[\[,\s]", nodelist)


def failing(
    failures: Iterable[NodeFailure], times: int = EXCLUDE_AFTER
) -> dict[str, list[NodeFailure]]:
    """The nodes that failed at least ``times`` attempts, each with those failures."""
    by_node: dict[str, list[NodeFailure]] = {}
    for failure in failures:
        by_node.setdefault(failure.node, []).append(failure)
    return {node: f for node, f in sorted(by_node.items()) if len(f) >= times}


def why(failures: Iterable[NodeFailure]) -> str:
    """'NODE_FAIL under task 0 (12_0, 2026-12-05T17:42:03) and task 3 (12_3, ...)'."""
    listed = [f"{f.what} ({f.job_id}, {f.at or 'time unknown'})" for f in failures]
    return "NODE_FAIL under " + " and ".join(listed)


def split_nodelist(nodelist: str | None) -> list[str]:
    """A Slurm node list as its comma-separated items, brackets kept: 'n[1,3],gpu7' ->
    ['n[1,3]', 'gpu7']."""
    return [item for item in re.split(r",(?![^\[]*\])", nodelist or "") if item]


def with_excluded(exclude: str | None, nodes: Iterable[str]) -> str | None:
    """The sweep's ``exclude`` with ``nodes`` added (an item already listed is not repeated)."""
    items = split_nodelist(exclude)
    items += [n for n in nodes if n not in items]
    return ",".join(items) or None


def exclusion(
    failures: Iterable[NodeFailure], include: Iterable[str] = ()
) -> tuple[dict[str, str], dict[str, str]]:
    """(nodes to exclude -> why, nodes kept in by ``include`` -> why they would have been)."""
    kept = set(include)
    found = {node: why(f) for node, f in failing(failures).items()}
    return (
        {n: w for n, w in found.items() if n not in kept},
        {n: w for n, w in found.items() if n in kept},
    )


def apply(launcher: Mapping[str, object], excluded: Mapping[str, str]) -> dict[str, object]:
    """Launcher settings for the retry: the sweep's, with ``excluded`` added to its exclude."""
    if not excluded:
        return dict(launcher)
    current = launcher.get("exclude")
    return {**launcher, "exclude": with_excluded(str(current) if current else None, excluded)}
