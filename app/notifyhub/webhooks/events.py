"""Payment event bodies as each provider sends them, reduced to what qrunner acts on.

Pure functions. Each provider has its own body shape and its own amount unit:

- **qrunner's own scheme** (any other provider name): ``{"id", "type", "data": {"reference",
  "amount", "currency", "order_id"}}``, amounts in major units as decimal strings (a float
  would round money). ``event`` and ``data.id`` are read when ``type`` and ``id`` are absent.
- **paystack**: ``{"event", "data": {"id", "reference", "amount", "currency", "paid_at",
  "metadata": {"order_id"}}}``, amounts in the currency's subunit (kobo, pesewas, cents).
- **flutterwave**: ``{"event": "charge.completed", "data": {"id", "tx_ref", "amount",
  "currency", "status", "created_at", "meta": {"order_id"}}}``, amounts in major units; the
  outcome is ``data.status``.
- **stripe**: ``{"id", "type", "created", "data": {"object": {...}}}``, amounts in the
  smallest currency unit (none for zero-decimal currencies such as JPY); the reference is
  ``metadata.reference``, else the PaymentIntent id.

Paystack and Flutterwave events have no id of their own; theirs is ``<event>:<data.id>``, so a
refund and a charge that share a numeric id are still two events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import orjson

Outcome = Literal["succeeded", "failed"]

#: Event types of qrunner's own scheme (and the generic names some providers share).
SUCCEEDED = frozenset({"payment.succeeded", "charge.succeeded", "charge.success"})
FAILED = frozenset({"payment.failed", "charge.failed"})

_STRIPE_SUCCEEDED = frozenset(
    {"payment_intent.succeeded", "charge.succeeded", "checkout.session.async_payment_succeeded"}
)
_STRIPE_FAILED = frozenset(
    {"payment_intent.payment_failed", "charge.failed", "checkout.session.async_payment_failed"}
)
#: Stripe amounts are in the smallest unit: 10^exponent of them make one major unit.
_STRIPE_ZERO_DECIMAL = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split()
)
_STRIPE_THREE_DECIMAL = frozenset("BHD JOD KWD OMR TND".split())


class MalformedEvent(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    event_id: str
    type: str
    outcome: Outcome | None
    reference: str | None
    amount: Decimal | None
    currency: str | None
    order_id: int | None
    #: When the provider says the event happened (Unix seconds), if the body says.
    created_at: float | None
    raw: dict[str, Any]


def parse_event(provider: str, body: bytes) -> PaymentEvent:
    raw = _object(body)
    if provider == "paystack":
        return _paystack(raw)
    if provider == "flutterwave":
        return _flutterwave(raw)
    if provider == "stripe":
        return _stripe(raw)
    return _own(raw)


def _object(body: bytes) -> dict[str, Any]:
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"body is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise MalformedEvent("body is not a JSON object")
    return raw


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _id(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or value in ("", None):
        raise MalformedEvent(f"no {what}")
    text = str(value)
    if len(text) > 200:
        raise MalformedEvent(f"{what} is longer than 200 characters")
    return text


def _type(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedEvent("no event type")
    return value


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MalformedEvent(f"{str(value)[:40]!r} is not a text or integer reference")
    return str(value)


def _decimal(value: Any, what: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise MalformedEvent(f"{what} {str(value)[:40]!r} is not a number")
    text = str(value)
    if len(text) > 40:
        raise MalformedEvent(f"{what} is longer than 40 characters")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise MalformedEvent(f"{what} {text!r} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise MalformedEvent(f"{what} {text!r} is not a non-negative number")
    return amount


def _whole(value: Any, what: str) -> int:
    """A non-negative integer given as a JSON integer or a string of ASCII digits."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**18:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    raise MalformedEvent(f"{what} {str(value)[:40]!r} is not a non-negative integer")


def _minor(value: Any, exponent: int) -> Decimal | None:
    """An amount given in minor units (an integer) in major units."""
    if value is None:
        return None
    return Decimal(_whole(value, "amount in minor units")).scaleb(-exponent)


def _order_id(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return _whole(value, "order_id")


def _currency(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.isalpha() or len(value) != 3:
        raise MalformedEvent(f"currency {str(value)[:40]!r} is not a 3-letter code")
    return value.upper()


def _when(value: Any) -> float | None:
    """Unix seconds from an ISO 8601 string or a number; None when absent or unreadable (the
    body is authenticated, so an odd date format is the provider's, not a forger's)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None
        return parsed.timestamp()
    return None


def _own(raw: dict[str, Any]) -> PaymentEvent:
    data = _dict(raw.get("data"))
    kind = _type(raw.get("type") or raw.get("event"))
    return PaymentEvent(
        event_id=_id(raw.get("id") or data.get("id"), "event id"),
        type=kind,
        outcome="succeeded" if kind in SUCCEEDED else "failed" if kind in FAILED else None,
        reference=_text(data.get("reference")),
        amount=_decimal(data.get("amount"), "amount"),
        currency=_currency(data.get("currency")),
        order_id=_order_id(data.get("order_id")),
        created_at=None,
        raw=raw,
    )


def _paystack(raw: dict[str, Any]) -> PaymentEvent:
    kind = _type(raw.get("event"))
    data = _dict(raw.get("data"))
    metadata = _dict(data.get("metadata"))
    return PaymentEvent(
        event_id=f"{kind}:{_id(data.get('id'), 'data.id')}",
        type=kind,
        outcome="succeeded" if kind == "charge.success" else None,
        reference=_text(data.get("reference")),
        amount=_minor(data.get("amount"), 2),
        currency=_currency(data.get("currency")),
        order_id=_order_id(metadata.get("order_id")),
        created_at=_when(
            data.get("paid_at")
            or data.get("paidAt")
            or data.get("created_at")
            or data.get("createdAt")
        ),
        raw=raw,
    )


def _flutterwave(raw: dict[str, Any]) -> PaymentEvent:
    kind = _type(raw.get("event"))
    data = _dict(raw.get("data"))
    outcome: Outcome | None = None
    if kind == "charge.completed":
        status = str(data.get("status", "")).lower()
        if status == "successful":
            outcome = "succeeded"
        elif status == "failed":
            outcome = "failed"
    return PaymentEvent(
        event_id=f"{kind}:{_id(data.get('id'), 'data.id')}",
        type=kind,
        outcome=outcome,
        reference=_text(data.get("tx_ref")),
        amount=_decimal(data.get("amount"), "amount"),
        currency=_currency(data.get("currency")),
        order_id=_order_id(_dict(data.get("meta")).get("order_id")),
        created_at=_when(data.get("created_at")),
        raw=raw,
    )


def _stripe(raw: dict[str, Any]) -> PaymentEvent:
    kind = _type(raw.get("type"))
    event_id = _id(raw.get("id"), "event id")
    obj = _dict(raw.get("data")).get("object")
    if not isinstance(obj, dict):
        raise MalformedEvent("no data.object")
    metadata = _dict(obj.get("metadata"))
    outcome: Outcome | None = None
    if kind in _STRIPE_SUCCEEDED:
        outcome = "succeeded"
    elif kind in _STRIPE_FAILED:
        outcome = "failed"
    elif kind == "checkout.session.completed" and obj.get("payment_status") == "paid":
        outcome = "succeeded"
    currency = _currency(obj.get("currency"))
    exponent = (
        0 if currency in _STRIPE_ZERO_DECIMAL else 3 if currency in _STRIPE_THREE_DECIMAL else 2
    )
    kind_of_object = obj.get("object")
    if kind_of_object == "payment_intent":
        minor = obj.get("amount_received") or obj.get("amount")
        intent = obj.get("id")
    elif kind_of_object == "checkout.session":
        minor = obj.get("amount_total")
        intent = obj.get("payment_intent")
    else:
        minor = obj.get("amount_captured") or obj.get("amount")
        intent = obj.get("payment_intent")
    if not isinstance(intent, str):  # absent, or expanded into an object
        intent = None
    reference = _text(metadata.get("reference")) or intent or _text(obj.get("id"))
    return PaymentEvent(
        event_id=event_id,
        type=kind,
        outcome=outcome,
        reference=reference,
        amount=_minor(minor, exponent),
        currency=currency,
        order_id=_order_id(metadata.get("order_id")),
        created_at=_when(raw.get("created")),
        raw=raw,
    )
