"""SyncClient: the enqueue side of Client for synchronous code, with the same validation,
scripts, ids and errors; jobs it enqueues are run by the ordinary worker."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydantic import BaseModel
from qrunner_devservers.embedded import RedisProcess
from redis import ConnectionPool
from redis import Redis as SyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from qrunner import (
    Client,
    Context,
    EnqueueError,
    InvalidPayload,
    JobNotFound,
    QrunnerError,
    Registry,
    SyncClient,
    Worker,
    connect_redis,
    keys,
)
from qrunner import sync_client as sync_client_module
from qrunner.errors import KeyConflict, ServerFull
from qrunner.job import Job
from qrunner.queue import EnqueueRetries
from tests.worker_fixtures import FAST

pytestmark = pytest.mark.both_topologies

registry = Registry()
ran: list[str] = []


class Greeting(BaseModel):
    name: str


@registry.task(queue="sync", payload=Greeting)
async def greet(ctx: Context[None], payload: Greeting) -> str:
    ran.append(ctx.job_id)
    return f"hello {payload.name}"


@pytest.fixture
def sync(redis_url: str) -> Any:
    ran.clear()
    with SyncClient.from_url(redis_url, registry) as client:
        yield client


async def test_enqueued_jobs_run_on_the_worker(sync: SyncClient, redis_url: str) -> None:
    job_id = sync.enqueue("greet", {"name": "ada"})
    assert sync.status(job_id).state == "queued"
    redis = await connect_redis(redis_url)
    try:
        await asyncio.wait_for(Worker(redis, registry, settings=FAST, burst=True).run(), 30)
        status = await Client(redis, registry).status(job_id)
    finally:
        await redis.aclose()
    assert (status.state, status.result) == ("succeeded", "hello ada")
    assert sync.status(job_id).state == "succeeded" and ran == [job_id]


def test_same_validation_and_dedup_as_the_async_client(sync: SyncClient) -> None:
    with pytest.raises(InvalidPayload, match="name"):
        sync.enqueue("greet", {"nom": "ada"})
    with pytest.raises(EnqueueError):
        sync.enqueue("greet", {"name": "a"}, queue="Bad Queue!")
    first = sync.enqueue("greet", {"name": "a"}, key="once")
    assert sync.enqueue("greet", {"name": "b"}, key="once") == first
    later = sync.enqueue("greet", {"name": "c"}, delay_s=600)
    assert sync.status(later).state == "scheduled"
    with pytest.raises(JobNotFound):
        sync.status("no-such-job")


def test_enqueue_many_and_threads(sync: SyncClient) -> None:
    ids = sync.enqueue_many([("greet", {"name": str(n)}) for n in range(250)])
    assert len(set(ids)) == 250 and all(sync.status(i).state == "queued" for i in ids[:5])
    with pytest.raises(InvalidPayload):  # one bad job refuses the batch: nothing written
        sync.enqueue_many([("greet", {"name": "x"}), ("greet", {})])
    with ThreadPoolExecutor(8) as pool:  # one client shared by a web server's threads
        threaded = list(pool.map(lambda n: sync.enqueue("greet", {"name": str(n)}), range(64)))
    assert len(set(threaded)) == 64


def test_a_lost_reply_is_retried_without_a_duplicate(sync: SyncClient) -> None:
    """Given Redis running the first enqueue but its reply lost, the client's retry finds the
    id already written and the job is in the stream once."""
    original = sync._call
    calls = 0

    def lose_first_reply(script: Any, ks: list[str], argv: list[Any]) -> Any:
        nonlocal calls
        calls += 1
        result = original(script, ks, argv)
        if calls == 1:
            raise RedisConnectionError("reply lost")
        return result

    sync._call = lose_first_reply  # type: ignore[method-assign]
    job_id = sync.enqueue("greet", {"name": "ada"})
    assert calls == 2
    assert sync.status(job_id).state == "queued"
    assert sync.redis.xlen(keys.stream("sync")) == 1


def test_unreachable_redis_is_a_qrunner_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with SyncClient.from_url(f"redis://127.0.0.1:{port}/0", registry) as client:
        with pytest.raises(QrunnerError):
            client.enqueue("greet", {"name": "ada"})


# -- the direct path (single server): EVALSHA on the client's own idle connections ---------------


@pytest.fixture
def admin(redis_url: str) -> Iterator[SyncRedis]:
    """A connection of the test's own, for admin commands and for looking at the server."""
    client = SyncRedis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


def server_ids(admin: SyncRedis) -> set[int]:
    """Server-side ids of every client connection but ``admin``'s own."""
    own = admin.client_id()
    return {int(c["id"]) for c in admin.client_list() if int(c["id"]) != own}


def idle(client: SyncClient) -> list[Any]:
    return [conn for conn, _ in client._idle]


class RecordedRetries(EnqueueRetries):
    """The enqueue retry policy, recording each failure it was asked about."""

    failures: list[Exception] = []

    def after(self, exc: Exception) -> float:
        RecordedRetries.failures.append(exc)
        return super().after(exc)


@pytest.fixture
def retries(monkeypatch: pytest.MonkeyPatch) -> list[Exception]:
    RecordedRetries.failures = []
    monkeypatch.setattr(sync_client_module, "EnqueueRetries", RecordedRetries)
    return RecordedRetries.failures


def test_the_direct_path_is_for_a_single_server_only(sync: SyncClient, redis_url: str) -> None:
    sync.enqueue("greet", {"name": "ada"})
    if redis_url.startswith("redis+cluster://"):
        assert sync._pool is None and sync._idle == []
    else:
        assert sync._pool is sync.redis.connection_pool and len(sync._idle) == 1


@pytest.mark.single_topology
def test_threads_sharing_a_client_never_share_a_connection(sync: SyncClient) -> None:
    """8 threads x 200 enqueues through one client: every reply reaches the thread that sent
    the call (each returned id is its own job's), every job is written once, and the client
    holds no more idle connections than there are threads, all of them accounted for."""
    threads, per_thread = 8, 200
    start = threading.Barrier(threads)
    idle_counts: list[int] = []

    def work(t: int) -> list[tuple[str, str]]:
        start.wait()
        sent = []
        for n in range(per_thread):
            sent.append((sync.enqueue("greet", {"name": f"{t}-{n}"}), f"{t}-{n}"))
            idle_counts.append(len(sync._idle))
        return sent

    with ThreadPoolExecutor(threads) as pool:
        sent = [pair for chunk in pool.map(work, range(threads)) for pair in chunk]
    entries = sync.redis.xrange(keys.stream("sync"))
    names = {}
    for _, fields in entries:
        job = Job.decode(fields[b"j"], queue="sync")
        names[job.id] = job.payload["name"]
    assert len(entries) == threads * per_thread == len(names) == len({i for i, _ in sent})
    assert all(names[job_id] == name for job_id, name in sent)
    assert 1 <= max(idle_counts) <= threads and 1 <= len(sync._idle) <= threads
    pool = sync.redis.connection_pool
    assert len(sync._idle) + len(pool._available_connections) == pool._created_connections


@pytest.mark.single_topology
@pytest.mark.needs_admin
def test_after_script_flush_the_script_is_loaded_again_on_the_same_connection(
    sync: SyncClient, admin: SyncRedis
) -> None:
    sync.enqueue("greet", {"name": "ada"})
    before = server_ids(admin)
    sha = sync._plan._enqueue_now.sha
    admin.script_flush()
    assert admin.script_exists(sha) == [False]
    job_id = sync.enqueue("greet", {"name": "bob"})
    assert server_ids(admin) == before  # NOSCRIPT is an error reply: the connection stays
    assert admin.script_exists(sha) == [True]
    assert admin.xlen(keys.stream("sync")) == 2 and sync.status(job_id).state == "queued"


@pytest.mark.single_topology
@pytest.mark.needs_admin
def test_a_connection_the_server_closed_is_dropped_and_the_enqueue_retried(
    sync: SyncClient, admin: SyncRedis, retries: list[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed within the trusted window, the connection is sent on: the call fails, and only
    the enqueue retry policy sends it again, on a new connection, writing the job once."""
    monkeypatch.setattr(sync_client_module, "TRUSTED_IDLE_S", 60.0)
    sync.enqueue("greet", {"name": "ada"})
    [dead] = idle(sync)
    before = server_ids(admin)
    assert admin.execute_command("CLIENT KILL TYPE normal") == len(before)
    job_id = sync.enqueue("greet", {"name": "bob"})
    assert [type(exc) for exc in retries] == [RedisConnectionError]
    assert admin.xlen(keys.stream("sync")) == 2 and sync.status(job_id).state == "queued"
    assert server_ids(admin).isdisjoint(before)
    assert dead not in idle(sync) or dead.is_connected  # reconnected by the pool, if reused
    pool = sync.redis.connection_pool  # the failed connection went back to it: none leaked
    assert len(sync._idle) + len(pool._available_connections) == pool._created_connections


@pytest.mark.single_topology
@pytest.mark.needs_admin
def test_a_connection_idle_past_the_trusted_window_is_checked_by_the_pool(
    sync: SyncClient, admin: SyncRedis, retries: list[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle for longer, the connection goes back through the pool, which finds it closed and
    reconnects it: no failed call, no retry."""
    sync.enqueue("greet", {"name": "ada"})
    [before] = server_ids(admin)
    admin.client_kill_filter(_id=before)
    monkeypatch.setattr(sync_client_module, "TRUSTED_IDLE_S", 0.0)
    sync.enqueue("greet", {"name": "bob"})
    assert retries == []
    [after] = server_ids(admin)
    assert admin.xlen(keys.stream("sync")) == 2
    assert after != before and sync.redis.connection_pool._created_connections == 1


def test_an_error_reply_raises_what_it_did_and_keeps_the_connection(
    fresh_redis: RedisProcess,
) -> None:
    """Out of memory is ServerFull and a script failing with WRONGTYPE is a KeyConflict naming
    the queue (as with the async client); after either the connection is in step and used
    again, and no connection is made."""
    admin = SyncRedis(port=fresh_redis.port)
    client = SyncClient.from_url(fresh_redis.url, registry)
    try:
        client.enqueue("greet", {"name": "a"})
        client.enqueue("greet", {"name": "b"}, queue="broken")
        admin.delete(keys.stream("broken"))
        admin.set(keys.stream("broken"), "not a stream")
        before, [conn] = server_ids(admin), idle(client)

        admin.config_set("maxmemory", 1)
        with pytest.raises(ServerFull):
            client.enqueue("greet", {"name": "c"})
        admin.config_set("maxmemory", 0)
        with pytest.raises(KeyConflict) as conflict:
            client.enqueue("greet", {"name": "d"}, queue="broken")
        assert conflict.value.queue == "broken"

        client.enqueue("greet", {"name": "e"})
        assert idle(client) == [conn] and server_ids(admin) == before
        assert client.redis.connection_pool._created_connections == 1
        assert admin.xlen(keys.stream("sync")) == 2
    finally:
        client.close()
        admin.close()


@pytest.mark.single_topology
def test_a_forked_child_makes_connections_of_its_own(sync: SyncClient, admin: SyncRedis) -> None:
    """The child enqueues on a new connection (the parent's stays untouched, never sent on nor
    shut down by the child); the parent goes on with its own connection afterwards."""
    sync.enqueue("greet", {"name": "before"})
    [parent_conn] = idle(sync)
    [parent_id] = server_ids(admin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, on 3.12+
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            sync.enqueue("greet", {"name": "child"})
            code = 0 if parent_conn not in idle(sync) and len(sync._idle) == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    sync.enqueue("greet", {"name": "after"})
    assert idle(sync) == [parent_conn] and parent_id in server_ids(admin)
    assert sync.redis.connection_pool._created_connections == 1
    entries = admin.xrange(keys.stream("sync"))
    names = [Job.decode(f[b"j"], queue="sync").payload["name"] for _, f in entries]
    assert names == ["before", "child", "after"]


@pytest.mark.single_topology
def test_close_gives_the_idle_connections_back_to_the_pool(redis_url: str) -> None:
    pool = ConnectionPool.from_url(redis_url)
    client = SyncClient(SyncRedis(connection_pool=pool), registry)  # the caller's pool
    try:
        with ThreadPoolExecutor(4) as threads:
            list(threads.map(lambda n: client.enqueue("greet", {"name": str(n)}), range(200)))
        held = idle(client)
        assert held and set(held) <= pool._get_in_use_connections()
        client.close()
        assert client._idle == [] and pool._get_in_use_connections() == set()
        assert set(held) <= set(pool._get_free_connections())
        assert all(conn.is_connected for conn in held)  # the pool is not closed: still usable
    finally:
        pool.disconnect()
