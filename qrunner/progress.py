"""Progress reports of running jobs: ``await ctx.progress(0.4, meta={...})``.

A handler may report in a tight loop, so writes are throttled per job: the first report is
written at once, later ones at most once per :data:`MIN_INTERVAL_S`; a report that falls inside
the window is kept and written by the next report after the window, or when the job ends (the
worker flushes it before the job's outcome is written). The value lives in the job's status
record (fields ``progress``, ``progress_meta``, ``progress_ms``), so ``Client.status`` and the
HTTP job API show it.

Progress is advisory, like the status record itself: a write that fails on a Redis fault is
logged and dropped, never turned into a failure of the job.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis

from . import keys
from .errors import RedisFault
from .faults import translated
from .scripts import Script

log = logging.getLogger(__name__)

#: At most one progress write per job per this many seconds.
MIN_INTERVAL_S = 0.5


class ProgressSink(Protocol):
    async def report(self, fraction: float, meta: Mapping[str, Any] | None) -> None: ...


def encode_progress(fraction: float, meta: Mapping[str, Any] | None) -> tuple[str, bytes]:
    """The stored form of a report; raises ValueError / TypeError for a bad one."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"progress must be a number from 0 to 1, got {type(fraction).__name__}")
    if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"progress must be from 0 to 1, got {fraction!r}")
    if meta is not None and not isinstance(meta, Mapping):
        raise TypeError(f"progress meta must be a mapping, got {type(meta).__name__}")
    body = orjson.dumps(dict(meta)) if meta else b""
    return repr(float(fraction)), body


class Throttled:
    """The throttle in front of a write: pure except for the ``write`` it is given.

    ``clock`` is a monotonic clock in seconds (injectable so tests step time).
    """

    def __init__(
        self,
        write: Callable[[str, bytes], Awaitable[None]],
        *,
        interval_s: float = MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self.interval_s = interval_s
        self._clock = clock
        self._last_write: float | None = None
        self._pending: tuple[str, bytes] | None = None
        self.writes = 0

    async def report(self, fraction: float, meta: Mapping[str, Any] | None) -> None:
        self._pending = encode_progress(fraction, meta)
        now = self._clock()
        if self._last_write is None or now - self._last_write >= self.interval_s:
            await self.flush()

    async def flush(self) -> None:
        """Write the report still held back by the throttle, if any."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        self._last_write = self._clock()
        self.writes += 1
        await self._write(*pending)


class RedisProgress(Throttled):
    """A worker's reporter for one job: writes go to the job's status record."""

    _script = Script("progress")

    def __init__(
        self,
        redis: Redis,
        queue: str,
        job_id: str,
        *,
        interval_s: float = MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        status_ttl_ms: int = 0,
    ) -> None:
        super().__init__(self._store, interval_s=interval_s, clock=clock)
        self.redis = redis
        self.queue = queue
        self.job_id = job_id
        self.status_ttl_ms = status_ttl_ms

    async def _store(self, fraction: str, meta: bytes) -> None:
        try:
            async with translated(self.queue):
                await self._script(
                    self.redis,
                    [keys.job(self.queue, self.job_id)],
                    [fraction, meta, "", self.status_ttl_ms],
                )
        except RedisFault as fault:
            log.warning("progress of job %s not recorded: %s", self.job_id, fault)


@dataclass(slots=True)
class RecordedProgress:
    """Eager mode's reporter: keeps every report, unthrottled, in memory."""

    reports: list[tuple[float, dict[str, Any] | None]] = field(default_factory=list)

    async def report(self, fraction: float, meta: Mapping[str, Any] | None) -> None:
        encode_progress(fraction, meta)  # the same checks as in a worker
        self.reports.append((float(fraction), dict(meta) if meta else None))


def progress_fields(rec: Mapping[str, Any]) -> tuple[float | None, Any]:
    """(fraction, meta) from a status record's fields (bytes or text values)."""
    raw = rec.get("progress")
    if raw is None:
        return None, None
    value = float(raw.decode() if isinstance(raw, bytes) else raw)
    meta_raw = rec.get("progress_meta")
    return value, orjson.loads(meta_raw) if meta_raw else None
