"""Deprecated: the daemons' fixture moved into :mod:`disruption`, the one module that takes the
disruption lock. This name keeps working (for tests written against it), with a warning."""

from __future__ import annotations

import warnings

from .disruption import (  # noqa: F401  (re-exported: the ``daemons`` fixture included)
    LOCK,
    READY_TIMEOUT_S,
    SCHEDULABLE,
    Daemons,
    daemons_fixture,
    disrupting,
    node_names,
)

warnings.warn(
    "tests/integration/daemons.py is deprecated; use tests/integration/disruption.py"
    " (from .disruption import daemons_fixture, disrupting, Daemons)",
    DeprecationWarning,
    stacklevel=2,
)
