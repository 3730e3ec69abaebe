"""Webhook signatures and event parsing: pure functions, no I/O.

Senders sign the raw request body with HMAC-SHA256 under the shared secret
(``QRUNNER_SIGNING_SECRET``) and send ``X-Qrunner-Signature: sha256=<hex digest>``. The body
is verified byte for byte before it is parsed, so nothing a forger controls is interpreted.
There is no timestamp in the signature: a replayed request carries an event id already stored,
and a stored event is never applied twice.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

SIGNATURE_HEADER = "X-Qrunner-Signature"
_PREFIX = "sha256="


def sign(secret: str, body: bytes) -> str:
    """The header value a sender puts on ``body`` (also what tests and fake senders use)."""
    return _PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """Constant-time check of ``header`` against ``body``; a bare hex digest is accepted too."""
    if not header:
        return False
    given = header.strip()
    if given.startswith(_PREFIX):
        given = given[len(_PREFIX) :]
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given.lower())


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """The fields qrunner acts on, from the generic shape
    ``{"id", "type", "data": {"reference", "amount", "currency", "order_id"}}``.

    Paystack-style bodies (``{"event": ..., "data": {"id": ...}}``) are read too: the event id
    falls back to ``data.id`` and the type to ``event``. Amounts are in major units as decimal
    strings; a float would round money.
    """

    event_id: str
    type: str
    reference: str | None
    amount: Decimal | None
    currency: str | None
    order_id: int | None
    raw: dict[str, Any]


class MalformedEvent(ValueError):
    pass


def parse_event(body: bytes) -> PaymentEvent:
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"body is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise MalformedEvent("body is not a JSON object")
    found = raw.get("data")
    data: dict[str, Any] = found if isinstance(found, dict) else {}
    event_id = raw.get("id") or data.get("id")
    kind = raw.get("type") or raw.get("event")
    if event_id in (None, "") or not isinstance(event_id, str | int):
        raise MalformedEvent("no event id")
    if not isinstance(kind, str) or not kind:
        raise MalformedEvent("no event type")
    amount: Decimal | None = None
    if data.get("amount") is not None:
        try:
            amount = Decimal(str(data["amount"]))
        except InvalidOperation:
            raise MalformedEvent(f"amount {data['amount']!r} is not a number") from None
    order_id = data.get("order_id")
    if order_id is not None and not (isinstance(order_id, int) or str(order_id).isdigit()):
        raise MalformedEvent(f"order_id {order_id!r} is not an integer")
    reference = data.get("reference")
    return PaymentEvent(
        event_id=str(event_id),
        type=kind,
        reference=None if reference is None else str(reference),
        amount=amount,
        currency=data.get("currency"),
        order_id=None if order_id is None else int(order_id),
        raw=raw,
    )
