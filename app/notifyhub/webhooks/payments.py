"""The payment webhook route and the task that applies payment events.

Receiving and applying are split: the route only verifies, stores and enqueues, so it answers
the provider within milliseconds, and all state changes happen in a job that qrunner retries.

Each provider is verified with its own scheme and secret (see :mod:`.signature`): a body signed
for one provider is refused on another's path, and no provider secret is the master secret.

Once-per-event holds at two levels. ``inbound_events`` is unique per (provider, event id), so
a redelivered webhook stores nothing new; and ``process_payment_event`` locks its event row and
skips it once ``processed_at`` is set, applying the change and setting the stamp in the same
transaction. A second event for a payment already applied (providers send several event types)
finds the purchase or order no longer pending and changes nothing. A completed credit purchase
is confirmed by messaging's ``send_credit_purchase_confirmation`` (payload ``{"purchase_id"}``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson
from aiohttp import web
from pydantic import BaseModel

from notifyhub.state import HandlerState
from qrunner import BackendUnavailable, Context, Permanent, Registry, Retry

from .events import MalformedEvent, PaymentEvent, parse_event
from .signature import (
    DEFAULT_TOLERANCE_S,
    PROVIDER_NAME,
    RESERVED_PROVIDERS,
    UNTIMED,
    NotConfigured,
    SignatureError,
    authenticate,
)

log = logging.getLogger(__name__)

registry = Registry()

QUEUE = "default"
EVENT_KEY_TTL_S = 7 * 24 * 3600
#: Paystack and Flutterwave sign no timestamp: an event qrunner acts on must be dated (in its
#: signed body) within this many seconds. Longer than Paystack's 72 hours of retries.
UNTIMED_MAX_AGE_S = 7 * 24 * 3600


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


# -- receiving ---------------------------------------------------------------------------------


class PaymentHook:
    """``POST /hooks/payments/{provider}``: public (no bearer token), so the signature is the
    only authentication. Answers (always JSON): 200 stored or duplicate, 400 signed but
    malformed or out of date, 401 bad, missing or expired signature, 404 unknown provider
    name, 503 not configured or queue unreachable (the provider retries; the retry finds the
    stored event and enqueues it)."""

    def __init__(self, state: HandlerState, *, tolerance_s: float = DEFAULT_TOLERANCE_S) -> None:
        self.state = state
        self.tolerance_s = tolerance_s

    async def handle(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        if not PROVIDER_NAME.match(provider) or provider in RESERVED_PROVIDERS:
            return _error("unknown provider", 404)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error("body too large", 413)
        now = time.time()
        try:
            authenticate(
                provider,
                body,
                request.headers,
                master=self.state.settings.signing_key,
                providers=self.state.providers,
                now=now,
                tolerance_s=self.tolerance_s,
            )
        except NotConfigured as exc:
            log.error("payment webhook from %s refused: %s", provider, exc)
            return _error("webhooks are not configured", 503)
        except SignatureError as exc:
            log.warning("payment webhook from %s refused: %s", provider, exc)
            return _error(str(exc), 401)
        try:
            event = parse_event(provider, body)
        except MalformedEvent as exc:
            return _error(str(exc), 400)
        stale = self._stale(provider, event, now)
        if stale:
            log.warning("payment webhook from %s refused: %s", provider, stale)
            return _error(stale, 400)
        try:
            event_row, fresh, processed = await self._store(provider, event)
        except asyncpg.DataError as exc:  # e.g. a NUL character, which PostgreSQL text refuses
            log.warning("payment webhook from %s not storable: %s", provider, exc)
            return _error("event cannot be stored", 400)
        if fresh or not processed:
            # A stored but unprocessed duplicate means an earlier delivery may have died before
            # its enqueue; enqueueing again is safe because the key drops a second copy.
            try:
                await self.state.client.enqueue(
                    "process_payment_event",
                    {"event_id": event_row},
                    key=f"payment-event:{event_row}",
                    key_ttl_s=EVENT_KEY_TTL_S,
                )
            except BackendUnavailable as exc:
                log.error("payment event %s stored but not queued: %s", event_row, exc)
                return _error("queue unavailable", 503)
        status = "accepted" if fresh else "duplicate"
        return web.json_response({"status": status, "event_id": event_row})

    def _stale(self, provider: str, event: PaymentEvent, now: float) -> str | None:
        """Why an event of a scheme without a signed timestamp is too old (or too far in the
        future) to act on; events qrunner ignores anyway are not judged."""
        if provider not in UNTIMED or event.outcome is None or event.created_at is None:
            return None
        if event.created_at < now - UNTIMED_MAX_AGE_S:
            return f"event dated {event.created_at:.0f} is older than {UNTIMED_MAX_AGE_S}s"
        if event.created_at > now + self.tolerance_s:
            return f"event dated {event.created_at:.0f} is in the future"
        return None

    async def _store(self, provider: str, event: PaymentEvent) -> tuple[int, bool, bool]:
        """(row id, inserted now, already processed)."""
        async with self.state.db.acquire() as conn:
            row_id = await conn.fetchval(
                "INSERT INTO inbound_events (provider, provider_event_id, type, payload)"
                " VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (provider, provider_event_id) DO NOTHING RETURNING id",
                provider,
                event.event_id,
                event.type,
                event.raw,
            )
            if row_id is not None:
                return row_id, True, False
            row = await conn.fetchrow(
                "SELECT id, processed_at FROM inbound_events"
                " WHERE provider = $1 AND provider_event_id = $2",
                provider,
                event.event_id,
            )
        return row["id"], False, row["processed_at"] is not None


def setup_routes(app: web.Application, state: HandlerState) -> None:
    app.router.add_post("/hooks/payments/{provider}", PaymentHook(state).handle)


registry.http_setup(setup_routes, public_prefixes=["/hooks/"])


# -- applying ----------------------------------------------------------------------------------


class PaymentEventJob(BaseModel):
    event_id: int


@dataclass(frozen=True, slots=True)
class Applied:
    status: str
    purchase_id: int | None = None
    order_id: int | None = None
    error: str | None = None


@registry.task(queue=QUEUE, payload=PaymentEventJob, max_retries=5, backoff_base_s=30, timeout_s=60)
async def process_payment_event(
    ctx: Context[HandlerState], payload: PaymentEventJob
) -> dict[str, Any]:
    """Apply one stored payment event, once.

    The confirmation is enqueued after the commit, and again by any later run that finds the
    event processed: a crash between commit and enqueue cannot lose it, and its key stops a
    second copy.
    """
    async with ctx.state.db.acquire() as conn:
        async with conn.transaction():
            ev = await conn.fetchrow(
                "SELECT id, provider, type, payload, processed_at FROM inbound_events"
                " WHERE id = $1 FOR UPDATE",
                payload.event_id,
            )
            if ev is None:
                raise Permanent(f"inbound event {payload.event_id} does not exist")
            event = parse_event_row(ev)
            if ev["processed_at"] is not None:
                outcome = Applied(
                    "already_processed",
                    purchase_id=await _completed_purchase(conn, ev["provider"], event),
                )
            else:
                outcome = await _apply(conn, ev["provider"], event)
                await conn.execute(
                    "UPDATE inbound_events SET processed_at = now(), error = $2 WHERE id = $1",
                    ev["id"],
                    outcome.error,
                )
    if outcome.error:
        log.warning("payment event %s not applied: %s", payload.event_id, outcome.error)
    if outcome.purchase_id is not None:
        await ctx.client.enqueue(
            "send_credit_purchase_confirmation",
            {"purchase_id": outcome.purchase_id},
            key=f"credit-confirmation:{outcome.purchase_id}",
            key_ttl_s=EVENT_KEY_TTL_S,
        )
    return {
        "event_id": payload.event_id,
        "status": outcome.status,
        "purchase_id": outcome.purchase_id,
        "order_id": outcome.order_id,
        "error": outcome.error,
    }


def parse_event_row(ev: asyncpg.Record) -> PaymentEvent:
    try:
        return parse_event(ev["provider"], orjson.dumps(ev["payload"]))
    except MalformedEvent as exc:  # stored events were parsed once; this means a hand edit
        raise Permanent(f"inbound event {ev['id']} is malformed: {exc}") from None


async def _completed_purchase(
    conn: asyncpg.Connection, provider: str, event: PaymentEvent
) -> int | None:
    if event.outcome != "succeeded" or event.reference is None:
        return None
    purchase_id: int | None = await conn.fetchval(
        "SELECT id FROM credit_purchases"
        " WHERE provider = $1 AND payment_reference = $2 AND status = 'completed'",
        provider,
        event.reference,
    )
    return purchase_id


async def _apply(conn: asyncpg.Connection, provider: str, event: PaymentEvent) -> Applied:
    if event.outcome is None:
        return Applied("ignored")
    if event.reference is not None:
        purchase = await conn.fetchrow(
            "SELECT id, user_id, credits, amount, currency, status FROM credit_purchases"
            " WHERE provider = $1 AND payment_reference = $2 FOR UPDATE",
            provider,
            event.reference,
        )
        if purchase is not None:
            return await _apply_purchase(conn, purchase, event)
    if event.order_id is not None:
        return await _apply_order(conn, event)
    # The checkout writes its row before sending the customer to the provider, so a missing
    # row is most likely a commit still in flight: retry, and dead-letter if it never shows.
    raise Retry(60, f"no credit purchase or order matches {provider} event {event.event_id}")


def _short_paid(event: PaymentEvent, amount: Any, currency: str) -> str | None:
    if event.amount is None:
        return None
    if event.currency is not None and event.currency.upper() != currency:
        return f"paid in {event.currency}, expected {currency}"
    if event.amount < amount:
        return f"paid {event.amount} {currency}, expected {amount}"
    return None


async def _apply_purchase(
    conn: asyncpg.Connection, p: asyncpg.Record, event: PaymentEvent
) -> Applied:
    if event.outcome == "failed":
        done = await conn.execute(
            "UPDATE credit_purchases SET status = 'failed' WHERE id = $1 AND status = 'pending'",
            p["id"],
        )
        return Applied("purchase_failed" if done.endswith(" 1") else f"purchase_{p['status']}")
    if p["status"] != "pending":
        return Applied(f"purchase_{p['status']}")
    problem = _short_paid(event, p["amount"], p["currency"])
    if problem:
        return Applied("rejected", error=problem)
    await conn.execute(
        "UPDATE credit_purchases SET status = 'completed', purchased_at = now() WHERE id = $1",
        p["id"],
    )
    # Topping up clears the low-balance stamp so the next drop below the threshold alerts again.
    await conn.execute(
        "INSERT INTO user_credits (user_id, balance) VALUES ($1, $2)"
        " ON CONFLICT (user_id) DO UPDATE SET balance = user_credits.balance + EXCLUDED.balance,"
        "   low_balance_alerted_at = NULL, updated_at = now()",
        p["user_id"],
        p["credits"],
    )
    return Applied("credited", purchase_id=p["id"])


async def _apply_order(conn: asyncpg.Connection, event: PaymentEvent) -> Applied:
    order = await conn.fetchrow(
        "SELECT id, status, total, currency FROM orders WHERE id = $1 FOR UPDATE", event.order_id
    )
    if order is None:
        raise Retry(60, f"order {event.order_id} does not exist (yet)")
    if event.outcome == "failed" or order["status"] != "pending":
        return Applied(f"order_{order['status']}", order_id=order["id"])
    problem = _short_paid(event, order["total"], order["currency"])
    if problem:
        return Applied("rejected", order_id=order["id"], error=problem)
    await conn.execute("UPDATE orders SET status = 'paid' WHERE id = $1", order["id"])
    return Applied("order_paid", order_id=order["id"])
