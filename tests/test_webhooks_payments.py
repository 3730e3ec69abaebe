"""Payment webhooks over real HTTP, applied by a real worker against PostgreSQL and Redis.

Given a pending credit purchase and a pending order, when the provider posts signed, forged
and repeated events, then only correctly signed events are stored, each is stored once, and
each payment changes state once, however often it is delivered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from handlers.webhooks import registry as webhooks_registry
from handlers.webhooks.signature import SIGNATURE_HEADER, parse_event, sign, verify
from qrunner import Context
from qrunner.http import build_app
from qrunner.metrics import Metrics
from tests.handler_fixtures import HandlerEnv, handler_stack, standin_registry

pytestmark = pytest.mark.timeout(60)

SECRET = "whsec-test-secret"


@dataclass
class Env(HandlerEnv):
    http: TestClient[web.Request, web.Application]
    sent: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)

    async def post(
        self, event: dict[str, Any], *, signature: str | None = "good", provider: str = "paystack"
    ) -> tuple[int, dict[str, Any]]:
        body = orjson.dumps(event)
        headers = {"Content-Type": "application/json"}
        if signature == "good":
            headers[SIGNATURE_HEADER] = sign(SECRET, body)
        elif signature is not None:
            headers[SIGNATURE_HEADER] = signature
        resp = await self.http.post(f"/hooks/payments/{provider}", data=body, headers=headers)
        return resp.status, await resp.json()


class ConfirmationIn(BaseModel):
    """The agreed payload of messaging's ``send_credit_purchase_confirmation``."""

    model_config = ConfigDict(extra="forbid")
    purchase_id: int


@pytest.fixture
async def env(database_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[Env]:
    e: Env

    async def record(name: str, ctx: Context[Any], payload: BaseModel) -> None:
        e.sent.append((payload.model_dump(), ctx.job.key))

    standins = standin_registry(
        "email_reports", {"send_credit_purchase_confirmation": ConfirmationIn}, record
    )
    async with handler_stack(
        database_url, redis, tmp_path, webhooks_registry, standins, signing_secret=SECRET
    ) as stack:

        def install(app: web.Application) -> None:
            for setup in stack.registry.http_setups:
                setup(app, stack.state)

        # The real endpoint with a bearer token: /hooks/ must still be reachable without one.
        app = build_app(
            client=stack.client,
            metrics=Metrics(),
            redis=redis,
            token="operator-token",
            setups=[install],
            public_prefixes=("/hooks/",),
        )
        async with TestClient(TestServer(app)) as http:
            e = Env(*stack, http)
            yield e


async def seed_purchase(db: asyncpg.Pool, reference: str = "PAY-1") -> tuple[int, int]:
    uid: int = await db.fetchval(
        "INSERT INTO users (name, email) VALUES ('Buyer', 'buyer@example.com') RETURNING id"
    )
    await db.execute(
        "INSERT INTO user_credits (user_id, balance, low_balance_alerted_at) VALUES ($1, 2, now())",
        uid,
    )
    pid: int = await db.fetchval(
        "INSERT INTO credit_purchases (user_id, credits, amount, currency, provider,"
        " payment_reference) VALUES ($1, 100, 50.00, 'NGN', 'paystack', $2) RETURNING id",
        uid,
        reference,
    )
    return uid, pid


def success(event_id: str, reference: str = "PAY-1", amount: str = "50.00") -> dict[str, Any]:
    return {
        "id": event_id,
        "type": "charge.success",
        "data": {"reference": reference, "amount": amount, "currency": "NGN"},
    }


# -- pure --------------------------------------------------------------------------------------


def test_signature_round_trip_and_tampering() -> None:
    body = b'{"id": "evt_1"}'
    assert verify(SECRET, body, sign(SECRET, body))
    assert verify(SECRET, body, sign(SECRET, body).removeprefix("sha256="))
    assert not verify(SECRET, body + b" ", sign(SECRET, body))
    assert not verify("other-secret", body, sign(SECRET, body))
    assert not verify(SECRET, body, None)


def test_paystack_shaped_body_is_understood() -> None:
    event = parse_event(
        b'{"event": "charge.success", "data": {"id": 42, "reference": "R", "amount": "10.5"}}'
    )
    assert (event.event_id, event.type, event.reference, event.amount) == (
        "42",
        "charge.success",
        "R",
        Decimal("10.5"),
    )


# -- over HTTP and through the worker ----------------------------------------------------------


async def test_signed_event_credits_once_and_a_redelivery_changes_nothing(env: Env) -> None:
    # Given a pending purchase of 100 credits for a user with 2 left
    _, pid = await seed_purchase(env.db)

    # When the provider posts a signed success event and the worker runs
    status, body = await env.post(success("evt_1"))
    await env.drain()

    # Then it is accepted, the purchase completed, the balance credited and the alert reset
    assert (status, body["status"]) == (200, "accepted")
    purchase = await env.db.fetchrow(
        "SELECT status, purchased_at FROM credit_purchases WHERE id = $1", pid
    )
    assert purchase["status"] == "completed" and purchase["purchased_at"] is not None
    credits = await env.db.fetchrow("SELECT balance, low_balance_alerted_at FROM user_credits")
    assert credits["balance"] == Decimal("102.00") and credits["low_balance_alerted_at"] is None
    # And one confirmation was enqueued for the purchase
    assert env.sent == [({"purchase_id": pid}, f"credit-confirmation:{pid}")]

    # When the same event is delivered again, and then a second event for the same payment
    again_status, again = await env.post(success("evt_1"))
    other_status, _ = await env.post(success("evt_2"))
    await env.drain()

    # Then the duplicate is acknowledged without a second row, and nothing is credited twice
    assert (again_status, again["status"]) == (200, "duplicate")
    assert other_status == 200
    assert await env.db.fetchval("SELECT count(*) FROM inbound_events") == 2
    assert (
        await env.db.fetchval("SELECT count(*) FROM inbound_events WHERE processed_at IS NULL") == 0
    )
    assert await env.db.fetchval("SELECT balance FROM user_credits") == Decimal("102.00")
    assert len(env.sent) == 1


@pytest.mark.parametrize("signature", [None, "sha256=" + "0" * 64, "garbage"])
async def test_forged_or_unsigned_event_is_refused_and_nothing_is_stored(
    env: Env, signature: str | None
) -> None:
    _, pid = await seed_purchase(env.db)

    status, _ = await env.post(success("evt_forged"), signature=signature)
    await env.drain()

    assert status == 401
    assert await env.db.fetchval("SELECT count(*) FROM inbound_events") == 0
    assert (
        await env.db.fetchval("SELECT status FROM credit_purchases WHERE id = $1", pid) == "pending"
    )


async def test_order_is_marked_paid_and_a_short_payment_is_rejected(env: Env) -> None:
    # Given two pending orders of 20.00 GBP
    bid = await env.db.fetchval(
        "INSERT INTO businesses (slug, name, currency) VALUES ('shop', 'Shop', 'GBP') RETURNING id"
    )
    orders = [
        await env.db.fetchval(
            "INSERT INTO orders (business_id, number, customer_email, total, currency)"
            " VALUES ($1, $2, 'guest@example.com', 20.00, 'GBP') RETURNING id",
            bid,
            number,
        )
        for number in ("A-1", "A-2")
    ]

    # When one is paid in full and the other short
    for event_id, order, amount in (("evt_a", orders[0], "20.00"), ("evt_b", orders[1], "5.00")):
        status, _ = await env.post(
            {
                "id": event_id,
                "type": "payment.succeeded",
                "data": {"order_id": order, "amount": amount, "currency": "GBP"},
            },
            provider="stripe",
        )
        assert status == 200
    await env.drain()

    # Then only the first is paid; the second event is processed with its error recorded
    statuses = await env.db.fetch("SELECT status FROM orders ORDER BY id")
    assert [r["status"] for r in statuses] == ["paid", "pending"]
    errors = await env.db.fetch("SELECT provider_event_id, error FROM inbound_events ORDER BY id")
    assert errors[0]["error"] is None and "expected 20.00" in errors[1]["error"]


async def test_signed_but_malformed_body_is_a_bad_request(env: Env) -> None:
    status, body = await env.post({"type": "charge.success"})  # no event id
    assert status == 400 and "event id" in body["error"]
    assert await env.db.fetchval("SELECT count(*) FROM inbound_events") == 0
