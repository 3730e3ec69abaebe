"""The done hash: the compact records of jobs that succeeded at their first try, one field each
in ``qr:{q}:done``, and how they leave once the result TTL has passed (the done log read by
the ack and by the worker's clean-up pass)."""

from __future__ import annotations

import orjson
import pytest
from redis.asyncio import Redis

from qrunner import Client, Worker, keys
from qrunner.consumer import Consumer
from qrunner.control import find_job
from qrunner.errors import JobNotFound
from qrunner.scripts import Script
from qrunner.settings import Settings
from tests.helpers import core_tasks
from tests.helpers.waiting import wait_for
from tests.worker_fixtures import FAST, running_worker

TTL_MS = 60_000
T0 = 1_900_000_000_000  # the ack's clock in these tests, given to the scripts


async def _ack(redis: Redis, consumer: Consumer, job_ids: list[str], now: int) -> None:
    """Enqueue ``job_ids`` as raw entries, read them as ``consumer`` and ack them at ``now``."""
    for job_id in job_ids:
        await redis.xadd(keys.stream("default"), {"j": orjson.dumps([job_id, "record", {}])})
    entries = await consumer.read_available(["default"], len(job_ids))
    batch = "\n".join(
        f"{e.entry_id}\t{job_id}\t1\trecord\t{now - 5}\t1\t"
        for e, job_id in zip(entries, job_ids, strict=True)
    )
    res = await Script("ack")(
        redis,
        [keys.stream("default")],
        [keys.GROUP, consumer.name, now, TTL_MS, keys.job_prefix("default"), batch, 0],
    )
    assert [int(x) for x in res] == [1] * len(job_ids)


async def _consumer(redis: Redis) -> Consumer:
    consumer = Consumer(redis, "w-done", ["default"])
    await consumer.ensure_group("default")
    return consumer


async def _sweep(redis: Redis, now: int, entries: int = 20) -> list[int]:
    res = await Script("done_sweep")(redis, [keys.done("default")], [now, TTL_MS, entries])
    return [int(x) for x in res]


async def _done_ids(redis: Redis) -> set[str]:
    return {k.decode() for k in await redis.hkeys(keys.done("default"))}


async def test_records_leave_once_their_ttl_has_passed_and_not_before(redis: Redis) -> None:
    consumer = await _consumer(redis)
    await _ack(redis, consumer, ["a1", "a2"], T0)
    await _ack(redis, consumer, ["b1"], T0 + 1000)
    assert await redis.llen(keys.done_log("default")) == 2
    assert await _sweep(redis, T0 + TTL_MS - 1) == [0, 0]
    assert await _done_ids(redis) == {"a1", "a2", "b1"}
    # The first ack's records end; the second's have a second to go, and are left.
    assert await _sweep(redis, T0 + TTL_MS) == [2, 0]
    assert await _done_ids(redis) == {"b1"}
    assert await redis.llen(keys.done_log("default")) == 1
    assert await _sweep(redis, T0 + 1000 + TTL_MS) == [1, 0]
    assert not await redis.exists(keys.done("default"), keys.done_log("default"))


async def test_a_sweep_takes_at_most_the_entries_asked_and_says_more_remain(
    redis: Redis,
) -> None:
    consumer = await _consumer(redis)
    for i in range(5):
        await _ack(redis, consumer, [f"j{i}"], T0 + i)
    assert await _sweep(redis, T0 + 10 + TTL_MS, entries=3) == [3, 1]
    assert await _sweep(redis, T0 + 10 + TTL_MS, entries=3) == [2, 0]
    assert await _done_ids(redis) == set()


async def test_an_ack_removes_expired_records_two_log_entries_at_a_time(redis: Redis) -> None:
    consumer = await _consumer(redis)
    for i in range(3):
        await _ack(redis, consumer, [f"old{i}"], T0 + i)
    await _ack(redis, consumer, ["new"], T0 + TTL_MS + 10)
    assert await _done_ids(redis) == {"old2", "new"}
    await _ack(redis, consumer, ["newer"], T0 + TTL_MS + 11)
    assert await _done_ids(redis) == {"new", "newer"}
    assert await redis.llen(keys.done_log("default")) == 2


async def test_a_record_written_again_since_its_log_entry_stays(redis: Redis) -> None:
    consumer = await _consumer(redis)
    await _ack(redis, consumer, ["again"], T0)
    # The same job id succeeds once more, later (its id enqueued anew by hand).
    await _ack(redis, consumer, ["again"], T0 + 5000)
    assert await _sweep(redis, T0 + TTL_MS) == [0, 0]
    assert await _done_ids(redis) == {"again"}
    assert await _sweep(redis, T0 + 5000 + TTL_MS) == [1, 0]


async def test_an_id_is_known_while_its_record_lasts_and_free_once_it_is_gone(
    redis: Redis,
) -> None:
    client = Client(redis, core_tasks.registry)
    job_id = await client.enqueue("record", {}, job_id="kept-id")
    await Worker(redis, core_tasks.registry, queues=["default"], burst=True, settings=FAST).run()
    assert (await client.status(job_id)).state == "succeeded"
    assert await find_job(redis, job_id, ["other", "default"]) == "default"
    assert await client.enqueue("record", {}, job_id="kept-id") == job_id
    assert await redis.xlen(keys.stream("default")) == 0  # known: not written again
    finished = int((await redis.hget(keys.done("default"), job_id)).split(b"\t")[1])
    ttl_ms = FAST.result_ttl_s * 1000
    await Script("done_sweep")(redis, [keys.done("default")], [finished + ttl_ms, ttl_ms, 20])
    with pytest.raises(JobNotFound):
        await find_job(redis, job_id, ["default"])
    await client.enqueue("record", {}, job_id="kept-id")
    assert await redis.xlen(keys.stream("default")) == 1
    assert (await client.status(job_id)).state == "queued"


async def test_a_compact_string_written_by_an_older_version_is_read_kept_and_known(
    redis: Redis,
) -> None:
    """Records written before the done hash are strings under the job's key, with their own
    TTL: they are read back in full, writes meant for a hash leave them, and their id is known."""
    client = Client(redis, core_tasks.registry)
    key = keys.job("default", "legacy")
    legacy = b'1\t1900000000100\tw-old\t1\trecord\t1900000000000\t40\t{"n":1}'
    await redis.set(key, legacy, px=TTL_MS)
    status = await client.status("legacy")
    assert (status.state, status.task, status.attempt, status.result) == (
        "succeeded",
        "record",
        1,
        {"n": 1},
    )
    assert (status.finished_ms, status.enqueued_ms) == (1_900_000_000_100, 1_900_000_000_000)
    assert await Script("progress")(redis, [key], ["0.5", "", "", TTL_MS]) == 0
    assert await client.enqueue("record", {}, job_id="legacy") == "legacy"
    assert await redis.xlen(keys.stream("default")) == 0
    assert await redis.get(key) == legacy


async def test_the_worker_sweeps_an_idle_queue_once_the_ttl_has_passed(redis: Redis) -> None:
    settings = Settings(
        **{
            **FAST.model_dump(),
            "result_ttl_s": 1,
            "lease_ms": 500,
            "reclaim_interval_ms": 100,
        }
    )
    client = Client(redis, core_tasks.registry)
    job_id = await client.enqueue("record", {})
    async with running_worker(redis, core_tasks.registry, settings=settings):

        async def succeeded() -> bool:
            return (await client.status(job_id)).state == "succeeded"

        await wait_for(succeeded, what="the job to succeed")
        assert await redis.hexists(keys.done("default"), job_id)

        async def swept() -> bool:
            return not await redis.exists(keys.done("default"), keys.done_log("default"))

        # Nothing more is acked: the worker's clean-up pass removes the record.
        await wait_for(swept, what="the done record to be swept")
    with pytest.raises(JobNotFound):
        await client.status(job_id)


async def _run_one_job_with(redis: Redis, odd_key: str) -> str:
    """One job enqueued, then ``odd_key`` replaced by a string, then a burst worker's run."""
    client = Client(redis, core_tasks.registry)
    job_id = await client.enqueue("record", {"n": 7})
    await redis.set(odd_key, "not qrunner's")
    await Worker(redis, core_tasks.registry, queues=["default"], burst=True, settings=FAST).run()
    assert await redis.xlen(keys.stream("default")) == 0
    assert (await redis.xpending(keys.stream("default"), keys.GROUP))["pending"] == 0
    status = await client.status(job_id)
    assert (status.state, status.result) == ("succeeded", {"n": 7})
    return job_id


async def test_a_done_hash_of_another_type_leaves_the_records_as_strings(redis: Redis) -> None:
    job_id = await _run_one_job_with(redis, keys.done("default"))
    key = keys.job("default", job_id)
    assert await redis.type(key) == b"string"
    assert 0 < await redis.pttl(key) <= FAST.result_ttl_s * 1000
    assert await redis.get(keys.done("default")) == b"not qrunner's"  # left as it was


async def test_a_done_log_of_another_type_moves_the_records_to_strings(redis: Redis) -> None:
    """Without a log entry nothing would ever remove them: they get their own TTL instead."""
    job_id = await _run_one_job_with(redis, keys.done_log("default"))
    assert not await redis.hexists(keys.done("default"), job_id)
    key = keys.job("default", job_id)
    assert await redis.type(key) == b"string"
    assert 0 < await redis.pttl(key) <= FAST.result_ttl_s * 1000
