"""The worker against a real redis-server: round trip, priority, retries, dead letters, timeouts,
leases, shutdown. Given / When / Then in each test's docstring."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import orjson
import pytest
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from qrunner import Client, Context, Permanent, Registry, Retry, keys
from qrunner.consumer import Consumer
from qrunner.deadletter import DeadLetters
from qrunner.errors import ConnectionLost
from qrunner.runtime import connect_redis
from qrunner.worker import Worker
from tests.helpers import core_tasks
from tests.helpers.clock import redis_ms
from tests.helpers.waiting import wait_for
from tests.worker_fixtures import FAST, Recorder, running_worker

pytestmark = pytest.mark.both_topologies


async def test_round_trip_runs_job_and_records_result(redis: Redis) -> None:
    """Given a queued job, when a burst worker runs, then the status holds the handler's result
    and the stream is empty (acked entries are deleted)."""
    client = Client(redis, core_tasks.registry)
    job_id = await client.enqueue("greet", {"name": "ada", "times": 2})
    assert (await client.status(job_id)).state == "queued"
    await Worker(redis, core_tasks.registry, burst=True, settings=FAST).run()
    st = await client.status(job_id)
    assert st.state == "succeeded"
    assert st.result == "hello adahello ada"
    assert await redis.xlen(keys.stream("default")) == 0


async def test_bulk_enqueue_runs_every_job_once(redis: Redis) -> None:
    """Given 3000 jobs enqueued in one bulk call, all run exactly once."""
    client = Client(redis, core_tasks.registry)
    ids = await client.enqueue_many([("record", {"i": i}) for i in range(3000)])
    assert len(set(ids)) == 3000
    await Worker(redis, core_tasks.registry, burst=True, settings=FAST, concurrency=50).run()
    logged = await redis.lrange("log:default", 0, -1)
    assert sorted(x.decode() for x in logged) == sorted(ids)


async def test_priority_order_critical_before_default(redis: Redis) -> None:
    """Given default jobs enqueued before critical ones, a single-slot worker runs every
    critical job first."""
    client = Client(redis, core_tasks.registry)
    await client.enqueue_many([("record_default", {}) for _ in range(10)])
    await client.enqueue_many([("record_critical", {}) for _ in range(10)])
    await Worker(
        redis,
        core_tasks.registry,
        burst=True,
        settings=FAST,
        concurrency=1,
        queues=["sms_critical", "default"],
    ).run()
    order = [x.decode().split(":")[0] for x in await redis.lrange("log:order", 0, -1)]
    assert order == ["critical"] * 10 + ["default"] * 10


async def test_weighted_reads_let_low_priority_progress(redis: Redis) -> None:
    """With anti-starvation weights a low queue is read even while the high one has work."""
    client = Client(redis, core_tasks.registry)
    await client.enqueue_many([("record_critical", {}) for _ in range(200)])
    await client.enqueue_many([("record_default", {}) for _ in range(200)])
    await Worker(
        redis,
        core_tasks.registry,
        burst=True,
        settings=FAST,
        concurrency=5,
        queues=["sms_critical", "default"],
        weights={"sms_critical": 1, "default": 1},
    ).run()
    order = [x.decode().split(":")[0] for x in await redis.lrange("log:order", 0, -1)]
    assert "default" in order[:200]


async def test_backoff_spacing_on_redis_clock(redis: Redis) -> None:
    """Given a task that always fails with base 0.2 s and no jitter, the gaps between attempts
    measured on the Redis clock are 0.2, 0.4, 0.8 s (never shorter)."""
    reg = Registry()
    starts: list[int] = []

    @reg.task(queue="default", max_retries=3, backoff_base_s=0.2, backoff_cap_s=10, jitter=False)
    async def flaky(ctx: Context[Any], payload: dict[str, Any]) -> None:
        starts.append(await redis_ms(ctx.redis))
        raise RuntimeError("nope")

    client = Client(redis, reg)
    job_id = await client.enqueue("flaky", {})
    await Worker(redis, reg, burst=True, settings=FAST).run()
    assert len(starts) == 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    for gap, expected in zip(gaps, [200, 400, 800], strict=True):
        assert expected <= gap < expected + 500, gaps
    st = await client.status(job_id)
    assert st.state == "dead" and st.attempt == 4


async def test_dead_letter_after_max_retries_keeps_history(redis: Redis) -> None:
    """After max_retries the job is in the dead-letter stream with one error per attempt."""
    client = Client(redis, core_tasks.registry)
    job_id = await client.enqueue("always_fails", {"x": 1})
    await Worker(redis, core_tasks.registry, burst=True, settings=FAST).run()
    dead = await DeadLetters(redis).find(["default"], job_id)
    assert dead is not None and dead.job is not None
    assert [e.attempt for e in dead.job.errors] == [1, 2, 3]
    assert all(e.type == "ValueError" for e in dead.job.errors)
    assert "boom on attempt 3" in dead.job.errors[-1].message
    assert "Traceback" in dead.job.errors[-1].traceback
    assert "max_retries=2" in dead.reason


async def test_permanent_error_dead_letters_at_once(redis: Redis) -> None:
    client = Client(redis, core_tasks.registry)
    job_id = await client.enqueue("permanent", {})
    rec = Recorder()
    await Worker(redis, core_tasks.registry, burst=True, settings=FAST, observer=rec).run()
    st = await client.status(job_id)
    assert st.state == "dead" and st.attempt == 1
    assert rec.finished == [("permanent", "dead")]
    assert "recipient does not exist" in (st.last_error or "")


async def test_retry_signal_uses_its_delay(redis: Redis) -> None:
    reg = Registry()
    starts: list[int] = []

    @reg.task(queue="default", max_retries=1)
    async def later(ctx: Context[Any], payload: dict[str, Any]) -> str:
        starts.append(await redis_ms(ctx.redis))
        if ctx.attempt == 1:
            raise Retry(0.3)
        return "ok"

    client = Client(redis, reg)
    job_id = await client.enqueue("later", {})
    await Worker(redis, reg, burst=True, settings=FAST).run()
    assert 300 <= starts[1] - starts[0] < 800
    assert (await client.status(job_id)).result == "ok"


async def test_dedup_key_returns_first_id_and_enqueues_once(redis: Redis) -> None:
    client = Client(redis, core_tasks.registry)
    a = await client.enqueue("record", {"n": 1}, key="invoice-42")
    b = await client.enqueue("record", {"n": 2}, key="invoice-42")
    assert a == b
    assert await redis.xlen(keys.stream("default")) == 1
    c = await client.enqueue("record", {"n": 3}, key="invoice-42", key_ttl_s=0.05)
    assert c == a  # still inside the first window


async def test_dedup_window_expires(redis: Redis) -> None:
    client = Client(redis, core_tasks.registry)
    a = await client.enqueue("record", {}, key="k", key_ttl_s=0.1)
    await wait_for(lambda: _missing(redis, keys.uniq("default", "k")), what="dedup key expiry")
    b = await client.enqueue("record", {}, key="k", key_ttl_s=0.1)
    assert a != b


async def _missing(redis: Redis, key: str) -> bool:
    return not await redis.exists(key)


async def test_delayed_job_waits_until_due_on_redis_clock(redis: Redis) -> None:
    reg = Registry()
    ran_at: list[int] = []

    @reg.task(queue="default")
    async def stamp(ctx: Context[Any], payload: dict[str, Any]) -> None:
        ran_at.append(await redis_ms(ctx.redis))

    client = Client(redis, reg)
    before = await redis_ms(redis)
    job_id = await client.enqueue("stamp", {}, delay_s=0.5)
    st = await client.status(job_id)
    assert st.state == "scheduled" and st.not_before_ms is not None
    assert await redis.zcard(keys.delayed("default")) == 1
    await Worker(redis, reg, burst=True, settings=FAST).run()
    assert ran_at and ran_at[0] - before >= 500


async def test_timeout_is_a_failure_that_retries(redis: Redis) -> None:
    reg = Registry()
    runs: list[int] = []

    @reg.task(queue="default", timeout_s=0.1, max_retries=1, backoff_base_s=0.01)
    async def hangs(ctx: Context[Any], payload: dict[str, Any]) -> None:
        runs.append(ctx.attempt)
        await asyncio.sleep(30)

    client = Client(redis, reg)
    job_id = await client.enqueue("hangs", {})
    await Worker(redis, reg, burst=True, settings=FAST).run()
    assert runs == [1, 2]
    dead = await DeadLetters(redis).find(["default"], job_id)
    assert dead is not None and dead.job is not None
    assert [e.type for e in dead.job.errors] == ["TimeoutError", "TimeoutError"]


async def test_invalid_payload_in_worker_dead_letters_with_errors(redis: Redis) -> None:
    """A payload the model rejects (enqueued by a client without the registry) is dead-lettered
    at once, naming the fields."""
    job_id = await Client(redis).enqueue("greet", {"times": "many"})
    await Worker(redis, core_tasks.registry, burst=True, settings=FAST).run()
    dead = await DeadLetters(redis).find(["default"], job_id)
    assert dead is not None
    assert "name: Field required" in dead.reason and "times:" in dead.reason


async def test_unknown_task_in_worker_dead_letters(redis: Redis) -> None:
    job_id = await Client(redis).enqueue("no_such_task", {})
    await Worker(redis, core_tasks.registry, burst=True, settings=FAST, queues=["default"]).run()
    dead = await DeadLetters(redis).find(["default"], job_id)
    assert dead is not None and "unknown task 'no_such_task'" in dead.reason


async def test_malformed_entries_dead_lettered_and_work_continues(redis: Redis) -> None:
    client = Client(redis, core_tasks.registry)
    consumer = Consumer(redis, "setup", ["default"])
    await consumer.ensure_group("default")
    await redis.xadd(keys.stream("default"), {"j": b"{not json"})
    await redis.xadd(keys.stream("default"), {"other": b"x"})
    # A job id with a tab or newline would break the ack's tab-separated record: refused at
    # decode, in both envelope forms, instead of running and never being acked.
    tabbed = b'["a\\tb","record",{}]'
    newline = b'{"id":"a\\nb","task":"record","payload":{}}'
    await redis.xadd(keys.stream("default"), {"j": tabbed})
    await redis.xadd(keys.stream("default"), {"j": newline})
    ok = await client.enqueue("record", {})
    await Worker(redis, core_tasks.registry, burst=True, settings=FAST).run()
    rows = await DeadLetters(redis).list(["default"])
    assert len(rows) == 4 and all(r.reason.startswith("malformed entry") for r in rows)
    assert sorted(r.raw for r in rows) == sorted([b"", b"{not json", tabbed, newline])
    assert await redis.xpending(keys.stream("default"), keys.GROUP) == {  # nothing left pending
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }
    assert (await client.status(ok)).state == "succeeded"


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_read_finds_the_envelope_wherever_the_entry_keeps_it(
    redis: Redis, redis_url: str, protocol: int
) -> None:
    """Given entries written by hand: the envelope first, after another field, empty, missing.
    When the worker's consumer reads them (without a script, over RESP2 and RESP3)
    Then each comes back in stream order with its envelope, or with none where it has none
    (the worker dead-letters those), and the read holds every one of them pending."""
    if protocol == 3 and isinstance(redis, RedisCluster):
        pytest.skip("the cluster client is built by connect_redis with its own protocol")
    stream = keys.stream("default")
    setup = Consumer(redis, "setup", ["default"])
    await setup.ensure_group("default")
    written = [
        await redis.xadd(stream, {"j": b"first"}),
        await redis.xadd(stream, {"x": b"1", "j": b"second"}),
        await redis.xadd(stream, {"j": b""}),
        await redis.xadd(stream, {"other": b"x"}),
    ]
    client = redis
    if protocol == 3:
        sep = "&" if "?" in redis_url else "?"
        client = await connect_redis(f"{redis_url}{sep}protocol=3")
    try:
        consumer = Consumer(client, "c1", ["default"])
        entries = await consumer.read_available(["default"], 10)
        assert await consumer.read_available(["default"], 10) == []  # nothing new is left
    finally:
        if client is not redis:
            await client.aclose()
    assert [e.entry_id for e in entries] == [w.decode() for w in written]
    assert [e.body for e in entries] == [b"first", b"second", None, None]
    assert {e.queue for e in entries} == {"default"}
    assert (await redis.xpending(stream, keys.GROUP))["pending"] == 4


async def test_an_error_outside_the_handler_leaves_the_entry_pending_and_is_logged(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a worker whose runner fails around the handler, not in it: a rate-limit gate that
    cannot reach Redis, or any other error
    When those jobs are read, with a good one after them
    Then each is logged by task and id, its entry stays pending (not acked, not dead-lettered:
    it runs again after its lease), and the worker goes on to the good job."""
    caplog.set_level(logging.WARNING, logger="qrunner.worker")
    client = Client(redis, core_tasks.registry)
    async with running_worker(redis, core_tasks.registry) as worker:
        real = worker.runner.run

        async def run(entry: Any, job: Any) -> Any:
            if job.payload["tag"] == "broken":
                raise RuntimeError("the runner broke")
            if job.payload["tag"] == "gate":
                raise ConnectionLost("the gate's Redis is unreachable")
            return await real(entry, job)

        worker.runner.run = run  # type: ignore[method-assign]
        broken = await client.enqueue("record", {"tag": "broken"})
        gate = await client.enqueue("record", {"tag": "gate"})
        good = await client.enqueue("record", {"tag": "ok"})

        async def good_done() -> bool:
            return (await client.status(good)).state == "succeeded"

        await wait_for(good_done, what="the good job to succeed")
        pending = await redis.xpending(keys.stream("default"), keys.GROUP)
        assert pending["pending"] == 2
        assert (await client.status(broken)).state == "running"
        assert (await client.status(gate)).state == "running"
    assert await redis.lrange("log:default", 0, -1) == [good.encode()]
    assert await DeadLetters(redis).list(["default"]) == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and f"record {broken}: unexpected error" in errors[0].getMessage()
    assert "RuntimeError: the runner broke" in errors[0].getMessage()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"record {gate}: could not be admitted" in m for m in warned)


async def test_graceful_shutdown_finishes_in_flight_jobs(redis: Redis) -> None:
    """Given 5 running jobs and more queued, when stop is set, the running ones finish, the rest
    stay queued, and the worker returns."""
    client = Client(redis, core_tasks.registry)
    ids = await client.enqueue_many([("slow", {"seconds": 0.5}) for _ in range(20)])
    worker = Worker(redis, core_tasks.registry, settings=FAST, concurrency=5, queues=["crash"])
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await wait_for(lambda: _llen_at_least(redis, "started", 5), what="5 started")
    stop.set()
    await asyncio.wait_for(task, 10)
    started = {x.decode() for x in await redis.lrange("started", 0, -1)}
    finished = {x.decode() for x in await redis.lrange("finished", 0, -1)}
    assert started == finished and len(started) == 5
    states = [(await client.status(i)).state for i in ids]
    assert states.count("succeeded") == 5 and states.count("queued") == 15
    assert await redis.xlen(keys.stream("crash")) == 15


async def _llen_at_least(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.llen(key)) >= n  # type: ignore[misc]


async def test_grace_period_over_leaves_entry_pending_for_reclaim(redis: Redis) -> None:
    """A job still running when the grace period ends is cancelled; its entry stays pending and
    another worker reclaims and finishes it."""
    reg = Registry()

    @reg.task(queue="default", max_retries=0)
    async def stubborn(ctx: Context[Any], payload: dict[str, Any]) -> str:
        if ctx.deliveries == 1:
            await asyncio.sleep(60)
        return f"delivery {ctx.deliveries}"

    client = Client(redis, reg)
    job_id = await client.enqueue("stubborn", {})
    settings = FAST.model_copy(update={"grace_s": 0.2})
    worker = Worker(redis, reg, settings=settings)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await wait_for(lambda: _state_is(client, job_id, "running"), what="running")
    stop.set()
    await asyncio.wait_for(task, 10)
    pending = await redis.xpending(keys.stream("default"), keys.GROUP)
    assert pending["pending"] == 1
    await Worker(redis, reg, burst=True, settings=FAST).run()
    st = await client.status(job_id)
    assert st.state == "succeeded" and st.result == "delivery 2"


async def _state_is(client: Client, job_id: str, state: str) -> bool:
    return (await client.status(job_id)).state == state


async def test_zombie_late_ack_is_refused(redis: Redis) -> None:
    """Given an entry read by A and reclaimed by B after A's lease lapsed, A's ack, retry and
    dead-letter are all refused and B's claim survives; B's ack succeeds."""
    client = Client(redis, core_tasks.registry)
    job_id = await client.enqueue("record", {})
    a = Consumer(redis, "A", ["default"])
    b = Consumer(redis, "B", ["default"])
    await a.ensure_group("default")
    [entry] = await a.read_available(["default"], 10)
    [stolen] = await b.reclaim("default", lease_ms=0, count=10)
    assert stolen.entry_id == entry.entry_id and stolen.deliveries == 2
    from qrunner.consumer import Completion, Finish

    done = [Completion(entry.entry_id, job_id, 1, b"")]
    assert await a.ack("default", done, 60_000) == [Finish.NOT_OWNER]
    assert (
        await a.reschedule(
            entry, job_id, b"{}", 0, state="retrying", attempt=2, status_ttl_ms=60_000
        )
        is Finish.NOT_OWNER
    )
    assert (
        await a.deadletter(entry, job_id, b"{}", "x", task="record", status_ttl_ms=60_000)
        is Finish.NOT_OWNER
    )
    assert await redis.xlen(keys.stream("default")) == 1
    assert await a.extend("default", [entry.entry_id]) == [(entry.entry_id, Finish.NOT_OWNER)]
    assert await b.ack("default", done, 60_000) == [Finish.DONE]
    assert await redis.xlen(keys.stream("default")) == 0
    # A retried ack (its first reply lost) finds the entry gone, not refused.
    assert await b.ack("default", done, 60_000) == [Finish.GONE]


async def test_long_job_keeps_its_lease(redis: Redis) -> None:
    """A job running for 3 leases is not stolen by another worker's reclaim loop: it runs once."""
    reg = Registry()
    runs: list[int] = []

    @reg.task(queue="default", max_retries=0)
    async def long(ctx: Context[Any], payload: dict[str, Any]) -> None:
        runs.append(ctx.deliveries)
        await asyncio.sleep(3.0)

    client = Client(redis, reg)
    job_id = await client.enqueue("long", {})
    async with running_worker(redis, reg, name="thief"):
        await Worker(redis, reg, burst=True, settings=FAST, name="owner").run()
    assert runs == [1]
    assert (await client.status(job_id)).state == "succeeded"


async def test_poison_job_dead_lettered_after_max_deliveries(redis: Redis) -> None:
    """An entry already delivered max_deliveries times (its workers crashed) is dead-lettered
    when reclaimed, and does not block the queue."""
    reg = Registry()

    @reg.task(queue="default", max_deliveries=2)
    async def crashes(ctx: Context[Any], payload: dict[str, Any]) -> None:
        raise AssertionError("must not run a poison job again")

    @reg.task(queue="default")
    async def fine(ctx: Context[Any], payload: dict[str, Any]) -> str:
        return "ok"

    client = Client(redis, reg)
    poison = await client.enqueue("crashes", {})
    ghost1 = Consumer(redis, "ghost1", ["default"])
    await ghost1.ensure_group("default")
    await ghost1.read_available(["default"], 1)  # delivery 1, then "crash"
    await Consumer(redis, "ghost2", ["default"]).reclaim("default", 0, 1)  # delivery 2, "crash"
    other = await client.enqueue("fine", {})
    rec = Recorder()
    await Worker(redis, reg, burst=True, settings=FAST, observer=rec).run()
    dead = await DeadLetters(redis).find(["default"], poison)
    assert dead is not None and "poison job: delivered 3 times" in dead.reason
    assert (await client.status(other)).state == "succeeded"
    assert rec.redelivered == 1


async def _flush_alarms_node_first(redis: Redis) -> None:
    """FLUSHALL; on a cluster, the node holding the alarm stream first. A cluster flushes node by
    node, and a worker that found its stream gone on a node flushed early could write its alarm
    to a node not yet flushed, where the rest of the FLUSHALL then removed it."""
    if not isinstance(redis, RedisCluster):
        await redis.flushall()
        return
    first = redis.get_node_from_key(keys.alarms())
    await redis.execute_command("FLUSHALL", target_nodes=first)
    rest = [n for n in redis.get_primaries() if n.name != first.name]
    if rest:
        await redis.execute_command("FLUSHALL", target_nodes=rest)


@pytest.mark.needs_admin
async def test_flushall_under_running_worker_recovers_and_alarms(redis: Redis) -> None:
    client = Client(redis, core_tasks.registry)
    rec = Recorder()
    async with running_worker(redis, core_tasks.registry, observer=rec, queues=["default"]):
        first = await client.enqueue("record", {})
        await wait_for(lambda: _state_is(client, first, "succeeded"), what="first job")
        await _flush_alarms_node_first(redis)
        client._known_queues.clear()
        second = await client.enqueue("record", {})
        await wait_for(lambda: _state_is(client, second, "succeeded"), what="job after FLUSHALL")
    assert rec.recreated == ["default"]
    alarms = await redis.xrange(keys.alarms())
    assert alarms and alarms[0][1][b"kind"] == b"group_recreated"


async def test_lost_lease_cancels_the_local_run(redis: Redis) -> None:
    """When another consumer takes an entry this worker holds, the lease loop notices and
    cancels the local run instead of letting two copies continue."""
    reg = Registry()
    cancelled = asyncio.Event()

    @reg.task(queue="default", max_retries=0)
    async def waits(ctx: Context[Any], payload: dict[str, Any]) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    client = Client(redis, reg)
    job_id = await client.enqueue("waits", {})
    async with running_worker(redis, reg):
        await wait_for(lambda: _state_is(client, job_id, "running"), what="running")
        await Consumer(redis, "intruder", ["default"]).reclaim("default", 0, 1)
        await asyncio.wait_for(cancelled.wait(), 5)
    pending = await redis.xpending_range(keys.stream("default"), keys.GROUP, "-", "+", 10)
    assert [p["consumer"] for p in pending] == [b"intruder"]


class Model(BaseModel):
    n: int


async def test_result_that_is_not_json_is_stored_as_repr(redis: Redis) -> None:
    reg = Registry()

    @reg.task(queue="default")
    async def odd(ctx: Context[Any], payload: dict[str, Any]) -> object:
        return {1, 2}

    job_id = await Client(redis, reg).enqueue("odd", {})
    await Worker(redis, reg, burst=True, settings=FAST).run()
    st = await Client(redis, reg).status(job_id)
    assert st.result == "{1, 2}"


async def test_replay_from_dlq_runs_again_with_history(redis: Redis) -> None:
    reg = Registry()
    calls: list[int] = []

    @reg.task(queue="default", max_retries=0)
    async def once_bad(ctx: Context[Any], payload: dict[str, Any]) -> str:
        calls.append(len(ctx.job.errors))
        if len(calls) == 1:
            raise Permanent("first time fails")
        return "fixed"

    client = Client(redis, reg)
    job_id = await client.enqueue("once_bad", {})
    await Worker(redis, reg, burst=True, settings=FAST).run()
    dl = DeadLetters(redis)
    assert await dl.replay(["default"], ident=job_id) == (1, 0)
    assert await redis.xlen(keys.dlq("default")) == 0
    await Worker(redis, reg, burst=True, settings=FAST).run()
    assert calls == [0, 1]
    assert (await client.status(job_id)).result == "fixed"


async def test_a_batched_ack_judges_each_entry_on_its_own(redis: Redis) -> None:
    """One ack call for many entries (the script looks ownership up for the whole batch at
    once): each entry is acked only while this consumer owns it, one another consumer claimed
    is refused, one already acked is gone, whatever their order in the batch, and entries of
    this consumer outside the batch stay pending."""
    from qrunner.consumer import Completion, Finish

    client = Client(redis, core_tasks.registry)
    ids = await client.enqueue_many([("record", {"i": i}) for i in range(100)])
    a = Consumer(redis, "A", ["default"])
    await a.ensure_group("default")
    entries = await a.read_available(["default"], 100)
    assert len(entries) == 100
    done = {
        e.entry_id: Completion(e.entry_id, job_id, 1, b"")
        for e, job_id in zip(entries, ids, strict=True)
    }
    eids = [e.entry_id for e in entries]
    # B takes over two of A's entries; A has already acked a third.
    await redis.xclaim(keys.stream("default"), keys.GROUP, "B", 0, [eids[3], eids[97]])
    assert await a.ack("default", [done[eids[50]]], 60_000) == [Finish.DONE]
    # The batch spans the whole range (first and last entries), in no particular order, so
    # A's other pending entries in that range outnumber what one look-up returns.
    batch = [eids[99], eids[3], eids[0], eids[50], eids[97], eids[1], eids[98], eids[2]]
    assert await a.ack("default", [done[e] for e in batch], 60_000) == [
        Finish.DONE,
        Finish.NOT_OWNER,
        Finish.DONE,
        Finish.GONE,
        Finish.NOT_OWNER,
        Finish.DONE,
        Finish.DONE,
        Finish.DONE,
    ]
    pending = await redis.xpending_range(keys.stream("default"), keys.GROUP, "-", "+", 200)
    still = {p["message_id"].decode(): p["consumer"].decode() for p in pending}
    assert still == {
        **{e: "A" for e in eids if e not in batch and e != eids[50]},
        eids[3]: "B",
        eids[97]: "B",
    }


async def test_acked_entries_leave_the_stream_and_no_other_does(redis: Redis) -> None:
    """Acked entries are trimmed from the stream a node at a time where they can be: an entry
    still running (another consumer's, older than the batch) keeps itself and every acked entry
    above it from the trim, and those are deleted one by one instead; entries not yet delivered
    are never touched, with and without anything pending."""
    from qrunner.consumer import Completion, Finish

    client = Client(redis, core_tasks.registry)
    ids = await client.enqueue_many([("record", {"i": i}) for i in range(300)])
    stream = keys.stream("default")
    queued = [eid.decode() for eid, _ in await redis.xrange(stream, "-", "+")]
    a = Consumer(redis, "A", ["default"])
    await a.ensure_group("default")
    entries = await a.read_available(["default"], 120)
    done = {
        e.entry_id: Completion(e.entry_id, job_id, 1, b"")
        for e, job_id in zip(entries, ids[:120], strict=True)
    }
    eids = [e.entry_id for e in entries]
    # B runs entry 10 (older than what A acks first); A acks 0-9 and 11-59.
    await redis.xclaim(stream, keys.GROUP, "B", 0, [eids[10]])
    first = [eids[i] for i in range(60) if i != 10]
    assert await a.ack("default", [done[e] for e in first], 60_000) == [Finish.DONE] * 59
    left = [eid.decode() for eid, _ in await redis.xrange(stream, "-", "+")]
    assert left[:61] == eids[10:11] + eids[60:120]  # B's entry, then A's 60 still running
    assert len(left) == 300 - 59
    # Nothing of A's older than its batch is pending now, and B's entry is still running:
    # A's second batch is below no pending entry but B's.
    assert await a.ack("default", [done[e] for e in eids[60:120]], 60_000) == [Finish.DONE] * 60
    b = Consumer(redis, "B", ["default"])
    assert await b.ack("default", [done[eids[10]]], 60_000) == [Finish.DONE]
    left = [eid.decode() for eid, _ in await redis.xrange(stream, "-", "+")]
    assert left == queued[120:]  # the 180 never delivered, all there
    # With nothing pending at all, the bound is just past A's newest acked entry.
    more = await a.read_available(["default"], 100)
    more_done = [Completion(e.entry_id, f"x{i}", 1, b"") for i, e in enumerate(more)]
    assert await a.ack("default", more_done, 60_000) == [Finish.DONE] * 100
    assert [eid.decode() for eid, _ in await redis.xrange(stream, "-", "+")] == left[100:]
    assert await redis.xpending(stream, keys.GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }
    [row] = await client.stats(["default"])
    assert (row.depth, row.pending) == (80, 0)


async def test_envelope_is_json_never_pickle(redis: Redis) -> None:
    job_id = await Client(redis, core_tasks.registry).enqueue("record", {"x": 1})
    [(_, fields)] = await redis.xrange(keys.stream("default"))
    # A first attempt added to its queue's stream at once: attempt, time and queue are implied
    # by the entry and the stream, and the rest is the compact [id, task, payload] (job.py).
    assert orjson.loads(fields[b"j"]) == [job_id, "record", {"x": 1}]


@pytest.mark.parametrize("n", [1, 7])
async def test_stats_counts(redis: Redis, n: int) -> None:
    client = Client(redis, core_tasks.registry)
    await client.enqueue_many([("record", {}) for _ in range(n)])
    await client.enqueue("record", {}, delay_s=60)
    [row] = [s for s in await client.stats() if s.queue == "default"]
    assert (row.depth, row.pending, row.delayed, row.dead) == (n, 0, 1, 0)


@pytest.mark.needs_admin
async def test_status_records_can_be_turned_off(redis: Redis) -> None:
    """With status_ttl_s=0 no job status record is written at enqueue, start or finish (less
    Redis memory per queued job), and jobs still run and ack."""

    client = Client(redis, core_tasks.registry, status_ttl_s=0)
    ids = await client.enqueue_many([("record", {}) for _ in range(20)])
    assert not await redis.keys(keys.job_prefix("default") + "*")
    settings = FAST.model_copy(update={"status_ttl_s": 0})
    await Worker(redis, core_tasks.registry, burst=True, settings=settings).run()
    assert sorted(x.decode() for x in await redis.lrange("log:default", 0, -1)) == sorted(ids)
    assert not await redis.keys(keys.job_prefix("default") + "*")
    assert await redis.xlen(keys.stream("default")) == 0
