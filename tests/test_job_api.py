"""The app's job API (seed 003): enqueue and poll over HTTP with a token per scope (enqueue,
read, admin), and the admin test email to a bare address, sent by the worker through the
fake Resend with the usual suppression checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from notifyhub.api import registry as api_registry
from notifyhub.messaging import registry as messaging_registry
from redis.asyncio import Redis

from qrunner import Registry
from qrunner.http import build_app
from qrunner.metrics import Metrics
from tests.handler_fixtures import HandlerStack, handler_stack

ENQUEUE = "e" * 40
READ = "r" * 40
ADMIN = "a" * 40


@dataclass
class Env:
    stack: HandlerStack
    http: TestClient[web.Request, web.Application]


@pytest.fixture
async def env(database_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[Env]:
    async with handler_stack(
        database_url,
        redis,
        tmp_path,
        messaging_registry.merge(api_registry),
        Registry(),
        api_enqueue_token=ENQUEUE,
        api_read_token=READ,
        api_admin_token=ADMIN,
    ) as stack:

        def install(app: web.Application) -> None:
            for setup in stack.registry.http_setups:
                setup(app, stack.state)

        app = build_app(
            client=stack.client,
            metrics=Metrics(),
            redis=redis,
            token="o" * 40,
            setups=[install],
            public_prefixes=stack.registry.public_prefixes,
        )
        async with TestClient(TestServer(app)) as http:
            yield Env(stack, http)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_enqueue_then_poll_with_scoped_tokens(env: Env) -> None:
    job = {"task": "send_email", "payload": {"user_id": 1, "subject": "Hi", "body": "Hello"}}
    r = await env.http.post("/api/v1/jobs", json=job, headers=bearer(ENQUEUE))
    assert r.status == 202
    job_id = (await r.json())["id"]
    # Each token opens its own scope only.
    for token in (READ, ADMIN, "o" * 40, ""):
        r = await env.http.post("/api/v1/jobs", json=job, headers=bearer(token))
        assert r.status == 401
    r = await env.http.get(f"/api/v1/jobs/{job_id}", headers=bearer(ENQUEUE))
    assert r.status == 401
    r = await env.http.get(f"/api/v1/jobs/{job_id}", headers=bearer(READ))
    body: dict[str, Any] = await r.json()
    assert (r.status, body["id"], body["state"], body["task"]) == (
        200,
        job_id,
        "queued",
        "send_email",
    )
    r = await env.http.get("/api/v1/jobs/nope", headers=bearer(READ))
    assert r.status == 404


async def test_bad_requests_get_json_4xx_and_write_nothing(env: Env) -> None:
    cases = [
        ({"task": "send_email", "payload": {"subject": "x"}}, 422),  # invalid payload
        ({"task": "no_such_task", "payload": {}}, 404),
        ({"task": "send_email", "payload": [], "x": 1}, 400),
        ({"task": 7}, 400),
    ]
    for job, status in cases:
        r = await env.http.post("/api/v1/jobs", json=job, headers=bearer(ENQUEUE))
        assert r.status == status, job
        assert "error" in await r.json()
    r = await env.http.post("/api/v1/jobs", data=b"task=x", headers=bearer(ENQUEUE))
    assert r.status == 415
    assert [s for s in await env.stack.client.stats() if s.depth] == []


async def test_admin_test_email_goes_to_a_bare_address(env: Env) -> None:
    r = await env.http.post(
        "/api/v1/notifications/test/email", json={"to": "Ops@Example.com"}, headers=bearer(READ)
    )
    assert r.status == 401
    r = await env.http.post(
        "/api/v1/notifications/test/email", json={"to": "Ops@Example.com"}, headers=bearer(ADMIN)
    )
    assert r.status == 202
    job_id = (await r.json())["id"]
    await env.stack.db.execute(
        "INSERT INTO suppressions (channel, recipient, reason, source) "
        "VALUES ('email', $1, 'bounce', 'resend')",
        "blocked@example.com",
    )
    r = await env.http.post(
        "/api/v1/notifications/test/email",
        json={"to": "blocked@example.com"},
        headers=bearer(ADMIN),
    )
    blocked = (await r.json())["id"]
    from tests.handler_fixtures import HandlerEnv

    await HandlerEnv(*env.stack).drain()
    sent = await env.stack.client.status(job_id)
    refused = await env.stack.client.status(blocked)
    # No provider key in this stack: a message that passed every check lands in the sandbox.
    assert sent.state == "succeeded" and sent.result["status"] == "sandbox", sent.result
    assert refused.state == "succeeded" and refused.result["status"] == "suppressed"
