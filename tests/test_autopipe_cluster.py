"""Auto-pipelining on a real Redis Cluster (qrunner.autopipe.AutoPipelinedCluster): the keyed
commands issued in one turn go out as one cluster pipeline, each to the master of its key's
slot, each caller gets its own reply or error; keyless, node-targeted and blocking commands go
to the cluster client as they are; a batch follows a slot that moved and a master that failed
over; a worker on a cluster hands its handlers the auto-pipelined view."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from qrunner import Client, Context, Registry
from qrunner.autopipe import AutoPipelinedCluster, for_handlers
from qrunner.faults import CONNECTION_ERRORS
from qrunner.runtime import connect_redis
from qrunner.worker import Worker
from tests.cluster_support import LocalCluster, LocalNode
from tests.worker_fixtures import FAST


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[RedisCluster]:
    made = await connect_redis(cluster_url)
    assert isinstance(made, RedisCluster)
    yield made
    await made.aclose()


def keys_on_every_master(local: LocalCluster) -> list[str]:
    """One key per master of ``local`` (hash tags tried until each master has one)."""
    by_node: dict[int, str] = {}
    for i in range(1000):
        key = f"ap:{{t{i}}}:n"
        by_node.setdefault(local.node_for_key(key).port, key)
        if len(by_node) == len(local.masters):
            return list(by_node.values())
    raise AssertionError("no hash tag reached every master")


async def test_commands_in_one_turn_go_to_every_master_as_one_batch_each_with_its_reply(
    cluster: RedisCluster, redis_cluster: LocalCluster
) -> None:
    piped = AutoPipelinedCluster(cluster)
    spread = keys_on_every_master(redis_cluster)
    assert len(spread) == 3
    replies = await asyncio.gather(
        *(piped.incr(key) for key in spread for _ in range(20)),
        piped.hset("ap:{t0}:h", mapping={"a": "1", "b": "2"}),
        piped.hgetall("ap:{t0}:h"),
    )
    assert piped.batches == 1
    for i in range(3):  # each key's 20 INCRs, one reply each, none shared
        assert sorted(replies[i * 20 : (i + 1) * 20]) == list(range(1, 21))
    assert replies[60:] == [2, {b"a": b"1", b"b": b"2"}]  # parsed as the plain client does
    for key in spread:  # on the master that holds the key, not wherever the batch went
        node = redis_cluster.node_for_key(key)
        assert node.call("GET", key) == "20"


async def test_an_error_reaches_only_the_command_that_caused_it(cluster: RedisCluster) -> None:
    piped = AutoPipelinedCluster(cluster)
    await cluster.set("ap:{t1}:text", "not a number")
    bad, good = await asyncio.gather(
        piped.incr("ap:{t1}:text"), piped.incr("ap:{t2}:n"), return_exceptions=True
    )
    assert piped.batches == 1
    assert isinstance(bad, ResponseError)
    assert good == 1


async def test_keyless_targeted_and_blocking_commands_go_to_the_cluster_client_as_they_are(
    cluster: RedisCluster,
) -> None:
    piped = AutoPipelinedCluster(cluster)
    popped = asyncio.ensure_future(piped.blpop(["ap:{t3}:list"], timeout=30))
    pinged, counted = await asyncio.gather(
        piped.ping(),  # keyless: redis-py sends it to every node
        piped.incr("ap:{t3}:n"),
    )
    assert pinged is True
    assert counted == 1  # answered while the BLPOP still waits on its own connection
    # Sent to named nodes, the primaries' key counts summed by redis-py: the counter alone.
    assert await piped.dbsize(target_nodes=RedisCluster.PRIMARIES) == 1
    assert not popped.done()
    await cluster.rpush("ap:{t3}:list", "x")
    assert list(await popped) == [b"ap:{t3}:list", b"x"]
    assert piped.batches == 1  # the INCR alone


async def test_a_script_runs_through_it_and_is_loaded_where_missing(cluster: RedisCluster) -> None:
    piped = AutoPipelinedCluster(cluster)
    script = piped.register_script("return redis.call('INCR', KEYS[1])")
    assert await script(keys=["ap:{t4}:n"]) == 1  # NOSCRIPT at first: loaded, then run
    assert await asyncio.gather(script(keys=["ap:{t4}:n"]), script(keys=["ap:{t5}:n"])) == [2, 1]


async def test_a_caller_cancelled_before_the_write_sends_nothing(cluster: RedisCluster) -> None:
    piped = AutoPipelinedCluster(cluster)
    first = asyncio.ensure_future(piped.incr("ap:{t6}:n"))
    second = asyncio.ensure_future(piped.incr("ap:{t6}:n"))
    await asyncio.sleep(0)  # both commands are queued for the batch, not yet written
    first.cancel()
    assert await second == 1
    assert first.cancelled()
    assert await cluster.get("ap:{t6}:n") == b"1"


async def test_it_shares_the_cluster_client_and_closing_it_closes_nothing(
    cluster: RedisCluster,
) -> None:
    wrapped = for_handlers(cluster, True)
    assert isinstance(wrapped, AutoPipelinedCluster)
    assert isinstance(wrapped, RedisCluster)  # a handler checking for a cluster still sees one
    assert for_handlers(wrapped, True) is wrapped
    assert for_handlers(cluster, False) is cluster
    assert wrapped.nodes_manager is cluster.nodes_manager
    assert {n.name for n in wrapped.get_primaries()} == {n.name for n in cluster.get_primaries()}
    await wrapped.incr("ap:{t7}:n")
    await wrapped.aclose()
    assert await cluster.incr("ap:{t7}:n") == 2


def cluster_get(local: LocalCluster, key: str) -> Any:
    return local.node_for_key(key).call("GET", key)


def _move_slot(local: LocalCluster, slot: int, target: LocalNode) -> None:
    """Migrate ``slot`` with its keys to ``target``, as redis-cli --cluster reshard does."""
    source = local.master_of_slot(slot)
    target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    while names := source.call("CLUSTER", "GETKEYSINSLOT", slot, 100):
        source.call("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *names)
    for node in local.masters:
        node.call("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)


async def test_a_batch_follows_a_slot_that_moved_and_a_master_that_failed_over(
    failover_cluster: LocalCluster,
) -> None:
    redis = await connect_redis(failover_cluster.cluster_url)
    assert isinstance(redis, RedisCluster)
    piped = AutoPipelinedCluster(redis)
    moved = "ap:{m}:n"
    try:
        assert await piped.incr(moved) == 1
        slot = failover_cluster.keyslot(moved)
        owner = failover_cluster.master_of_slot(slot)
        target = next(m for m in failover_cluster.masters if m is not owner)
        # A key on another master than the one the slot moves to, to fail that one over.
        still = next(
            key
            for key in (f"ap:{{s{i}}}:n" for i in range(1000))
            if failover_cluster.node_for_key(key) not in (owner, target)
        )
        assert await piped.incr(still) == 1
        _move_slot(failover_cluster, slot, target)
        # The client still maps the slot to its old master: MOVED, followed in the batch.
        assert await asyncio.gather(piped.incr(moved), piped.incr(still)) == [2, 2]
        assert target.call("GET", moved) == "2"

        failover_cluster.kill(failover_cluster.node_for_key(still))
        failover_cluster.wait_ok(timeout=30)  # its replica took over its slots
        replies: list[Any] = await asyncio.gather(piped.incr(moved), piped.incr(still))
        assert replies[0] == 3
        # The promoted replica may have missed its master's last write (replication is
        # asynchronous): 2 or 3, and never an error.
        assert replies[1] in (2, 3)
    finally:
        await redis.aclose()


async def test_a_worker_on_a_cluster_batches_its_handlers_commands(cluster: RedisCluster) -> None:
    registry = Registry()
    seen: set[type[Any]] = set()

    @registry.task("count", max_retries=0)
    async def count(ctx: Context[Any], payload: dict[str, Any]) -> None:
        seen.add(type(ctx.redis))
        await ctx.redis.incr(f"ap:{{t{payload['i'] % 3}}}:jobs")

    await Client(cluster, registry).enqueue_many([("count", {"i": i}) for i in range(300)])
    worker = Worker(cluster, registry, burst=True, concurrency=100, settings=FAST)
    await worker.run()
    counts = [int(await cluster.get(f"ap:{{t{i}}}:jobs") or 0) for i in range(3)]
    assert counts == [100, 100, 100]  # every job's command ran once
    assert seen == {AutoPipelinedCluster}
    assert isinstance(worker.handler_redis, AutoPipelinedCluster)
    assert worker.handler_redis.batches < 300  # commands of jobs started together shared writes


async def test_while_a_master_is_down_only_the_commands_for_it_fail(
    cluster: RedisCluster, redis_cluster: LocalCluster
) -> None:
    """With ``cluster-require-full-coverage no`` the other masters serve on while one is down,
    and the commands for them go through (qrunner.autopipe.ALONE_AFTER_FAULT_S)."""
    piped = AutoPipelinedCluster(cluster)
    down_key, up_key = keys_on_every_master(redis_cluster)[:2]
    victim = redis_cluster.node_for_key(down_key)
    masters = list(redis_cluster.masters)
    for node in masters:
        node.call("CONFIG", "SET", "cluster-require-full-coverage", "no")
    try:
        assert await asyncio.gather(piped.incr(down_key), piped.incr(up_key)) == [1, 1]
        redis_cluster.kill(victim)
        rounds = [
            await asyncio.gather(piped.incr(down_key), piped.incr(up_key), return_exceptions=True)
            for _ in range(3)
        ]
        assert all(isinstance(down, CONNECTION_ERRORS) for down, _ in rounds)
        # Every INCR for the healthy master ran once. At most one batch failed as a whole
        # (redis-py raises for it once the dead master refuses connections), its callers
        # getting the error for a command that ran; the commands after it went out alone.
        assert cluster_get(redis_cluster, up_key) == "4"
        assert sum(isinstance(up, Exception) for _, up in rounds) <= 1
        assert rounds[-1][1] == 4
    finally:
        for node in masters:
            if node is not victim:
                node.call("CONFIG", "SET", "cluster-require-full-coverage", "yes")
        redis_cluster.restart(victim)
