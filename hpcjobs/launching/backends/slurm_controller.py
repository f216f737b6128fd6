"""Questions to the Slurm controller, each answered with one command.

``task_states`` asks ``sacct`` once for every task of every array of a sweep (and
``squeue`` only when accounting cannot answer), so following a 10,000-task sweep costs
the controller one RPC per poll. A task the controller no longer knows — Slurm forgets
array tasks cancelled while pending — is reported as ``cancelled``, never waited on. While
the controller cannot be reached (slurmctld restarting), a task sacct does not list is left
out of the poll, unknown: never reported cancelled, which `retry` would run a second time.
With ``accounting=True`` the same sacct call also lists the tasks' steps and says what
each task was given and used (elapsed, TotalCPU, MaxRSS, ReqMem, AllocCPUS, GPUs).

sacct is asked with ``--duplicates``: a task Slurm requeued itself (JobRequeue, on NODE_FAIL
or preemption) runs again under the same job id, and without it sacct shows only its latest
attempt. Every attempt is kept (``TaskState.earlier``, ``Poll.requeued``): which node failed
under a task, and what its lost attempt cost.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import replace

from hpcjobs import states
from hpcjobs.errors import LauncherError
from hpcjobs.launching.backends.base import Poll, TaskState, Usage, format_elapsed

# Slurm's default MaxArraySize: array indices 0..1000.
DEFAULT_MAX_ARRAY_SIZE = 1001
COMMAND_TIMEOUT_S = 30

# Slurm job states folded into what a user of a sweep cares about.
_SLURM_TO_STATE = {
    "PENDING": states.PENDING,
    "REQUEUED": states.PENDING,
    "REQUEUE_FED": states.PENDING,
    "REQUEUE_HOLD": states.PENDING,
    "SUSPENDED": states.PENDING,
    "RESV_DEL_HOLD": states.PENDING,
    "CONFIGURING": states.PENDING,
    "RUNNING": states.RUNNING,
    "COMPLETING": states.RUNNING,
    "STAGE_OUT": states.RUNNING,
    "SIGNALING": states.RUNNING,
    "RESIZING": states.RUNNING,
    "COMPLETED": states.COMPLETED,
    "FAILED": states.FAILED,
    "OUT_OF_MEMORY": states.FAILED,
    "BOOT_FAIL": states.FAILED,
    "DEADLINE": states.FAILED,
    "CANCELLED": states.CANCELLED,
    "REVOKED": states.CANCELLED,
    "SPECIAL_EXIT": states.FAILED,
    "TIMEOUT": states.TIMEOUT,
    "PREEMPTED": states.PREEMPTED,
    "NODE_FAIL": states.NODE_FAIL,
}


class AccountingUnavailable(LauncherError):
    """sacct cannot answer (no slurmdbd, accounting disabled)."""


class ControllerUnreachable(LauncherError):
    """slurmctld does not answer (restarting, down, overloaded): try again later."""


# What Slurm's clients say when slurmctld is not there; squeue gives up after MessageTimeout
# (10 s by default: 9 s measured on the dev cluster).
_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Zero Bytes were transmitted"
    r"|Connection refused|Communication connection failure"
)


def available() -> bool:
    return shutil.which("sbatch") is not None


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise LauncherError(f"{argv[0]} not found: is this a Slurm login node?") from None
    except subprocess.TimeoutExpired:
        raise ControllerUnreachable(
            f"{argv[0]} did not answer in {COMMAND_TIMEOUT_S} s: is slurmctld up?"
        ) from None


def scancel(job_ids: Sequence[str]) -> None:
    """Cancel tasks (ARRAYID_INDEX) or whole arrays, in one call."""
    if not job_ids:
        return
    out = _run(["scancel", *job_ids])
    if out.returncode != 0:
        raise LauncherError(f"scancel failed: {(out.stderr or out.stdout).strip()[:200]}")


def ping() -> bool:
    """Whether slurmctld answers: ``scontrol ping`` (fails at once when it is down)."""
    try:
        return _run(["scontrol", "ping"]).returncode == 0
    except LauncherError:
        return False


def max_array_size() -> int:
    """The cluster's MaxArraySize (the most tasks one array may have)."""
    out = _run(["scontrol", "show", "config"])
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.MULTILINE)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


def fold_state(slurm_state: str) -> str:
    word = slurm_state.split()[0].rstrip("+") if slurm_state.strip() else "PENDING"
    return _SLURM_TO_STATE.get(word, states.FAILED)


def _expand(job_id: str) -> list[str]:
    """'12_[3-5,9%2]' -> ['12_3', '12_4', '12_5', '12_9']; '12_7' -> ['12_7']."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not match:
        return [job_id]
    array, spec = match.group(1), match.group(2).split("%")[0]
    ids = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        ids += [f"{array}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def _end_time(text: str) -> str:
    """sacct's End: 'Unknown' (still running) and 'None' are no time."""
    return "" if text in ("Unknown", "None") else text


def _parse(lines: Iterable[str]) -> dict[str, TaskState]:
    """sacct lines (JobID|State|Elapsed|NodeList|ExitCode|End) or squeue's (the first four)."""
    parsed: dict[str, TaskState] = {}
    for line in lines:
        fields = line.strip().split("|")
        if len(fields) < 2 or not fields[0]:
            continue
        job_id, slurm_state = fields[0], fields[1]
        elapsed, node, exit_code, end = ([*fields, "", "", "", ""])[2:6]
        if elapsed:
            # sacct and squeue pad differently
            elapsed = format_elapsed(int(duration_seconds(elapsed)))
        for task_id in _expand(job_id):
            # A requeued task appears once per attempt (--duplicates), oldest first: the last
            # line is the current one, the others its earlier attempts.
            before = parsed.get(task_id)
            earlier = (*before.earlier, replace(before, earlier=())) if before else ()
            parsed[task_id] = TaskState(
                task_id,
                fold_state(slurm_state),
                slurm_state,
                elapsed,
                node,
                exit_code,
                _end_time(end),
                earlier,
            )
    return parsed


def sacct_states(array_ids: Sequence[str]) -> dict[str, TaskState]:
    """One sacct call for every task of the given arrays."""
    if not array_ids:
        return {}
    out = _run(
        [
            "sacct",
            "-n",
            "-P",
            "-X",
            "-D",
            "-j",
            ",".join(array_ids),
            "-o",
            "JobID,State,Elapsed,NodeList,ExitCode,End",
        ]
    )
    if out.returncode != 0 or "disabled" in out.stderr:
        raise AccountingUnavailable(
            f"sacct failed ({(out.stderr or out.stdout).strip()[:200]}):"
            " accounting (slurmdbd) is unavailable"
        )
    return _parse(out.stdout.splitlines())


# One sacct call, steps included (no -X): the allocation's line gives the state, elapsed time,
# TotalCPU (its steps' sum), ReqMem, AllocCPUS and AllocTRES; MaxRSS is per step. With -D, each
# attempt of a requeued task: its allocation's line, then its steps'.
USAGE_FIELDS = (
    "JobID,State,Elapsed,NodeList,ExitCode,TotalCPU,MaxRSS,ReqMem,AllocCPUS,AllocTRES,NNodes,End"
)


def sacct_attempts(
    array_ids: Sequence[str],
) -> tuple[dict[str, TaskState], dict[str, Usage], dict[str, list[Usage]]]:
    """One sacct call for every task of the given arrays: their states, what each used (its
    latest attempt) and what its earlier attempts used (tasks Slurm requeued)."""
    if not array_ids:
        return {}, {}, {}
    out = _run(["sacct", "-n", "-P", "-D", "-j", ",".join(array_ids), "-o", USAGE_FIELDS])
    if out.returncode != 0 or "disabled" in out.stderr:
        raise AccountingUnavailable(
            f"sacct failed ({(out.stderr or out.stdout).strip()[:200]}):"
            " accounting (slurmdbd) is unavailable"
        )
    return parse_attempts(out.stdout.splitlines())


def parse_usage(lines: Iterable[str]) -> tuple[dict[str, TaskState], dict[str, Usage]]:
    """``sacct -P -o USAGE_FIELDS`` lines -> state by task and what its latest attempt used."""
    by_task, usage, _ = parse_attempts(lines)
    return by_task, usage


def parse_attempts(
    lines: Iterable[str],
) -> tuple[dict[str, TaskState], dict[str, Usage], dict[str, list[Usage]]]:
    """``sacct -P -D -o USAGE_FIELDS`` lines (allocations, each followed by its steps) -> state
    by task, what its latest attempt used, and what its earlier attempts used (oldest first)."""
    allocations: list[list[str]] = []
    peaks: list[float | None] = []  # by allocation line: the peak of its steps
    for line in lines:
        fields = line.strip().split("|")
        if len(fields) < 11 or not fields[0]:
            continue
        task_id, dot, _ = fields[0].partition(".")
        if not dot:
            allocations.append(fields)
            peaks.append(None)
        elif allocations and allocations[-1][0] == task_id:
            # a step (12_3.batch, 12_3.0) of the attempt above: its peak memory counts for it
            rss = megabytes(fields[6])
            if rss is not None:
                peaks[-1] = max(rss, peaks[-1] or 0.0)
    states_by_task = _parse("|".join([*f[:5], f[11] if len(f) > 11 else ""]) for f in allocations)
    usage: dict[str, Usage] = {}
    requeued: dict[str, list[Usage]] = {}
    for f, peak in zip(allocations, peaks, strict=True):
        job_id, state, elapsed, node, _, total_cpu, _, req_mem, cpus, tres, nodes = f[:11]
        if "[" in job_id:  # still pending, as one line for many tasks: nothing used yet
            continue
        n_cpus = int(cpus) if cpus.isdigit() else None
        if job_id in usage:  # requeued: the attempt before this line's
            requeued.setdefault(job_id, []).append(usage[job_id])
        usage[job_id] = Usage(
            job_id,
            state,
            duration_seconds(elapsed),
            duration_seconds(total_cpu) if total_cpu else None,
            peak,
            requested_memory_mb(req_mem, n_cpus, int(nodes) if nodes.isdigit() else 1),
            n_cpus,
            tres_count(tres, "gres/gpu"),
            node,
            _end_time(f[11]) if len(f) > 11 else "",
        )
    return states_by_task, usage, requeued


def duration_seconds(text: str) -> float:
    """Slurm's '[D-][HH:]MM:SS[.mmm]' (Elapsed, TotalCPU) -> seconds."""
    days, _, clock = text.strip().rpartition("-")
    seconds = 0.0
    for part in clock.split(":") if clock else []:
        try:
            seconds = seconds * 60 + float(part)
        except ValueError:
            return 0.0
    return seconds + (int(days) * 86400 if days.isdigit() else 0)


_UNITS_MB = {"K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2, "P": 1024.0**3}


def megabytes(text: str) -> float | None:
    """'450748K', '2.50G', '4000M', '0' (bytes without a unit) -> MiB; '' -> None."""
    text = text.strip()
    if not text:
        return None
    unit = text[-1].upper()
    try:
        return float(text[:-1]) * _UNITS_MB[unit] if unit in _UNITS_MB else float(text) / 2**20
    except ValueError:
        return None


def requested_memory_mb(req_mem: str, cpus: int | None, nodes: int) -> float | None:
    """ReqMem for the whole task: older Slurm suffixes it 'c' (per CPU) or 'n' (per node)."""
    per = req_mem[-1:] if req_mem[-1:] in ("c", "n") else ""
    amount = megabytes(req_mem[:-1] if per else req_mem)
    if amount is None:
        return None
    return amount * (cpus or 1) if per == "c" else amount * nodes if per == "n" else amount


def tres_count(tres: str, name: str) -> int:
    """'billing=1,cpu=1,gres/gpu=2,mem=2.50G' -> 2 for 'gres/gpu' (typed 'gres/gpu:a100=2' summed
    only when the plain count is absent)."""
    plain, typed = None, 0
    for item in tres.split(","):
        key, _, value = item.partition("=")
        if not value.isdigit():
            continue
        if key == name:
            plain = int(value)
        elif key.startswith(name + ":"):
            typed += int(value)
    return plain if plain is not None else typed


def squeue_states(array_ids: Sequence[str]) -> dict[str, TaskState]:
    """What the controller still holds: queued, running, and recently ended (MinJobAge) tasks."""
    if not array_ids:
        return {}
    out = _run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(array_ids), "-o", "%i|%T|%M|%N"])
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        if _UNREACHABLE.search(out.stderr):
            raise ControllerUnreachable(
                f"the controller (slurmctld) is unreachable ({out.stderr.strip()[:200]})"
            )
        raise LauncherError(f"squeue failed: {out.stderr.strip()[:200]}")
    return _parse(out.stdout.splitlines())


def array_ids(task_ids: Iterable[str]) -> list[str]:
    """'12_3', '12_4', '15' -> ['12', '15']: the jobs to ask about, in submission order."""
    return sorted({t.split("_")[0] for t in task_ids}, key=int)


def task_states(task_ids: Sequence[str], accounting: bool = False) -> Poll:
    """The state of every task id: one sacct call, plus one squeue call only if needed.

    squeue is asked only about tasks sacct does not list (just submitted, not yet in the
    accounting database) or when accounting is unavailable. A task neither knows has
    ended: Slurm forgets array tasks cancelled while pending, so it is reported as
    cancelled rather than waited on forever; but when squeue cannot reach the controller,
    such a task is left out of the poll, with a note: its state is unknown, and the caller
    judges it by its run files. ``accounting``: the same sacct call also says what each
    task used (Poll.accounting).
    """
    commands = ["sacct"]
    note = ""
    usage: dict[str, Usage] = {}
    requeued: dict[str, list[Usage]] = {}
    try:
        if accounting:
            known, usage, requeued = sacct_attempts(array_ids(task_ids))
        else:
            known = sacct_states(array_ids(task_ids))
    except (AccountingUnavailable, ControllerUnreachable) as e:  # slurmdbd down or hanging
        known = {}
        note = f"{e}; tasks that left the queue are judged by their run directories"
    missing = [t for t in task_ids if t not in known]
    # A task whose node failed may be requeued by Slurm (JobRequeue) a moment before accounting
    # lists its new attempt: the controller says whether it is queued again.
    failed = [t for t in task_ids if t in known and known[t].state == states.NODE_FAIL]
    if missing or failed:
        commands.append("squeue")
        try:
            queued = squeue_states(array_ids(missing + failed))
        except ControllerUnreachable as e:
            # Not "cancelled": the task may be queued or running. Only what sacct listed is known,
            # less a NODE_FAIL that Slurm may have queued again (only the controller can say).
            unreachable = f"{e}; tasks sacct does not list are judged by their run directories"
            note = f"{note}; {unreachable}" if note else unreachable
            return Poll(
                {t: known[t] for t in task_ids if t in known and t not in failed},
                commands,
                note,
                usage,
                requeued,
                partial=True,
            )
        known.update({k: v for k, v in queued.items() if k not in known})
        for t in failed:
            again = queued.get(t)
            if again is not None and again.state in (states.PENDING, states.RUNNING):
                known[t] = replace(again, earlier=(*known[t].earlier, known[t]))
    by_task = {
        t: known.get(t) or TaskState(t, states.CANCELLED, "UNKNOWN (not known to Slurm)")
        for t in task_ids
    }
    return Poll(by_task, commands, note, usage, requeued)
