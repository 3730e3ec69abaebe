"""Running a handler's first step inline, and the rest of it only when there is a rest.

A job's handler is a coroutine. Most of what a worker does around it (the deadline that
enforces ``timeout_s`` above all) matters only once the handler waits on something: until its
first ``await`` of a pending future it holds the event loop, and nothing can time it out. A
handler that returns without waiting (a no-op, a job that finds nothing to do) needs none of
it. So the runner (``Runner.run``) steps the coroutine once itself, with ``send(None)``. When
that ends it, the job is over; when the handler waits, the runner sets up the deadline and
awaits :func:`resume`, which carries on from where the first step stopped.

:func:`resume` forwards to the coroutine everything its task sends or throws in, so the
handler runs exactly as if it had been awaited from the start: the same task
(``asyncio.current_task()``), the same context variables, cancellation (``task.cancel()``,
a timeout) delivered at its ``await``, its result or exception returned or raised.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any


@types.coroutine
def resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Await the rest of ``coro``, which yielded ``yielded`` (a future, or None for a bare
    ``asyncio.sleep(0)``) at the end of its first step: ``yield from`` for a coroutine already
    started."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # CancelledError above all: delivered where it waits
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value
