"""An enqueue whose reply is lost on the way back is retried, and the retry never writes the job
a second time: for the async client, the synchronous client and a bulk enqueue.

The proxy swallows the reply of a command the server has run; the client times out, drops the
connection and tries again, and redis-py may resend the very same call by itself. Whoever sends
it again, the script finds the call's first id written and writes nothing twice; an earlier
version skipped that look on the first send of ids the client had just drawn, and wrote every
job twice."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import redis as sync_redis
from qrunner_devservers.embedded import RedisProcess
from redis.asyncio import Redis

from qrunner import Client, JobSpec, SyncClient, connect_redis, keys
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]

QUEUE = "lost-replies"


@pytest.fixture
def proxy(fresh_redis: RedisProcess) -> Iterator[FaultProxy]:
    with FaultProxy(fresh_redis.port) as p:
        yield p


async def entries_reach(direct: Redis, n: int, timeout_s: float = 10.0) -> None:
    """Poll the server (it has no event to await) until the queue's stream holds ``n`` entries:
    the call under test ran there, whatever became of its reply."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await direct.xlen(keys.stream(QUEUE)) >= n:
            return
        assert time.monotonic() < deadline, f"the stream never reached {n} entries"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("n", [1, 50], ids=["single", "bulk"])
async def test_an_async_enqueue_whose_reply_was_lost_writes_each_job_once(
    proxy: FaultProxy, fresh_redis: RedisProcess, n: int
) -> None:
    direct = Redis(port=fresh_redis.port)
    redis = await connect_redis(proxy.url, socket_timeout_s=0.5)
    try:
        client = Client(redis)
        await client.enqueue("t", {"n": 0}, queue=QUEUE)  # script loaded, queue known
        proxy.drop_replies_after(b"EVALSHA")
        if n == 1:
            call = asyncio.create_task(client.enqueue("t", {"n": 1}, queue=QUEUE))
        else:
            specs = [JobSpec("t", {"n": i}, queue=QUEUE) for i in range(n)]
            call = asyncio.create_task(client.enqueue_many(specs))
        await entries_reach(direct, 1 + n)  # it ran
        assert await asyncio.to_thread(proxy.dropped.wait, 10), "no reply was swallowed"
        proxy.set_dropping(False)
        done = await asyncio.wait_for(call, 20)
        ids = done if isinstance(done, list) else [done]
        assert len(set(ids)) == n
        assert await direct.xlen(keys.stream(QUEUE)) == 1 + n
        assert proxy.stats.accepted >= 2, "the client never tried again"
        assert (await client.status(ids[0])).state == "queued"
    finally:
        await redis.aclose()
        await direct.aclose()


async def test_a_sync_enqueue_whose_connection_failed_after_the_write_writes_the_job_once(
    proxy: FaultProxy, fresh_redis: RedisProcess
) -> None:
    direct = Redis(port=fresh_redis.port)
    client = SyncClient(sync_redis.Redis.from_url(proxy.url, socket_timeout=0.5))
    try:
        client.enqueue("t", {"n": 0}, queue=QUEUE)
        proxy.drop_replies_after(b"EVALSHA")
        result: list[str] = []
        thread = threading.Thread(
            target=lambda: result.append(client.enqueue("t", {"n": 1}, queue=QUEUE))
        )
        thread.start()
        await entries_reach(direct, 2)
        assert await asyncio.to_thread(proxy.dropped.wait, 10), "no reply was swallowed"
        proxy.set_dropping(False)
        proxy.reset_all()  # the connection fails at once (redis-py retries that by default)
        await asyncio.wait_for(asyncio.to_thread(thread.join), 20)
        assert result, "the enqueue raised"
        assert await direct.xlen(keys.stream(QUEUE)) == 2
        assert client.status(result[0]).state == "queued"
    finally:
        client.close()
        await direct.aclose()
