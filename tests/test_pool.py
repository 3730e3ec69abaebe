"""The lean connection pool of ``connect_redis`` (qrunner.pool): connections are reused, the
cap holds, and a connection that is not safe to reuse is never handed out as it is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import MaxConnectionsError

from qrunner.pool import LEAN, LeanConnectionPool
from qrunner.runtime import connect_redis
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.skipif(not LEAN, reason="this redis-py lacks the pool's hooks")


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    """A client as ``connect_redis`` builds it (Redis is emptied before each test)."""
    made = await connect_redis(redis_url)
    yield made
    await made.aclose()


def _pool(client: Any) -> Any:
    return client.connection_pool


async def test_a_single_server_client_uses_the_lean_pool_and_closes_it(redis_url: str) -> None:
    client = await connect_redis(redis_url)
    pool = _pool(client)
    assert type(pool) is LeanConnectionPool
    await client.ping()
    [conn] = pool._available_connections
    assert conn.is_connected
    await client.aclose()
    assert not conn.is_connected  # the client owned the pool and closed it with itself


async def test_sequential_commands_reuse_one_connection_and_concurrent_ones_return_theirs(
    client: Redis,
) -> None:
    pool = _pool(client)
    for _ in range(50):
        await client.incr("pool:n")
    assert len(pool._available_connections) == 1 and not pool._in_use_connections
    await asyncio.gather(*(client.incr("pool:n") for _ in range(20)))
    assert await client.get("pool:n") == b"70"
    assert not pool._in_use_connections  # every one came back
    assert 1 <= len(pool._available_connections) <= 20


async def test_a_connection_left_with_an_unread_reply_is_reconnected_not_reused(
    client: Redis,
) -> None:
    """A reply left on an idle connection (a command cancelled after it was sent) must not
    answer the next command: the hand-out sees the data and reconnects first."""
    pool = _pool(client)
    await client.set("pool:k", "right")
    [conn] = pool._available_connections
    await conn.send_command("ECHO", "stale")  # sent, its reply never read
    # can_read in redis-py 8, can_read_destructive before it
    check = getattr(conn, "can_read", None) or conn.can_read_destructive
    await wait_for(check, interval_s=0.001, what="the ECHO reply waiting on the connection")
    assert await client.get("pool:k") == b"right"
    assert pool._available_connections == [conn]  # the same object, reconnected


async def test_a_cancelled_command_leaves_no_reply_for_the_next_one(client: Redis) -> None:
    pool = _pool(client)
    blocked = asyncio.ensure_future(client.blpop(["pool:never"], timeout=2))

    async def holding() -> bool:  # it holds its connection, waiting on Redis
        return bool(pool._in_use_connections)

    await wait_for(holding, interval_s=0.001, what="the BLPOP holding a connection")
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    await client.rpush("pool:never", "x")  # what the cancelled BLPOP would have taken
    assert await client.ping()
    assert await client.lrange("pool:never", 0, -1) == [b"x"]
    assert not pool._in_use_connections


async def test_a_dropped_idle_connection_is_reconnected_on_its_next_use(client: Redis) -> None:
    pool = _pool(client)
    await client.ping()
    [conn] = pool._available_connections
    await conn.disconnect()
    assert await client.incr("pool:d") == 1
    assert conn.is_connected


async def test_the_cap_on_connections_still_holds(redis_url: str) -> None:
    capped = await connect_redis(redis_url, max_connections=2)
    try:
        results = await asyncio.gather(
            *(capped.blpop(["pool:cap"], timeout=0.2) for _ in range(3)), return_exceptions=True
        )
        assert sum(isinstance(r, MaxConnectionsError) for r in results) == 1
        assert await capped.ping()  # the two connections it has are still good
    finally:
        await capped.aclose()


async def test_over_resp3_the_hand_out_check_is_redis_pys_own(redis_url: str) -> None:
    """RESP3 servers may push notifications onto an idle connection: the pool does not treat
    those as a stale reply, and commands go through as usual."""
    sep = "&" if "?" in redis_url else "?"
    resp3 = await connect_redis(f"{redis_url}{sep}protocol=3")
    try:
        assert type(_pool(resp3)) is LeanConnectionPool
        assert await resp3.incr("pool:r3") == 1
        assert await resp3.incr("pool:r3") == 2
    finally:
        await resp3.aclose()
