"""Status records that cost almost nothing: a job due now is written once at enqueue (its stream
entry and one field of the queue's live index) and once when it ends (a compact status record in
the same script call as the ack: a field of the queue's done hash when nothing else was recorded
for the job, removed once the result TTL has passed). Its state in between is read from where
its entry is."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from redis.asyncio import Redis

from qrunner import Client, JobSpec, Worker, jobstatus, keys
from qrunner.consumer import Consumer, Finish
from qrunner.control import Control
from qrunner.errors import JobNotFound
from qrunner.scripts import Script
from qrunner.settings import Settings
from tests.helpers import core_tasks, ops_tasks
from tests.helpers.waiting import wait_for
from tests.worker_fixtures import FAST, running_worker


async def _state_is(client: Client, job_id: str, state: str) -> bool:
    return (await client.status(job_id)).state == state


async def _indexed_entry(redis: Redis, queue: str, job_id: str) -> str | None:
    value = await redis.hget(keys.live(queue), job_id)
    return None if value is None else keys.live_entry_id(value)


async def _job_keys(redis: Redis, queue: str) -> list[bytes]:
    return [k async for k in redis.scan_iter(match=keys.job(queue, "*"))]


async def test_a_job_due_now_writes_its_entry_and_one_index_field_only(redis: Redis) -> None:
    client = Client(redis, core_tasks.registry)
    job_id = await client.enqueue("record", {"n": 1})
    assert await _job_keys(redis, "default") == []  # no status hash while it waits
    [(entry_id, _)] = await redis.xrange(keys.stream("default"))
    assert await _indexed_entry(redis, "default", job_id) == entry_id.decode()
    status = await client.status(job_id)
    assert (status.state, status.task, status.attempt) == ("queued", "record", 1)
    # The envelope carries no time: the job was enqueued when its entry was added.
    assert status.enqueued_ms == int(entry_id.split(b"-")[0])


async def test_a_job_timed_by_its_entry_keeps_that_time_when_it_ends_and_when_it_retries(
    redis: Redis,
) -> None:
    client = Client(redis, ops_tasks.registry)
    flaky = await client.enqueue("flaky", {})
    [(entry_id, _)] = await redis.xrange(keys.stream("ops"))
    await Worker(redis, ops_tasks.registry, queues=["ops"], burst=True, settings=FAST).run()
    done = await client.status(flaky)
    # Its first run failed and it ran again from the delayed set; the time is the first entry's.
    assert (done.state, done.attempt) == ("succeeded", 2)
    assert done.enqueued_ms == int(entry_id.split(b"-")[0])


async def test_a_delayed_job_is_timed_by_its_enqueue_not_its_promotion(redis: Redis) -> None:
    client = Client(redis, core_tasks.registry)
    before = int(time.time() * 1000)
    job_id = await client.enqueue("record", {}, delay_s=0.05)
    scheduled = await client.status(job_id)
    assert scheduled.enqueued_ms is not None and before <= scheduled.enqueued_ms
    [(env, _)] = await redis.zrange(keys.delayed("default"), 0, -1, withscores=True)
    assert orjson.loads(env)["enqueued_ms"] >= before


async def test_running_is_read_from_the_pending_entry_then_the_ack_writes_the_record(
    redis: Redis,
) -> None:
    ops_tasks.events.clear()
    ops_tasks.events["started"] = asyncio.Event()
    release = ops_tasks.events["release"] = asyncio.Event()
    client = Client(redis, ops_tasks.registry)
    job_id = await client.enqueue("hold", {})
    async with running_worker(redis, ops_tasks.registry, queues=["ops"]) as worker:
        await asyncio.wait_for(ops_tasks.events["started"].wait(), 10)
        running = await client.status(job_id)
        assert running.state == "running"
        assert running.task == "hold"
        assert await _job_keys(redis, "ops") == []  # starting wrote nothing
        history = await Control(redis).history("ops", job_id)
        assert [(a.outcome, a.worker) for a in history] == [("running", worker.name)]
        release.set()
        await wait_for(lambda: _state_is(client, job_id, "succeeded"), what="the job to succeed")
    done = await client.status(job_id)
    assert (done.task, done.attempt, done.result) == ("hold", 1, "released")
    assert done.finished_ms is not None and done.enqueued_ms is not None
    assert done.enqueued_ms <= done.finished_ms
    assert not await redis.hexists(keys.live("ops"), job_id)  # left the index with its entry
    rec = await jobstatus.read(redis, "ops", job_id)
    assert rec["worker"] == worker.name.encode()
    assert int(rec["started_ms"]) <= int(rec["finished_ms"])
    assert await redis.hexists(keys.done("ops"), job_id)  # the compact record, no key of its own
    assert await _job_keys(redis, "ops") == []


async def test_retried_and_dead_jobs_leave_the_index_and_keep_their_task(redis: Redis) -> None:
    client = Client(redis, ops_tasks.registry)
    flaky = await client.enqueue("flaky", {})
    broken = await client.enqueue("broken", {})
    await Worker(redis, ops_tasks.registry, queues=["ops"], burst=True, settings=FAST).run()
    ok, dead = await client.status(flaky), await client.status(broken)
    assert (ok.state, ok.task, ok.attempt) == ("succeeded", "flaky", 2)
    assert (dead.state, dead.task, dead.attempt) == ("dead", "broken", 1)
    assert dead.dlq_id and dead.last_error
    assert await redis.hlen(keys.live("ops")) == 0


async def test_a_first_try_success_leaves_one_done_record_read_back_in_full(
    redis: Redis,
) -> None:
    client = Client(redis, core_tasks.registry)
    job_id = await client.enqueue("record", {"n": 5})
    [(entry_id, _)] = await redis.xrange(keys.stream("default"))
    await Worker(redis, core_tasks.registry, queues=["default"], burst=True, settings=FAST).run()
    assert not await redis.exists(keys.job("default", job_id))
    raw = await redis.hget(keys.done("default"), job_id)
    assert raw.startswith(b"1\t") and raw.endswith(b'\t{"n":5}')  # version first, result last
    finished_ms = raw.split(b"\t")[1]
    # The done log says when the record ends: its finished ms, then the job ids of the ack.
    assert await redis.lrange(keys.done_log("default"), 0, -1) == [
        finished_ms + b"\t" + job_id.encode()
    ]
    done = await client.status(job_id)
    assert (done.state, done.task, done.attempt, done.result) == (
        "succeeded",
        "record",
        1,
        {"n": 5},
    )
    assert done.enqueued_ms == int(entry_id.split(b"-")[0])
    assert done.finished_ms is not None and done.enqueued_ms <= done.finished_ms
    rec = await jobstatus.read(redis, "default", job_id)
    assert set(rec) == {
        "state",
        "task",
        "attempt",
        "enqueued_ms",
        "started_ms",
        "finished_ms",
        "worker",
        "result",
    }
    assert int(rec["started_ms"]) <= int(rec["finished_ms"])


async def test_a_job_with_a_record_already_keeps_its_hash_and_fields_when_it_succeeds(
    redis: Redis,
) -> None:
    client = Client(redis, ops_tasks.registry)
    flaky = await client.enqueue("flaky", {})
    await Worker(redis, ops_tasks.registry, queues=["ops"], burst=True, settings=FAST).run()
    key = keys.job("ops", flaky)
    assert await redis.type(key) == b"hash"  # written when it was retried
    assert await redis.hget(key, "last_error")  # the retry's error stays
    assert await redis.hget(key, "state") == b"succeeded"
    assert await redis.pttl(key) > 0


async def test_writes_meant_for_a_hash_keep_a_compact_success_record(redis: Redis) -> None:
    """A late progress report, a cancel racing the ack, a retry or dead letter of another entry
    under the same job id: none fails on the string, and the success record stays."""
    client = Client(redis, core_tasks.registry)
    job_id = await client.enqueue("record", {})
    await Worker(redis, core_tasks.registry, queues=["default"], burst=True, settings=FAST).run()
    key = keys.job("default", job_id)
    before = await redis.hget(keys.done("default"), job_id)
    assert before is not None
    wrote = await Script("progress")(redis, [key], ["0.5", "", "", FAST.status_ttl_s * 1000])
    assert wrote == 0
    # The job was read as queued, then succeeded before the cancel's write.
    assert await Control(redis).cancel("default", job_id, "queued") == "succeeded"
    # Other entries under the same id, dead-lettered, retried and cancelled by their owner.
    consumer = Consumer(redis, "w-dup", ["default"])
    await consumer.ensure_group("default")
    envelope = orjson.dumps([job_id, "record", {}])
    for _ in range(3):
        await redis.xadd(keys.stream("default"), {"j": envelope})
    dead, retried, cancelled = await consumer.read_available(["default"], 3)
    ttl_ms = FAST.status_ttl_s * 1000
    finishes = [
        await consumer.deadletter(
            dead, job_id, envelope, "boom", task="record", status_ttl_ms=ttl_ms
        ),
        await consumer.reschedule(
            retried, job_id, envelope, 60_000, state="retrying", attempt=2, status_ttl_ms=ttl_ms
        ),
        await consumer.finish_cancelled(cancelled, job_id, 1, ttl_ms),
    ]
    assert finishes == [Finish.DONE] * 3
    # Their own writes are done: the dead letter, the delayed retry, the acks.
    assert await redis.xlen(keys.dlq("default")) == 1
    assert await redis.zcard(keys.delayed("default")) == 1
    assert await redis.xlen(keys.stream("default")) == 0
    # And a replay of the dead letter puts it back in the stream.
    [(dlq_id, _)] = await redis.xrange(keys.dlq("default"))
    replayed = await Script("replay")(
        redis,
        [keys.dlq("default"), keys.stream("default"), key],
        [dlq_id, envelope, ttl_ms, "record"],
    )
    assert replayed and await redis.xlen(keys.stream("default")) == 1
    assert await redis.hget(keys.done("default"), job_id) == before
    assert not await redis.exists(key)  # none of those writes made a hash beside it
    assert (await client.status(job_id)).state == "succeeded"


async def test_an_ack_record_short_of_fields_still_acks_and_marks_an_existing_record(
    redis: Redis,
) -> None:
    """The script acks before it writes records: a record missing its fields (no client sends
    one) must not make it fail after the acks, leaving the job's hash unfinished."""
    consumer = Consumer(redis, "w-short", ["default"])
    await consumer.ensure_group("default")
    job_id = "short-record-job"
    await redis.xadd(keys.stream("default"), {"j": orjson.dumps([job_id, "record", {}])})
    [entry] = await consumer.read_available(["default"], 1)
    key = keys.job("default", job_id)
    await redis.hset(key, mapping={"state": "running", "progress": "0.5"})
    ttl_ms = FAST.status_ttl_s * 1000
    res = await Script("ack")(
        redis,
        [keys.stream("default")],
        [
            keys.GROUP,
            "w-short",
            "",
            ttl_ms,
            keys.job_prefix("default"),
            f"{entry.entry_id}\t{job_id}\t1",
            keys.ID_MARKER_TTL_MS,
        ],
    )
    assert [int(x) for x in res] == [1]
    assert (await redis.xpending(keys.stream("default"), keys.GROUP))["pending"] == 0
    assert await redis.hget(key, "state") == b"succeeded"
    assert await redis.hget(key, "progress") == b"0.5"  # what the hash held stays
    assert 0 < await redis.pttl(key) <= ttl_ms


async def test_an_id_is_written_once_while_queued_and_after_it_ran(redis: Redis) -> None:
    client = Client(redis, core_tasks.registry)
    first = await client.enqueue("record", {}, job_id="fixed-id")
    again = await client.enqueue("record", {}, job_id="fixed-id")
    assert first == again == "fixed-id"
    assert await redis.xlen(keys.stream("default")) == 1
    await Worker(redis, core_tasks.registry, queues=["default"], burst=True, settings=FAST).run()
    await client.enqueue("record", {}, job_id="fixed-id")
    assert await redis.xlen(keys.stream("default")) == 0  # known by its finished record
    assert await redis.lrange("log:default", 0, -1) == [b"fixed-id"]


async def test_with_status_records_off_a_finished_id_is_still_known_for_a_while(
    redis: Redis,
) -> None:
    settings = Settings(status_ttl_s=0, block_ms=50)
    client = Client(redis, core_tasks.registry, status_ttl_s=0)
    await client.enqueue("record", {}, job_id="off-id")
    await Worker(
        redis, core_tasks.registry, queues=["default"], burst=True, settings=settings
    ).run()
    assert await _job_keys(redis, "default") == []
    assert await redis.pttl(keys.id_marker("default", "off-id")) > 0
    await client.enqueue("record", {}, job_id="off-id")
    assert await redis.xlen(keys.stream("default")) == 0


async def test_a_promoted_delayed_job_is_indexed_under_its_new_entry(redis: Redis) -> None:
    client = Client(redis, core_tasks.registry)
    job_id = await client.enqueue("record", {}, delay_s=0.05)
    assert (await client.status(job_id)).state == "scheduled"
    assert not await redis.hexists(keys.live("default"), job_id)
    worker = Worker(redis, core_tasks.registry, queues=["default"], settings=FAST)

    async def promoted() -> bool:
        moved, _ = await worker.consumer.promote("default", 100)
        return moved > 0

    await wait_for(promoted, what="the delayed job to come due")
    [(entry_id, _)] = await redis.xrange(keys.stream("default"))
    assert await _indexed_entry(redis, "default", job_id) == entry_id.decode()
    assert (await client.status(job_id)).state == "queued"


async def test_purge_drops_the_index_fields_of_the_jobs_it_removes(redis: Redis) -> None:
    client = Client(redis, core_tasks.registry)
    await client.enqueue_many([("record", {"i": i}) for i in range(5)])
    await Worker(
        redis, core_tasks.registry, queues=["default"], settings=FAST
    ).consumer.ensure_group("default")
    assert await Control(redis).purge("default") == 5
    assert await redis.hlen(keys.live("default")) == 0


async def test_a_stale_index_field_does_not_block_a_new_enqueue(redis: Redis) -> None:
    """An entry removed from outside qrunner (XTRIM, XDEL by hand) leaves its field behind;
    the id can be enqueued again and the status does not claim it is queued."""
    client = Client(redis, core_tasks.registry)
    await client.enqueue("record", {}, job_id="trimmed")
    await redis.xtrim(keys.stream("default"), maxlen=0)
    with pytest.raises(JobNotFound):
        await client.status("trimmed")
    await client.enqueue("record", {}, job_id="trimmed")
    assert await redis.xlen(keys.stream("default")) == 1


@pytest.mark.parametrize(
    ("options", "script"),
    [
        ({}, "enqueue_now"),  # due now, no key: two values per job
        ({"job_id": "given-1"}, "enqueue_now"),  # a given id too (every script looks ids up)
        ({"delay_s": 60}, "enqueue"),
        ({"key": "once"}, "enqueue"),
    ],
)
async def test_only_jobs_due_now_without_a_key_take_the_short_script(
    redis: Redis, options: dict[str, object], script: str
) -> None:
    """Each path leaves what its job needs: an entry and an index field when due now, with or
    without the short script; the routing is by what the job asks for."""
    client = Client(redis, core_tasks.registry)
    used: list[str] = []
    for name in ("_enqueue", "_enqueue_now"):
        original = getattr(client, name).__call__

        async def call(
            r: Redis, ks: list[str], args: list[object], *, _o=original, _n=name
        ) -> object:
            used.append(_n.lstrip("_"))
            return await _o(r, ks, args)

        setattr(client, name, call)
    job_id = await client.enqueue("record", {"n": 1}, **options)  # type: ignore[arg-type]
    assert used == [script]
    if "delay_s" in options:
        assert (await client.status(job_id)).state == "scheduled"
        return
    [(entry_id, _)] = await redis.xrange(keys.stream("default"))
    assert await _indexed_entry(redis, "default", job_id) == entry_id.decode()
    assert (await client.status(job_id)).state == "queued"


async def test_a_bulk_of_plain_jobs_is_written_like_single_ones(redis: Redis) -> None:
    client = Client(redis, core_tasks.registry)
    ids = await client.enqueue_many([("record", {"n": i}) for i in range(1200)])
    entries = await redis.xrange(keys.stream("default"))
    index = await redis.hgetall(keys.live("default"))
    assert len(entries) == len(index) == 1200 == len(set(ids))
    assert {keys.live_entry_id(index[i.encode()]) for i in ids} == {
        entry_id.decode() for entry_id, _ in entries
    }
    # Packed: 14 characters at most, so each value takes Redis' 16-byte allocation.
    assert max(len(v) for v in index.values()) <= 14
    assert not any(b"-" in v for v in index.values())


async def test_an_entry_id_that_does_not_pack_is_indexed_as_it_is(redis: Redis) -> None:
    """A seq from 4096 within one ms does not fit the packed form: the id is kept with its
    '-', and the job is found, reported and deduplicated as any other."""
    client = Client(redis, core_tasks.registry)
    stream = keys.stream("default")
    future_ms = int(time.time() * 1000) + 3_600_000
    await redis.xadd(stream, {"j": "{}"}, id=f"{future_ms}-5000")  # later ids follow it
    await redis.xtrim(stream, maxlen=0)
    job_id = await client.enqueue("record", {"n": 1})
    [(entry_id, _)] = await redis.xrange(stream)
    assert entry_id == f"{future_ms}-5001".encode()
    assert await redis.hget(keys.live("default"), job_id) == entry_id
    assert (await client.status(job_id)).state == "queued"
    assert await client.enqueue("record", {"n": 1}, job_id=job_id) == job_id
    assert await redis.xlen(stream) == 1


async def test_an_index_value_written_before_packing_is_still_read(redis: Redis) -> None:
    """A queue enqueued to by an older client holds decimal entry ids in its live index: the
    status read and the duplicate check understand them."""
    client = Client(redis, core_tasks.registry)
    job_id = await client.enqueue("record", {"n": 1})
    [(entry_id, _)] = await redis.xrange(keys.stream("default"))
    await redis.hset(keys.live("default"), job_id, entry_id)  # the form older clients wrote
    assert (await client.status(job_id)).state == "queued"
    assert await client.enqueue("record", {"n": 1}, job_id=job_id) == job_id
    assert await redis.xlen(keys.stream("default")) == 1


@pytest.mark.needs_admin
async def test_a_bulk_of_drawn_ids_looks_up_only_its_first_id(redis: Redis) -> None:
    """Ids the client drew for one call can only exist if a send of that very call ran, and a
    send that ran wrote its first job first: one look-up answers for the call."""
    client = Client(redis, core_tasks.registry)
    await client.enqueue("record", {"n": 0})  # script loaded
    await redis.config_resetstat()
    await client.enqueue_many([("record", {"n": i}) for i in range(100)])
    stats = await redis.info("commandstats")
    # The first id's look-up: its status key and marker, the done hash, the live index.
    assert stats["cmdstat_exists"]["calls"] == 1 and stats["cmdstat_hget"]["calls"] == 2
    assert stats["cmdstat_xadd"]["calls"] == 100


@pytest.mark.parametrize("position", [0, 2, 4])
async def test_a_bulk_holding_a_given_id_already_enqueued_writes_that_job_once(
    redis: Redis, position: int
) -> None:
    """A given id may have been sent in another call: it is looked up wherever it stands in
    the bulk, beside ids the client drew."""
    client = Client(redis, core_tasks.registry)
    await client.enqueue("record", {"n": -1}, job_id="given")
    specs = [JobSpec("record", {"n": i}) for i in range(5)]
    specs[position] = JobSpec("record", {"n": position}, job_id="given")
    ids = await client.enqueue_many(specs)
    assert ids[position] == "given" and len(set(ids)) == 5
    assert await redis.xlen(keys.stream("default")) == 5  # the given job once, four drawn
    assert await redis.hlen(keys.live("default")) == 5


async def test_a_call_sent_again_after_a_refused_write_writes_the_rest_once(redis: Redis) -> None:
    """A send can stop at a refused write (OOM) after writing its first jobs; sent again, the
    call finds its first id known, looks every id up, and writes only the jobs still missing."""
    client = Client(redis, core_tasks.registry)
    jobs = [client._prepare(JobSpec("record", {"n": i}))[1:] for i in range(4)]
    script, call_keys, argv = client._call_for("default", jobs)
    assert argv[0] == "1"  # every id drawn here
    await script(redis, call_keys, argv[: 1 + 2 * 2])  # what the stopped send wrote: two jobs
    out = await script(redis, call_keys, argv)
    assert out[1::2] == [2, 2, 1, 1]
    assert await redis.xlen(keys.stream("default")) == 4
    assert await redis.hlen(keys.live("default")) == 4
