"""Old names and import paths, kept working: each warns (DeprecationWarning) with the new one.

A renamed (or moved) function stays importable under its old name as
``old = renamed(new, "old")``; a constant or class that moved to another module is found by
the module's ``__getattr__ = moved_names(__name__, {"OLD": "new.module.NAME"})``; a moved
module calls ``moved(__name__, "new.path")`` at its top.
Every message reads ``<old> is deprecated; use <new>`` and points at the caller's line;
pyproject.toml's ``filterwarnings`` shows them in the test suite, whoever raises them.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def message(old: str, new: str) -> str:
    return f"{old} is deprecated; use {new}"


def renamed(new: F, old: str, module: str | None = None) -> F:
    """``new`` under its old name ``old`` in ``module`` (default: ``new``'s own): calling it
    warns, then calls ``new``."""
    old_path = f"{module or new.__module__}.{old}"
    new_path = f"{new.__module__}.{new.__qualname__}"

    @functools.wraps(new)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(message(old_path, new_path), DeprecationWarning, stacklevel=2)
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated: {new_path}."
    return alias  # type: ignore[return-value]


def moved(old_module: str, new_module: str) -> None:
    """Called at the top of a module kept at its old path: warns the code importing it, once a
    process (a module runs once; importlib's own frames are skipped, so the warning names the
    line that imported it)."""
    warnings.warn(message(old_module, new_module), DeprecationWarning, stacklevel=3)


def moved_names(module: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A ``__getattr__`` for ``module``: each old name in ``names`` (old -> its new dotted path)
    warns, then gives the object from its new home. Assign it under ``if not TYPE_CHECKING``:
    mypy then reports any use of an old name, and still checks every other attribute."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(message(f"{module}.{name}", names[name]), DeprecationWarning, stacklevel=2)
        where, _, attribute = names[name].rpartition(".")
        return getattr(importlib.import_module(where), attribute)

    return __getattr__
