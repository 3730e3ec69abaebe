"""The socket timeout of qrunner's connection classes (qrunner.connection), kept on one timer per
connection instead of redis-py's timer per reply: a reply that never comes still ends in
``TimeoutError`` with the connection dropped, a busy connection whose replies each come in time
never times out, and an outside cancellation stays a cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from qrunner_devservers.embedded import RedisProcess
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

from qrunner.connection import GuardedConnection
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]


@pytest.fixture
def proxy(fresh_redis: RedisProcess) -> Iterator[FaultProxy]:
    with FaultProxy(fresh_redis.port) as p:
        yield p


def guarded(url: str, timeout_s: float) -> Redis:
    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        connection_class=GuardedConnection,
    )


async def test_a_reply_that_never_comes_times_out_and_drops_the_connection(
    proxy: FaultProxy,
) -> None:
    r = guarded(proxy.url, 0.5)
    try:
        await r.ping()
        proxy.set_dropping(True)
        t0 = time.monotonic()
        with pytest.raises(RedisTimeoutError, match="Timeout reading from"):
            await r.incr("n")
        assert time.monotonic() - t0 >= 0.5 - 0.01
        me = asyncio.current_task()
        assert me is not None and me.cancelling() == 0  # no cancellation left behind
        await asyncio.sleep(0.01)  # ...so the task goes on awaiting as usual
        proxy.set_dropping(False)
        # The command ran (only its reply was swallowed); the reply it would have read late
        # is gone with the dropped connection, so the next command reads its own.
        assert await r.incr("n") == 2
        assert proxy.stats.accepted >= 2
    finally:
        await r.aclose()


async def test_replies_each_in_time_never_time_out_however_long_the_connection_works(
    proxy: FaultProxy,
) -> None:
    r = guarded(proxy.url, 0.35)
    try:
        await r.ping()
        proxy.set_reply_delay(0.1)
        t0 = time.monotonic()
        for i in range(8):  # 0.8 s of reads on one connection, more than twice its timeout
            assert await r.incr("n") == i + 1
        assert time.monotonic() - t0 >= 0.8
        assert proxy.stats.accepted == 1
    finally:
        await r.aclose()


async def test_a_slow_reply_past_the_timeout_after_fast_ones_times_out(proxy: FaultProxy) -> None:
    """The timer set for the first read is moved on by the later ones, not lost."""
    r = guarded(proxy.url, 0.3)
    try:
        for _ in range(5):
            await r.ping()
        proxy.set_reply_delay(0.2)
        await r.ping()  # in time
        proxy.set_reply_delay(1.0)
        with pytest.raises(RedisTimeoutError):
            await r.ping()
    finally:
        await r.aclose()


async def test_an_outside_cancel_during_a_read_stays_a_cancellation(proxy: FaultProxy) -> None:
    r = guarded(proxy.url, 5.0)
    try:
        await r.ping()
        proxy.set_dropping(True)
        call = asyncio.create_task(r.incr("n"))
        assert await asyncio.to_thread(proxy.dropped.wait, 10)  # the call waits on its reply
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        proxy.set_dropping(False)
        assert await r.incr("n") == 2
    finally:
        await r.aclose()
