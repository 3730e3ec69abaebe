"""Payment webhooks over real HTTP, applied by a real worker against PostgreSQL and Redis.

Given a pending credit purchase and pending orders, when providers post events signed the way
each of them signs (Paystack, Flutterwave, Stripe, and Standard Webhooks for qrunner's own
scheme), and forged, stale, replayed and cross-provider ones, then only authentic, current
events are stored, each once per (provider, event id), each payment changes state once however
often it is delivered, and nothing malformed is answered 500.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from notifyhub.secrets import ProviderSecrets, webhook_key
from notifyhub.webhooks import registry as webhooks_registry
from notifyhub.webhooks.events import parse_event
from notifyhub.webhooks.signature import standard_headers
from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from qrunner import Context
from qrunner.http import build_app
from qrunner.metrics import Metrics
from tests.handler_fixtures import HandlerEnv, handler_stack, standin_registry

pytestmark = pytest.mark.timeout(60)

MASTER = "test-master-signing-secret-0123456789"
PAYSTACK_KEY = "sk_test_4f1c0ffee0ddba11deadbeef0123456789abcd"
FLUTTERWAVE_HASH = "flw-secret-hash-for-tests-0123"
STRIPE_SECRET = "whsec_stripe_endpoint_secret_for_tests"
PROVIDERS = ProviderSecrets(PAYSTACK_KEY, FLUTTERWAVE_HASH, STRIPE_SECRET)
#: 2001-09-09T01:46:40Z: a timestamp from long ago, for stale deliveries.
Y2001 = 1_000_000_000


def paystack_signature(body: bytes, key: str = PAYSTACK_KEY) -> str:
    return hmac.new(key.encode(), body, hashlib.sha512).hexdigest()


def stripe_signature(body: bytes, t: int, secret: str = STRIPE_SECRET) -> str:
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


@dataclass
class Env(HandlerEnv):
    http: TestClient[web.Request, web.Application]
    sent: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)

    async def raw(
        self, provider: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        resp = await self.http.post(
            f"/hooks/payments/{provider}",
            data=body,
            headers={"Content-Type": "application/json", **headers},
        )
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()

    async def paystack(
        self, event: dict[str, Any], *, signature: str | None = "good"
    ) -> tuple[int, dict[str, Any]]:
        body = orjson.dumps(event)
        headers = {}
        if signature == "good":
            headers["x-paystack-signature"] = paystack_signature(body)
        elif signature is not None:
            headers["x-paystack-signature"] = signature
        return await self.raw("paystack", body, headers)

    async def stripe(self, event: dict[str, Any], *, t: int | None = None) -> tuple[int, Any]:
        body = orjson.dumps(event)
        stamp = int(time.time()) if t is None else t
        return await self.raw("stripe", body, {"Stripe-Signature": stripe_signature(body, stamp)})

    async def own(
        self,
        provider: str,
        event: dict[str, Any],
        *,
        msg_id: str = "msg_1",
        timestamp: int | None = None,
        signed_for: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        body = orjson.dumps(event)
        key = webhook_key(MASTER, signed_for or provider)
        stamp = int(time.time()) if timestamp is None else timestamp
        return await self.raw(provider, body, standard_headers(key, msg_id, stamp, body))

    async def count(self) -> int:
        n: int = await self.db.fetchval("SELECT count(*) FROM inbound_events")
        return n


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
        database_url, redis, tmp_path, webhooks_registry, standins, signing_secret=MASTER
    ) as plain:
        stack = plain._replace(state=replace(plain.state, providers=PROVIDERS))

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


async def seed_purchase(
    db: asyncpg.Pool, reference: str = "PAY-1", provider: str = "paystack"
) -> tuple[int, int]:
    uid: int = await db.fetchval(
        "INSERT INTO users (name, email) VALUES ('Buyer', 'buyer@example.com') RETURNING id"
    )
    await db.execute(
        "INSERT INTO user_credits (user_id, balance, low_balance_alerted_at) VALUES ($1, 2, now())",
        uid,
    )
    pid: int = await db.fetchval(
        "INSERT INTO credit_purchases (user_id, credits, amount, currency, provider,"
        " payment_reference) VALUES ($1, 100, 50.00, 'NGN', $2, $3) RETURNING id",
        uid,
        provider,
        reference,
    )
    return uid, pid


def paystack_success(
    tx_id: int, reference: str = "PAY-1", kobo: int = 5000, paid_at: str | None = None
) -> dict[str, Any]:
    """A ``charge.success`` as Paystack sends it: amounts in kobo, no event id of its own."""
    when = paid_at or time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return {
        "event": "charge.success",
        "data": {
            "id": tx_id,
            "domain": "test",
            "status": "success",
            "reference": reference,
            "amount": kobo,
            "currency": "NGN",
            "paid_at": when,
            "created_at": when,
            "channel": "card",
        },
    }


def own_success(event_id: str, reference: str = "PAY-1", amount: str = "50.00") -> dict[str, Any]:
    return {
        "id": event_id,
        "type": "payment.succeeded",
        "data": {"reference": reference, "amount": amount, "currency": "NGN"},
    }


async def balance(env: Env) -> Decimal:
    value: Decimal = await env.db.fetchval("SELECT balance FROM user_credits")
    return value


# -- pure --------------------------------------------------------------------------------------


def test_paystack_body_is_read_in_kobo_with_its_own_event_id() -> None:
    event = parse_event(
        "paystack",
        b'{"event": "charge.success", "data": {"id": 42, "reference": "R", "amount": 1050,'
        b' "currency": "NGN", "paid_at": "2026-01-01T10:00:00.000Z"}}',
    )
    assert (event.event_id, event.outcome, event.reference, event.amount) == (
        "charge.success:42",
        "succeeded",
        "R",
        Decimal("10.50"),
    )
    assert event.created_at == 1_767_261_600.0


def test_flutterwave_and_stripe_bodies_are_read_in_their_units() -> None:
    flw = parse_event(
        "flutterwave",
        b'{"event": "charge.completed", "data": {"id": 285959875, "tx_ref": "T-1",'
        b' "amount": 100.5, "currency": "NGN", "status": "successful"}}',
    )
    assert (flw.event_id, flw.outcome, flw.reference, flw.amount) == (
        "charge.completed:285959875",
        "succeeded",
        "T-1",
        Decimal("100.5"),
    )
    yen = parse_event(
        "stripe",
        b'{"id": "evt_1", "type": "payment_intent.succeeded", "created": 1700000000,'
        b' "data": {"object": {"object": "payment_intent", "id": "pi_1",'
        b' "amount_received": 5000, "currency": "jpy", "metadata": {"order_id": "7"}}}}',
    )
    assert (yen.reference, yen.amount, yen.currency, yen.order_id) == (
        "pi_1",
        Decimal(5000),
        "JPY",
        7,
    )


# -- the purchase flow (Paystack) --------------------------------------------------------------


async def test_signed_event_credits_once_and_a_redelivery_changes_nothing(env: Env) -> None:
    # Given a pending purchase of 100 credits for a user with 2 left
    _, pid = await seed_purchase(env.db)

    # When Paystack posts a signed charge.success and the worker runs
    status, body = await env.paystack(paystack_success(9001))
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

    # When the same event is delivered again, and then another event for the same payment
    again_status, again = await env.paystack(paystack_success(9001))
    other_status, _ = await env.paystack(paystack_success(9004))
    await env.drain()

    # Then the duplicate is acknowledged without a second row, and nothing is credited twice
    assert (again_status, again["status"]) == (200, "duplicate")
    assert other_status == 200
    assert await env.count() == 2
    assert (
        await env.db.fetchval("SELECT count(*) FROM inbound_events WHERE processed_at IS NULL") == 0
    )
    assert await balance(env) == Decimal("102.00")
    assert len(env.sent) == 1


@pytest.mark.parametrize(
    "signature",
    [
        None,
        "0" * 128,
        "garbage",
        paystack_signature(b"another body"),
        paystack_signature(b"{}", key="sk_test_some_other_merchant_key_0123"),
        "é" * 128,  # non-ASCII: refused, not a 500
    ],
)
async def test_forged_or_unsigned_paystack_event_is_refused_and_nothing_is_stored(
    env: Env, signature: str | None
) -> None:
    _, pid = await seed_purchase(env.db)

    status, body = await env.paystack(paystack_success(9002), signature=signature)
    await env.drain()

    assert status == 401 and "error" in body
    assert await env.count() == 0
    assert (
        await env.db.fetchval("SELECT status FROM credit_purchases WHERE id = $1", pid) == "pending"
    )


async def test_a_paystack_event_dated_2001_is_refused(env: Env) -> None:
    # Paystack signs no timestamp: a correctly signed event is still judged by its own date
    await seed_purchase(env.db)
    status, body = await env.paystack(paystack_success(9003, paid_at="2001-09-09T01:46:40Z"))
    assert status == 400 and "older than" in body["error"]
    assert await env.count() == 0


async def test_flutterwave_verif_hash_is_checked(env: Env) -> None:
    await seed_purchase(env.db, reference="FLW-1", provider="flutterwave")
    event = {
        "event": "charge.completed",
        "data": {
            "id": 285959875,
            "tx_ref": "FLW-1",
            "amount": 50,
            "currency": "NGN",
            "status": "successful",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        },
    }
    body = orjson.dumps(event)
    for given in ("wrong-hash-of-the-same-length!", FLUTTERWAVE_HASH + "x", "é"):
        assert (await env.raw("flutterwave", body, {"verif-hash": given}))[0] == 401
    assert (await env.raw("flutterwave", body, {}))[0] == 401
    assert await env.count() == 0

    status, answer = await env.raw("flutterwave", body, {"verif-hash": FLUTTERWAVE_HASH})
    await env.drain()
    assert (status, answer["status"]) == (200, "accepted")
    assert await balance(env) == Decimal("102.00")


# -- Stripe ------------------------------------------------------------------------------------


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

    # When Stripe reports one paid in full and the other short (amounts in pence)
    for event_id, order, pence in (("evt_a", orders[0], 2000), ("evt_b", orders[1], 500)):
        status, _ = await env.stripe(
            {
                "id": event_id,
                "type": "payment_intent.succeeded",
                "created": int(time.time()),
                "data": {
                    "object": {
                        "object": "payment_intent",
                        "id": f"pi_{event_id}",
                        "amount_received": pence,
                        "currency": "gbp",
                        "metadata": {"order_id": str(order)},
                    }
                },
            }
        )
        assert status == 200
    await env.drain()

    # Then only the first is paid; the second event is processed with its error recorded
    statuses = await env.db.fetch("SELECT status FROM orders ORDER BY id")
    assert [r["status"] for r in statuses] == ["paid", "pending"]
    errors = await env.db.fetch("SELECT provider_event_id, error FROM inbound_events ORDER BY id")
    assert errors[0]["error"] is None and "expected 20.00" in errors[1]["error"]


async def test_stripe_stale_forged_and_rolled_signatures(env: Env) -> None:
    event = {
        "id": "evt_s",
        "type": "charge.refunded",
        "data": {"object": {"object": "charge", "id": "ch_1"}},
    }
    body = orjson.dumps(event)
    now = int(time.time())
    good = stripe_signature(body, now)
    stale = stripe_signature(body, now - 301)
    other = stripe_signature(body, now, secret="whsec_a_different_endpoint_secret")
    cases = {
        stale: 401,  # older than the 5-minute tolerance
        stripe_signature(body, Y2001): 401,
        stripe_signature(body, now + 301): 401,  # from the future
        other: 401,
        f"t={now}": 401,
        "v1=" + good.split("v1=")[1]: 401,  # no timestamp
        "t=é,v1=00": 401,
    }
    for header, expected in cases.items():
        status, answer = await env.raw("stripe", body, {"Stripe-Signature": header})
        assert (status, "error" in answer) == (expected, True), header
    assert await env.count() == 0
    # While a secret is rolled Stripe sends one v1 per secret: any valid one is enough
    rolled = f"{other},v1={good.split('v1=')[1]},v0=ignored"
    assert (await env.raw("stripe", body, {"Stripe-Signature": rolled}))[0] == 200


# -- qrunner's own scheme (Standard Webhooks) --------------------------------------------------


async def test_own_scheme_stale_replayed_and_cross_provider(env: Env) -> None:
    _, pid = await seed_purchase(env.db, provider="acme")
    event = own_success("evt_own")

    # A delivery stamped 2001 (or 6 minutes ago) is refused, whatever its signature
    assert (await env.own("acme", event, timestamp=Y2001))[0] == 401
    assert (await env.own("acme", event, timestamp=int(time.time()) - 360))[0] == 401
    # A body signed for one provider is refused on another provider's path
    assert (await env.own("globex", event, signed_for="acme"))[0] == 401
    assert await env.count() == 0

    # A current, correctly signed delivery is accepted and applied once
    status, body = await env.own("acme", event)
    assert (status, body["status"]) == (200, "accepted")
    # Replayed verbatim within the window: 200, no second row, no second credit
    replay_status, replay = await env.own("acme", event)
    await env.drain()
    assert (replay_status, replay["status"]) == (200, "duplicate")
    assert await env.count() == 1
    assert await balance(env) == Decimal("102.00")
    assert len(env.sent) == 1 and env.sent[0][0] == {"purchase_id": pid}


async def test_a_signed_body_replayed_to_another_providers_path_is_refused(env: Env) -> None:
    # Given a Paystack delivery captured in transit, and one of qrunner's own
    paystack_body = orjson.dumps(paystack_success(9010))
    paystack_headers = {"x-paystack-signature": paystack_signature(paystack_body)}
    own_body = orjson.dumps(own_success("evt_x"))
    own_headers = standard_headers(webhook_key(MASTER, "acme"), "m", int(time.time()), own_body)
    # When each is posted to every other provider's path, headers and all
    for provider in ("flutterwave", "stripe", "acme", "globex"):
        status, body = await env.raw(provider, paystack_body, paystack_headers)
        assert status == 401 and "error" in body, provider
    for provider in ("paystack", "flutterwave", "stripe", "globex"):
        status, body = await env.raw(provider, own_body, own_headers)
        assert status == 401 and "error" in body, provider
    # Then nothing was stored as a new event
    assert await env.count() == 0


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"webhook-signature": "v1,é"}, "not printable ASCII"),
        ({"webhook-id": "ü"}, "not printable ASCII"),
        ({"webhook-timestamp": "soon"}, "not a Unix time"),
        ({"webhook-signature": "v2,abc"}, "no v1 signature"),
        ({"webhook-signature": "v1,not-base64!!"}, "no v1 signature"),
    ],
)
async def test_malformed_own_scheme_headers_are_401_json(
    env: Env, headers: dict[str, str], reason: str
) -> None:
    body = orjson.dumps(own_success("evt_h"))
    signed = standard_headers(webhook_key(MASTER, "acme"), "msg_h", int(time.time()), body)
    status, answer = await env.raw("acme", body, {**signed, **headers})
    assert status == 401 and reason in answer["error"]


# -- refusals that are not about signatures ----------------------------------------------------


async def test_signed_but_malformed_body_is_a_bad_request(env: Env) -> None:
    for event in (
        {"type": "charge.success"},
        {"id": "e", "type": "x", "data": {"amount": "?"}},
        {"id": "e", "type": "x", "data": {"amount": "9" * 5000}},
        {"id": "e", "type": "x", "data": {"order_id": "9" * 5000}},
        {"id": "e\u0000", "type": "x"},  # PostgreSQL text refuses NUL
        {"id": "e", "type": "x", "note": "\u0000"},
    ):
        status, body = await env.own("acme", event)
        assert status == 400 and "error" in body, event
    for raw in (b"not json", b"[1, 2]", b'{"event": "charge.success"}', b"\xff\xfe"):
        status, body = await env.raw(
            "paystack", raw, {"x-paystack-signature": paystack_signature(raw)}
        )
        assert status == 400 and "error" in body, raw
    assert await env.count() == 0


async def test_unknown_names_and_unconfigured_providers(env: Env) -> None:
    body = orjson.dumps(own_success("evt_u"))
    assert (await env.raw("twilio", body, {}))[0] == 404  # has its own route and events
    resp = await env.http.post("/hooks/payments/Not%20A%20Name", data=body)
    assert resp.status == 404 and (await resp.json())["error"] == "unknown provider"
    # Without its secret a provider's webhooks are 503, so the provider retries later
    env.state.providers = ProviderSecrets()
    status, answer = await env.paystack(paystack_success(9020))
    assert (status, answer) == (503, {"error": "webhooks are not configured"})


async def test_an_oversized_body_is_413_json(env: Env) -> None:
    big = io.BytesIO(b"{" + b" " * (1024 * 1024) + b"}")
    resp = await env.http.post("/hooks/payments/paystack", data=big)
    assert resp.status == 413 and await resp.json() == {"error": "body too large"}
