"""Building many objects at once (100,000 tasks) without the cyclic garbage collector.

Each new container object counts towards the collector's next run; a loop that creates
millions of them, none of them garbage, would set it off again and again, each run
slower than the last. Reading sweep.json, planning a sweep and judging its status do.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection in the block: building many objects keeps setting it off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
