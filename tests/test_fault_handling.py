"""Fault handling of the runtime against a real redis-server: idempotent enqueue, memory
pressure, typed faults, dead consumers, the Redis clock and the CONFIG GET warning."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from qrunner import Client, Context, Registry, jobstatus, keys
from qrunner.consumer import Consumer
from qrunner.errors import (
    ConnectionLost,
    EnqueueUncertain,
    OutOfMemory,
    ServerBusy,
    ServerFull,
    StreamMissing,
)
from qrunner.faults import classify
from qrunner.queue import JobSpec
from qrunner.runtime import connect_redis, warn_on_eviction_policy
from qrunner.settings import Settings
from qrunner.worker import Worker
from tests.helpers import core_tasks
from tests.worker_fixtures import FAST, running_worker

# -- idempotent enqueue -------------------------------------------------------------------------


@pytest.mark.parametrize("status_ttl_s", [3600, 0])
async def test_an_enqueue_sent_twice_with_its_id_writes_one_job(
    redis: Redis, status_ttl_s: int
) -> None:
    """Given a job id already enqueued (a retried call whose first reply was lost), enqueuing
    it again writes nothing, with status records on or off."""
    client = Client(redis, core_tasks.registry, status_ttl_s=status_ttl_s)
    first = await client.enqueue("record", {"n": 1}, job_id="fixed-id")
    again = await client.enqueue("record", {"n": 1}, job_id="fixed-id")
    bulk = await client.enqueue_many([JobSpec("record", {"n": 1}, job_id="fixed-id")])
    assert first == again == "fixed-id" and bulk == ["fixed-id"]
    assert await redis.xlen(keys.stream("default")) == 1


async def test_a_lost_reply_is_retried_without_a_duplicate(redis_url: str) -> None:
    """Given a connection that loses the reply of the first enqueue after Redis executed it,
    the client sends the same call again; the script looks the id up and finds it, and the job
    is in the stream once."""
    client_redis = await connect_redis(redis_url)
    try:
        client = Client(client_redis, core_tasks.registry)
        await client.enqueue("record", {})  # loads the script and registers the queue
        sent: list[str] = []

        def counted(script: Any, name: str, lose_reply: bool) -> Any:
            original = script.__call__

            async def call(redis: Any, ks: Any, args: Any) -> Any:
                sent.append(name)
                result = await original(redis, ks, args)  # executed by Redis...
                if lose_reply and len(sent) == 1:
                    raise ConnectionLost("reply lost")  # ...but the caller never hears of it
                return result

            return call

        client._enqueue_now = counted(client._enqueue_now, "now", True)  # type: ignore[method-assign]
        job_id = await client.enqueue("record", {"n": 2})
        assert sent == ["now", "now"]
        assert await client_redis.xlen(keys.stream("default")) == 2  # the warm-up job + this one
        assert (await client.status(job_id)).state == "queued"
    finally:
        await client_redis.aclose()


async def test_a_lost_bulk_reply_is_retried_without_duplicates(redis_url: str) -> None:
    """Given the pipeline of an enqueue_many whose reply is lost after Redis ran it, the retry
    (which looks for the ids the first send wrote) leaves each job in the stream once."""
    client_redis = await connect_redis(redis_url)
    try:
        client = Client(client_redis, core_tasks.registry)
        await client.enqueue("record", {})
        make_pipeline = client_redis.pipeline
        lost = 0

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = make_pipeline(*args, **kwargs)
            execute = pipe.execute

            async def execute_then_lose(*eargs: Any, **ekwargs: Any) -> Any:
                nonlocal lost
                result = await execute(*eargs, **ekwargs)
                if lost == 0:
                    lost += 1
                    raise RedisConnectionError("reply lost")
                return result

            pipe.execute = execute_then_lose  # type: ignore[method-assign]
            return pipe

        client_redis.pipeline = pipeline  # type: ignore[method-assign]
        ids = await client.enqueue_many([("record", {"n": i}) for i in range(5)])
        assert lost == 1 and len(set(ids)) == 5
        assert await client_redis.xlen(keys.stream("default")) == 6  # warm-up + 5
        assert {(await client.status(i)).state for i in ids} == {"queued"}
    finally:
        await client_redis.aclose()


async def test_a_bulk_enqueue_loads_its_script_only_when_redis_lacks_it(redis: Redis) -> None:
    """Scripts are sent by SHA; a call answered NOSCRIPT (after SCRIPT FLUSH or a restart) did
    not run, and is sent again once the script is loaded: one round trip when Redis has it."""
    client = Client(redis, core_tasks.registry)
    await client.enqueue_many([("record", {"n": i}) for i in range(3)])
    await redis.config_resetstat()
    await client.enqueue_many([("record", {"n": i}) for i in range(3)])
    stats = await redis.info("commandstats")
    assert not [k for k in stats if k.startswith("cmdstat_script")], stats  # no SCRIPT LOAD
    await redis.script_flush()
    ids = await client.enqueue_many([("record", {"n": i}) for i in range(3)])
    assert len(set(ids)) == 3
    assert await redis.xlen(keys.stream("default")) == 9  # each job written once


async def test_an_enqueue_whose_outcome_is_unknown_names_the_job_id() -> None:
    """Given Redis unreachable for every attempt, the error says the job may have been
    enqueued and names its id, so the caller can retry it safely."""
    redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        client = Client(redis, core_tasks.registry)
        with pytest.raises(EnqueueUncertain, match="may have been enqueued as job-7") as info:
            await client.enqueue("record", {}, job_id="job-7")
        assert info.value.job_ids == ["job-7"]
    finally:
        await redis.aclose()


# -- memory pressure ----------------------------------------------------------------------------


async def _fill_to_limit(redis: Redis) -> None:
    used = int((await redis.info("memory"))["used_memory"])
    await redis.config_set("maxmemory", str(used + 200_000))
    await redis.config_set("maxmemory-policy", "noeviction")


async def test_enqueue_under_oom_raises_server_full_and_workers_drain(redis: Redis) -> None:
    """Given a backlog and Redis at maxmemory with noeviction, enqueue raises ServerFull with
    nothing written, a worker drains the backlog (fetch, acks and status writes need no memory
    first), and enqueue works again once the drained jobs' memory is free."""
    ran: list[str] = []
    registry = Registry()

    @registry.task(queue="default", max_retries=0)
    async def note(ctx: Context[Any], payload: dict[str, Any]) -> None:
        ran.append(ctx.job.id)  # a ledger outside Redis: the handler itself writes nothing

    client = Client(redis, registry)
    # Warm up: the worker's connections exist before the limit is set, as in production.
    await Worker(redis, registry, burst=True, settings=FAST).run()
    ids = await client.enqueue_many([("note", {"pad": "x" * 200}) for _ in range(500)])
    try:
        await _fill_to_limit(redis)
        for _ in range(2_000):  # fill what is left until Redis refuses
            before = await redis.xlen(keys.stream("default"))
            try:
                ids.append(await client.enqueue("note", {"pad": "y" * 2000}))
            except ServerFull as exc:
                assert "out of memory" in str(exc) and exc.written == 0
                assert await redis.xlen(keys.stream("default")) == before  # nothing written
                break
        else:
            pytest.fail("Redis never refused an enqueue")
        await Worker(redis, registry, burst=True, settings=FAST).run()
        assert sorted(ran) == sorted(ids)
        assert await client.enqueue("note", {})  # room again
    finally:
        await redis.config_set("maxmemory", "0")


# -- classification -----------------------------------------------------------------------------


async def test_redis_errors_are_classified_by_type_and_code(redis: Redis) -> None:
    """Real replies: NOGROUP is StreamMissing, OOM is OutOfMemory; a connection error is
    ConnectionLost, uvloop's closed transport included (converted by the connection class)."""
    with pytest.raises(Exception) as nogroup:
        await redis.xreadgroup("nogroup", "c", {"missing": ">"})
    assert isinstance(classify(nogroup.value), StreamMissing)
    await redis.config_set("maxmemory", "1")
    try:
        with pytest.raises(Exception) as oom:
            await redis.set("k", "v")
        assert isinstance(classify(oom.value), OutOfMemory)
    finally:
        await redis.config_set("maxmemory", "0")
    assert isinstance(classify(RedisConnectionError("reset")), ConnectionLost)
    assert classify(ValueError("a bug")) is None


async def test_the_connection_class_turns_a_closed_transport_into_a_connection_error(
    redis_url: str,
) -> None:
    """Given a pooled connection whose transport was closed under it (as uvloop reports it:
    RuntimeError on write), the next command reconnects instead of raising RuntimeError."""
    client = await connect_redis(redis_url)
    try:
        await client.ping()
        conn = client.connection_pool._available_connections[0]  # type: ignore[attr-defined]
        conn._writer.transport.abort()  # the peer reset it; the client has not noticed
        assert await client.ping()  # retried on a fresh connection, no RuntimeError
    finally:
        await client.aclose()


async def test_server_busy_is_waited_out_by_the_enqueue_retry(redis: Redis) -> None:
    client = Client(redis, core_tasks.registry)
    original = client._enqueue_now.__call__
    busy = [ServerBusy("LOADING")]

    async def busy_once(r: Any, ks: Any, args: Any) -> Any:
        if busy:
            raise busy.pop()
        return await original(r, ks, args)

    client._enqueue_now = busy_once  # type: ignore[assignment, method-assign]
    assert await client.enqueue("record", {})
    assert not busy  # the first send met the busy server
    assert await redis.xlen(keys.stream("default")) == 1


# -- consumers and clocks -----------------------------------------------------------------------


async def test_dead_consumers_are_forgotten_after_lease_and_reclaim_interval(redis: Redis) -> None:
    """Given the consumer of a crashed worker that owns nothing, a running worker forgets it
    (group and heartbeat) within about lease + reclaim interval; a consumer that owns a pending
    entry is never deleted."""
    await Client(redis, core_tasks.registry).enqueue("record", {})
    holder = Consumer(redis, "dead-holder", ["default"])
    await holder.ensure_group("default")
    [_held] = await holder.read_available(["default"], 1)  # owns the entry, then "crashes"
    assert not await holder.release("default", "dead-holder")  # never with pending entries
    await redis.xreadgroup("workers", "dead-idle", {keys.stream("default"): ">"}, count=1)
    await holder.extend("default", [])
    await redis.hset(keys.consumers("default"), "dead-idle", 0)  # last heard of long ago
    settings = Settings(lease_ms=1000, reclaim_interval_ms=200, block_ms=100)
    started = time.monotonic()
    async with running_worker(redis, core_tasks.registry, settings=settings, queues=["default"]):
        while await redis.hexists(keys.consumers("default"), "dead-idle"):
            assert time.monotonic() - started < 10
            await asyncio.sleep(0.1)
        forgotten_after = time.monotonic() - started
        consumers = await redis.xinfo_consumers(keys.stream("default"), "workers")
        assert b"dead-idle" not in {c["name"] for c in consumers}
    assert forgotten_after < 2 * (settings.lease_ms + settings.reclaim_interval_ms) / 1000


async def test_status_times_come_from_the_redis_clock(redis: Redis) -> None:
    """Started and finished times of a job are both Redis time: a job never finishes before
    it started, whatever the worker's clock says."""
    client = Client(redis, core_tasks.registry)
    job_id = await client.enqueue("record", {})
    t0 = int((await redis.time())[0]) * 1000
    await Worker(redis, core_tasks.registry, burst=True, settings=FAST).run()
    rec = await jobstatus.read(redis, "default", job_id)
    started, finished = int(rec["started_ms"]), int(rec["finished_ms"])
    assert t0 - 1000 <= started <= finished


async def test_a_denied_config_get_is_warned_about(
    redis: Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Given an ACL user without CONFIG, the eviction-policy check logs one clear warning."""
    await redis.acl_setuser(
        "worker", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-config"]
    )
    try:
        limited = await connect_redis(redis_url.replace("redis://", "redis://worker:pw@"))
        try:
            with caplog.at_level(logging.WARNING, logger="qrunner.runtime"):
                await warn_on_eviction_policy(limited)
        finally:
            await limited.aclose()
    finally:
        await redis.acl_deluser("worker")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "CONFIG GET is denied" in lines[0]
