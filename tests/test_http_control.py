"""The HTTP API's operator routes: the same control as the CLI, behind the bearer token,
with JSON required on every mutating request (a cross-site form cannot send it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from qrunner import Client, Worker, connect_redis, keys
from qrunner.http import build_app
from qrunner.metrics import Metrics
from tests.helpers import ops_tasks
from tests.worker_fixtures import FAST

pytestmark = pytest.mark.both_topologies

TOKEN = "t" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def api(
    redis_url: str,
) -> AsyncIterator[tuple[TestClient[aiohttp.web.Request, aiohttp.web.Application], Redis]]:
    redis = await connect_redis(redis_url)
    ops_tasks.events.clear()
    ops_tasks.seen.clear()
    app = build_app(
        client=Client(redis, ops_tasks.registry), metrics=Metrics(), redis=redis, token=TOKEN
    )
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, redis
    finally:
        await client.close()
        await redis.aclose()


async def test_operator_routes_need_the_token(api: tuple[TestClient, Redis]) -> None:  # type: ignore[type-arg]
    http, _ = api
    for method, path in [
        ("GET", "/api/workers"),
        ("POST", "/api/queues/ops/pause"),
        ("GET", "/api/queues/ops/jobs"),
        ("DELETE", "/api/dead/ops/1-0"),
    ]:
        r = await http.request(method, path, json={})
        assert r.status == 401, (method, path)


async def test_pause_resume_cancel_purge_over_http(api: tuple[TestClient, Redis]) -> None:  # type: ignore[type-arg]
    http, redis = api
    client = Client(redis, ops_tasks.registry)
    # A form post (no JSON content type) is refused even with the token.
    r = await http.post("/api/queues/ops/pause", data={"x": "1"}, headers=AUTH)
    assert r.status == 415
    r = await http.post("/api/queues/ops/pause", json={}, headers=AUTH)
    assert (r.status, await r.json()) == (200, {"queue": "ops", "state": "paused", "changed": True})
    assert await redis.sismember(keys.paused_queues(), "ops")
    r = await http.post("/api/queues/ops/resume", json={}, headers=AUTH)
    assert (await r.json())["state"] == "resumed"
    job_id = await client.enqueue("hold", {})
    r = await http.get("/api/queues/ops/jobs?state=queued", headers=AUTH)
    page = await r.json()
    assert [row["id"] for row in page["rows"]] == [job_id] and page["total"] == 1
    r = await http.post(f"/api/jobs/{job_id}/cancel", json={}, headers=AUTH)
    assert (r.status, await r.json()) == (200, {"id": job_id, "state": "cancelled"})
    r = await http.post(f"/api/jobs/{job_id}/cancel", json={}, headers=AUTH)
    assert r.status == 409  # already cancelled
    await client.enqueue("flaky", {})
    r = await http.post("/api/queues/ops/purge", json={}, headers=AUTH)
    assert r.status == 400 and "confirm" in (await r.json())["error"]
    r = await http.post("/api/queues/ops/purge", json={"confirm": "ops"}, headers=AUTH)
    assert (await r.json())["purged"] == 2
    r = await http.get("/api/queues/ops/jobs?state=sleeping", headers=AUTH)
    assert r.status == 400 and "--state" in (await r.json())["error"]


async def test_history_workers_and_dead_entry_delete(api: tuple[TestClient, Redis]) -> None:  # type: ignore[type-arg]
    http, redis = api
    client = Client(redis, ops_tasks.registry)
    flaky = await client.enqueue("flaky", {})
    broken = await client.enqueue("broken", {})
    worker = Worker(redis, ops_tasks.registry, settings=FAST, burst=True)
    await asyncio.wait_for(worker.run(), 30)
    r = await http.get(f"/api/jobs/{flaky}/history", headers=AUTH)
    assert [a["outcome"] for a in await r.json()] == ["retried", "succeeded"]
    r = await http.get("/api/jobs/nope/history", headers=AUTH)
    assert r.status == 404
    dead = (await client.status(broken)).dlq_id
    assert dead is not None
    r = await http.delete(f"/api/dead/ops/{dead}", headers=AUTH)
    assert (await r.json()) == {"queue": "ops", "deleted": dead}
    r = await http.delete(f"/api/dead/ops/{dead}", headers=AUTH)
    assert r.status == 404
    r = await http.get("/api/workers", headers=AUTH)
    assert await r.json() == []  # the burst worker left
