"""The fault proxy itself, checked with a plain redis-py client, so a failing fault scenario is
the runtime's doing and not the proxy's."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
from qrunner_devservers.embedded import RedisProcess
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]


@pytest.fixture
def proxy(fresh_redis: RedisProcess) -> Iterator[FaultProxy]:
    with FaultProxy(fresh_redis.port) as p:
        yield p


def plain(url: str, timeout_s: float | None = None) -> Redis:
    return Redis.from_url(url, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0))


async def test_passes_commands_and_replies_through(proxy: FaultProxy) -> None:
    r = plain(proxy.url)
    try:
        await r.set("k", b"x" * 200_000)
        assert await r.get("k") == b"x" * 200_000
        pipe = r.pipeline(transaction=False)
        for i in range(1000):
            pipe.incr("n", i)
        assert (await pipe.execute())[-1] == sum(range(1000))
    finally:
        await r.aclose()
    assert proxy.stats.accepted >= 1
    assert proxy.stats.bytes_down > 200_000


async def test_reply_delay_adds_latency_and_keeps_order(proxy: FaultProxy) -> None:
    r = plain(proxy.url)
    try:
        await r.ping()
        proxy.set_reply_delay(0.3)
        t0 = time.monotonic()
        pipe = r.pipeline(transaction=False)
        for i in range(50):
            pipe.echo(str(i))
        replies = await pipe.execute()
        elapsed = time.monotonic() - t0
        assert replies == [str(i).encode() for i in range(50)]
        assert 0.3 <= elapsed < 1.5
        proxy.set_reply_delay(0)
        t0 = time.monotonic()
        await r.ping()
        assert time.monotonic() - t0 < 0.2
    finally:
        await r.aclose()


async def test_dropped_replies_never_arrive_then_new_connections_work(
    proxy: FaultProxy,
) -> None:
    r = plain(proxy.url, timeout_s=0.5)
    try:
        await r.ping()
        proxy.set_dropping(True)
        with pytest.raises(RedisTimeoutError):
            await r.incr("n")
        assert proxy.stats.bytes_dropped > 0
        proxy.set_dropping(False)
        # the command itself ran (only its reply was swallowed); the client opens a new
        # connection after the timeout
        assert await r.incr("n") == 2
    finally:
        await r.aclose()


async def test_reset_all_sends_rst_to_every_client(proxy: FaultProxy) -> None:
    # Raw sockets, not redis-py clients: whether redis-py's pool notices a reset idle
    # connection before its next command (and reconnects) or during it changed in 8.2.
    socks = [socket.create_connection(("127.0.0.1", proxy.port), timeout=2) for _ in range(4)]
    after = plain(proxy.url)
    try:
        for sock in socks:
            sock.sendall(b"PING\r\n")
            assert sock.recv(100) == b"+PONG\r\n"
        assert proxy.reset_all() == 4
        for sock in socks:
            with pytest.raises(ConnectionResetError):  # an RST, not an orderly FIN (b"")
                sock.recv(100)
        assert await after.ping()  # and the proxy takes new connections as before
    finally:
        for sock in socks:
            sock.close()
        await after.aclose()


async def test_refusing_rejects_new_connections_until_lifted(proxy: FaultProxy) -> None:
    kept = plain(proxy.url)
    try:
        await kept.ping()
        proxy.set_refusing(True)
        fresh = plain(proxy.url)
        try:
            with pytest.raises(RedisConnectionError) as caught:
                await fresh.ping()
            assert "Error 111 " in str(caught.value)  # ECONNREFUSED
            assert await kept.ping()  # open connections carry on
            proxy.set_refusing(False)
            assert await fresh.ping()
        finally:
            await fresh.aclose()
    finally:
        await kept.aclose()


async def test_a_blocked_server_blocks_the_proxy_not_the_test_loop(
    proxy: FaultProxy, fresh_redis: RedisProcess
) -> None:
    """The proxy runs on its own thread: a slow reply holds only that connection."""
    slow, other = plain(proxy.url), plain(proxy.url)
    try:

        async def pop() -> object:
            return await slow.blpop(["never"], timeout=1)

        waiting = asyncio.create_task(pop())
        t0 = time.monotonic()
        assert await other.ping()
        assert time.monotonic() - t0 < 0.5
        assert await waiting is None
    finally:
        await slow.aclose()
        await other.aclose()
