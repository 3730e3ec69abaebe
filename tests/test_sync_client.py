"""SyncClient: the enqueue side of Client for synchronous code, with the same validation,
scripts, ids and errors; jobs it enqueues are run by the ordinary worker."""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydantic import BaseModel
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
