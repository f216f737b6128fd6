"""Which code a sweep was submitted with: git commits, uncommitted changes, package versions.

Recorded by the launcher for every command that submits tasks (``sweep.json``'s
``provenance``, one entry per command): the versions of Python, torch (and the CUDA it
was built for), hydra-core, omegaconf, submitit and hpcjobs, read from package metadata
(torch is never imported on the login node); and for each git checkout the tasks import
code from — the directory the sweep was submitted from, and hpcjobs' own checkout when it
is installed from one — its commit and its uncommitted changes, written as a patch in the
sweep directory (``code/<id>/<role>.patch``), so that ``git apply`` on that commit gives
the code back: every change to a tracked file, and the untracked (not ignored) code and
config files (``*.py``, ``*.yaml``, ``*.yml`` outside hidden folders, Hydra's
``multirun.yaml`` records aside), not what runs write (outputs, logs, tables).

Without a snapshot (hydra.launcher.snapshot) the tasks import the working tree as it is
when each starts; :func:`changed_since_submission` tells `status` when it has changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from hpcjobs import atomic, clock
from hpcjobs.deprecation import renamed

PACKAGES = ("hpcjobs", "torch", "hydra-core", "omegaconf", "submitit")
PATCH_DIR = "code"  # <sweep_dir>/code/<id>/<role>.patch
GIT_TIMEOUT_S = 10
# Untracked files that go into the patch as new files: code and configs, text, within bounds.
UNTRACKED_SUFFIXES = (".py", ".yaml", ".yml")
NOT_CODE = ("multirun.yaml",)  # what Hydra writes into each sweep directory
MAX_UNTRACKED_FILE_BYTES = 1 << 20
MAX_UNTRACKED_BYTES = 16 << 20


def _git(top: str | Path, *args: str) -> bytes | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(top), *args], capture_output=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def checkout_of(path: str | Path) -> str | None:
    """The top directory of the git checkout holding ``path``, or None."""
    out = _git(path, "rev-parse", "--show-toplevel")
    return out.decode().strip() if out else None


def working_tree(top: str | Path) -> tuple[str, bytes] | None:
    """(HEAD's commit, the uncommitted changes as a patch) of a checkout; None without a commit."""
    head = _git(top, "rev-parse", "--verify", "-q", "HEAD")
    diff = _git(top, "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff")
    if not head or diff is None:
        return None
    return head.decode().strip(), diff + _untracked_as_patch(top)


def git_commit(cwd: str | None = None) -> str | None:
    """The commit checked out in ``cwd`` (with '+dirty' when modified), or None outside git
    (sweep.json's ``git_commit``: the submitting directory's, at a glance)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    commit = next(
        (line.split()[2] for line in out.splitlines() if line.startswith("# branch.oid")), None
    )
    if commit is None or commit == "(initial)":
        return None
    dirty = any(not line.startswith("#") for line in out.splitlines())
    return commit + ("+dirty" if dirty else "")


def _is_code(name: str) -> bool:
    parts = name.split("/")
    return (
        name.endswith(UNTRACKED_SUFFIXES)
        and parts[-1] not in NOT_CODE
        and not any(p.startswith(".") for p in parts)
    )


def _untracked_as_patch(top: str | Path) -> bytes:
    """Untracked, not ignored code and config files as 'new file' diffs (git apply creates them)."""
    listed = _git(top, "ls-files", "-z", "--others", "--exclude-standard") or b""
    parts, total = [], 0
    for name in sorted(
        n for n in listed.decode(errors="surrogateescape").split("\0") if _is_code(n)
    ):
        path = Path(top) / name
        try:
            data = (
                path.read_bytes()
                if path.is_file() and path.stat().st_size <= MAX_UNTRACKED_FILE_BYTES
                else None
            )
        except OSError:
            data = None
        if data is None or b"\0" in data or total + len(data) > MAX_UNTRACKED_BYTES:
            parts.append(
                f"# untracked {name}: not included (binary, unreadable or too large)\n".encode()
            )
            continue
        total += len(data)
        lines = data.splitlines(keepends=True)
        body = b"".join(b"+" + line for line in lines)
        if lines and not lines[-1].endswith(b"\n"):
            body += b"\n\\ No newline at end of file\n"
        header = (
            (
                f"diff --git a/{name} b/{name}\nnew file mode 100644\n--- /dev/null\n+++ b/{name}\n"
                f"@@ -0,0 +1,{len(lines)} @@\n"
            ).encode()
            if lines
            else f"diff --git a/{name} b/{name}\nnew file mode 100644\n".encode()
        )
        parts.append(header + body)
    return b"".join(parts)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def torch_cuda() -> tuple[bool, str | None]:
    """(known, version) of the CUDA torch was built for, from torch's files without importing it:
    (True, None) for a CPU build, (False, None) when it cannot be told (or torch is absent)."""
    try:
        dist = metadata.distribution("torch")
    except metadata.PackageNotFoundError:
        return False, None
    try:
        text = Path(str(dist.locate_file("torch/version.py"))).read_text()
    except OSError:
        text = ""
    match = re.search(r"^cuda\s*(?::[^=\n]*)?=\s*(None|'([^']*)'|\"([^\"]*)\")", text, re.MULTILINE)
    if match:
        return True, match.group(2) or match.group(3) or None
    local = (dist.version.partition("+")[2] or "").lower()
    if local == "cpu":
        return True, None
    cuda = re.fullmatch(r"cu(\d+)(\d)", local)  # cu121 -> 12.1, cu118 -> 11.8
    return (True, f"{cuda.group(1)}.{cuda.group(2)}") if cuda else (False, None)


def versions() -> dict[str, Any]:
    """Python's version and the installed versions of PACKAGES (and torch's CUDA where known)."""
    packages = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    out: dict[str, Any] = {"python": platform.python_version(), "packages": packages}
    known, cuda = torch_cuda()
    if known:
        out["cuda"] = cuda  # None: a CPU build of torch
    return out


def code_checkouts(cwd: str | Path) -> list[tuple[str, str]]:
    """(role, top directory) of the git checkouts the tasks import code from: the project
    (the directory the sweep is submitted from) and hpcjobs' own, when they are checkouts."""
    import hpcjobs

    found: list[tuple[str, str]] = []
    for role, where in (("project", Path(cwd)), ("hpcjobs", Path(hpcjobs.__file__).parent)):
        top = checkout_of(where)
        if top and top not in {t for _, t in found}:
            found.append((role, top))
    return found


def capture_code(
    sweep_dir: Path, tag: str, snapshot: str | None, cwd: str | Path
) -> dict[str, Any]:
    """What the code of this submission is; writes each checkout's uncommitted changes as a patch.

    ``tag`` names this submission (its payload's id); ``snapshot`` is where its code was
    copied, relative to the sweep directory, or None.
    """
    entry: dict[str, Any] = {
        "id": tag,
        "recorded_at": clock.now(),
        **versions(),
        "snapshot": snapshot,
        "checkouts": [],
    }
    for role, top in code_checkouts(cwd):
        tree = working_tree(top)
        if tree is None:
            continue
        commit, diff = tree
        checkout: dict[str, Any] = {
            "role": role,
            "path": top,
            "commit": commit,
            "dirty": bool(diff),
            "diff_sha256": _sha256(diff),
        }
        if diff:
            patch = Path(PATCH_DIR) / tag / f"{role}.patch"
            atomic.write_bytes(Path(sweep_dir) / patch, diff)
            checkout["patch"] = str(patch)
        entry["checkouts"].append(checkout)
    return entry


def changed_since_submission(sweep: Any, waiting: int) -> list[str]:
    """Warnings for a sweep whose latest submission took no snapshot and whose code has changed
    since (HEAD moved, or the uncommitted changes differ); ``waiting``: its tasks not started.
    """
    entries = getattr(sweep, "provenance", None) or []
    latest = entries[-1] if entries else None
    if not isinstance(latest, dict) or latest.get("snapshot"):
        return []
    changes = []
    for checkout in latest.get("checkouts", []):
        if not Path(str(checkout.get("path"))).is_dir():
            continue  # the sweep was copied to another machine: nothing to compare with
        tree = working_tree(checkout["path"])
        if tree is None:
            continue
        commit, diff = tree
        if commit != checkout.get("commit"):
            changes.append(
                f"{checkout['path']}: HEAD is {commit[:10]}, was {str(checkout.get('commit'))[:10]}"
            )
        elif _sha256(diff) != checkout.get("diff_sha256"):
            was = f" (see {checkout['patch']})" if checkout.get("patch") else " (it was clean)"
            changes.append(
                f"{checkout['path']}: its uncommitted changes differ from those at submission{was}"
            )
    if not changes:
        return []
    who = (
        f"{waiting} task(s) not started yet will import the changed code, and so would `retry`"
        if waiting
        else "a `retry` would run the changed code"
    )
    message = (
        f"the code changed since this sweep was submitted without a snapshot: {'; '.join(changes)}."
        f" {who}; hydra.launcher.snapshot=true freezes the code at submission"
    )
    return [message]


record = renamed(capture_code, "record")  # its old name
