"""Starting `spawn` processes from any parent: the one place that hides the parent's __main__ while
a child starts (the launcher's step workers, the data workers, local ranks all go through it)."""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Iterator


@contextlib.contextmanager
def bare_main() -> Iterator[None]:
    """Hide the parent's __main__ while a worker is spawned.

    `spawn` re-runs the parent's main script (by path or module name) in every child. Workers only
    need their own module, and the parent's main may be anything: the vlmsweep console script, a
    benchmark, or a test runner whose __main__ was swapped for a temporary script.
    """
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = saved
