"""A key qrunner owns holding another type of value (something else writes under ``qr:``):
Redis answers WRONGTYPE, which is a KeyConflict naming the queue and its keys. An enqueue
raises it at once and writes nothing; a worker refuses to start on it; a worker already running
keeps serving its other queues, the jobs it read before the failing queue included."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
import redis as sync_redis
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from qrunner import Client, Context, JobSpec, Registry, SyncClient, keys
from qrunner.consumer import Consumer
from qrunner.errors import ConnectionLost, KeyConflict
from qrunner.faults import classify, translated
from qrunner.metrics import Metrics
from qrunner.settings import Settings
from qrunner.worker import Worker
from tests.helpers.script_sends import count_enqueue_sends
from tests.test_cli import qrunner
from tests.test_dashboard import BEARER, TOKEN, endpoint
from tests.worker_fixtures import running_worker

ODD = "odd"
ran: dict[str, asyncio.Event] = {}

registry = Registry()


@registry.task(queue="good", max_retries=0)
async def good_job(ctx: Context[Any], payload: dict[str, Any]) -> None:
    ran[payload["tag"]].set()


@registry.task(queue=ODD, max_retries=0)
async def odd_job(ctx: Context[Any], payload: dict[str, Any]) -> None:
    ran[payload["tag"]].set()


gates: dict[str, asyncio.Event] = {}


@registry.task(queue="good", max_retries=0, timeout_s=60)
async def held_good(ctx: Context[Any], payload: dict[str, Any]) -> None:
    ran[payload["tag"]].set()
    await gates[payload["tag"]].wait()


@registry.task(queue=ODD, max_retries=0, timeout_s=60)
async def held_odd(ctx: Context[Any], payload: dict[str, Any]) -> None:
    ran[payload["tag"]].set()
    await gates[payload["tag"]].wait()


def expect(tag: str) -> asyncio.Event:
    ran[tag] = asyncio.Event()
    return ran[tag]


def assert_names_the_queue(conflict: KeyConflict) -> None:
    text = str(conflict)
    assert conflict.queue == ODD
    assert f"queue '{ODD}'" in text and f"{keys.stream(ODD)} (stream)" in text
    assert "\n" not in text


async def break_queue(redis: Redis) -> None:
    await redis.delete(keys.stream(ODD))
    await redis.set(keys.stream(ODD), "not a stream")


async def test_wrongtype_is_a_key_conflict_named_by_the_translating_block(redis: Redis) -> None:
    await redis.set("k", "a string")
    with pytest.raises(Exception) as raw:
        await redis.lpush("k", "x")
    assert isinstance(classify(raw.value), KeyConflict)
    with pytest.raises(KeyConflict) as named:
        async with translated(ODD):
            await redis.lpush("k", "x")
    assert_names_the_queue(named.value)


async def test_an_enqueue_onto_a_conflicting_key_raises_once_and_writes_nothing(
    redis: Redis,
) -> None:
    await break_queue(redis)
    client = Client(redis, registry)
    sends = count_enqueue_sends(client)
    with pytest.raises(KeyConflict) as single:
        await client.enqueue("odd_job", {"tag": "never"})
    assert_names_the_queue(single.value)
    assert sends == [1]  # never retried: waiting cannot fix it
    assert await redis.get(keys.stream(ODD)) == b"not a stream"
    assert not await redis.exists(keys.live(ODD), keys.delayed(ODD))


async def test_a_bulk_enqueue_names_the_conflicting_queue(redis: Redis) -> None:
    await break_queue(redis)
    client = Client(redis, registry)
    with pytest.raises(KeyConflict) as bulk:
        await client.enqueue_many(
            [JobSpec("good_job", {"tag": "g"}), JobSpec("odd_job", {"tag": "o"})]
        )
    assert_names_the_queue(bulk.value)
    assert not await redis.exists(keys.live(ODD))


async def test_the_sync_client_raises_the_same_key_conflict(redis: Redis, redis_url: str) -> None:
    await break_queue(redis)
    client = SyncClient(sync_redis.Redis.from_url(redis_url), registry)
    try:
        with pytest.raises(KeyConflict) as single:
            await asyncio.to_thread(client.enqueue, "odd_job", {"tag": "never"})
        assert_names_the_queue(single.value)
        with pytest.raises(KeyConflict) as bulk:
            await asyncio.to_thread(client.enqueue_many, [("odd_job", {"tag": "never"})])
        assert_names_the_queue(bulk.value)
    finally:
        client.close()
    assert await redis.get(keys.stream(ODD)) == b"not a stream"


def test_the_cli_enqueue_says_so_in_one_line_and_exits_1(redis_url: str) -> None:
    sync_redis.Redis.from_url(redis_url).set(keys.stream("default"), "not a stream")
    out = qrunner(
        "enqueue", "record", "--handlers", "tests.helpers.core_tasks", redis_url=redis_url
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "queue 'default'" in lines[0] and "WRONGTYPE" in lines[0]


async def test_a_worker_refuses_to_start_on_a_conflicting_key(redis: Redis) -> None:
    await break_queue(redis)
    worker = Worker(redis, registry, queues=["good", ODD], settings=Settings(block_ms=100))
    with pytest.raises(KeyConflict) as refused:
        await asyncio.wait_for(worker.run(), 10)
    assert_names_the_queue(refused.value)


def test_the_cli_worker_says_so_in_one_line_and_exits_1(redis_url: str) -> None:
    sync_redis.Redis.from_url(redis_url).set(keys.stream("default"), "not a stream")
    out = qrunner(
        "worker",
        "--handlers",
        "tests.helpers.core_tasks",
        "--burst",
        "--no-cron",
        redis_url=redis_url,
    )
    assert out.returncode == 1
    assert "queue 'default'" in out.stderr and "WRONGTYPE" in out.stderr


async def test_a_read_that_fails_on_one_queue_keeps_what_the_others_gave(redis: Redis) -> None:
    """Read in one call across queues, the failing queue's fault is handed back with the
    entries already read; without a list to hand it to, it is raised."""
    client = Client(redis, registry)
    await client.enqueue("good_job", {"tag": "g"})
    consumer = Consumer(redis, "c1", ["good", ODD])
    for q in ("good", ODD):
        await consumer.ensure_group(q)
    await break_queue(redis)
    faults: list[tuple[str, Any]] = []
    entries = await consumer.read_available(["good", ODD], 10, faults)
    assert [e.queue for e in entries] == ["good"]
    assert [q for q, _ in faults] == [ODD] and isinstance(faults[0][1], KeyConflict)
    with pytest.raises(KeyConflict):
        await consumer.read_available([ODD], 10)


async def test_a_connection_lost_mid_read_keeps_what_was_read_and_tries_no_further(
    redis: Redis,
) -> None:
    """Lost after the first queue gave entries: they come back with the fault, and the queues
    after it are not tried (each would only add its own timeout). Lost on the first queue:
    raised, as before."""
    client = Client(redis, registry)
    await client.enqueue("good_job", {"tag": "g"})
    consumer = Consumer(redis, "c1", ["good", ODD, "third"])
    for q in ("good", ODD, "third"):
        await consumer.ensure_group(q)
    fetched: list[str] = []
    real = consumer._read_one

    async def lost_after_first(queue: str, count: int) -> Any:
        fetched.append(keys.stream(queue))
        if len(fetched) > 1:
            raise ConnectionLost("reset")
        return await real(queue, count)

    consumer._read_one = lost_after_first  # type: ignore[method-assign]
    faults: list[tuple[str, Any]] = []
    entries = await consumer.read_available(["good", ODD, "third"], 10, faults)
    assert [e.queue for e in entries] == ["good"]
    assert [q for q, _ in faults] == [ODD] and isinstance(faults[0][1], ConnectionLost)
    assert fetched == [keys.stream("good"), keys.stream(ODD)]  # "third" never tried
    fetched.append("skip the first")
    with pytest.raises(ConnectionLost):
        await consumer.read_available(["good"], 10, [])


async def test_a_running_worker_serves_its_other_queues_while_one_conflicts(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The lease is long, so a job read before the failing queue and then dropped could only
    run after a minute, when the reclaimer took it back: it runs at once."""
    client = Client(redis, registry)
    settings = Settings(lease_ms=60_000, reclaim_interval_ms=200, block_ms=100, grace_s=5)
    caplog.set_level(logging.WARNING, logger="qrunner.worker")
    async with running_worker(redis, registry, settings=settings, queues=["good", ODD]):
        first = expect("before")
        await client.enqueue("odd_job", {"tag": "before"})
        await asyncio.wait_for(first.wait(), 10)
        await break_queue(redis)
        for i in range(3):
            done = expect(f"good{i}")
            await client.enqueue("good_job", {"tag": f"good{i}"})
            await asyncio.wait_for(done.wait(), 10)
        reports = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.ERROR and "read failed on queue 'odd'" in r.getMessage()
        ]
        assert len(reports) == 1  # once, not once per read
        await redis.delete(keys.stream(ODD))  # the operator removes the odd key
        after = expect("after")
        await client.enqueue("odd_job", {"tag": "after"})
        await asyncio.wait_for(after.wait(), 10)
    assert await redis.xlen(keys.stream("good")) == 0


async def test_jobs_running_on_other_queues_keep_their_leases_and_are_acked(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """One job runs on each queue when the odd queue's stream is replaced by a string. The
    odd queue comes first, so before, its failing renewal ended every round of the lease loop
    and the good job's lease lapsed (another worker would have run it again), and its failing
    ack held up the good job's ack for good."""
    client = Client(redis, registry)
    lease_ms = 1000
    settings = Settings(lease_ms=lease_ms, reclaim_interval_ms=200, block_ms=100, grace_s=5)
    caplog.set_level(logging.WARNING)
    for tag in ("g", "o"):
        gates[tag] = asyncio.Event()
    started = [expect("g"), expect("o")]
    async with running_worker(redis, registry, settings=settings, queues=[ODD, "good"]) as w:
        await client.enqueue("held_odd", {"tag": "o"})
        await client.enqueue("held_good", {"tag": "g"})
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 10)
        await break_queue(redis)
        loop = asyncio.get_running_loop()
        until = loop.time() + 3 * lease_ms / 1000  # three leases: renewed, or lapsed
        while loop.time() < until:
            [pending] = await redis.xpending_range(keys.stream("good"), keys.GROUP, "-", "+", 1)
            assert pending["consumer"].decode() == w.name
            assert pending["time_since_delivered"] < lease_ms, "the good job's lease lapsed"
            await asyncio.sleep(0.1)
        thief = Consumer(redis, "thief", ["good"])
        assert await thief.reclaim("good", lease_ms, 10) == []
        gates["o"].set()
        gates["g"].set()
        loop_deadline = loop.time() + 10
        while await redis.xlen(keys.stream("good")):  # acked entries are deleted
            assert loop.time() < loop_deadline, "the good job was never acked"
            await asyncio.sleep(0.05)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("lease renewal failed on queue 'odd'" in m for m in errors)
    assert any("could not be acked" in m and ODD in m for m in errors)


async def test_stats_show_a_conflicting_queue_beside_the_others(redis: Redis) -> None:
    """``qrunner stats``, the metrics and the dashboard all read Client.stats: one queue with
    a key of another type used to fail the whole read (a traceback, every gauge gone)."""
    client = Client(redis, registry)
    await client.enqueue("good_job", {"tag": "g"})
    await client.enqueue("odd_job", {"tag": "o"})
    await break_queue(redis)
    rows = {r.queue: r for r in await client.stats()}
    assert rows["good"].depth == 1 and rows["good"].problem is None
    assert "problem" not in rows["good"].to_dict()
    odd = rows[ODD]
    assert odd.problem is not None and f"queue '{ODD}'" in odd.problem
    assert (odd.depth, odd.pending, odd.delayed, odd.dead) == (0, 0, 0, 0)
    assert odd.to_dict()["problem"] == odd.problem

    metrics = Metrics()
    await metrics.refresh(client)
    text = metrics.exposition().decode()
    assert "qrunner_redis_up 1.0" in text
    assert 'qrunner_queue_depth{queue="good"} 1.0' in text
    assert f'qrunner_queue_depth{{queue="{ODD}"}}' not in text
    assert f'qrunner_queue_key_conflict{{queue="{ODD}"}} 1.0' in text

    async with TestClient(TestServer(endpoint(redis, TOKEN))) as http:
        page = await (await http.get("/dashboard/", headers=BEARER)).text()
    assert "cannot be read" in page and 'data-queue="good"' in page


def test_the_cli_stats_lists_every_queue_and_exits_1_on_a_conflict(redis_url: str) -> None:
    sync = sync_redis.Redis.from_url(redis_url)
    sync.sadd(keys.queues_set(), "default", ODD)
    sync.set(keys.stream(ODD), "not a stream")
    table = qrunner("stats", redis_url=redis_url)
    assert table.returncode == 1 and table.stderr == ""
    lines = table.stdout.splitlines()
    assert any(line.startswith("default ") for line in lines)
    assert any(line.startswith(ODD) and "cannot be read" in line for line in lines)
    as_json = qrunner("stats", "--json", redis_url=redis_url)
    rows = {r["queue"]: r for r in orjson.loads(as_json.stdout)}
    assert "problem" not in rows["default"] and "WRONGTYPE" in rows[ODD]["problem"]


def test_any_cli_command_meeting_a_conflict_says_so_in_one_line(redis_url: str) -> None:
    """A command with no handling of its own for the fault (here ``dlq list`` over a
    dead-letter key that holds a string) prints one line naming the queue, no traceback."""
    sync = sync_redis.Redis.from_url(redis_url)
    sync.sadd(keys.queues_set(), ODD)
    sync.set(keys.dlq(ODD), "not a stream")
    out = qrunner("dlq", "list", redis_url=redis_url)
    assert out.returncode == 1
    [line] = out.stderr.strip().splitlines()
    assert f"queue '{ODD}'" in line and f"{keys.dlq(ODD)} (stream)" in line


async def test_the_http_api_answers_a_conflict_with_a_409_json_body(redis: Redis) -> None:
    await redis.sadd(keys.queues_set(), ODD)
    await break_queue(redis)
    async with TestClient(TestServer(endpoint(redis, TOKEN))) as http:
        jobs = await http.get(f"/api/queues/{ODD}/jobs", headers=BEARER)
        assert jobs.status == 409
        assert "WRONGTYPE" in (await jobs.json())["error"]
        queues = await http.get("/api/queues", headers=BEARER)
        assert queues.status == 200
        rows = {r["queue"]: r for r in await queues.json()}
        assert "WRONGTYPE" in rows[ODD]["problem"]
        assert all("problem" not in r for q, r in rows.items() if q != ODD)


async def test_a_vanished_group_is_recreated_past_a_conflicting_queue(redis: Redis) -> None:
    """The odd queue comes first in the worker's list. Recreating groups after the good
    queue's stream vanished used to stop at the odd queue's failure, every time, so the good
    queue's group never came back and its jobs never ran."""
    client = Client(redis, registry)
    async with running_worker(redis, registry, queues=[ODD, "good"]):
        warm = expect("warm")
        await client.enqueue("good_job", {"tag": "warm"})
        await asyncio.wait_for(warm.wait(), 10)
        await break_queue(redis)
        await redis.delete(keys.stream("good"))  # the good queue's data is lost (a flush)
        after = expect("after")
        await client.enqueue("good_job", {"tag": "after"})
        await asyncio.wait_for(after.wait(), 10)
