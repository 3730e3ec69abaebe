"""Least-privilege Redis users (docs/redis-acl.md) against a real server.

The users are created with the exact lines of that page (the first test checks the page still
holds them) on a private server of the binary under test, so neither the users nor the ACL log
touch the shared session server. Each scenario then checks the server's ``ACL LOG``: a command
refused inside a script's ``redis.pcall`` can pass unnoticed otherwise, so "it worked" is not
enough; nothing may have been refused that the test did not try on purpose.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from qrunner_devservers.embedded import RedisProcess
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from qrunner import Client, Context, Permanent, RateLimited, Registry, keys
from qrunner.admission import TokenBucketGate
from qrunner.clock import RedisClock
from qrunner.consumer import Consumer
from qrunner.deadletter import DeadLetters
from qrunner.errors import NotReplicated
from qrunner.runtime import connect_redis, warn_on_eviction_policy
from qrunner.scheduler import Scheduler, describe_live
from qrunner.schedules import Schedule
from qrunner.worker import Worker
from tests.cluster_support import LocalCluster
from tests.conftest import server_binary_under_test
from tests.worker_fixtures import FAST

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "redis-acl.md"

# The lines of docs/redis-acl.md, verbatim (test_the_page_holds_the_tested_lines).
WORKER_LINE = (
    "ACL SETUSER qrunner-worker reset on >WORKER_PASSWORD ~qr:* resetchannels -@all +ping +select"
    " +time +evalsha +eval +script|load +xadd +xreadgroup +xack +xdel +xtrim +xlen +xrange"
    " +xpending +xclaim +xautoclaim +xinfo|groups +xinfo|consumers +xgroup|create"
    " +xgroup|delconsumer +zadd"
    " +zrange +zrangebyscore +zrem +zremrangebyscore +zremrangebyrank +zcount +zcard +zscore +hset"
    " +hget +hmget +hgetall +hdel +hlen +hexists +hincrby +sadd +smembers +get +set +exists"
    " +pexpire +pttl +xinfo|stream +hsetnx +srem +scard +rpush +lpop +llen +ltrim +lrange +del"
)
PRODUCER_LINE = (
    "ACL SETUSER qrunner-producer reset on >PRODUCER_PASSWORD ~qr:* resetchannels -@all +ping"
    " +select +evalsha +script|load +sadd +smembers +hgetall +wait +time +get +exists +zadd +xadd"
    " +set +hset +pexpire +scard +hmget +hsetnx +rpush +hget +xrange +xpending"
)
DASHBOARD_LINE = (
    "ACL SETUSER qrunner-dashboard reset on >DASHBOARD_PASSWORD ~qr:* resetchannels -@all +ping"
    " +select +time +smembers +hgetall +xlen +zcard +hlen +xpending +xrange +get +scard +hmget"
    " +zrange +llen +lrange +mget +xrevrange +xinfo|groups +xinfo|stream +evalsha +script|load"
    " +hget"
)
OPS_LINE = (
    "ACL SETUSER qrunner-ops reset on >OPS_PASSWORD ~qr:* resetchannels -@all +ping +select +time"
    " +smembers +hgetall +xlen +zcard +hlen +xpending +xrange +get +evalsha +script|load +xadd"
    " +xdel +hset +hdel +pexpire +del +sadd +srem +scard +hmget +hincrby +zrange +llen +lrange"
    " +mget +xrevrange +xinfo|groups +xinfo|stream +hget"
)
USERS = ("qrunner-worker", "qrunner-producer", "qrunner-dashboard", "qrunner-ops")
CLIENT_LINES_REDIS6 = tuple(
    f"ACL SETUSER {user} +client|setinfo +client|maint_notifications" for user in USERS
)
CLIENT_LINES = tuple(f"ACL SETUSER {user} +client|setinfo" for user in USERS)
CLUSTER_LINES = tuple(f"ACL SETUSER {user} +cluster|slots +command" for user in USERS)

#: With QRUNNER_TEST_ACL=1 (conftest.py) the suite runs as the worker's user. The test-suite's
#: own handlers keep what they saw in lists under these names: an application's keys, which the
#: page says to add to the worker's user, as this line does.
TEST_APP_LINE = (
    "ACL SETUSER qrunner-worker ~log:* ~grants ~mixed:* ~test:* ~started ~finished ~runs +@list"
    " +hincrby +hgetall"
)

PASSWORDS = {
    f"{user.removeprefix('qrunner-').upper()}_PASSWORD": secrets.token_urlsafe(24) for user in USERS
}


def _words(line: str) -> list[str]:
    """The arguments of one documented line, its password placeholder filled in."""
    words = line.split()
    assert words[:2] == ["ACL", "SETUSER"], line
    return [f">{PASSWORDS[w[1:]]}" if w[1:] in PASSWORDS else w for w in words]


def _password(user: str) -> str:
    return PASSWORDS[f"{user.removeprefix('qrunner-').upper()}_PASSWORD"]


def as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{_password(user)}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def create_users(admin: SyncRedis, lines: tuple[str, ...] = ()) -> None:
    """The users of the page, and the client announcement rules this server accepts; also used
    by conftest.py when the suite runs as the worker's user (QRUNNER_TEST_ACL=1)."""
    for line in (WORKER_LINE, PRODUCER_LINE, DASHBOARD_LINE, OPS_LINE, *lines):
        admin.execute_command(*_words(line))
    # The client announcements: whichever set the server accepts (see the page)
    for redis6_line, line in zip(CLIENT_LINES_REDIS6, CLIENT_LINES, strict=True):
        try:
            admin.execute_command(*_words(redis6_line))
        except ResponseError:
            try:
                admin.execute_command(*_words(line))
            except ResponseError as exc:  # Redis 7.0 and 7.1 know neither subcommand
                version = str(admin.info("server")["redis_version"])
                assert version.startswith(("7.0.", "7.1.")), exc


def _refusals(admin: SyncRedis) -> list[tuple[str, str, str]]:
    """(user, command or key, where: toplevel, lua, multi) of every refusal in the ACL log,
    oldest first."""
    return [
        (entry["username"], entry["object"], entry["context"])
        for entry in reversed(admin.acl_log())
    ]


@dataclass
class AclServer:
    admin: SyncRedis
    url: str

    def url_for(self, user: str) -> str:
        return as_user(self.url, user)


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclServer]:
    """A private server holding the documented users, for this module."""
    server = RedisProcess(tmp_path_factory.mktemp("acl-redis"), binary=server_binary_under_test())
    server.start()
    admin = SyncRedis.from_url(server.url)
    try:
        create_users(admin)
        yield AclServer(admin, server.url)
    finally:
        admin.close()
        server.stop()


@pytest.fixture
def acl(acl_server: AclServer) -> AclServer:
    """The private server, emptied, with an empty ACL log."""
    acl_server.admin.flushall()
    acl_server.admin.execute_command("ACL", "LOG", "RESET")
    return acl_server


@pytest.fixture
async def worker_redis(acl: AclServer) -> AsyncIterator[Redis]:
    client = await connect_redis(acl.url_for("qrunner-worker"))
    try:
        yield client
    finally:
        await client.aclose()


# -- the tasks of the scenarios ------------------------------------------------------------------


@dataclass
class Seen:
    """What the handlers saw, kept in the test process (not in Redis: the worker's user may
    only touch ``qr:`` keys, and an application's own keys are its own business)."""

    doomed_fails: bool = True
    limited: list[str] = field(default_factory=list)
    throttled: dict[str, int] = field(default_factory=dict)
    echoed: list[Any] = field(default_factory=list)


def scenario_registry(seen: Seen) -> Registry:
    registry = Registry()

    @registry.task(queue="default", max_retries=2, backoff_base_s=0.05, backoff_cap_s=0.1)
    async def flaky(ctx: Context[Any], payload: dict[str, Any]) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("the first attempt fails")
        return f"ok on attempt {ctx.attempt}"

    @registry.task(queue="default", max_retries=0)
    async def doomed(ctx: Context[Any], payload: dict[str, Any]) -> str:
        if seen.doomed_fails:
            raise Permanent("refused by the provider")
        return "replayed"

    @registry.task(queue="default", max_retries=0)
    async def echo(ctx: Context[Any], payload: dict[str, Any]) -> dict[str, Any]:
        seen.echoed.append(payload)
        return payload

    @registry.task(queue="limited", rate_limit="20/s", rate_burst=2, max_retries=0)
    async def limited(ctx: Context[Any], payload: dict[str, Any]) -> None:
        if payload.get("throttle") and ctx.job_id not in seen.throttled:
            seen.throttled[ctx.job_id] = 1  # the provider says "slow down" once
            raise RateLimited(0.1, bucket="provider", reason="provider answered 429")
        seen.limited.append(ctx.job_id)

    return registry


async def run_burst(redis: Redis, registry: Registry) -> None:
    worker = Worker(
        redis,
        registry,
        burst=True,
        settings=FAST,
        queues=["default", "limited"],
        # hold_s=0: a job whose turn is not now is deferred to its recorded turn rather than
        # waited for in place, which takes every path of the rate-limit scripts
        gate=TokenBucketGate(redis, registry, hold_s=0),
    )
    await asyncio.wait_for(worker.run(), timeout=60)


# -- the page ------------------------------------------------------------------------------------


def test_the_page_holds_the_tested_lines() -> None:
    page = {line.strip() for line in DOC.read_text().splitlines()}
    for line in (WORKER_LINE, PRODUCER_LINE, DASHBOARD_LINE, OPS_LINE):
        assert line in page
    for line in (*CLIENT_LINES_REDIS6, *CLIENT_LINES, *CLUSTER_LINES):
        assert line in page


# -- worker --------------------------------------------------------------------------------------


async def test_worker_user_runs_every_kind_of_job_without_a_single_refusal(
    acl: AclServer, worker_redis: Redis
) -> None:
    # Given the worker's user, and a consumer that took an entry and died (crash recovery)
    seen = Seen()
    registry = scenario_registry(seen)
    client = Client(worker_redis, registry)
    orphan = await client.enqueue("echo", {"orphan": True})
    ghost = Consumer(worker_redis, "ghost-consumer", ["default"])
    await ghost.ensure_group("default")
    taken = await worker_redis.xreadgroup(
        keys.GROUP, "ghost-consumer", {keys.stream("default"): ">"}, count=1
    )
    assert len(taken[0][1]) == 1
    # and a retry, a dead letter, a delayed job, rate-limited jobs (one of which the provider
    # throttles), a deduplicated enqueue and a cron slot fired through the scheduler
    flaky = await client.enqueue("flaky", {})
    doomed = await client.enqueue("doomed", {})
    delayed = await client.enqueue("echo", {"delayed": True}, delay_s=0.3)
    limited = await client.enqueue_many(
        [("limited", {"i": i, "throttle": i == 2}) for i in range(8)]
    )
    deduplicated = await client.enqueue("echo", {"k": 1}, key="once")
    assert await client.enqueue("echo", {"k": 2}, key="once") == deduplicated
    schedule = Schedule(name="acl-every-second", task="echo", cron="* * * * * *")
    scheduler = Scheduler(worker_redis, client, [schedule], RedisClock(worker_redis))
    assert await scheduler.tick() == 1

    # When a burst worker drains the queues
    await run_burst(worker_redis, registry)

    # Then every job reached its end
    assert (await client.status(orphan)).state == "succeeded"  # reclaimed from the ghost
    flaky_status = await client.status(flaky)
    assert (flaky_status.state, flaky_status.result) == ("succeeded", "ok on attempt 2")
    assert (await client.status(doomed)).state == "dead"
    assert (await client.status(delayed)).state == "succeeded"
    assert sorted(seen.limited) == sorted(limited)
    assert list(seen.throttled) == [limited[2]]
    assert {"delayed": True} in seen.echoed and {"orphan": True} in seen.echoed
    assert len([p for p in seen.echoed if p.get("k")]) == 1
    assert len(seen.echoed) == 4  # orphan, delayed, the deduplicated one, the cron slot
    stats = {s.queue: s for s in await client.stats()}
    assert stats["default"].dead == 1 and stats["default"].depth == 0

    # When the dead letter is replayed (as the redrive task does) and a worker runs again
    seen.doomed_fails = False
    assert await DeadLetters(worker_redis).replay(["default"], ident=doomed) == (1, 0)
    await run_burst(worker_redis, registry)
    # Then it succeeds, and nothing at all was refused to the worker's user
    doomed_status = await client.status(doomed)
    assert (doomed_status.state, doomed_status.result) == ("succeeded", "replayed")
    assert _refusals(acl.admin) == []


async def test_a_worker_user_without_xtrim_still_acks_by_deleting_each_entry(
    acl: AclServer, worker_redis: Redis
) -> None:
    """The worker's line of earlier releases had no +xtrim: the ack script then deletes each
    acked entry on its own, and every ack still goes through."""
    from qrunner.consumer import Completion, Finish

    acl.admin.execute_command("ACL", "SETUSER", "qrunner-worker", "-xtrim")
    try:
        client = Client(worker_redis, scenario_registry(Seen()))
        ids = await client.enqueue_many([("echo", {"i": i}) for i in range(30)])
        queued = [eid for eid, _ in acl.admin.xrange(keys.stream("default"), "-", "+")]
        consumer = Consumer(worker_redis, "old-acl", ["default"])
        await consumer.ensure_group("default")
        entries = await consumer.read_available(["default"], 20)
        done = [
            Completion(e.entry_id, job_id, 1, b"")
            for e, job_id in zip(entries, ids[:20], strict=True)
        ]
        assert await consumer.ack("default", done, 60_000) == [Finish.DONE] * 20
        left = [eid for eid, _ in acl.admin.xrange(keys.stream("default"), "-", "+")]
        assert left == queued[20:]  # only the 10 never delivered are left
        assert [obj for _, obj, ctx in _refusals(acl.admin)] == ["xtrim"]
    finally:
        acl.admin.execute_command("ACL", "SETUSER", "qrunner-worker", "+xtrim")


async def test_worker_user_is_denied_config_and_the_eviction_check_warns_once(
    acl: AclServer, worker_redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(NoPermissionError):
        await worker_redis.config_get("maxmemory-policy")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qrunner.runtime"):
        await warn_on_eviction_policy(worker_redis)
    warnings = [r for r in caplog.records if r.name == "qrunner.runtime"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert "CONFIG GET is denied to this user (ACL)" in message
    assert "'noeviction'" in message


async def test_worker_user_cannot_administer_the_server_or_touch_other_keys(
    acl: AclServer, worker_redis: Redis
) -> None:
    for attempt in (
        worker_redis.flushall(),
        worker_redis.config_set("appendonly", "no"),
        worker_redis.set("not-qrunner", 1),
        worker_redis.get("other:key"),
        worker_redis.keys("*"),
        worker_redis.publish("news", "hello"),
        worker_redis.acl_list(),
        worker_redis.client_list(),
        worker_redis.execute_command("SCRIPT", "KILL"),
    ):
        with pytest.raises(NoPermissionError):
            await attempt
    # A script runs as its caller: a command the user lacks is refused inside it too
    with pytest.raises(ResponseError, match=r"(?i)noperm|permission|can't run this command"):
        await worker_redis.eval("return redis.call('FLUSHALL')", 0)
    with pytest.raises(ResponseError, match=r"(?i)noperm|permission"):
        await worker_redis.eval("return redis.call('SET', KEYS[1], 1)", 1, "elsewhere")


# -- producer ------------------------------------------------------------------------------------


async def test_producer_user_enqueues_and_reads_status_but_cannot_take_jobs(
    acl: AclServer,
) -> None:
    producer = await connect_redis(acl.url_for("qrunner-producer"))
    try:
        registry = scenario_registry(Seen())
        client = Client(producer, registry)
        now = await client.enqueue("echo", {"n": 1})
        later = await client.enqueue("echo", {"n": 2}, delay_s=60)
        keyed = await client.enqueue("echo", {"n": 3}, key="k")
        assert await client.enqueue("echo", {"n": 4}, key="k") == keyed
        many = await client.enqueue_many([("echo", {"n": n}) for n in range(5, 10)])
        assert len(many) == 5
        assert (await client.status(now)).state == "queued"
        assert (await client.status(later)).state == "scheduled"
        # A durable enqueue may WAIT for replicas (there are none here)
        durable = Client(producer, registry, wait_replicas=1, wait_timeout_ms=50)
        with pytest.raises(NotReplicated):
            await durable.enqueue("echo", {"n": 10})

        # It cannot take, ack or delete jobs, nor reach past qr: keys (it may read one entry
        # by id: the status of a queued job points there)
        stream = keys.stream("default")
        for attempt in (
            producer.xreadgroup(keys.GROUP, "thief", {stream: ">"}, count=10),
            producer.xack(stream, keys.GROUP, "0-1"),
            producer.delete(stream),
            producer.hgetall("elsewhere"),
        ):
            with pytest.raises(NoPermissionError):
                await attempt
        refused = {(user, what) for user, what, _ in _refusals(acl.admin)}
        assert refused == {("qrunner-producer", what) for what in ("xreadgroup", "xack", "del")} | {
            ("qrunner-producer", "elsewhere")
        }
    finally:
        await producer.aclose()


# -- dashboard and operators ---------------------------------------------------------------------


async def test_dashboard_user_reads_stats_status_dead_letters_and_schedules_only(
    acl: AclServer, worker_redis: Redis
) -> None:
    # Given a queue with a finished job and a dead letter, put there by the worker's user
    seen = Seen()
    registry = scenario_registry(seen)
    worker_client = Client(worker_redis, registry)
    done = await worker_client.enqueue("echo", {"n": 1})
    doomed = await worker_client.enqueue("doomed", {})
    await run_burst(worker_redis, registry)
    acl.admin.execute_command("ACL", "LOG", "RESET")
    schedule = Schedule(name="acl-nightly", task="echo", cron="0 5 * * *")

    dashboard = await connect_redis(acl.url_for("qrunner-dashboard"))
    try:
        # When the dashboard's user reads, Then stats, status, dead letters and schedules work
        client = Client(dashboard)
        stats = {s.queue: s for s in await client.stats()}
        assert stats["default"].dead == 1
        assert (await client.status(done)).state == "succeeded"
        dead = await DeadLetters(dashboard).list(["default"])
        assert [d.job.id for d in dead if d.job] == [doomed]
        (row,) = await describe_live(dashboard, [schedule])
        assert row.next_fire is not None
        assert _refusals(acl.admin) == []
        # And replay, purge and enqueue are refused: they write. The user may run scripts (the
        # status is one), but a script runs as its caller: its writes are refused inside it.
        refused = r"(?i)noperm|permission|can't run this command"
        with pytest.raises(ResponseError, match=refused):
            await DeadLetters(dashboard).replay(["default"], ident=doomed)
        with pytest.raises(NoPermissionError):
            await DeadLetters(dashboard).purge(["default"])
        with pytest.raises(ResponseError, match=refused):
            await client.enqueue("echo", {})
    finally:
        await dashboard.aclose()

    # The operators' user replays and purges
    ops = await connect_redis(acl.url_for("qrunner-ops"))
    try:
        assert await DeadLetters(ops).replay(["default"], ident=doomed) == (1, 0)
        seen.doomed_fails = True
        await run_burst(worker_redis, registry)
        assert await DeadLetters(ops).purge(["default"]) == 1
        assert await DeadLetters(ops).list(["default"]) == []
    finally:
        await ops.aclose()
    assert [r for r in _refusals(acl.admin) if r[0] != "qrunner-dashboard"] == []


# -- Redis Cluster -------------------------------------------------------------------------------


@pytest.fixture
def cluster_users(cluster_url: str, redis_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The session cluster with the users and the cluster additions on every node (ACL users
    are per node); they are deleted afterwards, as the cluster is shared."""
    nodes = redis_cluster.running_nodes()
    try:
        for node in nodes:
            create_users(node.client(), CLUSTER_LINES)
            node.call("ACL", "LOG", "RESET")
        yield redis_cluster
    finally:
        for node in nodes:
            node.call("ACL", "DELUSER", *USERS)


async def test_worker_and_producer_users_on_a_cluster(
    cluster_url: str, cluster_users: LocalCluster
) -> None:
    seen = Seen()
    registry = scenario_registry(seen)
    producer = await connect_redis(as_user(cluster_url, "qrunner-producer"))
    worker = await connect_redis(as_user(cluster_url, "qrunner-worker"))
    try:
        # Given jobs enqueued by the producer on queues of different slots
        client = Client(producer, registry)
        flaky = await client.enqueue("flaky", {})
        doomed = await client.enqueue("doomed", {})
        delayed = await client.enqueue("echo", {"delayed": True}, delay_s=0.2)
        limited = await client.enqueue_many([("limited", {"i": i}) for i in range(4)])
        # When a worker drains them, replaying the dead letter on the way
        await run_burst(worker, registry)
        seen.doomed_fails = False
        assert await DeadLetters(worker).replay(["default"], ident=doomed) == (1, 0)
        await run_burst(worker, registry)
        # Then every job succeeded, and no node refused anything
        for job_id in (flaky, doomed, delayed, *limited):
            assert (await client.status(job_id)).state == "succeeded", job_id
        for node in cluster_users.running_nodes():
            assert _refusals(node.client()) == [], node
    finally:
        await producer.aclose()
        await worker.aclose()


# -- the command line ----------------------------------------------------------------------------


def test_command_line_runs_as_the_three_users(acl: AclServer) -> None:
    def qrunner(user: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")}
        env["QRUNNER_REDIS_URL"] = acl.url_for(user)
        return subprocess.run(
            [sys.executable, "-m", "qrunner.cli", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    handlers = ("--handlers", "tests.helpers.core_tasks")
    payload = '{"name": "ada"}'
    enqueued = qrunner("qrunner-producer", "enqueue", "greet", "--payload", payload, *handlers)
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = enqueued.stdout.strip()
    worker = qrunner("qrunner-worker", "worker", "--burst", "--no-cron", *handlers)
    assert worker.returncode == 0, worker.stderr
    assert worker.stderr.count("CONFIG GET is denied to this user (ACL)") == 1
    status = qrunner("qrunner-dashboard", "status", job_id)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "succeeded"
    stats = qrunner("qrunner-dashboard", "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    rows = {row["queue"]: row for row in json.loads(stats.stdout)}
    assert (rows["default"]["depth"], rows["default"]["dead"]) == (0, 0)
    # The one refusal is the worker's look at maxmemory-policy (CONFIG GET)
    refused = [(user, what.split("|")[0]) for user, what, _ in _refusals(acl.admin)]
    assert refused == [("qrunner-worker", "config")]
