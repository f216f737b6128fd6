"""The layer rule, enforced: data flows one way through the stages, and so do imports.

    config -> launching -> run (the job) -> workload -> metrics files -> results (collect, report)

A module imports only modules of its own stage and of the stages before it in STAGES,
never a later one; the launching and run stages, which run on different machines, import
neither the other at all: they meet in the sweep directory's files (hpcjobs/sweepdir/),
which sit below both. The entry points (the CLI, the Hydra app and its launcher plugin)
come last: they wire the stages together. A new module must be placed in a stage here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# In the order data flows; each stage by the module names (prefixes) that make it up.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    (
        "shared",
        (
            "hpcjobs.errors",
            "hpcjobs.states",
            "hpcjobs.atomic",
            "hpcjobs.compat",
            "hpcjobs.interrupts",
            "hpcjobs.clock",
            "hpcjobs.processes",
            "hpcjobs.gcpause",
            "hpcjobs.deprecation",
            "hpcjobs.heartbeat",
        ),
    ),
    ("sweep directory", ("hpcjobs.sweepdir",)),
    ("config", ("hpcjobs.config",)),
    ("launching", ("hpcjobs.launching",)),
    ("run", ("hpcjobs.run",)),
    ("workload", ("hpcjobs.workloads",)),
    ("results", ("hpcjobs.results",)),
    (
        "entry points",
        ("hpcjobs", "hpcjobs.__main__", "hpcjobs.cli", "hpcjobs.app", "hydra_plugins"),
    ),
]
# Stages that never import each other, whatever their order.
APART = {frozenset({"launching", "run"})}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str | None:
    """The stage of a module: the one of its longest matching prefix (hpcjobs.cli, not hpcjobs)."""
    best, length = None, -1
    for stage, prefixes in STAGES:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = stage, len(prefix)
    return best


def is_module(name: str) -> bool:
    path = ROOT / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported(path: Path) -> set[str]:
    """The hpcjobs and hydra_plugins modules a file imports, anywhere in it (functions and
    TYPE_CHECKING blocks included): ``from a import b`` counts as ``a.b`` where that is a module,
    else as ``a``."""
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {
                f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names
            }
    # The top-level package itself is imported by every import of one of its modules (and
    # ``import hpcjobs`` for its __file__ or __version__ is no dependency on a stage).
    return {m for m in found if m.split(".")[0] in ("hpcjobs", "hydra_plugins") and "." in m}


SOURCES = sorted(p for top in ("hpcjobs", "hydra_plugins") for p in (ROOT / top).rglob("*.py"))
ORDER = {stage: i for i, (stage, _) in enumerate(STAGES)}


def test_every_module_has_a_stage():
    assert SOURCES, "no sources found"
    unplaced = [module_name(p) for p in SOURCES if stage_of(module_name(p)) is None]
    assert not unplaced, f"place these modules in a stage of STAGES: {unplaced}"


def violations(module: str, targets: set[str]) -> list[str]:
    """What ``module`` may not import of ``targets``, each with the reason."""
    here = stage_of(module)
    assert here is not None, f"{module}: in no stage"
    wrong = []
    for target in sorted(targets):
        there = stage_of(target)
        if there is None:
            continue  # unplaced: test_every_module_has_a_stage says so
        if ORDER[there] > ORDER[here]:
            wrong.append(f"{target} ({there}, a later stage than {here})")
        elif there != here and frozenset({here, there}) in APART:
            wrong.append(
                f"{target} ({there}: {here} and {there} meet only in the sweep directory's files)"
            )
    return wrong


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_stage_imports_a_later_one(path):
    wrong = violations(module_name(path), imported(path))
    assert not wrong, f"{module_name(path)} imports " + "; ".join(wrong)


def test_the_rule_catches_a_violation():
    """The checker itself, on the imports this rule was written against."""
    assert violations("hpcjobs.launching.submission", {"hpcjobs.run.worker"})  # a later stage
    assert violations("hpcjobs.run.worker", {"hpcjobs.launching.registry"})  # apart, though earlier
    assert violations("hpcjobs.config.planning", {"hpcjobs.results.collect"})
    assert not violations(
        "hpcjobs.results.status",
        {
            "hpcjobs.launching.backends",
            "hpcjobs.sweepdir.runfiles",
            "hpcjobs.sweepdir.manifest",
            "hpcjobs.states",
        },
    )
    assert not violations("hpcjobs.cli", {"hpcjobs.results.report", "hpcjobs.launching.submission"})
    assert stage_of("hpcjobs.cli") == "entry points" and stage_of("hpcjobs.clock") == "shared"
    launcher = imported(ROOT / "hydra_plugins" / "hpcjobs_launcher" / "launcher.py")
    assert {"hpcjobs.launching.submission", "hpcjobs.run.task"} <= launcher
