"""Clocks: every read of "now" and every wait in qrunner's loops goes through one of these.

Production reads the Redis server's clock (``TIME``) so that every worker judges cron slots,
delays and leases by one clock, whatever their own clocks say (guarantee G7). Tests use
:class:`ManualClock`, which only moves when the test moves it, so no test ever sleeps.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Protocol

from redis.asyncio import Redis


class Clock(Protocol):
    """Where time comes from and how to wait for it."""

    async def now_ms(self) -> int:
        """Current time as epoch milliseconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class RedisClock:
    """The Redis server's clock. Sleeping uses the local monotonic clock: a wait need not agree
    with other machines, only the instants it leads to, and those are read from Redis again."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def now_ms(self) -> int:
        seconds, micros = await self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that stands still until the test calls :meth:`advance` or :meth:`set_ms`.

    Sleepers wake, in deadline order, once the clock reaches their deadline. Time never runs
    backwards, because nothing in qrunner is built to survive that and a test that tried would
    be testing a situation production cannot produce with the Redis clock.
    """

    def __init__(self, start_ms: int = 0) -> None:
        self._now_ms = start_ms
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._slept = asyncio.Event()

    async def now_ms(self) -> int:
        return self._now_ms

    @property
    def current_ms(self) -> int:
        """The time without awaiting, for test assertions."""
        return self._now_ms

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        deadline = self._now_ms + max(1, round(seconds * 1000))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), future))
        self._slept.set()
        await future

    def advance(self, seconds: float) -> None:
        self.set_ms(self._now_ms + round(seconds * 1000))

    def set_ms(self, now_ms: int) -> None:
        if now_ms < self._now_ms:
            raise ValueError(f"ManualClock cannot go back from {self._now_ms} to {now_ms}")
        self._now_ms = now_ms
        while self._sleepers and self._sleepers[0][0] <= now_ms:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting, so a test can wait for a loop to reach its sleep."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def until_sleeping(self, count: int = 1) -> None:
        """Wait until ``count`` sleeps are pending: the loop under test has finished its work
        for the current instant and the test may move time on."""
        while self.sleepers < count:
            self._slept.clear()
            await self._slept.wait()


__all__ = ["Clock", "ManualClock", "RedisClock"]
