"""One way to run a background loop of the worker: faults are waited out, bugs stop the worker.

A loop is a ``step`` coroutine run again and again; it returns how long to wait before the next
round, or None when the loop is done. Around each round the supervisor:

- waits out Redis faults (:class:`~qrunner.errors.RedisFault`: connection lost, server busy or
  out of memory) with exponential backoff, logging the first failure and then at most one line
  every :data:`REPEAT_LOG_S` seconds, and once when Redis is back;
- hands :class:`~qrunner.errors.StreamMissing` to ``on_stream_missing`` (the worker recreates
  the group and raises an alarm) and goes on at once;
- on anything else (a bug) logs the loop's name and the traceback at CRITICAL and raises
  :class:`LoopCrashed`, which ends the worker's task group: the process exits non-zero and its
  entries are reclaimed by other workers, instead of a zombie that runs jobs but never acks.

The wait between rounds ends early when ``until`` is set, so shutdown never waits out a pause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .errors import ConnectionLost, QrunnerError, RedisFault, StreamMissing

log = logging.getLogger(__name__)

#: While a fault lasts, a loop logs it at most this often.
REPEAT_LOG_S = 30.0
BACKOFF_START_S = 0.05
BACKOFF_CAP_S = 5.0

Step = Callable[[], Awaitable[float | None]]


class LoopCrashed(QrunnerError):
    """A background loop failed with an unexpected error; the worker stops."""

    def __init__(self, loop: str, cause: BaseException) -> None:
        self.loop = loop
        super().__init__(f"the {loop} loop crashed: {type(cause).__name__}: {cause}")


async def wait_until(event: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``event`` is set; True when it was set."""
    if event.is_set():
        return True
    if seconds <= 0:
        await asyncio.sleep(0)  # a loop that never waits must still let others run
        return event.is_set()
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


class _FaultLog:
    """Logs a fault when it starts, at most every REPEAT_LOG_S while it lasts, and its end."""

    def __init__(self, loop: str) -> None:
        self.loop = loop
        self.since: float | None = None
        self.last_logged = 0.0
        self.count = 0

    def failed(self, fault: RedisFault, retry_in: float) -> None:
        now = time.monotonic()
        self.count += 1
        if self.since is None:
            self.since = now
        elif now - self.last_logged < REPEAT_LOG_S:
            return
        self.last_logged = now
        log.warning(
            "%s loop: %s (%s); retrying in %.2fs%s",
            self.loop,
            type(fault).__name__,
            fault,
            retry_in,
            f", failing for {now - self.since:.0f}s" if self.count > 1 else "",
        )

    def recovered(self) -> None:
        if self.since is not None:
            log.warning(
                "%s loop: Redis answers again after %.1fs (%d failed round(s))",
                self.loop,
                time.monotonic() - self.since,
                self.count,
            )
        self.since = None
        self.count = 0


async def supervised(
    name: str,
    step: Step,
    *,
    until: asyncio.Event,
    on_stream_missing: Callable[[StreamMissing], Awaitable[None]],
    on_connection_lost: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run ``step`` until it returns None or ``until`` is set (see the module docstring)."""
    backoff = BACKOFF_START_S
    faults = _FaultLog(name)
    pause = 0.0
    while not await wait_until(until, pause):
        try:
            nxt = await step()
        except StreamMissing as missing:
            faults.recovered()
            await on_stream_missing(missing)
            pause = 0.0
            continue
        except RedisFault as fault:
            faults.failed(fault, backoff)
            if isinstance(fault, ConnectionLost) and on_connection_lost is not None:
                await on_connection_lost()
            pause = backoff
            backoff = min(backoff * 2, BACKOFF_CAP_S)
            continue
        except Exception as exc:
            log.critical(
                "%s loop crashed with an unexpected error; stopping the worker", name, exc_info=True
            )
            raise LoopCrashed(name, exc) from exc
        faults.recovered()
        backoff = BACKOFF_START_S
        if nxt is None:
            return
        pause = nxt
