"""The garbage collector's pace while a worker runs.

Every job allocates a few dozen container objects (its task, coroutine frames, envelope,
context, completion record); with Python's default young-generation threshold of 700 a
collection ran every few jobs and, through the older generations, rescanned every object
the process had made at start-up (modules, the registry, connection pools). While a worker
runs, :func:`tuned` raises that threshold and moves the objects that exist at start to the
collector's permanent generation (``gc.freeze``), the usual set-up for a long-running server
process. Cycles are still collected, just less often: a young generation of 20,000 objects
is a few megabytes. The price of the freeze: a reference cycle among the objects made before
the start that becomes garbage while the worker runs waits until it stops (reference-counted
garbage is freed at once, as always).

Process-wide, so counted: with several workers in one process the first to start sets it and
the last to stop restores what was there before.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_users = 0
_saved: tuple[int, ...] | None = None


@contextmanager
def tuned(young_threshold: int) -> Iterator[None]:
    """Young-generation threshold ``young_threshold`` and start-up objects frozen, for the
    duration; ``0`` leaves the collector alone."""
    global _users, _saved
    if young_threshold <= 0:
        yield
        return
    if _users == 0:
        _saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(young_threshold, *_saved[1:])
    _users += 1
    try:
        yield
    finally:
        _users -= 1
        if _users == 0 and _saved is not None:
            gc.set_threshold(*_saved)
            gc.unfreeze()
            _saved = None
