"""The Redis Cluster test infrastructure (tests/cluster_support.py and its fixtures) works.

It runs on whichever server the suite runs on (``QRUNNER_TEST_REDIS_SERVER``): Redis 6.2,
Redis 7 and Valkey 8 each form a real cluster, route keys by slot, fail over on command and on
their own when a master dies, and leave no process behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import MovedError

from tests.cluster_support import (
    SLOTS,
    ClusterStartError,
    LocalCluster,
    LocalNode,
    resolve_binary,
)

KEYS = [f"key:{n}" for n in range(40)] + ["{user:7}.sms", "{user:7}.email"]


def _servers_under(folder: Path) -> list[int]:
    """Pids of live processes working in ``folder`` or below (servers chdir into --dir)."""
    folder = folder.resolve()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:  # gone meanwhile, a zombie, or not ours to see
            continue
        if cwd.is_relative_to(folder):
            found.append(int(proc.name))
    return found


def _plain_url(cluster_url: str) -> str:
    """redis-py's cluster client takes redis://; qrunner's scheme says "cluster"."""
    assert cluster_url.startswith("redis+cluster://")
    return "redis://" + cluster_url.removeprefix("redis+cluster://")


def _as_dict(reply: Any) -> dict[str, Any]:
    """A map reply: a dict already, or a flat key, value, ... list."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


def _server_version(node: LocalNode) -> tuple[int, ...]:
    info = node.client().info("server")
    text = info.get("valkey_version") or info["redis_version"]
    return tuple(int(part) for part in str(text).split("."))


# -- the session cluster -----------------------------------------------------------------------


def test_cluster_forms_from_the_server_under_test(redis_cluster: LocalCluster) -> None:
    assert redis_cluster.binary.path == resolve_binary()
    assert redis_cluster.start_seconds is not None and redis_cluster.start_seconds < 15, (
        f"{redis_cluster.binary.label}: {redis_cluster.start_seconds:.1f}s to start"
    )
    assert len(redis_cluster.nodes) == 3
    for node in redis_cluster.nodes:
        assert _server_version(node) == redis_cluster.binary.version
        assert node.cluster_info()["cluster_state"] == "ok"
        assert node.cluster_info()["cluster_known_nodes"] == "3"
    masters = redis_cluster.masters
    assert {node.port for node in masters} == {node.port for node in redis_cluster.nodes}
    assert redis_cluster.replicas == []
    view = masters[0].view().values()
    owned = [sum(last - first + 1 for first, last in e.slots) for e in view if e.is_master]
    assert sum(owned) == SLOTS and max(owned) - min(owned) <= 1  # an even split
    assert redis_cluster.problems() == []


def test_urls_name_the_nodes(redis_cluster: LocalCluster, cluster_url: str) -> None:
    ports = {node.port for node in redis_cluster.nodes}
    assert {int(url.rsplit(":", 1)[1]) for url in redis_cluster.urls} == ports
    assert redis_cluster.seed_url.startswith("redis://127.0.0.1:")
    assert cluster_url == "redis+cluster://127.0.0.1:" + redis_cluster.seed_url.rsplit(":", 1)[1]
    assert {(n.host, n.port) for n in redis_cluster.startup_nodes} == {
        ("127.0.0.1", port) for port in ports
    }


def test_keys_land_on_the_node_cluster_keyslot_names(
    redis_cluster: LocalCluster, cluster_url: str
) -> None:
    seen = set()
    for key in KEYS:
        slot = redis_cluster.keyslot(key)
        assert slot == key_slot(key.encode())  # the server and redis-py hash alike
        owner = redis_cluster.node_for_key(key)
        assert owner is redis_cluster.master_of_slot(slot)
        seen.add(owner.port)
        assert owner.client().set(key, "v") is True
        for other in redis_cluster.nodes:
            if other is owner:
                continue
            with pytest.raises(MovedError) as moved:
                other.client().set(key, "v")
            assert (moved.value.slot_id, moved.value.port) == (slot, owner.port)
    assert seen == {node.port for node in redis_cluster.nodes}  # the keys span every master
    assert redis_cluster.node_for_key("{user:7}.sms") is redis_cluster.node_for_key(
        "{user:7}.email"
    )


@pytest.mark.parametrize("turn", ["first", "second"])
async def test_async_cluster_client_reads_and_writes(
    redis_cluster: LocalCluster, cluster_url: str, turn: str
) -> None:
    """The second turn also shows that ``cluster_url`` empties the cluster between tests."""
    client = RedisCluster.from_url(_plain_url(cluster_url), decode_responses=True)
    try:
        assert await client.dbsize() == 0
        for key in KEYS:
            await client.set(key, f"{turn}:{key}")
        for key in KEYS:
            assert await client.get(key) == f"{turn}:{key}"
        for node in redis_cluster.masters:
            here = sum(1 for key in KEYS if redis_cluster.node_for_key(key) is node)
            assert node.client().dbsize() == here > 0
    finally:
        await client.aclose()


async def test_startup_nodes_seed_a_cluster_client(
    redis_cluster: LocalCluster, cluster_url: str
) -> None:
    client = RedisCluster(startup_nodes=redis_cluster.startup_nodes, decode_responses=True)
    try:
        await client.mset_nonatomic({key: key for key in KEYS})
        assert await client.mget_nonatomic(KEYS) == KEYS
    finally:
        await client.aclose()


def test_cluster_shards_agree_with_cluster_slots(redis_cluster: LocalCluster) -> None:
    if not redis_cluster.binary.modern:
        pytest.skip(f"{redis_cluster.binary.label} has no CLUSTER SHARDS (Redis 7.0+)")
    for node in redis_cluster.nodes:
        from_shards = []
        for shard in node.call("CLUSTER", "SHARDS"):
            fields = _as_dict(shard)
            members = [_as_dict(member) for member in fields["nodes"]]
            (master,) = [m for m in members if m["role"] == "master"]
            bounds = [int(x) for x in fields["slots"]]
            for first, last in zip(bounds[::2], bounds[1::2], strict=True):
                from_shards.append((first, last, int(master["port"])))
        assert sorted(from_shards) == LocalCluster._slot_map(node)


# -- failover ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.faults
async def test_failover_promotes_the_replica(failover_cluster: LocalCluster) -> None:
    cluster = failover_cluster
    assert len(cluster.masters) == 3 and len(cluster.replicas) == 3
    client = RedisCluster(startup_nodes=cluster.startup_nodes, decode_responses=True)
    try:
        master = cluster.node_for_key("job:1")
        (replica,) = cluster.replicas_of(master)
        pipe = master.client().pipeline(transaction=False)  # WAIT counts its connection's writes
        pipe.set("job:1", "queued")
        pipe.execute_command("WAIT", 1, 5000)
        assert pipe.execute() == [True, 1]

        began = time.monotonic()
        cluster.failover(replica)
        took = time.monotonic() - began

        assert cluster.node_for_key("job:1") is replica
        assert cluster.replicas_of(replica) == [master]  # the old master follows it now
        assert master.replication()["role"] == "slave"
        assert len(cluster.masters) == 3 and len(cluster.replicas) == 3
        assert cluster.problems() == []
        assert await client.get("job:1") == "queued"  # the client follows the MOVED
        await client.set("job:2", "queued")
        assert took < 15, f"failover took {took:.1f}s"
    finally:
        await client.aclose()


@pytest.mark.slow
@pytest.mark.faults
async def test_a_killed_masters_replica_takes_over(failover_cluster: LocalCluster) -> None:
    cluster = failover_cluster
    master = cluster.node_for_key("job:1")
    (replica,) = cluster.replicas_of(master)
    # WAIT counts the writes of the connection it is sent on: SET and WAIT share one pipeline.
    pipe = master.client().pipeline(transaction=False)
    pipe.set("job:1", "queued")
    pipe.execute_command("WAIT", 1, 5000)
    assert pipe.execute() == [True, 1]

    cluster.kill(master)
    began = time.monotonic()
    limit = cluster.node_timeout_ms / 1000 + 8
    cluster.wait_ok(timeout=limit)
    took = time.monotonic() - began

    assert not master.running()
    assert cluster.node_for_key("job:1") is replica
    assert replica.replication()["role"] == "master"
    assert took < limit, f"takeover took {took:.1f}s"

    client = RedisCluster(startup_nodes=cluster.startup_nodes, decode_responses=True)
    try:
        assert await client.get("job:1") == "queued"
    finally:
        await client.aclose()

    cluster.restart(master)  # it comes back as the replica of the one that replaced it
    assert cluster.replicas_of(replica) == [master]
    assert len(cluster.masters) == 3 and len(cluster.replicas) == 3


# -- no process left behind --------------------------------------------------------------------


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster")
    with cluster:
        cluster.start(masters=1, replicas_per_master=1)
        pids = list(cluster.pids())
        assert len(pids) == 2 and sorted(_servers_under(tmp_path)) == sorted(pids)
    assert _servers_under(tmp_path) == []
    assert list(cluster.pids()) == []


def test_a_failed_start_leaves_no_process(tmp_path: Path) -> None:
    with pytest.raises(ClusterStartError, match=r"timed out|did not answer"):
        LocalCluster(tmp_path / "slow").start(masters=3, timeout=0.3)
    assert _servers_under(tmp_path) == []


def test_a_node_that_cannot_start_is_reported_with_its_output(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "bad", extra_args=["--no-such-setting", "1"])
    with pytest.raises(ClusterStartError, match=r"exited at start: .*no-such-setting"):
        cluster.start(masters=1)
    assert _servers_under(tmp_path) == []
