"""Auto-pipelining of the handlers' Redis client (qrunner.autopipe) against a real
redis-server: commands issued in one turn go out as one batch, each caller gets its own reply
or error, blocking commands are never held in a batch, and a worker hands its handlers the
auto-pipelined client unless ``QRUNNER_AUTOPIPELINE=0``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from qrunner import Client, Context, Registry
from qrunner.autopipe import AutoPipelinedCluster, AutoPipelinedRedis, for_handlers
from qrunner.runtime import connect_redis
from qrunner.settings import load_settings
from qrunner.worker import Worker
from tests.worker_fixtures import FAST


class _Noted(AutoPipelinedRedis):
    """Runs ``after_write`` once a batch's pipeline has been written and answered, before its
    callers get their replies."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self.after_write: Callable[[], object] | None = None

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = super().pipeline(*args, **kwargs)
        hook = self.after_write
        if hook is not None:
            execute = pipe.execute

            async def execute_then_hook(*a: Any, **k: Any) -> Any:
                replies = await execute(*a, **k)
                hook()
                return replies

            pipe.execute = execute_then_hook
        return pipe


@pytest.fixture
async def base(redis_url: str) -> AsyncIterator[Redis]:
    made = await connect_redis(redis_url)
    yield made
    await made.aclose()


async def test_commands_issued_in_one_turn_go_out_as_one_batch_each_with_its_reply(
    base: Redis,
) -> None:
    piped = AutoPipelinedRedis(base)
    replies = await asyncio.gather(
        *(piped.incr("ap:n") for _ in range(50)),
        piped.hset("ap:h", mapping={"a": "1", "b": "2"}),
        piped.set("ap:s", "v"),
        piped.hgetall("ap:h"),
        piped.get("ap:s"),
    )
    assert piped.batches == 1
    assert sorted(replies[:50]) == list(range(1, 51))  # one reply per INCR, none shared
    assert replies[50:] == [2, True, {b"a": b"1", b"b": b"2"}, b"v"]  # parsed as usual
    assert await base.get("ap:n") == b"50"


async def test_an_error_reaches_only_the_command_that_caused_it(base: Redis) -> None:
    piped = AutoPipelinedRedis(base)
    await base.set("ap:text", "not a number")
    bad, good = await asyncio.gather(
        piped.incr("ap:text"), piped.incr("ap:n"), return_exceptions=True
    )
    assert piped.batches == 1
    assert isinstance(bad, ResponseError)
    assert good == 1


async def test_a_blocking_command_is_not_batched_and_holds_no_other_reply(base: Redis) -> None:
    piped = AutoPipelinedRedis(base)
    popped = asyncio.ensure_future(piped.blpop(["ap:list"], timeout=30))
    counted = asyncio.ensure_future(piped.incr("ap:n"))  # issued in the same turn
    assert await counted == 1  # answered while the BLPOP still waits on its own connection
    assert not popped.done()
    await base.rpush("ap:list", "x")
    assert list(await popped) == [b"ap:list", b"x"]
    assert piped.batches == 1  # the INCR alone


async def test_a_caller_cancelled_before_the_write_sends_nothing_and_leaves_the_others_theirs(
    base: Redis,
) -> None:
    piped = AutoPipelinedRedis(base)
    first = asyncio.ensure_future(piped.incr("ap:n"))
    second = asyncio.ensure_future(piped.incr("ap:n"))
    await asyncio.sleep(0)  # both commands are queued for the batch, not yet written
    first.cancel()
    assert await second == 1
    assert first.cancelled()
    assert await base.get("ap:n") == b"1"  # the cancelled caller's INCR never reached Redis
    assert piped.batches == 1
    assert await piped.incr("ap:n") == 2  # the connection came back clean


async def test_a_batch_whose_every_caller_was_cancelled_is_not_written(base: Redis) -> None:
    piped = AutoPipelinedRedis(base)
    calls = [asyncio.ensure_future(piped.incr("ap:n")) for _ in range(3)]
    await asyncio.sleep(0)
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    assert await piped.get("ap:n") is None
    assert piped.batches == 1  # only the GET's


async def test_a_caller_cancelled_after_the_write_leaves_the_others_their_replies(
    base: Redis,
) -> None:
    piped = _Noted(base)
    first = asyncio.ensure_future(piped.incr("ap:first"))
    second = asyncio.ensure_future(piped.incr("ap:n"))
    piped.after_write = first.cancel  # between the batch's replies and its callers
    assert await second == 1
    assert first.cancelled()
    assert await base.get("ap:first") == b"1"  # written before the cancel: it ran, once
    assert await piped.incr("ap:n") == 2  # the connection came back clean


async def test_batches_after_the_server_dropped_every_connection_reconnect(
    base: Redis, redis_url: str
) -> None:
    piped = AutoPipelinedRedis(base)
    assert await asyncio.gather(piped.incr("ap:n"), piped.incr("ap:n")) in ([1, 2], [2, 1])
    admin = Redis.from_url(redis_url)
    try:
        assert await admin.client_kill_filter(_type="normal", skipme=True) >= 1
    finally:
        await admin.aclose()
    assert sorted(await asyncio.gather(piped.incr("ap:n"), piped.incr("ap:n"))) == [3, 4]


async def test_closing_it_leaves_the_shared_pool_open(base: Redis) -> None:
    piped = AutoPipelinedRedis(base)
    await piped.incr("ap:n")
    await piped.aclose()
    assert await base.incr("ap:n") == 2


def test_clients_are_wrapped_once_and_only_when_enabled(base: Redis) -> None:
    assert for_handlers(base, False) is base
    wrapped = for_handlers(base, True)
    assert isinstance(wrapped, AutoPipelinedRedis)
    assert wrapped.connection_pool is base.connection_pool
    assert for_handlers(wrapped, True) is wrapped
    cluster = RedisCluster(host="127.0.0.1", port=7000)  # not connected: only its type matters
    assert isinstance(for_handlers(cluster, True), AutoPipelinedCluster)
    assert for_handlers(cluster, False) is cluster


def test_the_setting_is_on_by_default_and_turned_off_from_the_environment() -> None:
    assert load_settings({}).autopipeline is True
    assert load_settings({"QRUNNER_AUTOPIPELINE": "0"}).autopipeline is False


async def test_a_worker_batches_its_handlers_commands_by_default(base: Redis) -> None:
    registry = Registry()
    seen: set[type[Any]] = set()

    @registry.task("count", max_retries=0)
    async def count(ctx: Context[Any], payload: dict[str, Any]) -> None:
        seen.add(type(ctx.redis))
        await ctx.redis.incr("ap:jobs")

    await Client(base, registry).enqueue_many([("count", {"i": i}) for i in range(300)])
    worker = Worker(base, registry, burst=True, concurrency=100, settings=FAST)
    await worker.run()
    assert await base.get("ap:jobs") == b"300"  # every job's command ran once
    assert seen == {AutoPipelinedRedis}
    assert isinstance(worker.handler_redis, AutoPipelinedRedis)
    assert worker.handler_redis.batches < 300  # commands of jobs started together shared writes


async def test_a_worker_with_it_off_hands_handlers_its_own_client(base: Redis) -> None:
    off = FAST.model_copy(update={"autopipeline": False})
    worker = Worker(base, Registry(), burst=True, settings=off)
    assert worker.handler_redis is base
